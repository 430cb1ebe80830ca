"""Compatibility test: Triton's official gRPC client (`tritonclient[grpc]` from PyPI) against
the real cairn binary, RPC by RPC. Every inference is compared with onnxruntime on the same
inputs; errors must come back with the gRPC status a Triton client expects.

Run: python tests/compat/test_tritonclient_grpc.py [path/to/cairn]   (default: target/release/cairn)
"""

import json
import os
import queue
import sys
import unittest

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cairn_server import ROOT  # noqa: E402
from triton_models import (  # noqa: E402
    MODELS, assert_matches_reference, inference_cases, reference, start_server, stop_server,
    zoo_inputs,
)

BINARY = os.path.join(ROOT, "target", "release", "cairn")
TOKEN = "grpc-compat-token"




def inputs_for(metadata, arrays):
    tensors = []
    for spec in metadata.inputs:
        array = arrays[spec.name]
        tensor = grpcclient.InferInput(spec.name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class TritonGrpcCompat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_server(cls, BINARY, lambda s: grpcclient.InferenceServerClient(url=s.grpc),
                     "cairn-grpc-compat-", env={"CAIRN_ADMIN_TOKEN": TOKEN})
        cls.admin = [("authorization", f"Bearer {TOKEN}")]

    @classmethod
    def tearDownClass(cls):
        stop_server(cls)

    def check_result(self, model, version, arrays, result, atol=1e-5):
        assert_matches_reference(self, model, version, arrays, result, atol)

    def test_health(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("iris"))
        self.assertTrue(self.client.is_model_ready("iris", model_version="1"))
        self.assertFalse(self.client.is_model_ready("no-such-model"))
        self.assertFalse(self.client.is_model_ready("iris", model_version="99"))

    def test_metadata_and_config(self):
        meta = self.client.get_server_metadata()
        self.assertEqual(meta.name, "cairn")
        self.assertIn("model_repository", meta.extensions)
        model = self.client.get_model_metadata("tabular-small")
        self.assertEqual(model.name, "tabular-small")
        self.assertEqual(model.inputs[0].name, "input")
        self.assertEqual(model.inputs[0].datatype, "FP32")
        self.assertEqual(list(model.inputs[0].shape), [-1, 32])
        self.assertIn("1", model.versions)
        # The JSON form the client offers must equal what the HTTP endpoint serves.
        config = self.client.get_model_config("tabular-small", as_json=True)["config"]
        self.assertEqual(int(config["max_batch_size"]), 64)
        self.assertEqual(config["input"][0]["data_type"], "TYPE_FP32")
        self.assertEqual([int(d) for d in config["input"][0]["dims"]], [32])
        self.assertIn("dynamic_batching", config)
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.get_model_metadata("no-such-model")
        self.assertEqual(ctx.exception.status(), "StatusCode.NOT_FOUND")

    def test_raw_inference_equals_onnxruntime(self):
        cases = inference_cases()
        for model, version, arrays in cases:
            with self.subTest(model=model, version=version):
                metadata = self.client.get_model_metadata(model, model_version=str(version))
                outputs = [grpcclient.InferRequestedOutput(o.name) for o in metadata.outputs]
                result = self.client.infer(
                    model,
                    inputs_for(metadata, arrays),
                    model_version=str(version),
                    outputs=outputs,
                    request_id="grpc-1",
                )
                self.assertEqual(result.get_response().id, "grpc-1")
                self.assertEqual(result.get_response().model_version, str(version))
                self.assertEqual(len(result.get_response().raw_output_contents), len(outputs))
                self.check_result(model, version, arrays, result)

    def test_half_precision_in_raw_contents(self):
        arrays = zoo_inputs("fp16-cnn")
        metadata = self.client.get_model_metadata("fp16-cnn")
        self.assertEqual(metadata.inputs[0].datatype, "FP16")
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in metadata.outputs]
        result = self.client.infer("fp16-cnn", inputs_for(metadata, arrays), outputs=outputs)
        self.assertEqual(result.as_numpy("probabilities").dtype, np.float16)
        self.check_result("fp16-cnn", 1, arrays, result, atol=1e-2)

    def test_typed_contents_equal_onnxruntime(self):
        # The client only sends raw contents; the protocol also allows typed ones.
        data = np.random.default_rng(3).normal(0, 1, (2, 32)).astype(np.float32)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.server.grpc))
        request = service_pb2.ModelInferRequest(model_name="tabular-small")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 32])
        tensor.contents.fp32_contents.extend(data.flatten().tolist())
        response = stub.ModelInfer(request)
        names = [o.name for o in response.outputs]
        want = reference(MODELS["tabular-small"], 1, {"input": data})
        probabilities = np.frombuffer(
            response.raw_output_contents[names.index("probabilities")], dtype=np.float32
        ).reshape(2, -1)
        np.testing.assert_allclose(probabilities, want["probabilities"], atol=1e-5)
        self.assertTrue(response.id, "every inference gets an id")
        tensor.contents.int_contents.append(1)
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.ModelInfer(request)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("fp32_contents", ctx.exception.details())

    def test_async_and_streaming_inference(self):
        data = np.random.default_rng(2).normal(0, 1, (1, 32)).astype(np.float32)
        tensor = grpcclient.InferInput("input", [1, 32], "FP32")
        tensor.set_data_from_numpy(data)
        want = reference(MODELS["tabular-small"], 1, {"input": data})["probabilities"]
        done = queue.Queue()
        for _ in range(16):
            self.client.async_infer("tabular-small", [tensor], callback=lambda result, error: done.put((result, error)))
        for _ in range(16):
            result, error = done.get(timeout=60)
            self.assertIsNone(error)
            np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-5)

        streamed = queue.Queue()
        client = grpcclient.InferenceServerClient(url=self.server.grpc)
        client.start_stream(callback=lambda result, error: streamed.put((result, error)))
        for n in range(8):
            client.async_stream_infer("tabular-small", [tensor], request_id=f"s{n}")
        wrong = grpcclient.InferInput("input", [1, 4], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        client.async_stream_infer("tabular-small", [wrong], request_id="bad")
        ids, errors = set(), []
        for _ in range(9):
            result, error = streamed.get(timeout=60)
            if error is not None:
                errors.append(str(error))
            else:
                ids.add(result.get_response().id)
                np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-5)
        client.stop_stream()
        client.close()
        self.assertEqual(ids, {f"s{n}" for n in range(8)})
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("shape", errors[0])

    def test_errors_carry_the_right_status(self):
        tensor = grpcclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("no-such-model", [tensor])
        self.assertIn("unknown model", str(ctx.exception))
        self.assertEqual(ctx.exception.status(), "StatusCode.NOT_FOUND")
        wrong = grpcclient.InferInput("input", [1, 4], "FP64")
        wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("iris", [wrong])
        self.assertIn("FP64", str(ctx.exception))
        self.assertEqual(ctx.exception.status(), "StatusCode.INVALID_ARGUMENT")
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("iris", [tensor], model_version="99")
        self.assertEqual(ctx.exception.status(), "StatusCode.NOT_FOUND")
        # A message over max_body_bytes (64 MiB by default) is refused, not buffered.
        big = grpcclient.InferInput("input", [1 << 22, 4], "FP32")
        big.set_data_from_numpy(np.zeros((1 << 22, 4), dtype=np.float32))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.infer("iris", [big])
        self.assertEqual(ctx.exception.status(), "StatusCode.RESOURCE_EXHAUSTED")
        self.assertIn("limit", str(ctx.exception))
        # Shared memory is not offered: those RPCs are unimplemented, not failing.
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.get_system_shared_memory_status()
        self.assertEqual(ctx.exception.status(), "StatusCode.UNIMPLEMENTED")
        # The server still serves after all of it.
        self.assertTrue(self.client.is_server_ready())

    def test_repository_and_statistics(self):
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.get_model_repository_index()
        self.assertEqual(ctx.exception.status(), "StatusCode.UNAUTHENTICATED")
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.unload_model("simple", headers={"authorization": "Bearer wrong"})
        self.assertEqual(ctx.exception.status(), "StatusCode.PERMISSION_DENIED")
        headers = dict(self.admin)
        index = self.client.get_model_repository_index(headers=headers)
        self.assertIn("iris", {row.name for row in index.models})
        self.client.unload_model("simple", headers=headers)
        self.assertFalse(self.client.is_model_ready("simple"))
        self.client.load_model("simple", headers=headers)
        self.assertTrue(self.client.is_model_ready("simple"))
        with self.assertRaises(InferenceServerException) as ctx:
            self.client.load_model("no-such-model", headers=headers)
        self.assertIn("no-such-model", str(ctx.exception))
        # A load with a configuration and a file, as Triton's clients send them.
        with open(os.path.join(MODELS["iris"], "1", "model.onnx"), "rb") as f:
            onnx = f.read()
        config = json.dumps({"max_batch_size": 8})
        self.client.load_model("uploaded", headers=headers, config=config, files={"file:1/model.onnx": onnx})
        self.assertTrue(self.client.is_model_ready("uploaded"))
        self.assertEqual(int(self.client.get_model_config("uploaded", as_json=True)["config"]["max_batch_size"]), 8)
        stats = self.client.get_inference_statistics("tabular-small")
        self.assertEqual(stats.model_stats[0].name, "tabular-small")
        self.assertGreater(stats.model_stats[0].inference_stats.success.count, 0)
        everything = self.client.get_inference_statistics()
        self.assertIn("iris", {s.name for s in everything.model_stats})

    def test_metrics_count_grpc_calls(self):
        import urllib.request

        self.client.is_server_live()
        text = urllib.request.urlopen(f"http://{self.server.url}/metrics", timeout=30).read().decode()
        self.assertRegex(text, r'cairn_grpc_requests_total\{code="OK",method="ServerLive"\} [1-9]')


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BINARY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
