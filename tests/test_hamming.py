"""count.hamming: exact minimum Hamming distances against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_state.count.hamming import HammingIndex, to_words
from onnx_state.errors import InputError


def brute_force(query: np.ndarray, reference: np.ndarray, exclude=None) -> np.ndarray:
    """Min over reference rows of the number of differing bits, by unpacking everything."""
    q = np.unpackbits(query, axis=1)[:, None, :]
    r = np.unpackbits(reference, axis=1)[None, :, :]
    d = (q != r).sum(axis=2)
    if exclude is not None:
        d[np.arange(len(query)), exclude] = 10**9
    return d.min(axis=1)


@pytest.mark.parametrize("width", [1, 2, 7, 8, 9, 17])
@pytest.mark.parametrize("threads", [1, 3])
def test_min_distances_equal_brute_force(width, threads):
    rng = np.random.default_rng(width)
    reference = rng.integers(0, 256, (400, width), dtype=np.uint8)
    # sparse rows make popcount buckets uneven; near copies make small distances
    reference[:100] &= rng.integers(0, 256, (100, width), dtype=np.uint8)
    query = rng.integers(0, 256, (700, width), dtype=np.uint8)
    query[:200] = reference[rng.integers(0, 400, 200)]
    query[200:300] = reference[rng.integers(0, 400, 100)] ^ (1 << rng.integers(0, 8, (100, 1)))
    index = HammingIndex(reference)
    got = index.min_distances(query, threads=threads)
    assert got.dtype == np.int64
    assert np.array_equal(got, brute_force(query, reference))


def test_leave_one_out_skips_exactly_the_named_row():
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (300, 3), dtype=np.uint8)
    reference[10] = reference[20]  # a duplicate: excluding one leaves the other at 0
    index = HammingIndex(reference)
    own = np.arange(300)
    got = index.min_distances(reference, threads=2, exclude=own)
    assert np.array_equal(got, brute_force(reference, reference, own))
    assert got[10] == got[20] == 0
    none = index.min_distances(reference, exclude=np.full(300, -1))
    assert not none.any()


def test_empty_and_single_references():
    q = np.array([[0b1011], [0]], dtype=np.uint8)
    assert np.array_equal(HammingIndex(np.zeros((0, 1), np.uint8)).min_distances(q), [65, 65])
    one = HammingIndex(np.array([[0b0001]], dtype=np.uint8))
    assert np.array_equal(one.min_distances(q), [2, 1])
    assert np.array_equal(one.min_distances(q[:1], exclude=np.array([0])), [65])


def test_words_pad_with_zeros_and_widths_must_match():
    ids = np.arange(18, dtype=np.uint8).reshape(2, 9)
    words = to_words(ids)
    assert words.shape == (2, 2) and words.dtype == np.uint64
    assert np.array_equal(words.view(np.uint8).reshape(2, 16)[:, :9], ids)
    assert not words.view(np.uint8).reshape(2, 16)[:, 9:].any()
    with pytest.raises(InputError, match="bytes"):
        HammingIndex(ids).min_distances(ids[:, :3])


def test_all_ones_rows_of_64_neurons_and_excluded_duplicates():
    rng = np.random.default_rng(9)
    reference = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    reference[0] = 255  # all 64 neurons on
    reference[1] = 255
    reference[1, 3] = 0xFE  # one bit from row 0
    index = HammingIndex(reference)
    query = reference[:2].copy()
    assert index.min_distances(query).tolist() == [0, 0]
    own = index.min_distances(query, exclude=np.array([0, 1]))
    assert np.array_equal(own, brute_force(query, reference, np.array([0, 1])))
    assert own.tolist() == [1, 1]
    queries = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    queries[:50] = reference ^ (1 << rng.integers(0, 8, (50, 8))).astype(np.uint8)
    assert np.array_equal(index.min_distances(queries), brute_force(queries, reference))
