"""The results store: save and load round trip, atomic writes, refused stores."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import onnx_state
from onnx_state.errors import InputError, StoreError
from tests.reference import assert_states


def test_save_and_load_round_trip(net, tmp_path):
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], labels=np.zeros(53, int))
    a.save(tmp_path / "r.zarr")
    b = onnx_state.Analysis.load(tmp_path / "r.zarr")
    assert b.to_dict() == a.to_dict()
    for la, lb in zip(a.layers, b.layers):
        assert_states(lb, la.state_ids(), la.counts())
    assert a.layers == b.layers  # equality compares the states too
    other = dataclasses.replace(a.layers[0], states=b.layers[1].states)
    assert other != a.layers[0]
    with pytest.raises(InputError, match="already exists"):
        a.save(tmp_path / "r.zarr")
    a.save(tmp_path / "r.zarr", overwrite=True)


def test_interrupted_save_leaves_nothing_that_loads(net, tmp_path, monkeypatch):
    import zarr

    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    # dies mid-write, once the group exists: at the first array of the first layer
    monkeypatch.setattr(zarr.Group, "create_array", boom)
    with pytest.raises(KeyboardInterrupt):
        a.save(tmp_path / "r.zarr")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_foreign_stores_are_refused(net, tmp_path):
    import zarr

    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to="Conv").save(tmp_path / "ok.zarr")
    shutil.copytree(tmp_path / "ok.zarr", tmp_path / "partial.zarr")
    g = zarr.open_group(str(tmp_path / "partial.zarr"), mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        onnx_state.Analysis.load(tmp_path / "partial.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an onnx_state results store"):
        onnx_state.Analysis.load(tmp_path / "other.zarr")
    g = zarr.open_group(str(tmp_path / "ok.zarr"), mode="r+")
    g.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99"):
        onnx_state.Analysis.load(tmp_path / "ok.zarr")
    with pytest.raises(StoreError, match="does not exist"):
        onnx_state.Analysis.load(tmp_path / "missing.zarr")
