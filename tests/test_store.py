"""The results store: save and load round trip, atomic writes, refused stores."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

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


def test_ctrl_c_during_a_save_waits_until_the_store_is_complete(net, tmp_path, monkeypatch):
    import signal

    import zarr

    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv")
    original = zarr.Group.create_array
    sent = []

    def create_array(self, *args, **kwargs):
        if not sent:  # Ctrl-C in the middle of writing the arrays
            sent.append(True)
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    with pytest.raises(KeyboardInterrupt):
        a.save(tmp_path / "r.zarr")
    assert sent and onnx_state.Analysis.load(tmp_path / "r.zarr").layers == a.layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]  # no hidden leftovers


def test_sigterm_during_a_save_ends_the_process_after_the_store_is_complete(tmp_path):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import os, signal, zarr, numpy as np, onnx_state
        from tests.models import conv_net, int_data
        a = onnx_state.analyze(conv_net()[0], int_data(10), attach_to="Conv")
        original = zarr.Group.create_array
        def create_array(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)
        zarr.Group.create_array = create_array
        a.save({str(tmp_path / "r.zarr")!r})
        print("not reached")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -15 and "not reached" not in r.stdout, r.stderr[-2000:]
    assert onnx_state.Analysis.load(tmp_path / "r.zarr").n_samples == 10


def test_a_crash_between_the_renames_of_an_overwrite_is_repaired(net, tmp_path):
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv")
    a.save(tmp_path / "r.zarr")
    # What SIGKILL between the two renames leaves: the old store aside, a partial new one.
    (tmp_path / "r.zarr").rename(tmp_path / ".r.zarr.old-1234abcd")
    (tmp_path / ".r.zarr.partial-5678abcd").mkdir()
    (tmp_path / ".r.zarr.old-mybackup").mkdir()  # a user's own folder: never touched
    b = onnx_state.Analysis.load(tmp_path / "r.zarr")  # a read puts the store back
    assert b.layers == a.layers
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".r.zarr.old-mybackup", ".r.zarr.partial-5678abcd", "r.zarr"]
    import os

    os.utime(tmp_path / ".r.zarr.partial-5678abcd", (0, 0))  # an hour old and more
    a.save(tmp_path / "r.zarr", overwrite=True)  # a write tidies stale leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.zarr.old-mybackup", "r.zarr"]


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    import json
    import subprocess
    import sys
    import textwrap

    from tests.cli import run_cli
    from tests.models import conv_net, int_data

    model, _ = conv_net()
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", int_data(53))
    np.save(tmp_path / "y.npy", np.arange(53) % 5)
    common = ["analyze", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", "--labels",
              tmp_path / "y.npy", "--attach-to", "Conv", "--attach-to", "MatMul",
              "--batch-size", "5", "-q"]  # fmt: skip
    whole = run_cli(*common, "-o", tmp_path / "whole.zarr", "--json")
    assert whole.exit_code == 0, whole.output
    # The run is killed (SIGKILL: no cleanup at all) while batch 8 runs, after the
    # checkpoint of batch 6 and before the one of batch 9.
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from onnx_state.capture import Instrumented
        from onnx_state.cli import main
        runs = []
        original = Instrumented.run
        def run(self, batch, samples=None):
            runs.append(1)
            if len(runs) == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch, samples)
        Instrumented.run = run
        sys.argv = ["onnx-state"] + {[str(a) for a in common]!r} + [
            "-o", {str(tmp_path / "r.zarr")!r}, "--checkpoint-every", "3", "--no-parity"]
        main()
        """
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    with pytest.raises(StoreError, match="resume it with --resume"):
        onnx_state.Analysis.load(tmp_path / "r.zarr")
    resumed = run_cli(*common, "-o", tmp_path / "r.zarr", "--checkpoint-every", "3",
                      "--resume", "--no-parity", "--json")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    a = onnx_state.Analysis.load(tmp_path / "whole.zarr")
    b = onnx_state.Analysis.load(tmp_path / "r.zarr")
    assert b.layers == a.layers  # every count and state id
    assert (b.n_samples, b.accuracy, b.data_fingerprint) == (a.n_samples, a.accuracy,
                                                              a.data_fingerprint)  # fmt: skip
    assert json.loads(resumed.output)["layers"] == json.loads(whole.output)["layers"]


