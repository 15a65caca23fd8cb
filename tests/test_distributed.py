"""analyze, audit and compare on a local Dask cluster of two worker processes: every figure
equals a single-process run's (==), for zarr with uneven chunks, .npy, in-memory and dask
data; a worker killed mid-run; refusals; the CLI.

onnxruntime's float results may depend on its thread count, so the single-process runs
use one thread, as each worker here does.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import onnx_state
from onnx_state.audit import audit
from onnx_state.compare import compare
from onnx_state.distributed import NO_ITERABLES, WORKER_ENVIRON, Table, local_cluster, plan_ranges
from onnx_state.errors import ArgumentError, InputError, MissingExtraError
from tests.cli import run_cli

N = 600  # digits used: enough for several ranges, little time
BATCH = 40


@pytest.fixture(scope="module")
def client():
    """One cluster for the whole module: two worker processes of one thread each."""
    distributed = pytest.importorskip("distributed")
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


def _malloc_environ() -> dict[str, str | None]:
    """The malloc settings of the process this runs in (a module function, so that
    client.run runs it on the worker rather than pickling this process's os.environ)."""
    return {k: os.environ.get(k) for k in WORKER_ENVIRON}


def test_workers_started_for_a_call_get_large_malloc_thresholds(client, monkeypatch):
    distributed = pytest.importorskip("distributed")
    # (Dask's own default, MALLOC_TRIM_THRESHOLD_=65536, cost one worker 9 % on LeNet-5)
    ours = {k: str(v) for k, v in WORKER_ENVIRON.items()}
    assert list(client.run(_malloc_environ).values()) == [ours, ours]
    # ... even after a plain Dask cluster left its own value in os.environ; and this
    # process's environment is left as it was
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with local_cluster(1) as cluster, distributed.Client(cluster) as one:
        assert list(one.run(_malloc_environ).values()) == [ours]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


@pytest.fixture(scope="module")
def digits(bundled):
    model, x, y = bundled
    return model, np.ascontiguousarray(x[:N]), np.ascontiguousarray(y[:N])


@pytest.mark.parametrize("threads", [1, 3])
def test_a_worker_counts_on_at_most_its_own_threads(monkeypatch, bundled, threads):
    # On a machine of 64 cores shared by one-thread workers, each worker planned with all 64
    # and started 16 counting threads of its own.
    from onnx_state.analysis import instrument_on_worker
    from onnx_state.capture import Instrumented
    from onnx_state.count import engine

    monkeypatch.setattr(engine, "available_cpus", lambda: 64)
    model = str(bundled[0])
    assert Instrumented(model, threads=1).plan.counting_threads == 16  # one process: all spare
    sha = Instrumented(model).sha256
    selection = (None, (), "after", None, False, False, False)
    inst, used = instrument_on_worker(model, sha, selection, (None, None, "all"), None, threads)
    assert (inst.plan.overlap, inst.plan.counting_threads, used) == (True, threads, threads)


def zarr_array(path: Path, x: np.ndarray, chunk: int) -> str:
    import zarr

    z = zarr.create_array(str(path), shape=x.shape, chunks=(chunk, *x.shape[1:]), dtype=x.dtype)
    z[:] = x
    return str(path)


def same(a: dict, b: dict) -> bool:
    """Equal but for the run record, whose threads differ (1 here, the worker's there)."""
    return {k: v for k, v in a.items() if k != "run"} == {k: v for k, v in b.items() if k != "run"}


def assert_same_analysis(a: onnx_state.Analysis, b: onnx_state.Analysis) -> None:
    assert same(a.to_dict(), b.to_dict())  # counts, entropies, fingerprint, accuracy, parity
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(la.state_ids(), lb.state_ids())
        assert np.array_equal(la.counts(), lb.counts())
        assert la.entropy() == lb.entropy() and la.nan_count == lb.nan_count


# -- ranges ---------------------------------------------------------------------------------
def test_ranges_are_whole_batches_that_end_on_chunk_ends_where_they_can():
    # chunks of 200, batches of 50: every range ends at a chunk end
    assert plan_ranges(1000, 50, range(200, 1001, 200), 2) == [
        (0, 200), (200, 400), (400, 600), (600, 800), (800, 1000),
    ]  # fmt: skip
    # chunks of 130 (uneven against batches of 40): ends rounded down to whole batches
    # (120, 240, 360, 520, 600), each the one nearest to 600 / 16 samples on
    assert plan_ranges(600, 40, range(130, 601, 130), 2) == [
        (0, 120), (120, 240), (240, 360), (360, 520), (520, 600),
    ]  # fmt: skip
    # no chunks (in memory): about RANGES_PER_THREAD ranges per thread, whole batches, the
    # last ones shorter: 1000 / 8 = 125 samples (120 the nearest whole batches), then
    # left / 2 (160 / 2: 90), down to a quarter of 125 (31: one batch of 30)
    assert plan_ranges(1000, 30, [], 1) == [
        *[(a, a + 120) for a in range(0, 840, 120)], (840, 930), (930, 960), (960, 990),
        (990, 1000),
    ]  # fmt: skip
    # fewer samples than one batch: one range
    assert plan_ranges(7, 50, [], 4) == [(0, 7)]


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("chunk", [None, 1, 37, 200, 999])
def test_ranges_cover_every_sample_once_in_whole_batches(threads, chunk):
    n, batch = 1000, 40
    edges = [] if chunk is None else list(range(chunk, n + chunk, chunk))
    ranges = plan_ranges(n, batch, edges, threads)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert all(a < b and a % batch == 0 for a, b in ranges)


@pytest.mark.parametrize("neurons", [1, 5, 50, 64, 65, 100, 200])
def test_merged_tables_hold_every_state_with_its_summed_count(neurons):
    rng = np.random.default_rng(neurons)
    width = (neurons + 7) // 8
    parts, expected = [], {}
    for n in (0, 1, 40, 300):
        bits = rng.random((n, neurons)) < 0.1  # few distinct states: many repeat
        ids = np.packbits(bits, axis=1, bitorder="little").reshape(n, width)
        counts = rng.integers(1, 5, n)
        c = onnx_state.StateCounter(neurons)
        c.update(np.repeat(bits, counts, axis=0).astype(np.float32), axis=1)
        parts.append(Table.of(c))
        for row, k in zip(ids, counts):
            expected[row.tobytes()] = expected.get(row.tobytes(), 0) + int(k)
    merged = Table.merge(parts)
    keys = sorted(expected, key=lambda b: int.from_bytes(b, "little"))
    assert [row.tobytes() for row in merged.ids] == keys
    assert merged.counts.tolist() == [expected[k] for k in keys]
    assert (
        merged.neurons == neurons
        and Table.merge([Table.of(onnx_state.StateCounter())]).neurons == 0
    )


# -- equal to one process -------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [130, 200, 37])
def test_analyze_on_zarr_equals_one_process_for_any_chunking(client, digits, tmp_path, chunk):
    model, x, y = digits
    local = onnx_state.analyze(model, x, labels=y, batch_size=BATCH, threads=1)
    data = zarr_array(tmp_path / "x.zarr", x, chunk)
    ran = onnx_state.analyze(model, data, labels=y, batch_size=BATCH, cluster=client)
    assert_same_analysis(ran, local)
    assert ran.parity_max_abs_diff == local.parity_max_abs_diff is not None


def test_analyze_on_npy_url_in_memory_and_dask_data_equals_one_process(client, digits, tmp_path):
    da = pytest.importorskip("dask.array")
    model, x, y = digits
    local = onnx_state.analyze(model, x, labels=y, batch_size=BATCH, threads=1)
    np.save(tmp_path / "x.npy", x)
    uneven = da.from_array(x, chunks=((70, 230, 5, 295), 1, 28, 28))
    url = "file://" + zarr_array(tmp_path / "x.zarr", x, 250)
    for data in (str(tmp_path / "x.npy"), x, {"x": x}, uneven, url):
        ran = onnx_state.analyze(model, data, labels=y, batch_size=BATCH, cluster=client)
        assert_same_analysis(ran, local)


def test_several_inputs_and_a_constant_from_a_zarr_group_equal_one_process(client, tmp_path):
    import zarr

    from examples.two_inputs import build

    build(tmp_path)
    batch = np.load(tmp_path / "batch.npz")
    group = zarr.open_group(str(tmp_path / "inputs.zarr"), mode="w")
    for name, chunk in (("tokens", 70), ("mask", 45)):  # chunk ends differ between inputs
        a = batch[name]
        group.create_array(name, shape=a.shape, chunks=(chunk, *a.shape[1:]), dtype=a.dtype)
        group[name][:] = a
    model, state = tmp_path / "tagger.onnx", {"state": np.load(tmp_path / "state.npy")}
    common = {"attach_to": ["Relu", "embed_tokens"], "batch_size": 20, "constants": state}
    local = onnx_state.analyze(model, tmp_path / "batch.npz", threads=1, **common)
    ran = onnx_state.analyze(model, str(tmp_path / "inputs.zarr"), cluster=client, **common)
    assert_same_analysis(ran, local)


def test_packed_bits_equal_one_process(client, digits):
    model, x, _ = digits
    local = onnx_state.analyze(model, x, batch_size=BATCH, threads=1, pack=True)
    ran = onnx_state.analyze(model, x, batch_size=BATCH, cluster=client, pack=True)
    assert_same_analysis(ran, local)


def test_analyze_saves_the_same_store(client, digits, tmp_path):
    model, x, _ = digits
    local = onnx_state.analyze(model, x, batch_size=BATCH, threads=1)
    onnx_state.analyze(model, x, batch_size=BATCH, cluster=client, checkpoint=tmp_path / "r")
    assert_same_analysis(onnx_state.Analysis.load(tmp_path / "r"), local)


def test_audit_with_a_reference_equals_one_process(client, digits, tmp_path):
    model, x, y = digits
    reference = onnx_state.analyze(model, x[:300], batch_size=BATCH, cluster=client)
    assert_same_analysis(reference, onnx_state.analyze(model, x[:300], batch_size=BATCH,
                                                       threads=1))  # fmt: skip
    shifted = np.ascontiguousarray(x[300:] * 1.5)
    local = audit(model, shifted, reference=reference, labels=y[300:], batch_size=BATCH,
                  threads=1)  # fmt: skip
    data = zarr_array(tmp_path / "new.zarr", shifted, 70)
    ran = audit(model, data, reference=reference, labels=y[300:], batch_size=BATCH,
                cluster=client)  # fmt: skip
    assert same(ran.to_dict(), local.to_dict())
    assert ran.sample_novelty.keys() == local.sample_novelty.keys()
    for name, novelty in local.sample_novelty.items():
        assert np.array_equal(ran.sample_novelty[name], novelty)
    assert any(la.novelty for la in ran.layers)  # the figures compared are not all zero


def test_audit_passes_with_calibration_labels_and_ood_data_equal_one_process(client, digits):
    model, x, y = digits
    reference = onnx_state.analyze(model, x[:200], labels=y[:200], batch_size=BATCH, threads=1)
    common = {"reference": reference, "calibration": x[200:300], "ood_data": x[300:400][::-1] * 3,
              "labels": y[400:], "batch_size": BATCH}  # fmt: skip
    local = audit(model, x[400:], threads=1, **common)
    ran = audit(model, x[400:], cluster=client, **common)
    assert same(ran.to_dict(), local.to_dict())
    for name, d in local.sample_distance.items():
        assert np.array_equal(ran.sample_distance[name], d)
    assert np.array_equal(ran.sample_scores, local.sample_scores)
    assert local.sample_distance and local.detection is not None  # the figures exist
    with pytest.raises(InputError, match="window"):
        audit(model, x[400:], reference=reference, window=50, cluster=client)


def test_compare_in_lock_step_equals_one_process(client, digits, tmp_path):
    model, x, y = digits
    noisy = (x + np.random.default_rng(0).normal(0, 0.05, x.shape)).astype(np.float32)
    local = compare(model, model, x, data_b=noisy, labels=y, batch_size=BATCH, threads=1)
    data_b = zarr_array(tmp_path / "b.zarr", noisy, 90)
    ran = compare(model, model, zarr_array(tmp_path / "a.zarr", x, 130), data_b=data_b,
                  labels=y, batch_size=BATCH, cluster=client)  # fmt: skip
    assert same(ran.to_dict(), local.to_dict())  # float sums too: added in sample order
    assert 0 < ran.pairs[0].state_agreement < 1


# -- faults ---------------------------------------------------------------------------------
def test_a_worker_killed_mid_run_leaves_the_result_exact(client, digits, tmp_path):
    model, x, y = digits
    local = onnx_state.analyze(model, x, labels=y, batch_size=10, threads=1)
    data = zarr_array(tmp_path / "x.zarr", x, 50)
    pids = client.run(os.getpid)
    killed: list[str] = []
    done = threading.Event()

    def kill_one_busy_worker() -> None:
        while not done.is_set():
            busy = [w for w, tasks in client.processing().items() if tasks and w in pids]
            if busy:
                os.kill(pids[busy[0]], 9)
                killed.append(busy[0])
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_busy_worker)
    killer.start()
    try:
        ran = onnx_state.analyze(model, data, labels=y, batch_size=10, cluster=client)
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was killed during the run"
    assert_same_analysis(ran, local)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the next tests
    assert killed[0] not in client.run(os.getpid)


