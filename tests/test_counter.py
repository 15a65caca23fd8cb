"""The Cython state counter equals the plain-numpy reference, whatever the layout or split."""

from __future__ import annotations

import itertools
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_state.count import StateCounter, count_states
from onnx_state.errors import DTypeError, InputError
from tests.reference import assert_states, reference_counts, reference_states, unique_rows

DTYPES = [np.float16, np.float32, np.float64, np.bool_]


@st.composite
def tensors(draw, max_neurons=1100):
    """A random captured tensor: rank 2..4, any neuron axis but 0, with ties at 0 and NaN."""
    rank = draw(st.integers(2, 4))
    axis = draw(st.integers(1, rank - 1))
    neurons = draw(st.sampled_from([1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 129, max_neurons]))
    shape = [draw(st.integers(0, 5))] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    shape[axis] = neurons
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Few distinct values so states repeat; exact zeros and NaN must not fire.
    x = rng.choice(np.array([-1.0, 0.0, 0.5, 2.0, np.nan]), size=shape, p=[0.3, 0.2, 0.2, 0.2, 0.1])
    if dtype is np.bool_:
        x = np.nan_to_num(x) > 0
    x = x.astype(dtype)
    if draw(st.booleans()):  # a non-contiguous view with the same values
        x = np.moveaxis(np.moveaxis(x, axis, -1).copy(), -1, axis)
    return x, axis


@settings(max_examples=150, deadline=None)
@given(tensors(), st.integers(1, 3))
def test_counter_equals_reference(case, threads):
    x, axis = case
    counter = count_states(x, axis, threads=threads)
    ids, counts = reference_counts(x, axis)
    if x.size == 0:
        assert counter.state_count == 0
        return
    assert_states(counter, ids, counts)
    expected_nans = int(np.isnan(x).sum()) if x.dtype != np.bool_ else 0
    assert counter.nan_count == expected_nans


@settings(max_examples=60, deadline=None)
@given(tensors(max_neurons=300), st.lists(st.integers(0, 6), max_size=6))
def test_any_split_into_batches_gives_the_same_counts(case, cuts):
    x, axis = case
    edges = sorted({0, len(x), *[min(c, len(x)) for c in cuts]})
    counter = StateCounter(x.shape[axis])
    for a, b in itertools.pairwise(edges):
        counter.update(x[a:b], axis=axis)
    counter.update(x[:0], axis=axis)  # an empty batch changes nothing
    ids, counts = reference_counts(x, axis)
    if len(x):
        assert_states(counter, ids, counts)


@settings(max_examples=40, deadline=None)
@given(st.lists(tensors(max_neurons=65), min_size=2, max_size=4), st.randoms())
def test_merge_is_exact_and_order_independent(cases, rnd):
    neurons = cases[0][0].shape[cases[0][1]]
    parts = [np.moveaxis(x, a, -1).reshape(-1, x.shape[a]) for x, a in cases]
    parts = [p[:, :neurons] for p in parts if p.shape[1] >= neurons]
    counters = [StateCounter(neurons).update(p, axis=-1) for p in parts]
    order = list(range(len(counters)))
    rnd.shuffle(order)
    merged = StateCounter()
    for i in order:
        merged.merge(pickle.loads(pickle.dumps(counters[i])))
    ids, counts = unique_rows(np.concatenate([reference_states(p, 1) for p in parts]))
    if len(ids):
        assert_states(merged, ids, counts)
    assert merged.nan_count == sum(c.nan_count for c in counters)


@pytest.mark.parametrize("neurons", [1, 8, 20, 65_536])
def test_wide_and_narrow_layers(neurons):
    rng = np.random.default_rng(neurons)
    x = rng.standard_normal((3, neurons, 2)).astype(np.float32)
    x[1] = x[0]  # repeated states
    counter = StateCounter().update(x)
    assert_states(counter, *reference_counts(x, 1))
    assert counter.state_ids().shape[1] == (neurons + 7) // 8


def test_bit_order_and_state_order_are_tensorstate_s():
    # neuron 8j+i is bit i of byte j; states ascend by sum(bit_c * 2**c)
    x = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 1.0],
            [1.0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1.0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    counter = StateCounter().update(x)
    assert counter.state_bytes() == [b"\x01\x00", b"\x02\x00", b"\x00\x01"]
    np.testing.assert_array_equal(counter.counts(), [1, 1, 1])


def test_counts_states_of_real_conv_layout_without_copy():
    rng = np.random.default_rng(1)
    nhwc = rng.standard_normal((4, 6, 6, 20)).astype(np.float32)
    nchw_view = nhwc.transpose(0, 3, 1, 2)  # the neuron axis is not innermost in memory
    a = StateCounter().update(nchw_view, axis=1)
    b = StateCounter().update(nhwc, axis=-1)
    assert_states(a, b.state_ids(), b.counts())
    assert a.state_count == 4 * 6 * 6


def test_nan_is_not_firing_and_counted():
    x = np.array([[np.nan, 1.0], [np.nan, np.nan]], dtype=np.float16)
    counter = StateCounter().update(x)
    assert counter.nan_count == 3
    assert counter.state_bytes() == [b"\x00", b"\x02"]


def test_float16_edge_values():
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6e-8, -6e-8, 65504], dtype=np.float16)
    x = values[None, :]
    counter = StateCounter().update(x)
    expected = np.packbits(values > 0, bitorder="little")
    np.testing.assert_array_equal(counter.state_ids()[0], expected)


