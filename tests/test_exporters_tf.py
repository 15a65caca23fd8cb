"""TensorFlow SavedModel and TFLite exports: layer names, and states equal to TF's own.

A tiny Keras 3 model with small integer weights on integer inputs: every sum is an exact
integer in float32, so TensorFlow, the TFLite interpreter and onnxruntime give the same
activations bit for bit and no state can flip on rounding. Skipped cleanly without the
[tensorflow] extra.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import onnx
import pytest

import onnx_state as ts
import onnx_state.capture
from onnx_state.capture.metadata import META_INPUT_AXES
from onnx_state.errors import InputError, MissingExtraError
from tests.cli import run_cli
from tests.reference import assert_states, reference_counts

pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(SavedModel dir, .tflite path, x NHWC, Keras activations {layer: array})."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    rng = np.random.default_rng(7)
    inp = keras.Input((8, 8, 2), name="img")
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv_1")(inp)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(4, name="fc")(h)
    model = keras.Model(inp, out, name="tiny")
    for layer in model.layers:  # integers in [-2, 2]: exact sums, about half of them > 0
        layer.set_weights([rng.integers(-2, 3, w.shape).astype(np.float32)
                           for w in layer.get_weights()])  # fmt: skip
    x = rng.integers(-2, 3, (40, 8, 8, 2)).astype(np.float32)
    probe = keras.Model(inp, [model.get_layer("conv_1").output, model.get_layer("fc").output])
    conv, fc = (np.asarray(a) for a in probe(x, training=False))
    root = tmp_path_factory.mktemp("tf")
    saved = root / "saved"
    model.export(str(saved), verbose=False)
    tflite = root / "tiny.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    return saved, tflite, x, {"conv_1": conv, "fc": fc}


def tflite_activations(path, x) -> dict[str, np.ndarray]:
    """The TFLite interpreter's own conv_1 output (an intermediate tensor) and fc output."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        it = tf.lite.Interpreter(
            model_path=str(path),
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=(
                tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),  # no XNNPACK, so intermediate tensors stay readable
        )
    (inp,) = it.get_input_details()
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    (conv,) = [t for t in it.get_tensor_details()
               if tuple(t["shape"]) == (len(x), 6, 6, 3)]  # fmt: skip
    (out,) = it.get_output_details()
    return {"conv_1": it.get_tensor(conv["index"]), "fc": it.get_tensor(out["index"])}


def assert_tf_states(proto, x, activations) -> None:
    """conv_1 and fc states from onnx_state equal numpy's on TF's activations."""
    a = ts.analyze(proto, x, attach_to=["conv_1", "fc"], parity=True)
    assert [r.layer for r in a.layers] == ["conv_1", "fc"]
    conv, fc = a.layer("conv_1"), a.layer("fc")
    # tf2onnx computes the conv channels-first: the capture is NCHW, neurons on axis 1; the
    # Keras activation is NHWC, neurons last. Position for position the states are the same.
    assert conv.op_type == "Relu" and conv.axis == 1 and conv.neurons == 3
    assert conv.state_count == len(x) * 6 * 6
    assert_states(conv, *reference_counts(activations["conv_1"], -1))
    assert fc.axis in (1, -1) and fc.neurons == 4 and fc.state_count == len(x)
    assert_states(fc, *reference_counts(activations["fc"], 1))
    assert 2 < conv.n_unique <= 8 and 2 < fc.n_unique <= 16  # not a trivial comparison


def onnx_outputs(proto, x) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def layers_of(proto) -> dict[str, tuple[str, ...]]:
    return {la.name: la.op_types for la in ts.capture.list_layers(proto) if la.has_metadata}


def input_axes(proto) -> dict[str, int]:
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta[META_INPUT_AXES])


# -- SavedModel -------------------------------------------------------------------------------
def test_saved_model_keeps_keras_layer_names_and_states(tiny):
    from exporters.from_tf import export_saved_model

    saved, _, x, keras_acts = tiny
    proto = export_saved_model(saved)
    np.testing.assert_array_equal(onnx_outputs(proto, x), keras_acts["fc"])  # exact integers
    layers = layers_of(proto)
    assert layers["conv_1"][-2:] == ("Conv", "Relu")  # the Keras layer spans its activation
    assert layers["fc"][0] == "MatMul"
    assert input_axes(proto) == {"img": -1}  # NHWC input, channels last
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert_tf_states(proto, x, keras_acts)


def test_saved_model_through_the_cli(tiny, tmp_path):
    saved, _, x, keras_acts = tiny
    r = run_cli("export", saved, tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob(".*partial"))
    assert_tf_states(onnx.load(tmp_path / "m.onnx"), x, keras_acts)


# -- TFLite -----------------------------------------------------------------------------------
def test_tflite_keeps_layer_names_and_matches_the_interpreter(tiny, tmp_path):
    from exporters.export import export_model

    _, tflite, x, keras_acts = tiny
    lite_acts = tflite_activations(tflite, x)
    for name in ("conv_1", "fc"):  # the interpreter computes the same exact integers
        np.testing.assert_array_equal(lite_acts[name], keras_acts[name])
    export_model(str(tflite), tmp_path / "lite.onnx")
    proto = onnx.load(tmp_path / "lite.onnx")
    layers = layers_of(proto)
    # The fused CONV_2D + RELU is split by tf2onnx into Conv and Relu__<n>: both are conv_1.
    assert layers["conv_1"][-2:] == ("Conv", "Relu")
    # The output tensor is renamed to the signature's; fc is found through its weights.
    assert layers["fc"] == ("MatMul", "Add")
    assert input_axes(proto) == {"serving_default_img:0": -1}
    assert_tf_states(proto, x, lite_acts)


# -- errors (checked before TensorFlow is imported: these run without the extra too) ----------
def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "missing.tflite", "does not exist"),
        (tmp_path / "empty", "is not a SavedModel: it holds no saved_model.pb"),
        (tmp_path / "junk.tflite", "is not a TFLite model"),
        (tmp_path / "notes.txt", "is not a SavedModel directory, nor a .tflite or .keras file"),
    ]
    for source, message in cases:
        r = run_cli("export", source, tmp_path / "o.onnx")
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    assert not (tmp_path / "o.onnx").exists()


def test_missing_tensorflow_names_the_extra(tmp_path, monkeypatch):
    from exporters.from_tf import export_saved_model

    (tmp_path / "saved_model.pb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow fails
    with pytest.raises(MissingExtraError, match=r"onnx-state\[tensorflow\]"):
        export_saved_model(tmp_path)


def test_unknown_signature_and_opset(tiny):
    from exporters.export import export_model
    from exporters.from_tf import export_saved_model, export_tflite

    saved, tflite, _, _ = tiny
    with pytest.raises(InputError, match=r"no signature 'serving_defualt'.*Did you mean: "
                                         r"serving_default\?"):  # fmt: skip
        export_saved_model(saved, signature="serving_defualt")
    with pytest.raises(InputError, match="no signature 'nope'"):
        export_model(str(saved), saved.parent / "o.onnx", signature="nope")
    for export in (export_saved_model, export_tflite):
        with pytest.raises(InputError, match="opsets up to 18"):
            export(saved if export is export_saved_model else tflite, opset=19)


def test_the_cli_names_an_unknown_signature(tiny, tmp_path):
    from tests.cli import run_cli

    saved = tiny[0]
    out = run_cli("export", saved, tmp_path / "o.onnx", "--signature", "serving_defualt")
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "Did you mean: serving_default?" in out.output
    assert not (tmp_path / "o.onnx").exists()
