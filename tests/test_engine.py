"""The parallel counting engine and the thread plan: results identical to one thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import onnx_state
from onnx_state.count import DENSE_NEURONS, ParallelCounting, StateCounter, count_states, engine
from onnx_state.count import counter as counter_module
from onnx_state.errors import InputError
from tests.models import conv_net, conv_net_reference, int_data
from tests.reference import assert_states, reference_counts, reference_states


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


def count_and_check(data, keys, workers: int) -> dict:
    """Count *data* (captured tensors per batch) through the engine on *workers* threads,
    check every layer against the numpy reference, and return the counters."""
    counters = {key: StateCounter() for key in keys}
    with ParallelCounting(counters, workers) as counting:
        for captured in data:
            counting({}, captured)
    # Complete once the block ends: no call is needed to fold the shards back.
    for tensor, axis in keys:
        expected = reference_counts(np.concatenate([c[tensor] for c in data]), axis)
        assert_states(counters[(tensor, axis)], *expected)
    return counters


def counters_by_width(updates) -> dict[int, set[int]]:
    """The counters that got a layer's states, by the layer's neurons."""
    by_width: dict[int, set[int]] = {}
    for counter, _, width in updates:
        by_width.setdefault(width, set()).add(counter)
    return by_width


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Split even these small tensors, so the shard path is exercised."""
    monkeypatch.setattr(engine, "_MIN_PIECE_VALUES", 1)
    monkeypatch.setattr(engine, "_CUT_SHARE", 0.0)


@pytest.fixture
def big_tables(monkeypatch):
    """Treat every hash table as too big to cut into shards."""
    monkeypatch.setattr(counter_module, "SHARD_TABLE_BYTES", 0)


@pytest.fixture
def updates(monkeypatch):
    """Every StateCounter.update call as (counter id, thread name, neurons of the batch)."""
    seen: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    original = StateCounter.update

    def update(self, x, axis=1):
        with lock:
            seen.append((id(self), threading.current_thread().name, np.shape(x)[axis]))
        return original(self, x, axis)

    monkeypatch.setattr(StateCounter, "update", update)
    # Each piece takes a moment, as real ones do: else the calling thread may count every
    # piece of these tiny batches before another thread wakes (one run in ~12 did), and a
    # test of which counters got pieces would fail by chance.
    count = ParallelCounting._count

    def slow_count(self, worker, piece):
        time.sleep(0.001)
        count(self, worker, piece)

    monkeypatch.setattr(ParallelCounting, "_count", slow_count)
    return seen


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_counting_equals_the_reference(tiny_pieces, big_tables, updates, workers):
    data = batches(workers)
    counters = count_and_check(data, KEYS, workers)
    total = sum(c["dense"].shape[0] * 9 for c in data)
    assert counters[("dense", 1)].state_count == total
    # Only the dense-table layer is cut into shards (those of hash tables cost memory and a
    # merge): its states went into more than one counter exactly when threads share it.
    by_width = counters_by_width(updates)
    assert (len(by_width[6]) > 1) == (workers > 1)
    assert len(by_width[30]) == len(by_width[70]) == 1
    assert 6 <= DENSE_NEURONS < 30


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_small_hash_tables_are_cut_into_shards_too(tiny_pieces, updates, workers):
    # Wide layers whose states repeat (MatMul outputs) keep small tables: every thread
    # helps count them, and the shards merge exactly.
    count_and_check(batches(workers + 10), KEYS, workers)
    by_width = counters_by_width(updates)
    assert all((len(by_width[w]) > 1) == (workers > 1) for w in (6, 30, 70))


