import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _torchlib_registry_built_once():
    """``torch.onnx.export(dynamo=True)`` rebuilds its registry of torchlib ops on every call, parsing
    the source of ~500 onnxscript functions: about 40% of exporting a small net. The registry is the
    same every time, so the suite builds it once per opset and hands each export its own copy (fresh
    lists: an export that registers custom ops cannot change the next one's)."""
    from torch.onnx._internal.exporter import _registration

    build = _registration.ONNXRegistry.from_torchlib.__func__
    built: dict[int, _registration.ONNXRegistry] = {}

    def from_torchlib(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        if opset_version not in built:
            built[opset_version] = build(cls, opset_version=opset_version)
        registry = cls()
        registry._opset_version = built[opset_version]._opset_version
        registry.functions = {op: list(decomps) for op, decomps in built[opset_version].functions.items()}
        return registry

    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    yield
    _registration.ONNXRegistry.from_torchlib = original