def test_resume_refuses_other_data_another_model_and_a_complete_store(net, tmp_path):
    model, _, x, _ = net
    path = tmp_path / "c.zarr"

    def interrupted():  # batches of 10, then Ctrl-C after the checkpoint of batch 4
        for i in range(5):
            yield x[10 * i : 10 * i + 10]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        onnx_state.analyze(model, interrupted(), attach_to="Conv", checkpoint=path,
                           checkpoint_every=2)  # fmt: skip
    full = onnx_state.analyze(model, x, attach_to="Conv", batch_size=10)
    resumed = onnx_state.analyze(model, x, attach_to="Conv", batch_size=10, checkpoint=path,
                                 resume=True)  # fmt: skip
    assert resumed.layers == full.layers and resumed.data_fingerprint == full.data_fingerprint
    assert onnx_state.Analysis.load(path).layers == full.layers  # saved complete at the end
    with pytest.raises(InputError, match="already exists"):  # a new run needs overwrite
        onnx_state.analyze(model, x, attach_to="Conv", checkpoint=path, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        onnx_state.analyze(model, interrupted(), attach_to="Conv", checkpoint=path,
                           checkpoint_every=2, overwrite=True)  # fmt: skip
    with pytest.raises(InputError, match="labels=None and parity=True, this run has labels=53"):
        onnx_state.analyze(model, x, attach_to="Conv", batch_size=10, checkpoint=path,
                           resume=True, labels=np.zeros(len(x), int))  # fmt: skip
    with pytest.raises(InputError, match="the data differs"):
        onnx_state.analyze(model, x[::-1].copy(), attach_to="Conv", batch_size=10,
                           checkpoint=path, resume=True)  # fmt: skip
    import zarr  # a checkpoint of a version that fingerprinted data another way

    group = zarr.open_group(path, mode="r+")
    state = dict(group.attrs["checkpoint"])
    old, state["fingerprint"] = state["fingerprint"], "xxh3_128:" + "0" * 32
    group.attrs["checkpoint"] = state
    with pytest.raises(InputError, match="fingerprints its data with 'xxh3_128', this"):
        onnx_state.analyze(model, x, attach_to="Conv", batch_size=10, checkpoint=path,
                           resume=True)  # fmt: skip
    group.attrs["checkpoint"] = {**state, "fingerprint": old}
    with pytest.raises(InputError, match="captures"):
        onnx_state.analyze(model, x, attach_to="MatMul", batch_size=10, checkpoint=path,
                           resume=True)  # fmt: skip
    full.save(tmp_path / "done.zarr")
    with pytest.raises(StoreError, match="no checkpoint"):
        onnx_state.analyze(model, x, attach_to="Conv", checkpoint=tmp_path / "done.zarr",
                           resume=True)  # fmt: skip


def test_a_signal_held_during_a_failed_save_is_not_lost():
    import signal

    from onnx_state.outputs import deferred_interrupts

    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        signal.raise_signal(signal.SIGINT)
        raise OSError("disk full")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_class_counts_are_optional_and_checked(tmp_path):
    import zarr

    ids = np.array([[1], [2]], dtype=np.uint8)
    table = np.array([[0, 0, 2], [1, 0, 1], [1, 4, 2]])
    states = onnx_state.results.States(ids, np.array([2, 3]))
    layer = onnx_state.LayerResult("l", "t", "l", "T", "Op", "post", 3, 1, 5, 0, states,
                                   class_counts=table)  # fmt: skip
    a = onnx_state.Analysis([layer], 5, "0" * 64, "xxh3_128:" + "0" * 32)
    a.save(tmp_path / "a.zarr")
    assert onnx_state.Analysis.load(tmp_path / "a.zarr").layers[0].class_counts.tolist() == [
        [0, 0, 2], [1, 0, 1], [1, 4, 2]
    ]  # fmt: skip
    for bad, message in (
        ([[0, 0, 2], [1, 0, 1], [1, 4, 1]], "sum to 2 but its count is 3"),
        ([[1, 0, 1], [0, 0, 2], [1, 4, 2]], "ascending"),
        ([[0, 0, 2], [1, 0, 1], [2, 4, 2]], "outside"),
    ):
        layer.class_counts = np.array(bad)
        a.save(tmp_path / "a.zarr", overwrite=True)
        with pytest.raises(StoreError, match=message):
            onnx_state.Analysis.load(tmp_path / "a.zarr")
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")
    del group["layers/0/class_counts"]  # a store without them still loads
    assert onnx_state.Analysis.load(tmp_path / "a.zarr").layers[0].class_counts is None


# -- schema version 2: per-neuron firing counts, the run record, captured and axis_rule -------
V1_STORE = Path(__file__).parent / "data" / "store_v1.zarr"  # written by the code before v2


def _reference_firing(ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """How often each neuron of the conv net's captures fires, from numpy activations."""
    return {
        "conv_post_states": np.sum(ref["c"] > 0, axis=(0, 2, 3)),
        "fc_post_states": np.sum(ref["y"] > 0, axis=0),
    }


def test_version_2_keeps_per_neuron_firing_counts_equal_to_numpy(net, tmp_path):
    import zarr

    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], batch_size=20)
    expected = _reference_firing(ref)
    for r in a.layers:
        np.testing.assert_array_equal(r.firing_counts(), expected[r.name])
        np.testing.assert_array_equal(r.firing_rates(), expected[r.name] / r.state_count)
    a.save(tmp_path / "r.zarr")
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert root.attrs["schema_version"] == 2
    for i, r in enumerate(a.layers):
        stored = np.asarray(root[f"layers/{i}/firing_counts"][...])
        np.testing.assert_array_equal(stored, expected[r.name])
        assert root[f"layers/{i}"].attrs["captured"] == r.captured
        assert root[f"layers/{i}"].attrs["axis_rule"] == r.axis_rule != ""
    # the Conv's states are read from the Relu that alone consumes it (same states)
    assert [r.captured for r in a.layers] == ["r", ""]
    b = onnx_state.Analysis.load(tmp_path / "r.zarr")
    for r in b.layers:
        assert r.firing is not None  # read from the store, not recomputed
        np.testing.assert_array_equal(r.firing, expected[r.name])
    assert b.to_dict()["layers"][0]["firing_counts"] == expected["conv_post_states"].tolist()


