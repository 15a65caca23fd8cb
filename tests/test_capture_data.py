"""capture.data: input checks against the model, every data source, data fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_state
from onnx_state.errors import InputError
from tests.models import conv_net, int_data


def test_every_data_source_gives_the_same_result(net, tmp_path):
    import zarr

    model, _, x, _ = net
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "d.npz", inputs=x, other=x[:3])
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(10, 3, 8, 8))
    sources = [
        x,
        {"x": x},
        tmp_path / "x.npy",
        f"{tmp_path / 'd.npz'}:inputs",
        str(tmp_path / "x.zarr"),
        zarr.open_array(str(tmp_path / "x.zarr")),
        (x[i : i + 9] for i in range(0, len(x), 9)),
        [{"x": x[:30]}, {"x": x[30:]}],
    ]
    results = [onnx_state.analyze(model, s, attach_to="Conv", batch_size=11) for s in sources]
    first = results[0]
    for r in results[1:]:
        np.testing.assert_array_equal(r.layers[0].counts(), first.layers[0].counts())
        assert r.data_fingerprint == first.data_fingerprint
        assert r.n_samples == 53


def test_iterators_that_reuse_one_buffer_are_counted_and_fingerprinted_right():
    model, _ = conv_net()
    x = int_data(40)
    buffer = np.empty((8, 3, 8, 8), np.float32)

    def reuse():
        for i in range(0, 40, 8):
            buffer[:] = x[i : i + 8]
            yield buffer

    a = onnx_state.analyze(model, reuse(), attach_to="Conv")
    b = onnx_state.analyze(model, x, attach_to="Conv", batch_size=8)
    assert a.data_fingerprint == b.data_fingerprint
    np.testing.assert_array_equal(a.layers[0].counts(), b.layers[0].counts())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"image": np.zeros((2, 3, 8, 8), np.float32)},
            "missing input(s) x; unknown input(s) image",
        ),
        (np.zeros((2, 3, 8), np.float32), "rank 3"),
        (
            np.zeros((2, 1, 8, 8), np.float32),
            "samples of shape (1, 8, 8) but the model expects (N, 3, 8, 8)",
        ),
        (np.zeros((2, 3, 8, 8), np.float64), "float64 but the model expects float32"),
        (np.zeros((0, 3, 8, 8), np.float32), "no samples"),
        ([], "no batches"),
        ({}, "data dict is empty"),
        ([np.zeros((0, 3, 8, 8), np.float32)], "only empty ones"),
        (42, "cannot read data of type int"),
    ],
)
def test_input_mismatches_say_exactly_what_is_wrong(net, data, message):
    model = net[0]
    with pytest.raises(InputError) as err:
        onnx_state.analyze(model, data, attach_to="Conv")
    assert message in str(err.value)


def test_pickled_npz_is_refused(tmp_path, net):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="object arrays are refused"):
        onnx_state.analyze(net[0], tmp_path / "o.npy", attach_to="Conv")


class _Chunked:
    """An array stored in chunks of *chunk* samples that records every read; a read that
    touches the chunk holding a sample in *bad* fails (a corrupt chunk, as zarr meets it)."""

    def __init__(self, x: np.ndarray, chunk: int, bad: range = range(0)) -> None:
        self.x, self.chunks, self.bad = x, (chunk, *x.shape[1:]), bad
        self.shape, self.dtype = x.shape, x.dtype
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b, _ = rows.indices(len(self.x))
        chunk = self.chunks[0]
        if any(a // chunk <= i // chunk <= (b - 1) // chunk for i in self.bad):
            raise ValueError("checksum mismatch")
        self.reads.append((a, b))
        return self.x[a:b]


@pytest.mark.parametrize("chunk", [1, 7, 10, 25, 200])
@pytest.mark.parametrize("batch", [3, 10, 11, 40])
def test_chunked_data_is_read_once_per_sample_in_batches_equal_to_the_rows(chunk, batch):
    from onnx_state.capture.data import _Blocks

    x = np.arange(97 * 2, dtype=np.float32).reshape(97, 2)
    array = _Chunked(x, chunk)
    blocks = _Blocks(array, len(x))
    for a in range(0, len(x), batch):
        rows = slice(a, min(len(x), a + batch))
        got = blocks.read(rows)
        np.testing.assert_array_equal(got, x[rows])
        assert got.flags.c_contiguous
    # every sample decoded once; each read ends at a chunk's end (or the data's end)
    assert sum(b - a for a, b in array.reads) == len(x)
    assert all(b % chunk == 0 or b == len(x) for _, b in array.reads)


def test_a_chunk_too_big_to_keep_is_read_batch_by_batch(monkeypatch):
    from onnx_state.capture import data

    monkeypatch.setattr(data, "BLOCK_BYTES", 8 * 50 - 1)  # one chunk of 50 two-float samples
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    array = _Chunked(x, 50)
    blocks = data._Blocks(array, len(x))
    for a in range(0, 100, 30):
        np.testing.assert_array_equal(blocks.read(slice(a, min(100, a + 30))), x[a : a + 30])
    assert array.reads == [(0, 30), (30, 60), (60, 90), (90, 100)]


@pytest.mark.parametrize(("chunk", "batch"), [(1, "22..33"), (10, "11..22"), (64, "0..1")])
def test_a_bad_chunk_names_the_first_batch_that_needs_it(net, chunk, batch):
    model, _, x, _ = net
    # (read batch by batch it fails there too; 0..1 is the first sample's check of the data)
    array = _Chunked(x, chunk, bad=range(23, 24))
    with pytest.raises(InputError, match=rf"^cannot read samples {batch} of the data: checksum"):
        onnx_state.analyze(model, array, attach_to="Conv", batch_size=11)


def test_inputs_without_chunks_are_read_as_before(net):
    # (lists and other array-likes without a numpy dtype, e.g. torch tensors, are read as
    # they were: only chunked arrays are read by blocks)
    from onnx_state.capture.data import _Blocks

    x = [[1.0, 2.0]] * 5
    blocks = _Blocks(x, 5)
    np.testing.assert_array_equal(blocks.read(slice(0, 2)), np.asarray(x[:2]))
    torch = pytest.importorskip("torch")
    model, _, data, _ = net
    given = onnx_state.analyze(model, torch.from_numpy(data), attach_to="Conv", batch_size=11)
    direct = onnx_state.analyze(model, data, attach_to="Conv", batch_size=11)
    np.testing.assert_array_equal(given.layers[0].counts(), direct.layers[0].counts())


def test_a_batch_read_from_a_block_is_its_own_copy():
    from onnx_state.capture.data import _Blocks

    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    blocks = _Blocks(_Chunked(x, 25), 50)
    first = blocks.read(slice(0, 10))
    assert first.base is None or first.base.size == first.size  # not a view of the block
    whole = _Blocks(_Chunked(x, 25), 50).read(slice(0, 25))  # the block is the batch
    np.testing.assert_array_equal(whole, x[:25])
    last = blocks.read(slice(10, 25))  # the block's last batch: the block is let go
    np.testing.assert_array_equal(last, x[10:25])
    assert blocks.block is None
    np.testing.assert_array_equal(blocks.read(slice(25, 35)), x[25:35])
