"""lean_decompositions: the exporter's second trace skipped only where renaming nodes gives the same graph."""

from __future__ import annotations

import contextlib

import nets
import onnx
import onnx.numpy_helper
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike import decompose
from sj_realspike import export as export_module
from sj_realspike.testing import make_dyadic, run

aten = torch.ops.aten


@pytest.fixture
def retraces(monkeypatch):
    """How often torch's decomposition (the program's second trace) ran."""
    calls = []
    original = torch.export.ExportedProgram.run_decompositions

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counting)
    return calls


@pytest.fixture
def renamed(monkeypatch):
    """The targets `lean_decompositions` renamed nodes to, per export."""
    seen = []
    original = decompose._renames

    def spy(*args):
        renames = original(*args)
        seen.append(None if renames is None else sorted(str(t) for t, _, _ in renames.values()))
        return renames

    monkeypatch.setattr(decompose, "_renames", spy)
    return seen


def _graph(path) -> tuple[list[str], list[tuple[tuple[int, ...], bytes]]]:
    """The node types in order and the initializers' shapes and bytes (names differ between exports)."""
    proto = onnx.load(path)
    weights = sorted((tuple(i.dims), onnx.numpy_helper.to_array(i).tobytes()) for i in proto.graph.initializer)
    return [n.op_type for n in proto.graph.node], weights


@pytest.mark.parametrize("stream", [False, True], ids=["unrolled", "stream"])
def test_renamed_program_exports_the_graph_torchs_decomposition_gives(tmp_path, monkeypatch, retraces, renamed,
                                                                       stream):
    # A hard reset to v_r = -0.5 (1 - s: rsub), spikes cast from comparisons (to.dtype) and a global
    # average pool (adaptive_avg_pool2d): every rename, on a net that spikes.
    x = nets.example("m", size=16)
    net = nets.custom("shortcut", "LIF")
    net.sn2.v_reset = -0.5
    model = rs.convert_model(net, x, spike="ternary", granularity="channel")
    make_dyadic(model, x)
    rs.export_onnx(model, tmp_path / "lean.onnx", x, stream=stream)
    assert retraces == [] and set(renamed[-1]) == {"aten._to_copy.default", "aten.mean.dim", "aten.sub.Tensor"}
    with monkeypatch.context() as m:
        m.setattr(export_module, "lean_decompositions", contextlib.nullcontext)
        rs.export_onnx(model, tmp_path / "full.onnx", x, stream=stream)
    assert len(retraces) == 1
    assert _graph(tmp_path / "lean.onnx") == _graph(tmp_path / "full.onnx")  # node for node, weight for weight
    runs = [rs.OnnxRunner(tmp_path / f"{v}.onnx", threads=1)(x) for v in ("lean", "full")]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], run(model, x))
    assert len(renamed) == 1  # the full export did not go through the lean path


def test_an_op_to_decompose_runs_torchs_decomposition(tmp_path, retraces, renamed):
    # adaptive pooling to 2x2 (not a global mean) has no one-op decomposition: torch's full one runs.
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode(), layer.AdaptiveAvgPool2d(2),
                        layer.Flatten(), layer.Linear(16, 10))
    functional.set_step_mode(net, "m")
    x = nets.example("m", size=8)
    model = rs.convert_model(net, x, spike="real", granularity="layer")
    make_dyadic(model, x)
    rs.export_onnx(model, tmp_path / "a.onnx", x)
    assert renamed == [None] and len(retraces) == 1
    assert torch.equal(rs.OnnxRunner(tmp_path / "a.onnx", threads=1)(x), run(model, x))


def _one_node_graph(target, *args) -> fx.Graph:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(target, (x, *args)))
    return graph


@pytest.mark.parametrize(("target", "args"), [
    (aten.add_.Tensor, (1.0,)),  # mutates its input: the decomposition functionalizes it
    (aten.adaptive_avg_pool2d.default, ([2, 2],)),
    (aten.rsub.Scalar, (1.0, 2)),  # alpha = 2
    (aten.to.dtype, (torch.float16, False, True)),  # copy=True
], ids=["mutating", "adaptive-pool-2x2", "rsub-alpha", "to-copy"])
def test_what_renaming_cannot_do_is_left_to_torch(target, args):
    assert decompose._renames(_one_node_graph(target, *args), {aten.add_.Tensor}, {}) is None


def test_a_subgraph_is_left_to_torch():
    graph = _one_node_graph(aten.relu.default)
    with graph.inserting_before(next(iter(graph.nodes))):
        graph.get_attr("true_graph_0")  # a control-flow branch
    assert decompose._renames(graph, {aten.relu.default}, {}) is None
    assert decompose._renames(_one_node_graph(aten.relu.default), {aten.relu.default}, {}) == {}


def test_torchs_own_decomposition_is_back_outside():
    from torch.onnx._internal.exporter import _fx_passes

    original = _fx_passes.decompose_with_registry
    with decompose.lean_decompositions():
        assert _fx_passes.decompose_with_registry is not original
    assert _fx_passes.decompose_with_registry is original


def test_global_average_pool_rename_is_the_mean():
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(F.adaptive_avg_pool2d(x, 1), x.mean((-1, -2), keepdim=True))
