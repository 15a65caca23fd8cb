"""results: a layer's states are sorted only when asked, and metrics do not depend on it."""

from __future__ import annotations

import itertools

import numpy as np

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
