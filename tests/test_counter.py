"""The Cython state counter equals the plain-numpy reference, whatever the layout or split."""

from __future__ import annotations

import contextlib
import itertools
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_state.count import StateCounter, _counter, count_states
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


# -- integer tensors: fire iff value > zero point ---------------------------------------------
INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64]


@contextlib.contextmanager
def rows_kernels(simd: bool):
    """Count on the CPU's vector rows kernels (simd) or on the portable ones."""
    was = _counter.use_simd(simd)
    try:
        yield
    finally:
        _counter.use_simd(was)


@pytest.fixture(params=[True, False], ids=["simd", "portable"])
def kernels(request):
    """Run a test on the CPU's vector rows kernels and on the portable ones."""
    with rows_kernels(request.param):
        yield request.param


def extremes(dtype) -> np.ndarray:
    """Values around each end of an integer dtype and around 0."""
    info = np.iinfo(dtype)
    low = [info.min, info.min + 1, -1] if info.min < 0 else [info.min]
    return np.array([*low, 0, 1, 2, info.max - 1, info.max], dtype=dtype)


@st.composite
def int_tensors(draw, max_neurons=70):
    """An integer tensor of any rank, neuron axis and layout, with its zero point:
    None, one value or one per neuron, drawn from the dtype's extremes."""
    dtype = draw(st.sampled_from(INT_DTYPES))
    rank = draw(st.integers(2, 4))
    axis = draw(st.integers(1, rank - 1))
    neurons = draw(st.sampled_from([1, 3, 8, 15, 16, 17, 31, 33, 64, max_neurons]))
    shape = [draw(st.integers(0, 6))] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    shape[axis] = neurons
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = extremes(dtype)
    x = rng.choice(values, size=shape)
    kind = draw(st.sampled_from(["none", "scalar", "vector"]))
    zp = {"none": None, "scalar": int(rng.choice(values)), "vector": rng.choice(values, neurons)}
    layout = draw(st.sampled_from(["C", "neurons last in memory", "stepped", "reversed"]))
    if layout == "neurons last in memory":
        x = np.moveaxis(np.moveaxis(x, axis, -1).copy(), -1, axis)
    elif layout == "stepped":
        x = np.repeat(x, 2, axis=0)[::2]
    elif layout == "reversed":  # negative strides
        x = np.flip(x, draw(st.integers(0, rank - 1)))
    return x, axis, zp[kind]


@settings(max_examples=150, deadline=None)
@given(int_tensors(), st.integers(1, 3), st.booleans())
def test_integer_tensors_fire_above_their_zero_point(case, threads, simd):
    x, axis, zp = case
    with rows_kernels(simd):
        counter = count_states(x, axis, threads=threads, counter=StateCounter(zero_point=zp))
    assert counter.state_count == x.size // x.shape[axis]
    if x.size:
        assert_states(counter, *reference_counts(x, axis, zp))
    assert counter.nan_count == 0


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("neurons", [5, 16, 40])
@pytest.mark.parametrize("axis", [1, 2, 3])
def test_every_integer_dtype_axis_and_zero_point(kernels, dtype, neurons, axis):
    rng = np.random.default_rng(neurons * axis)
    values = extremes(dtype)
    shape = [9, 3, 2, 4]
    shape[axis] = neurons
    x = rng.choice(values, size=shape)
    for zp in [None, int(values[0]), int(values[-1]), 0, rng.choice(values, neurons)]:
        counter = StateCounter(zero_point=zp).update(x, axis)
        assert_states(counter, *reference_counts(x, axis, zp))


def test_quantized_extremes_by_hand():
    x = np.array([[-128, 127, 0, -1, 1]], dtype=np.int8)
    assert StateCounter(zero_point=-128).update(x).state_bytes() == [bytes([0b11110])]
    assert StateCounter(zero_point=127).update(x).state_bytes() == [b"\x00"]
    assert StateCounter().update(x).state_bytes() == [bytes([0b10010])]
    zp = np.array([-128, 126, 0, -2, 1], dtype=np.int8)  # per channel
    assert StateCounter(zero_point=zp).update(x).state_bytes() == [bytes([0b01010])]
    u = np.array([[0, 255, 128, 127, 1]], dtype=np.uint8)
    assert StateCounter(zero_point=128).update(u).state_bytes() == [bytes([0b00010])]
    assert StateCounter(zero_point=0).update(u).state_bytes() == [bytes([0b11110])]
    assert StateCounter(zero_point=255).update(u).state_bytes() == [b"\x00"]
    acc = np.array([[-(2**31), 2**31 - 1, 0, 1]], dtype=np.int32)  # a ConvInteger accumulator
    assert StateCounter().update(acc).state_bytes() == [bytes([0b1010])]
    big = np.array([[2**62, -(2**62), 2**53 + 1]], dtype=np.int64)  # not exact as float64
    assert StateCounter(zero_point=2**53).update(big).state_bytes() == [bytes([0b101])]


