"""results: a layer's states are sorted only when asked, and metrics do not depend on it."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

import onnx_state
from onnx_state import results


def test_states_are_sorted_only_when_asked_and_metrics_do_not_change(net, monkeypatch):
    import pickle

    sorts = []  # every sort of a result's states, seen from outside

    def sort_states(keys, counts):
        sorts.append(len(keys))
        return original(keys, counts)

    original = results.sort_states
    monkeypatch.setattr(results, "sort_states", sort_states)
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], batch_size=9)
    r = a.layer("fc")
    assert sorts == []  # nothing sorted yet

    def figures(res):
        return (res.entropy(), res.entropy(2), res.efficiency(), res.miller_madow(),
                res.chao_shen(), res.n_unique)  # fmt: skip

    before = figures(r)
    assert sorts == []  # order-free metrics did not sort
    copy = pickle.loads(pickle.dumps(a))  # an unsorted result pickles (Dask, joblib)
    ids, counts = r.state_ids(), r.counts()
    assert sorts != []
    assert all(bytes(p[::-1]) < bytes(q[::-1]) for p, q in itertools.pairwise(ids))
    assert counts.sum() == r.state_count
    # bit-identical, whatever order the counts were in
    assert figures(r) == before == figures(copy.layer("fc"))
    np.testing.assert_array_equal(copy.layer("fc").state_ids(), ids)


def test_dataframe_and_arrow_views(net):
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"])
    frame = a.to_pandas()
    assert list(frame["name"]) == [r.name for r in a.layers]
    assert list(frame["state_count"]) == [r.state_count for r in a.layers]
    assert list(frame["entropy"]) == [r.entropy() for r in a.layers]
    assert "captured" in frame.columns and "firing_counts" not in frame.columns
    for r in a.layers:
        states = r.to_pandas()
        assert isinstance(states, pd.DataFrame) and list(states.columns) == ["state", "count"]
        assert list(states["state"]) == r.state_bytes()
        assert states["count"].tolist() == r.counts().tolist()
        table = r.to_arrow()
        assert isinstance(table, pa.Table) and table.num_rows == r.n_unique
        assert table.schema.field("state").type == pa.binary((r.neurons + 7) // 8)
        assert table.column("state").to_pylist() == r.state_bytes()
        assert table.column("count").to_pylist() == r.counts().tolist()


def test_dataframes_without_pandas_say_which_extra_to_install(net, monkeypatch):
    from onnx_state.errors import MissingExtraError

    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv")
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match=r"onnx-state\[pandas\]"):
        a.to_pandas()
    with pytest.raises(MissingExtraError, match=r"onnx-state\[pandas\]"):
        a.layers[0].to_arrow()
