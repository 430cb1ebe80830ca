"""Build the hostile model files the hardening tests load through the repository API.

Run from the repository root:

    .venv/bin/python tests/models/hostile/generate.py

Each file is tiny and valid ONNX (onnx.checker passes), yet loading it naively takes the process
down. The server must refuse each one with a clear error and keep serving everything else.

    expand_bomb.onnx        a 4-element constant Expanded to the constant shape [2^30, 4], then
                            added to the input: a loader that folds constants materialises 16 GiB.
    constant_of_shape.onnx  ConstantOfShape of the constant shape [2^20, 2^20] (4 TiB of floats),
                            added to the input.
    symbolic.onnx           Relu of an input whose dims are both symbolic (["a", "b"]): harmless
                            on its own; a config.toml that pins dims such as [1099511627776]
                            makes a generated warm-up sample enormous.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8


def model(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cairn-tests"
    )
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=False)
    return m


def expand_bomb() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Expand", ["c", "shape"], ["big"]),
            helper.make_node("Add", ["x", "big"], ["y"]),
        ],
        "expand_bomb",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 30, 4])],
        initializer=[
            numpy_helper.from_array(np.ones(4, dtype=np.float32), "c"),
            numpy_helper.from_array(np.array([1 << 30, 4], dtype=np.int64), "shape"),
        ],
    )
    return model(graph)


def constant_of_shape() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["big"],
                value=numpy_helper.from_array(np.array([1.0], dtype=np.float32)),
            ),
            helper.make_node("Add", ["x", "big"], ["y"]),
        ],
        "constant_of_shape",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 20, 1 << 20])],
        initializer=[
            numpy_helper.from_array(np.array([1 << 20, 1 << 20], dtype=np.int64), "shape")
        ],
    )
    return model(graph)


def symbolic() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "symbolic",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    return model(graph)


def main() -> None:
    for name, build in [
        ("expand_bomb", expand_bomb),
        ("constant_of_shape", constant_of_shape),
        ("symbolic", symbolic),
    ]:
        data = build().SerializeToString()
        (HERE / f"{name}.onnx").write_bytes(data)
        print(f"{name}.onnx: {len(data)} bytes")


if __name__ == "__main__":
    main()
