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