def test_data_every_range_needs_outlives_the_worker_holding_it(client):
    # Audit's reference states reach the workers as one task's result: with its only
    # holder killed, the scheduler runs the task again on the other worker.
    from onnx_state.distributed import _hold

    value = {"conv": (np.arange(12, dtype=np.uint8).reshape(4, 3), None)}
    future = _hold(client, value)
    client.wait_for_workers(2, timeout=60)
    distributed = pytest.importorskip("distributed")
    distributed.wait(future)
    (holder,) = client.who_has(future)[future.key]
    os.kill(client.run(os.getpid)[holder], 9)
    got = future.result(timeout=60)
    assert got.keys() == value.keys()
    np.testing.assert_array_equal(got["conv"][0], value["conv"][0])
    assert holder not in client.who_has(future)[future.key]
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the next tests


def test_bad_data_fails_with_the_one_line_error_of_its_batch(client, digits, tmp_path):
    model, x, _ = digits
    data = Path(zarr_array(tmp_path / "x.zarr", x, 100))
    chunk = next(p for p in (data / "c").rglob("*") if p.is_file() and p.parts[-4] == "4")
    chunk.write_bytes(b"not a chunk")  # samples 400..500
    with pytest.raises(InputError) as one:
        onnx_state.analyze(model, str(data), batch_size=BATCH, threads=1)
    with pytest.raises(InputError) as ran:
        onnx_state.analyze(model, str(data), batch_size=BATCH, cluster=client)
    assert str(ran.value) == str(one.value)
    assert "samples 400..440" in str(ran.value) and "\n" not in str(ran.value)