@pytest.mark.parametrize(
    ("zero_point", "x", "error", "text"),
    [
        (200, np.zeros((2, 3), np.int8), InputError, "out of range for int8"),
        (-1, np.zeros((2, 3), np.uint8), InputError, "out of range for uint8"),
        ([1, 2], np.zeros((2, 3), np.int8), InputError, "2 values but the layer has 3"),
        (3, np.zeros((2, 3), np.float32), DTypeError, "applies to integer tensors"),
        (3, np.zeros((2, 3), bool), DTypeError, "applies to integer tensors"),
        (1.5, None, InputError, "integer"),
        (True, None, InputError, "integer"),
        ([[1]], None, InputError, "1-D"),
        ([], None, InputError, "1-D"),
        ("3", None, InputError, "integer"),
    ],
)
def test_bad_zero_points_raise_one_clear_error(zero_point, x, error, text):
    with pytest.raises(error, match=text):
        StateCounter(zero_point=zero_point).update(x)


def test_a_zero_point_of_zero_is_no_zero_point():
    x = np.array([[3.0, -1.0]], np.float32)
    assert StateCounter(zero_point=0).update(x).state_bytes() == [b"\x01"]
    StateCounter(zero_point=[0, 0]).merge(StateCounter().update(x))


def test_counters_with_different_zero_points_refuse_to_merge():
    x = np.arange(-3, 3, dtype=np.int8).reshape(2, 3)
    three = StateCounter(zero_point=3).update(x)
    with pytest.raises(InputError, match="different zero points"):
        StateCounter().merge(three)
    with pytest.raises(InputError, match="different zero points"):
        StateCounter(zero_point=[3, 3, 2]).merge(three)
    same = StateCounter(zero_point=np.array([3, 3, 3], np.int8)).merge(three)  # same values
    assert same.state_count == 2
    clone = pickle.loads(pickle.dumps(three))
    assert clone.zero_point == 3 and clone.empty_copy().zero_point == 3
    clone.update(x)
    assert_states(clone, *reference_counts(np.concatenate([x, x]), 1, 3))


# -- pre-packed bits --------------------------------------------------------------------------
@st.composite
def packed_tensors(draw):
    """Firing bits of any rank and axis, packed along it, with junk in the pad bits."""
    rank = draw(st.integers(2, 4))
    axis = draw(st.integers(1, rank - 1))
    neurons = draw(st.sampled_from([1, 7, 8, 9, 20, 21, 64, 65, 130]))
    shape = [draw(st.integers(0, 6))] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    shape[axis] = neurons
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bits = rng.random(shape) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    packed = np.packbits(bits, axis=axis, bitorder="little")
    if neurons % 8 and draw(st.booleans()):
        last = [slice(None)] * rank
        last[axis] = slice(-1, None)
        packed[tuple(last)] |= np.uint8((0xFF << (neurons % 8)) & 0xFF)
    if draw(st.booleans()):  # bytes last in memory
        packed = np.moveaxis(np.moveaxis(packed, axis, -1).copy(), -1, axis)
    if draw(st.booleans()):  # negative strides on any axis but the bytes'
        flip = draw(st.sampled_from([a for a in range(rank) if a != axis]))
        bits, packed = np.flip(bits, flip), np.flip(packed, flip)
    return bits, packed, axis


@settings(max_examples=100, deadline=None)
@given(packed_tensors(), st.integers(1, 3))
def test_packed_bits_count_as_the_unpacked_tensor(case, threads):
    bits, packed, axis = case
    neurons = bits.shape[axis]
    counter = StateCounter(neurons, packed=True)
    count_states(packed, axis, threads=threads, counter=counter)
    assert counter.state_count == bits.size // neurons and counter.nan_count == 0
    if bits.size:
        assert_states(counter, *reference_counts(bits, axis))
        unpacked = StateCounter().update(bits, axis)
        assert counter.table_words()[0].shape[1] == unpacked.table_words()[0].shape[1]
        both = unpacked.merge(counter)  # the same states: they merge
        assert both.state_count == 2 * counter.state_count
        assert both.n_unique == counter.n_unique


def test_update_packed_records_and_pickles(tmp_path):
    bits = np.random.default_rng(0).random((30, 11)) < 0.5
    packed = np.packbits(bits, axis=1, bitorder="little")
    counter = StateCounter(record=tmp_path / "raw.zarr").update_packed(packed, 1, neurons=11)
    np.testing.assert_array_equal(counter.states(), bits)
    clone = pickle.loads(pickle.dumps(StateCounter(11, packed=True).update(packed)))
    assert clone.packed and clone.empty_copy().packed
    assert_states(clone.update(packed), *reference_counts(np.concatenate([bits, bits]), 1))