@pytest.mark.parametrize("workers", [2, 3])
def test_many_layers_share_out_whole_and_only_a_dominant_one_is_cut(monkeypatch, updates, workers):
    # Cutting a layer costs shards and a merge; with many layers a batch, whole layers keep
    # every thread busy. Here: twelve equal layers, and one over half a thread's share.
    monkeypatch.setattr(engine, "_MIN_PIECE_VALUES", 1)
    rng = np.random.default_rng(workers)
    data = [{f"t{i}": rng.choice([-1.0, 1.0], (20 + b, 4, 3)).astype(np.float32)
             for i in range(12)} for b in range(3)]  # fmt: skip
    data = [{**d, "big": rng.choice([-1.0, 1.0], (20 + b, 5, 400)).astype(np.float32)}
            for b, d in enumerate(data)]  # fmt: skip
    count_and_check(data, [(name, 1) for name in data[0]], workers)
    by_width = counters_by_width(updates)
    assert len(by_width[4]) == 12  # each small layer went to its own counter only
    assert len(by_width[5]) > 1  # the big one was shared (shards)


def test_recording_counters_are_never_split(tiny_pieces):
    data = batches(7)
    counters = {("dense", 1): StateCounter(record=True)}
    with ParallelCounting(counters, 3) as counting:
        for captured in data:
            counting({}, captured)
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
        with pytest.raises(InputError, match="6 neurons"), ParallelCounting(counters, 2) as c:
            c({}, good)
            c({}, bad)


def test_a_failing_thread_does_not_leave_others_counting(tiny_pieces, monkeypatch):
    finished = threading.Event()
    original = StateCounter.update

    def update(self, x, axis=1):
        if self.neurons == 30:  # the hashed layer fails soon after the wide one started
            time.sleep(0.05)
            raise MemoryError("out of memory")
        if self.neurons == 70:
            time.sleep(0.2)
            finished.set()
        return original(self, x, axis)

    monkeypatch.setattr(StateCounter, "update", update)
    counters = {key: StateCounter(n) for key, n in zip(KEYS, (6, 30, 70))}
    with pytest.raises(MemoryError), ParallelCounting(counters, 3) as counting:
        counting({}, batches(1, 1)[0])
    assert finished.is_set()  # returned only after every thread was done with its counter


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
def test_thread_plan(monkeypatch, providers, threads, cpus, plan):
    monkeypatch.setattr(engine, "available_cpus", lambda: cpus)
    got = engine.plan_threads(providers, threads)
    assert (got.overlap, got.counting_threads) == plan
    on_cpu = providers is None or providers[0] == "CPUExecutionProvider"
    spin = {"session.force_spinning_stop": "1"} if on_cpu else {
        "session.intra_op.allow_spinning": "0"
    }  # fmt: skip
    assert got.session_config() == spin


@pytest.mark.parametrize(
    ("threads", "most", "plan"),
    [(1, 1, (True, 1)), (None, 3, (False, 3)), (4, 2, (True, 2)), (1, 99, (True, 16))],
)
def test_counting_threads_can_be_capped(monkeypatch, threads, most, plan):
    # (a Dask worker caps them at its own threads, whatever the machine has)
    monkeypatch.setattr(engine, "available_cpus", lambda: 64)
    got = engine.plan_threads(None, threads, most)
    assert (got.overlap, got.counting_threads) == plan


@pytest.mark.parametrize(
    ("threads", "cpus", "overlap"),
    [(2, 2, False), (1, 2, True), (1, 3, True)],  # inline on 2; overlapped on 1; on 2
)
def test_inline_and_overlapped_counting_agree_with_the_reference(
    monkeypatch, tiny_pieces, threads, cpus, overlap
):
    monkeypatch.setattr(engine, "available_cpus", lambda: cpus)
    where: set[bool] = set()
    original = ParallelCounting.__call__

    def call(self, batch, captured):
        where.add(threading.current_thread() is threading.main_thread())
        return original(self, batch, captured)

    monkeypatch.setattr(ParallelCounting, "__call__", call)
    model, params = conv_net()
    x = int_data(41)
    ref = conv_net_reference(x, params)
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], batch_size=6, threads=threads)
    assert where == {not overlap}  # overlapped counting runs beside the main thread
    for result, act in [(a.layer("conv"), ref["c"]), (a.layer("fc"), ref["y"])]:
        assert_states(result, *reference_counts(act, 1))