def test_a_bad_last_chunk_is_named_by_its_short_batch_as_in_one_process(client, digits, tmp_path):
    model, x, _ = digits
    data = Path(zarr_array(tmp_path / "x.zarr", x[:590], 10))  # last batch: 560..590
    chunk = next(p for p in (data / "c").rglob("*") if p.is_file() and p.parts[-4] == "58")
    chunk.write_bytes(b"not a chunk")  # samples 580..590: only the last batch reads them
    with pytest.raises(InputError) as one:
        onnx_state.analyze(model, str(data), batch_size=BATCH, threads=1)
    with pytest.raises(InputError) as ran:
        onnx_state.analyze(model, str(data), batch_size=BATCH, cluster=client)
    assert str(ran.value) == str(one.value)
    assert "samples 560..590 of the data" in str(ran.value)


# -- refusals -------------------------------------------------------------------------------
def test_refusals(client, digits):
    model, x, y = digits
    with pytest.raises(InputError) as exc:
        onnx_state.analyze(model, iter([x[:10], x[10:20]]), cluster=client)
    assert str(exc.value) == NO_ITERABLES
    for bad in ({"checkpoint_every": 2, "checkpoint": "s.zarr"}, {"resume": True,
                "checkpoint": "s.zarr"}, {"keep_outputs": True}):  # fmt: skip
        with pytest.raises(InputError, match="cannot be used with cluster="):
            onnx_state.analyze(model, x, cluster=client, **bad)
    with pytest.raises(InputError, match="got 599 labels for 600 samples"):
        onnx_state.analyze(model, x, labels=y[:-1], cluster=client)
    with pytest.raises(InputError, match="at least 1"):
        onnx_state.analyze(model, x, cluster=0)
    with pytest.raises(ArgumentError, match="cluster must be"):
        onnx_state.analyze(model, x, cluster=2.0)