@pytest.mark.parametrize(
    ("make", "x", "error", "text"),
    [
        (lambda: StateCounter(9, packed=True), np.zeros((2, 2), np.int8), DTypeError, "uint8"),
        (lambda: StateCounter(9, packed=True), np.zeros((2, 1), np.uint8), InputError, "2 bytes"),
        (lambda: StateCounter(9, packed=True), np.zeros((2, 2), np.uint8), InputError, "axis 0"),
        (lambda: StateCounter(packed=True), None, InputError, "neurons="),
        (lambda: StateCounter(9, zero_point=1, packed=True), None, InputError, "not both"),
    ],
)
def test_bad_packed_input_raises_one_clear_error(make, x, error, text):
    with pytest.raises(error, match=text):
        make().update(x, axis=0 if text == "axis 0" else 1)


def test_packed_batches_carry_the_nan_count_of_their_tensor():
    x = np.array([[np.nan, 1.0, -1.0], [2.0, np.nan, np.nan]], np.float32)
    packed = np.packbits(x > 0, axis=1, bitorder="little")
    counter = StateCounter(3).update_packed(packed, nan_count=int(np.isnan(x).sum()))
    assert_states(counter, *reference_counts(x, 1))
    assert counter.nan_count == StateCounter().update(x).nan_count == 3
    counter.update_packed(packed[:0], nan_count=2)  # a count alone
    assert counter.nan_count == 5 and counter.state_count == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="nan_count"):
            counter.update_packed(packed, nan_count=bad)
    assert counter.state_count == 2


def test_update_packed_needs_the_neuron_count():
    packed = np.zeros((2, 2), np.uint8)
    with pytest.raises(InputError, match="neurons="):
        StateCounter().update_packed(packed)
    with pytest.raises(InputError, match="9 neurons but the batch has 10"):
        StateCounter(9).update_packed(packed, neurons=10)
    with pytest.raises(InputError, match="already thresholded"):
        StateCounter(9, zero_point=2).update_packed(packed)


# -- neurons last: the vector rows kernels ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neurons", [1, 4, 8, 9, 16, 17, 20, 33, 64, 100, 1000])
def test_neurons_last_equals_the_reference(kernels, dtype, neurons):
    rng = np.random.default_rng(neurons)
    values = np.array([-1.0, 0.0, -0.0, 0.5, np.inf, -np.inf, np.nan, 1e-40, -1e-40])
    x = rng.choice(values, size=(37, 3, neurons)).astype(dtype)  # 1e-40: subnormal or 0
    if dtype is np.bool_:
        x = rng.random((37, 3, neurons)) < 0.5
    for view in (x, x[:, ::2], x.reshape(-1, neurons)):
        counter = StateCounter().update(view, axis=-1)
        assert_states(counter, *reference_counts(view, -1))
        expected_nans = int(np.isnan(view).sum()) if dtype is not np.bool_ else 0
        assert counter.nan_count == expected_nans


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


def test_hash_tables_shard_cheaply_only_while_small(monkeypatch):
    from onnx_state.count import counter as counter_module

    monkeypatch.setattr(counter_module, "SHARD_TABLE_BYTES", 64 << 10)
    x = np.random.default_rng(0).standard_normal((20_000, 40)).astype(np.float32)
    wide = StateCounter(40)
    assert wide.shards_cheaply  # an empty hash table
    wide.update(x)  # 20,000 distinct states: 512 KiB of entries
    assert not wide.shards_cheaply
    assert StateCounter(20).update(x[:, :20]).shards_cheaply  # dense: always
    assert not StateCounter(40, record=True).shards_cheaply
    assert not StateCounter().shards_cheaply  # no table yet


def test_merging_sorted_ids_refuses_states_of_no_bytes():
    from onnx_state.count._counter import merge_sorted_ids

    empty = np.zeros((2, 0), np.uint8)
    with pytest.raises(ValueError, match="0 bytes"):
        merge_sorted_ids(empty, np.ones(2, np.int64), empty, np.ones(2, np.int64))


def test_merged_ids_keep_no_buffer_beyond_the_merged_table():
    # Tables of ranges share most states: the merge's buffer (room for both) is trimmed.
    from onnx_state.count._counter import merge_sorted_ids

    ids = np.arange(300, dtype=np.uint16).view(np.uint8).reshape(300, 2).copy()
    counts = np.ones(300, np.int64)
    merged, summed = merge_sorted_ids(ids, counts, ids, counts)
    np.testing.assert_array_equal(merged, ids)
    np.testing.assert_array_equal(summed, 2 * counts)
    assert merged.base is None or merged.base.size == merged.size
    assert summed.base is None or summed.base.size == summed.size
