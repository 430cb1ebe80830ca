"""Compatibility test: Triton's official Python client (`tritonclient[http]` from PyPI) against
the real cairn binary. Every inference is compared with onnxruntime on the same inputs.

Run: python tests/compat/test_tritonclient.py [path/to/cairn]   (default: target/release/cairn)
"""

import os
import sys
import unittest

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cairn_server import ROOT  # noqa: E402
from triton_models import (  # noqa: E402
    MODELS, assert_matches_reference, inference_cases, reference, start_server, stop_server,
    zoo_inputs,
)

BINARY = os.path.join(ROOT, "target", "release", "cairn")




class TritonClientCompat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_server(cls, BINARY, lambda s: httpclient.InferenceServerClient(url=s.url, concurrency=4),
                     "cairn-compat-")

    @classmethod
    def tearDownClass(cls):
        stop_server(cls)

    def infer_and_compare(self, model, version, inputs, binary, atol=1e-5, **kwargs):
        metadata = self.client.get_model_metadata(model, model_version=str(version))
        request_inputs = []
        for spec in metadata["inputs"]:
            array = inputs[spec["name"]]
            tensor = httpclient.InferInput(spec["name"], list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=binary)
            request_inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
        result = self.client.infer(
            model, request_inputs, model_version=str(version), outputs=outputs, request_id="compat-1", **kwargs
        )
        self.assertEqual(result.get_response()["id"], "compat-1")
        assert_matches_reference(self, model, version, inputs, result, atol)

    def test_health(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("iris"))
        self.assertTrue(self.client.is_model_ready("iris", model_version="1"))
        self.assertFalse(self.client.is_model_ready("no-such-model"))

    def test_metadata_and_config(self):
        meta = self.client.get_server_metadata()
        self.assertEqual(meta["name"], "cairn")
        self.assertIn("binary_tensor_data", meta["extensions"])
        model = self.client.get_model_metadata("tabular-small")
        self.assertEqual(model["inputs"][0], {"name": "input", "datatype": "FP32", "shape": [-1, 32]})
        config = self.client.get_model_config("tabular-small")
        self.assertEqual(config["max_batch_size"], 64)
        self.assertEqual(config["input"][0]["data_type"], "TYPE_FP32")

    def test_json_and_binary_inference_equal_onnxruntime(self):
        cases = inference_cases()
        for model, version, inputs in cases:
            for binary in (False, True):
                with self.subTest(model=model, version=version, binary=binary):
                    self.infer_and_compare(model, version, inputs, binary)

    def test_half_precision_in_json_and_binary(self):
        # The zoo's recorded rows: their labels are clear of FP16 rounding between engines.
        for model in ("fp16-cnn", "fp16-mlp-mixed"):
            inputs = zoo_inputs(model)
            for binary in (False, True):
                with self.subTest(model=model, binary=binary):
                    self.infer_and_compare(model, 1, inputs, binary, atol=1e-2)
        meta = self.client.get_model_metadata("fp16-cnn")
        self.assertEqual(meta["inputs"][0]["datatype"], "FP16")
        self.assertEqual(self.client.get_model_config("fp16-cnn")["input"][0]["data_type"], "TYPE_FP16")

    def test_default_binary_outputs_and_compression(self):
        # No outputs listed: the client asks for binary_data_output and gets every output.
        data = np.random.default_rng(1).normal(0, 1, (4, 32)).astype(np.float32)
        tensor = httpclient.InferInput("input", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        for compression in (None, "gzip", "deflate"):
            result = self.client.infer("tabular-small", [tensor], request_compression_algorithm=compression)
            want = reference(MODELS["tabular-small"], 1, {"input": data})
            np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-5)
            np.testing.assert_array_equal(result.as_numpy("label"), want["label"])

    def test_async_infer(self):
        data = np.random.default_rng(2).normal(0, 1, (1, 32)).astype(np.float32)
        tensor = httpclient.InferInput("input", [1, 32], "FP32")
        tensor.set_data_from_numpy(data)
        pending = [self.client.async_infer("tabular-small", [tensor]) for _ in range(16)]
        want = reference(MODELS["tabular-small"], 1, {"input": data})["probabilities"]
        for p in pending:
            np.testing.assert_allclose(p.get_result().as_numpy("probabilities"), want, atol=1e-5)

    def test_errors_raise(self):
        tensor = httpclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("no-such-model", [tensor])
        self.assertIn("unknown model", str(ctx.exception))
        wrong = httpclient.InferInput("input", [1, 4], "FP64")
        wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("iris", [wrong])
        self.assertIn("FP64", str(ctx.exception))

    def test_repository_and_statistics(self):
        index = self.client.get_model_repository_index()
        self.assertIn("iris", {row["name"] for row in index})
        self.client.unload_model("simple")
        self.assertFalse(self.client.is_model_ready("simple"))
        self.client.load_model("simple")
        self.assertTrue(self.client.is_model_ready("simple"))
        stats = self.client.get_inference_statistics("tabular-small")
        self.assertEqual(stats["model_stats"][0]["name"], "tabular-small")
        self.assertIn("success", stats["model_stats"][0]["inference_stats"])


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BINARY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