def test_without_dask_a_cluster_says_which_extra_to_install(monkeypatch, bundled):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    model, x, _ = bundled
    with pytest.raises(MissingExtraError, match=r"onnx-state\[dask\]"):
        onnx_state.analyze(model, x[:10], cluster=2)


# -- the command line -----------------------------------------------------------------------
def test_cli_scheduler_and_workers(client, tmp_path, digits):
    model, x, y = digits
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["analyze", model, "--data", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
            "--batch-size", BATCH, "--json", "--threads", 1]  # fmt: skip
    local = run_cli(*args)
    assert local.exit_code == 0, local.output
    ran = run_cli(*args, "--scheduler", client.scheduler.address)
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output) == json.loads(local.output)
    both = run_cli(*args, "--scheduler", client.scheduler.address, "--workers", 2)
    assert both.exit_code == 2 and "not both" in both.output
    assert len(both.output.strip().splitlines()) == 1
    audited = run_cli("audit", model, "--data", tmp_path / "x.npy", "--batch-size", BATCH,
                      "--json", "--scheduler", client.scheduler.address)  # fmt: skip
    assert audited.exit_code == 0, audited.output
    assert json.loads(audited.output)["n_samples"] == N
    compared = run_cli("compare", model, model, "--data", tmp_path / "x.npy", "--json",
                       "--workers", 1)  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.output)["pairs"][0]["state_agreement"] == 1.0
