"""The models both Triton client tests (HTTP and gRPC) serve, onnxruntime's answers to them, and
the zoo's recorded rows, shared so the two front ends are held to the same cases."""

import json
import os

import numpy as np
import onnxruntime as ort

import shutil
import tempfile

from cairn_server import ROOT, Server, wait_for

MODELS = {
    "iris": os.path.join(ROOT, "models", "iris"),
    "tabular-small": os.path.join(ROOT, "models", "tabular-small"),
    "simple": os.path.join(ROOT, "tests", "models", "simple"),
    "dtypes": os.path.join(ROOT, "tests", "models", "dtypes"),
    "strings": os.path.join(ROOT, "tests", "models", "strings"),
    # Half precision (onnxconverter-common's float16): FP16 inputs and outputs, and FP16 inside
    # FP32 edges with the Softmax kept in FP32.
    "fp16-cnn": os.path.join(ROOT, "tests", "models", "zoo", "fp16-cnn"),
    "fp16-mlp-mixed": os.path.join(ROOT, "tests", "models", "zoo", "fp16-mlp-mixed"),
}


def reference(model_dir, version, inputs):
    """onnxruntime's outputs for the same inputs, by output name."""
    session = ort.InferenceSession(
        os.path.join(model_dir, str(version), "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def start_server(case, binary, client_of, prefix, env=None):
    """The shipped and test models copied into a fresh repository, served by `binary`; sets
    `case.repo`, `case.server` and `case.client` (`client_of(server)`), once the client says the
    server is ready."""
    case.repo = tempfile.mkdtemp(prefix=prefix)
    for name, src in MODELS.items():
        shutil.copytree(src, os.path.join(case.repo, name))
    case.server = Server(binary, case.repo, env=env)
    case.client = client_of(case.server)
    if not wait_for(case.client.is_server_ready, 120, interval=0.05):
        raise RuntimeError("server never became ready")


def stop_server(case):
    case.client.close()
    case.server.stop()
    shutil.rmtree(case.repo, ignore_errors=True)


def assert_matches_reference(test, model, version, inputs, result, atol=1e-5):
    """Every output of `result` (a tritonclient result, HTTP or gRPC) against onnxruntime's for
    the same inputs: floats within `atol`, strings and integers exactly."""
    expected = reference(MODELS[model], version, inputs)
    for name, want in expected.items():
        got = result.as_numpy(name)
        test.assertIsNotNone(got, f"{model}: output {name} missing")
        test.assertEqual(tuple(got.shape), tuple(want.shape), f"{model}:{name} shape")
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"{model}:{name}")
        elif want.dtype == object:
            got_list = [g.decode() if isinstance(g, bytes) else g for g in got.flatten()]
            test.assertEqual(got_list, list(want.flatten()), f"{model}:{name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{model}:{name}")


def zoo_inputs(model, case=1):
    """A zoo model's recorded input rows (clear of label ties), as numpy arrays."""
    with open(os.path.join(ROOT, "tests", "models", "zoo", "expected.json")) as f:
        recorded = json.load(f)[f"tests/models/zoo/{model}/1/model.onnx"][case]
    types = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
    return {
        name: np.array(t["data"], dtype=types[t["datatype"]]).reshape(t["shape"])
        for name, t in recorded["inputs"].items()
    }


def inference_cases():
    """(model, version, inputs) of every datatype the V2 protocol carries, the same on HTTP and
    gRPC (seeded)."""
    rng = np.random.default_rng(0)
    return [
        ("iris", 1, {"input": rng.normal(5, 1.5, (5, 4)).astype(np.float32)}),
        ("iris", 2, {"input": rng.normal(5, 1.5, (3, 4)).astype(np.float32)}),
        ("tabular-small", 1, {"input": rng.normal(0, 1, (7, 32)).astype(np.float32)}),
        (
            "simple",
            1,
            {
                "INPUT0": rng.integers(-1000, 1000, (2, 16)).astype(np.int32),
                "INPUT1": rng.integers(-1000, 1000, (2, 16)).astype(np.int32),
            },
        ),
        (
            "dtypes",
            1,
            {
                "f64": rng.normal(0, 1e3, (3, 3)).astype(np.float64),
                "i64": rng.integers(-(2**40), 2**40, (3, 2)).astype(np.int64),
                "flag": rng.integers(0, 2, (3, 2)).astype(bool),
                "f32": rng.normal(0, 1, (3, 4)).astype(np.float32),
                "i32": rng.integers(-1000, 1000, (3, 1)).astype(np.int32),
            },
        ),
        ("strings", 1, {"text": np.array([["héllo"], [""], ["a b"]], dtype=object)}),
    ]
