"""capture.fingerprint: the tree hash of the data against a direct computation of its
definition, for any batching, any cut into ranges and any order of merges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_state.capture import fingerprint as fp
from onnx_state.capture.fingerprint import Fingerprint


def reference_root(data: bytes, leaf: int, fan_in: int) -> bytes:
    """The definition, all at once: leaves of *leaf* bytes hashed with seed 0, then groups
    of *fan_in* digests hashed with seed 1, 2, ... until one digest is left."""
    if not data:
        return xxhash.xxh3_128_digest(b"")
    units = [xxhash.xxh3_128_digest(data[i : i + leaf]) for i in range(0, len(data), leaf)]
    level = 1
    while len(units) > 1:
        units = [
            xxhash.xxh3_128_digest(b"".join(units[i : i + fan_in]), seed=level)
            for i in range(0, len(units), fan_in)
        ]
        level += 1
    return units[0]


def reference_digest(
    inputs: dict[str, np.ndarray],
    leaf: int,
    fan_in: int,
    constants: dict[str, np.ndarray] | None = None,
) -> str:
    total = xxhash.xxh3_128()
    for name in sorted(inputs):
        a = inputs[name]
        root = reference_root(a.tobytes(), leaf, fan_in).hex()
        total.update(f"{name}:{a.dtype.str}{a.shape[1:]}:{len(a)}:{root};".encode())
    for name, c in sorted((constants or {}).items()):
        h = xxhash.xxh3_128_hexdigest(c.tobytes())
        total.update(f"constant {name}:{c.dtype.str}{c.shape}:{h};".encode())
    return f"xxh3_128-tree:{total.hexdigest()}"


def streamed(
    inputs: dict[str, np.ndarray],
    start: int,
    stop: int,
    sizes: list[int],
    constants: dict[str, np.ndarray] | None = None,
) -> Fingerprint:
    """The fingerprint of samples start .. stop, fed in batches of the sizes in turn (an
    empty batch first, and the constants with every batch, as a run feeds them)."""
    digest, i, k = Fingerprint(constants, start=start), start, 0
    digest.update({name: a[i:i] for name, a in inputs.items()})
    while i < stop:
        j = min(stop, i + sizes[k % len(sizes)])
        digest.update({name: a[i:j] for name, a in inputs.items()} | (constants or {}))
        i, k = j, k + 1
    return digest


@settings(max_examples=300, deadline=None)
@given(
    leaf=st.sampled_from([1, 2, 3, 7, 16]),
    fan_in=st.sampled_from([2, 3, 4]),
    n=st.integers(1, 80),
    width=st.integers(0, 5),
    dtype=st.sampled_from(["u1", "<f2", "<f4", "<i8"]),
    cuts=st.lists(st.integers(1, 79), max_size=6),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_the_digest_is_the_tree_hash_of_its_definition_however_the_data_is_cut(
    leaf, fan_in, n, width, dtype, cuts, sizes, order
):
    rng = np.random.default_rng(n * 31 + width)
    inputs = {  # two inputs of different sample sizes: their trees cut at other samples
        "a": rng.integers(0, 256, (n, width), np.uint8).view(np.uint8).astype(dtype),
        "b": rng.integers(0, 256, (n, 3, 2), np.uint8),
    }
    constants = {"k": rng.random((2, 3))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fp, "LEAF_BYTES", leaf)
        mp.setattr(fp, "FAN_IN", fan_in)
        edges = sorted({0, n, *(c for c in cuts if c < n)})
        parts = [streamed(inputs, a, b, sizes, constants) for a, b in itertools.pairwise(edges)]
        while len(parts) > 1:  # 2 to 8 adjacent ranges at a time, given in any order
            i = order.randrange(len(parts) - 1)
            j = min(len(parts), i + order.randint(2, 8))
            group = parts[i:j]
            order.shuffle(group)
            parts[i:j] = [Fingerprint.merge(group)]
    want = reference_digest(inputs, leaf, fan_in, constants)
    assert parts[0].hexdigest() == want
    assert parts[0].hexdigest() == want  # a digest leaves the fingerprint as it was


def test_data_of_one_leaf_has_its_plain_xxh3_as_root_and_larger_data_a_tree():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (64, 1024), np.uint8)  # exactly one leaf of 64 KiB
    tree = fp._Tree(0, fp.LEAF_BYTES, fp.FAN_IN)
    tree.append(memoryview(small.tobytes()))
    assert tree.root() == xxhash.xxh3_128_digest(small.tobytes())
    large = rng.integers(0, 256, (3000, 1024), np.uint8)  # 46.9 leaves, at default sizes
    digest = streamed({"x": large}, 0, 3000, [200, 7])
    assert digest.hexdigest() == reference_digest({"x": large}, fp.LEAF_BYTES, fp.FAN_IN)


def test_the_stored_definition_does_not_change_unnoticed():
    # A fixed data set's digest, computed once with reference_digest at 64 KiB leaves and
    # 4,096 digests a group: stores and checkpoints keep it, so leaves, fan-in, seeds and
    # the summary's format are part of the stored format, not tuning knobs.
    x = (np.arange(600_000, dtype=np.int64) * 2654435761 % 2**32).astype(np.uint32)
    x = x.reshape(3000, 200)  # 2.4 MB: 37 leaves
    want = "xxh3_128-tree:6cad3bcf34e7f22eeb71949a6b1768d5"
    assert reference_digest({"x": x}, 1 << 16, 4096) == want
    assert streamed({"x": x}, 0, 3000, [128, 1000]).hexdigest() == want


def test_any_change_to_the_data_changes_the_digest():
    rng = np.random.default_rng(1)
    x = rng.random((500, 40), np.float32)

    def digest(a: np.ndarray, constants: dict[str, np.ndarray] | None = None) -> str:
        d = Fingerprint(constants)
        d.update({"x": a})
        return d.hexdigest()

    flipped = x.copy()
    flipped.view(np.uint8)[250, 7] ^= 1
    swapped = x.copy()
    swapped[[3, 400]] = swapped[[400, 3]]
    variants = [
        x,
        flipped,
        swapped,
        x[:-1],
        x.view(np.int32),  # the same bytes as another dtype
        x.reshape(500, 4, 10),  # ... or another sample shape
    ]
    digests = [digest(v) for v in variants]
    digests += [digest(x, {"k": np.zeros(3)}), digest(x, {"k": np.ones(3)})]
    assert len(set(digests)) == len(digests)


def test_ranges_merge_only_when_they_adjoin():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    a, b, c = (streamed({"x": x}, i, j, [10]) for i, j in [(0, 20), (20, 30), (31, 50)])
    Fingerprint.merge([a, b])
    with pytest.raises(ValueError, match="do not follow"):
        Fingerprint.merge([a, c])
    with pytest.raises(ValueError, match="has no root"):
        b.hexdigest()
    with pytest.raises(ValueError, match="different inputs"):
        Fingerprint.merge([a, streamed({"y": x}, 20, 30, [10])])
