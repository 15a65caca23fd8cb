"""Counting on several threads (LayerCounting) and the inline/overlap plan give exact results."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_state
from onnx_state import analysis, fanout
from onnx_state.counter import DENSE_NEURONS, StateCounter
from onnx_state.errors import InputError
from tests.models import conv_net, conv_net_reference, int_data
from tests.reference import reference_counts, reference_states


def batches(seed: int, n_batches: int = 4):
    """Captured tensors per batch: a dense-table layer, a hashed one and a wide one."""
    rng = np.random.default_rng(seed)
    values = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    out = []
    for b in range(n_batches):
        n = 9 + b  # uneven batch sizes
        out.append(
            {
                "dense": rng.choice(values, (n, 6, 3, 3)),  # neurons on axis 1
                "hashed": rng.choice(values, (n, 4, 30)),  # neurons last
                "wide": rng.choice(values, (n, 70, 2)),
            }
        )
    return out


KEYS = [("dense", 1), ("hashed", -1), ("wide", 1)]


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Split even these small tensors, so the shard path is exercised."""
    monkeypatch.setattr(fanout, "_MIN_PIECE_VALUES", 1)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_layer_counting_equals_the_reference(tiny_pieces, workers):
    data = batches(workers)
    counters = {key: StateCounter() for key in KEYS}
    with fanout.LayerCounting(counters, workers) as counting:
        for captured in data:
            counting({}, captured)
        counting.finish()
        pieces = counting._pieces(data[0])
    for tensor, axis in KEYS:
        ids, counts = reference_counts(np.concatenate([c[tensor] for c in data]), axis)
        np.testing.assert_array_equal(counters[(tensor, axis)].state_ids(), ids)
        np.testing.assert_array_equal(counters[(tensor, axis)].counts(), counts)
    total = sum(c["dense"].shape[0] * 9 for c in data)
    assert counters[("dense", 1)].state_count == total
    split = [key for key, _, _, is_split in pieces if is_split]
    # Only the dense-table layer is cut (shards of hashed layers would be costly to merge).
    assert split == ([("dense", 1)] * len(split)) and (len(split) > 1) == (workers > 1)
    assert 6 <= DENSE_NEURONS < 30


def test_recording_counters_are_never_split(tiny_pieces):
    data = batches(7)
    counters = {("dense", 1): StateCounter(record=True)}
    with fanout.LayerCounting(counters, 3) as counting:
        for captured in data:
            counting({}, captured)
        counting.finish()
    raw = np.asarray(counters[("dense", 1)].raw_states[:])
    expected = np.concatenate([reference_states(c["dense"], 1) for c in data])
    np.testing.assert_array_equal(raw, expected)  # every state, in order


@pytest.mark.parametrize("known", [True, False])
def test_an_error_in_any_thread_reaches_the_caller(tiny_pieces, known):
    # A batch of 5 neurons after 6: whichever thread takes a piece must refuse it.
    counters = {("dense", 1): StateCounter(6 if known else None)}
    good = {"dense": np.ones((8, 6, 3, 3), np.float32)}
    bad = {"dense": np.ones((8, 5, 3, 3), np.float32)}
    for _ in range(20):  # any interleaving of the two threads
        with fanout.LayerCounting(counters, 2) as counting:
            counting({}, good)
            with pytest.raises(InputError, match="6 neurons"):
                counting({}, bad)


@pytest.mark.parametrize(
    ("providers", "threads", "cpus", "plan"),
    [
        (None, None, 2, (False, 2)),  # onnxruntime on every core: count between runs
        (None, 2, 2, (False, 2)),
        (None, 1, 2, (True, 1)),  # a spare core: count beside onnxruntime
        (None, 4, 16, (True, 12)),
        (None, None, 64, (False, 16)),  # capped: tiny pieces, a shard per thread
        (["CPUExecutionProvider"], 64, 8, (False, 8)),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], None, 8, (True, 7)),
    ],
)
def test_counting_plan(monkeypatch, providers, threads, cpus, plan):
    monkeypatch.setattr(analysis, "_available_cpus", lambda: cpus)
    assert analysis.counting_plan(providers, threads) == plan


@pytest.mark.parametrize(
    ("threads", "cpus"),
    [(2, 2), (1, 2), (1, 3)],  # inline on 2 threads; overlapped on 1; overlapped on 2
)
def test_inline_and_overlapped_counting_agree_with_the_reference(
    monkeypatch, tiny_pieces, threads, cpus
):
    monkeypatch.setattr(analysis, "_available_cpus", lambda: cpus)
    model, params = conv_net()
    x = int_data(41)
    ref = conv_net_reference(x, params)
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], batch_size=6, threads=threads)
    conv, fc = a.layer("conv"), a.layer("fc")
    for result, act in [(conv, ref["c"]), (fc, ref["y"])]:
        ids, counts = reference_counts(act, 1)
        np.testing.assert_array_equal(result.state_ids(), ids)
        np.testing.assert_array_equal(result.counts(), counts)


def test_pieces_counted_into_a_shard_are_folded_back_exactly(tiny_pieces):
    import queue
    import threading

    data = batches(3)
    counters = {key: StateCounter() for key in KEYS}
    with fanout.LayerCounting(counters, 2) as counting:
        for captured in data:  # every piece through worker 1, i.e. into its shards
            work = queue.SimpleQueue()
            for piece in [*counting._pieces(captured), None]:
                work.put(piece)
            counting._work(1, work, threading.Event())
        assert counters[("dense", 1)].state_count == 0  # all of it sits in a shard
        counting.finish()
    for tensor, axis in KEYS:
        ids, counts = reference_counts(np.concatenate([c[tensor] for c in data]), axis)
        np.testing.assert_array_equal(counters[(tensor, axis)].state_ids(), ids)
        np.testing.assert_array_equal(counters[(tensor, axis)].counts(), counts)


def test_an_unsplit_batch_of_another_width_is_refused_at_once(tiny_pieces):
    counters = {("dense", 1): StateCounter()}
    small = {"dense": np.ones((1, 5, 3, 3), np.float32)}  # one sample: never split
    with fanout.LayerCounting(counters, 2) as counting:
        counting({}, {"dense": np.ones((8, 6, 3, 3), np.float32)})  # split: maybe all shards
        # on the calling thread, whichever thread counted the first batch
        with pytest.raises(InputError, match="6 neurons but the batch has 5"):
            counting._pieces(small)
        with pytest.raises(InputError, match="6 neurons but the batch has 5"):
            counting({}, small)


@pytest.mark.parametrize(
    ("text", "cap"), [("max 100000", None), ("250000 100000", 3), ("50000 100000", 1), ("?", None)]
)
def test_available_cpus_follow_a_container_quota(tmp_path, text, cap):
    import os

    f = tmp_path / "cpu.max"
    f.write_text(text + "\n")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    expected = affinity if cap is None else min(affinity, cap)
    assert analysis._available_cpus(str(f)) == expected
    assert analysis._available_cpus(str(tmp_path / "missing")) == affinity