def test_the_run_record_says_how_the_result_was_made(net, tmp_path):
    import platform

    import onnx
    import onnxruntime

    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv", batch_size=20, threads=1,
                           optimization="basic")  # fmt: skip
    assert a.run is not None
    assert (a.run.onnx, a.run.onnxruntime) == (onnx.__version__, onnxruntime.__version__)
    assert (a.run.onnx_state, a.run.numpy) == (onnx_state.__version__, np.__version__)
    assert a.run.python == platform.python_version()
    assert a.run.providers == ["CPUExecutionProvider"]
    assert (a.run.threads, a.run.optimization, a.run.batch_size) == (1, "basic", 20)
    assert a.to_dict()["run"] == a.run.to_dict()
    a.save(tmp_path / "r.zarr")
    assert onnx_state.Analysis.load(tmp_path / "r.zarr").run == a.run
    default = onnx_state.analyze(model, x, attach_to="Conv")
    assert default.run is not None and default.run.threads is None and default.run.batch_size == 53


def test_version_1_stores_still_load(net, tmp_path):
    model, _, x, ref = net
    old = onnx_state.Analysis.load(V1_STORE)
    assert old.schema_version == 1 and old.run is None
    assert [r.name for r in old.layers] == ["conv_post_states", "fc_post_states"]
    new = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"])
    expected = _reference_firing(ref)
    for r, n in zip(old.layers, new.layers):
        assert (r.captured, r.axis_rule, r.firing) == ("", "", None)
        assert_states(r, n.state_ids(), n.counts())
        np.testing.assert_array_equal(r.firing_counts(), expected[r.name])  # from the table
    assert old.to_dict()["run"] is None
    old.save(tmp_path / "v2.zarr")  # written as version 2, the run unknown
    again = onnx_state.Analysis.load(tmp_path / "v2.zarr")
    assert again.schema_version == 2 and again.run is None
    assert again.layers == old.layers


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("layers/0", "captured", 3, "attribute captured is 3; expected a string"),
        ("layers/1", "axis_rule", None, "attribute axis_rule is null; expected a string"),
        ("", "run", "fast", 'run is "fast"; expected an object'),
        ("", "run", {"onnx": "1"}, "run.onnx_state is missing; expected a string"),
    ],
)
def test_version_2_attributes_are_checked(net, tmp_path, where, key, value, message):
    import zarr

    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"]).save(tmp_path / "r.zarr")
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    (group[where] if where else group).attrs[key] = value
    with pytest.raises(StoreError, match=re.escape(message)):
        onnx_state.Analysis.load(tmp_path / "r.zarr")


def test_firing_counts_that_disagree_with_the_states_are_refused(net, tmp_path):
    import zarr

    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to="Conv").save(tmp_path / "r.zarr")
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    fired = np.asarray(group["layers/0/firing_counts"][...])
    group["layers/0/firing_counts"][0] = fired[0] + 1
    with pytest.raises(StoreError, match=r"firing_counts\[0\] is \d+ but the states fire neuron 0"):
        onnx_state.Analysis.load(tmp_path / "r.zarr")
    del group["layers/0/firing_counts"]
    with pytest.raises(StoreError, match="firing_counts is missing"):
        onnx_state.Analysis.load(tmp_path / "r.zarr")


def test_json_prints_the_run_record(net, tmp_path):
    import json

    import onnx

    from tests.cli import run_cli

    model, _, x, _ = net
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    result = run_cli("analyze", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", "--json", "-q",
                     "--batch-size", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["schema_version"] == 2
    assert d["run"]["batch_size"] == 10 and d["run"]["providers"] == ["CPUExecutionProvider"]
    assert all("captured" in la and "firing_counts" in la for la in d["layers"])
