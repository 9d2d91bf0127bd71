"""`weightless`: the checks' copy of an ONNX model keeps every type and shape, drops the weight data."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sj_realspike.weightless import weightless


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Greater", ["c", "b_th"], ["g"]),
         helper.make_node("Cast", ["g"], ["y"], to=TensorProto.FLOAT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w, b, numpy_helper.from_array(np.zeros(1, np.float32), "b_th")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="sj_realspike.mode", value="unrolled")
    return model


def _inferred(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    return {v.name: v.type for v in [*g.value_info, *g.output]}


def test_weightless_keeps_types_and_shapes_and_drops_the_data():
    model = _model()
    bare = weightless(model)
    assert len(bare.graph.initializer) == 0
    assert {i.name for i in bare.graph.input} == {"x", "w", "b", "b_th"}
    assert _inferred(bare) == _inferred(model)
    assert _inferred(bare)["c"].tensor_type.shape.dim[1].dim_value == 4
    assert [(p.key, p.value) for p in bare.metadata_props] == [("sj_realspike.mode", "unrolled")]
    assert bare.opset_import == model.opset_import and bare.ir_version == model.ir_version
    onnx.checker.check_model(bare, full_check=True)
    assert len(model.graph.initializer) == 3  # the model itself is untouched