@pytest.mark.parametrize("compressor", ["blosc", "zstd"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_raw_states_round_trip_for_any_batch_sizes(tmp_path, compressor, on_disk):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 11, 3, 2)).astype(np.float32)
    record = tmp_path / "raw.zarr" if on_disk else True
    counter = StateCounter(record=record, compressor=compressor, chunk_states=16)
    for a, b in [(0, 5), (5, 5), (5, 6), (6, 30), (30, 37)]:
        count_states(x[a:b], threads=2, counter=counter)  # recorded in order on any threads
    expected = reference_states(x, 1)
    np.testing.assert_array_equal(np.asarray(counter.raw_states[:]), expected)
    np.testing.assert_array_equal(counter.states(), np.moveaxis(x > 0, 1, -1).reshape(-1, 11))
    clone = pickle.loads(pickle.dumps(counter))
    np.testing.assert_array_equal(np.asarray(clone.raw_states[:]), expected)
    counter.reset()
    assert counter.state_count == 0 and counter.raw_states.shape[0] == 0


def test_wide_layers_record_in_small_chunks(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 65_536)).astype(np.float32)
    counter = StateCounter(record=tmp_path / "raw.zarr")
    for _ in range(3):
        counter.update(x, axis=1)
    assert counter.raw_states.chunks[0] * counter.raw_states.chunks[1] <= 8 << 20
    np.testing.assert_array_equal(np.asarray(counter.raw_states[:4]), reference_states(x, 1))


def test_a_pickled_disk_recorder_does_not_share_the_disk_array(tmp_path):
    x = np.random.default_rng(2).standard_normal((5, 9)).astype(np.float32)
    original = StateCounter(record=tmp_path / "raw.zarr").update(x)
    copy = pickle.loads(pickle.dumps(original))
    copy.update(x[:2])
    original.update(x[3:])
    assert copy.raw_states.shape[0] == 7 and original.raw_states.shape[0] == 7
    np.testing.assert_array_equal(np.asarray(original.raw_states[5:]), reference_states(x[3:], 1))
    with pytest.raises(InputError, match="records states but the other does not"):
        original.merge(StateCounter().update(x))


def test_threads_do_not_change_results_on_large_batches():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 20, 30, 30)) > 0.8).astype(np.float32)
    one = StateCounter().update(x)
    two = count_states(x, threads=2)
    assert_states(two, one.state_ids(), one.counts())


def test_one_counter_updated_from_many_threads():
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal((50, 70, 6, 6)) > 0.5).astype(np.float32) for _ in range(8)]
    counter = StateCounter()
    threads = [threading.Thread(target=counter.update, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids, counts = reference_counts(np.concatenate(parts), 1)
    assert_states(counter, ids, counts)


@pytest.mark.parametrize(
    ("x", "axis", "error", "text"),
    [
        (np.zeros((2, 3), dtype=np.complex64), 1, DTypeError, "complex64"),
        (np.zeros((2, 3), dtype=">i4"), 1, DTypeError, ">i4"),
        (np.zeros(4, dtype=np.float32), 0, InputError, "rank"),
        (np.zeros((2, 3), dtype=np.float32), 2, InputError, "out of range"),
        (np.zeros((2, 3), dtype=np.float32), 0, InputError, "axis 0"),
    ],
)
def test_bad_input_raises_one_clear_error(x, axis, error, text):
    with pytest.raises(error, match=text):
        StateCounter().update(x, axis=axis)


def test_neuron_count_mismatch_across_batches():
    counter = StateCounter().update(np.ones((2, 3), np.float32))
    with pytest.raises(InputError, match="3 neurons but the batch has 4"):
        counter.update(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError):
        counter.merge(StateCounter(5))


def test_states_without_recording_is_an_error():
    with pytest.raises(InputError, match="record=True"):
        StateCounter().update(np.ones((2, 3), np.float32)).states()


# -- the Cython kernel itself (onnx_state.count._counter): no public API reaches these --------
def test_dense_tables_refuse_states_with_bits_above_the_last_neuron():
    from onnx_state.count._counter import StateTable

    table = StateTable(5)  # a dense table: 32 entries indexed by the state itself
    keys = np.array([[3], [1 << 5]], dtype=np.uint64)
    with pytest.raises(ValueError, match="above neuron 4"):
        table.add_counts(keys, np.ones(2, np.int64))
    assert table.n_unique == 0 and table.state_count == 0


def test_wide_tables_refuse_bits_above_the_last_neuron():
    from onnx_state.count._counter import StateTable

    table = StateTable(70)  # two words, 6 bits used in the second
    keys = np.array([[1, 1 << 6]], dtype=np.uint64)
    with pytest.raises(ValueError, match="above neuron 69"):
        table.add_counts(keys, np.ones(1, np.int64))


def test_a_table_that_ran_out_of_memory_refuses_to_be_read():
    # In a child process whose address space is capped just above what it uses, so that
    # growing the table fails part-way through a merge.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import resource, numpy as np
        from onnx_state.count._counter import StateTable
        keys = np.arange(1, 4_000_001, dtype=np.uint64).reshape(-1, 1) * np.uint64(7919)
        t = StateTable(50)
        vm = [l for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        vm = int(vm.split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), resource.RLIM_INFINITY))
        try:
            t.add_counts(keys, np.ones(len(keys), np.int64))
        except MemoryError:
            pass
        assert t.broken
        one = np.ones(1, np.int64)
        for read in (t.export, lambda: t.n_unique, lambda: t.add_counts(keys[:1], one)):
            try:
                read()
            except MemoryError as e:
                assert "part-way" in str(e)
            else:
                raise SystemExit("read a broken table")
        print("ok")
        """
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("needs /proc and RLIMIT_AS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
