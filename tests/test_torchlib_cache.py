"""cached_torchlib_registry: one torchlib registry per opset, a fresh copy per export, torch's own outside."""

from __future__ import annotations

import nets
import onnx
import torch

import sj_realspike as rs
from sj_realspike import torchlib_cache
from sj_realspike.testing import make_dyadic, run


def test_exports_share_one_build_and_get_their_own_copies(tmp_path, monkeypatch):
    from torch.onnx._internal.exporter import _registration

    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    builds = []
    build = original.__func__

    def counting(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        builds.append(opset_version)
        return build(cls, opset_version=opset_version)

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counting))
    monkeypatch.setattr(torchlib_cache, "_BUILT", {})
    with torchlib_cache.cached_torchlib_registry():
        first = _registration.ONNXRegistry.from_torchlib()
        second = _registration.ONNXRegistry.from_torchlib()
    assert builds == [_registration._constants.TORCHLIB_OPSET]  # built once
    op = next(iter(first.functions))
    assert first.functions[op] == second.functions[op] and first.functions[op] is not second.functions[op]
    first.functions[op].clear()  # an export registering or dropping ops changes its own copy only
    assert second.functions[op]
    assert _registration.ONNXRegistry.__dict__["from_torchlib"].__func__ is counting  # restored on exit


def test_repeated_exports_stay_bit_identical(tmp_path):
    x = nets.example("m", size=16)
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, spike="ternary", granularity="channel")
    make_dyadic(model, x)
    for name in ("a.onnx", "b.onnx"):
        rs.export_onnx(model, tmp_path / name, x)
        assert torch.equal(rs.OnnxRunner(tmp_path / name, threads=1)(x), run(model, x))
    a, b = (onnx.load(tmp_path / n) for n in ("a.onnx", "b.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert torchlib_cache._BUILT  # the exports took the cached registry