def test_an_unsplit_batch_of_another_width_is_refused_at_once(tiny_pieces):
    counters = {("dense", 1): StateCounter()}
    small = {"dense": np.ones((1, 5, 3, 3), np.float32)}  # one sample: never split
    with ParallelCounting(counters, 2) as counting:
        counting({}, {"dense": np.ones((8, 6, 3, 3), np.float32)})  # split: maybe all shards
        with pytest.raises(InputError, match="6 neurons but the batch has 5"):
            counting({}, small)


@pytest.mark.parametrize("neurons", [6, 40, 90])  # dense, hashed one-word, wide tables
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_count_states_on_threads_equals_the_reference(tiny_pieces, updates, neurons, threads):
    rng = np.random.default_rng(neurons + threads)
    x = rng.choice([-1.0, 0.0, 1.0], (23, neurons, 4))
    c = count_states(x, threads=threads)
    assert_states(c, *reference_counts(x, 1))
    # A lone layer is cut into shards whatever its table, so that every thread helps.
    assert (len({counter for counter, _, _ in updates}) > 1) == (threads > 1)
    merged = StateCounter().merge(c)
    assert_states(merged, *reference_counts(x, 1))
    with pytest.raises(InputError, match="at least 1"):
        count_states(x, threads=0)


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
    assert engine.available_cpus(str(f)) == expected
    assert engine.available_cpus(str(tmp_path / "missing")) == affinity


def test_a_lone_big_hash_table_layer_is_counted_whole_unless_asked(
    tiny_pieces, big_tables, updates
):
    # Shards of a hash table each grow towards all of its distinct states: an analysis of
    # one wide layer keeps one table; count_states (one array, shard_any) cuts it.
    x = np.random.default_rng(5).choice([-1.0, 0.0, 1.0], (30, 40, 4))
    counter = StateCounter()
    with ParallelCounting({("x", 1): counter}, 2) as counting:
        counting({}, {"x": x})
    assert len({c for c, _, _ in updates}) == 1
    assert_states(counter, *reference_counts(x, 1))
    updates.clear()
    assert_states(count_states(x, threads=2), *reference_counts(x, 1))
    assert len({c for c, _, _ in updates}) > 1


@pytest.mark.parametrize("workers", [1, 3])
def test_shards_keep_the_zero_point_and_the_packed_input(tiny_pieces, updates, workers):
    # Dense layers are cut into shards: each shard must threshold and read as its layer does.
    rng = np.random.default_rng(workers)
    q = [rng.integers(-128, 128, (16, 5, 3), dtype=np.int8) for _ in range(3)]
    zp = np.array([-128, -1, 0, 5, 127], np.int8)
    bits = [rng.random((16, 3, 13)) < 0.4 for _ in range(3)]
    counters = {
        ("q", 1): StateCounter(zero_point=zp),
        ("bits", 2): StateCounter(13, packed=True),
    }
    with ParallelCounting(counters, workers) as counting:
        for a, b in zip(q, bits):
            counting({}, {"q": a, "bits": np.packbits(b, axis=2, bitorder="little")})
    assert_states(counters[("q", 1)], *reference_counts(np.concatenate(q), 1, zp))
    assert_states(counters[("bits", 2)], *reference_counts(np.concatenate(bits), 2))
    assert (len({c for c, _, _ in updates}) > 2) == (workers > 1)


def test_a_packed_batch_of_another_width_is_refused(tiny_pieces):
    counters = {("bits", 1): StateCounter(13, packed=True)}
    with pytest.raises(InputError, match="is 2 bytes"), ParallelCounting(counters, 2) as counting:
        counting({}, {"bits": np.zeros((64, 3), np.uint8)})


def test_count_states_takes_array_likes_without_a_numpy_size():
    # (torch's .size is a method: the share of a batch is taken from the arrays made of it)
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).normal(size=(40, 6, 5)).astype(np.float32)
    for threads in (1, 2):
        got = count_states(torch.from_numpy(x), axis=1, threads=threads)
        assert_states(got, *reference_counts(x, 1))
