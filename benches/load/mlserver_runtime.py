"""An MLServer runtime that serves an ONNX file with onnxruntime: the peer in the load benchmark.

MLServer has no ONNX runtime of its own. This is the smallest faithful one: one onnxruntime
session (one thread, like each of cairn's engine workers), inputs decoded with MLServer's
NumpyCodec, every output returned. MLServer's adaptive batching (configured per model in
model-settings.json) concatenates requests along the first axis and splits the outputs back.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            feeds[request_input.name] = NumpyCodec.decode_input(request_input).astype(np.float32)
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name=name, payload=np.asarray(value))
                for name, value in zip(self._outputs, results)
            ],
        )
