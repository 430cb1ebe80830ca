"""Build the two misbehaving iris versions the rollout tests use as candidates.

Run from the repository root:

    .venv/bin/python tests/models/rollout/generate.py

Both have exactly the interface of models/iris (input FP32 [N,4] -> label INT64 [N],
probabilities FP32 [N,3]), so they load, pass validation and pass the default warm-up (a batch
of ones). They differ in how they fail once real traffic arrives:

    failing.onnx      probabilities are rows of a 2-row table picked by the first feature
                      truncated to an integer: warm-up (1.0) is in range, real iris rows
                      (sepal length 4.3 to 7.9) index past the table and fail at run time.
    disagreeing.onnx  a valid model that always ranks class 2 first, so its top class agrees
                      with the real iris models on about a third of the rows.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8


def io():
    return (
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
        ],
    )


def model(graph):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cairn-tests")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def failing():
    inputs, outputs = io()
    table = numpy_helper.from_array(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=np.float32), "table")
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1], dtype=np.int64), "ends")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["first"]),
            helper.make_node("Cast", ["first"], ["index2d"], to=TensorProto.INT64),
            helper.make_node("Squeeze", ["index2d", "axes"], ["index"]),
            helper.make_node("Gather", ["table", "index"], ["probabilities"], axis=0),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "iris_failing",
        inputs,
        outputs,
        initializer=[table, starts, ends, axes],
    )
    return model(graph)


def disagreeing():
    inputs, outputs = io()
    weights = numpy_helper.from_array(np.tile(np.array([[0.0, 0.1, 0.3]], dtype=np.float32), (4, 1)), "weights")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "iris_disagreeing",
        inputs,
        outputs,
        initializer=[weights],
    )
    return model(graph)


def main():
    ones = np.ones((1, 4), dtype=np.float32)
    iris_row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    for name, m in [("failing", failing()), ("disagreeing", disagreeing())]:
        path = HERE / f"{name}.onnx"
        path.write_bytes(m.SerializeToString())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        label, probabilities = session.run(None, {"input": ones})
        assert label.shape == (1,) and probabilities.shape == (1, 3), name
        try:
            session.run(None, {"input": iris_row})
            fails_on_iris = False
        except Exception:
            fails_on_iris = True
        assert fails_on_iris == (name == "failing"), name
        print(f"{path.relative_to(HERE.parents[2])}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
