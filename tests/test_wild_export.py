"""export → ONNX → verify for networks whose input is not [T, N, ...] or whose forward loops over time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import wild

import sj_realspike as rs
from sj_realspike.testing import make_dyadic


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(name: str, tmp_path, dyadic: bool = True, **convert_kwargs):
    net, x = wild.WILD[name].build()
    model = rs.convert_model(net, x, **convert_kwargs)
    if dyadic:
        make_dyadic(model, x)
    path = tmp_path / f"{name}.onnx"
    rs.export_onnx(rs.fold(model), path, x)
    return model, x, path


@pytest.mark.parametrize("name, layout, time_steps", [
    ("csnn", "N,C,H,W", "in forward"),             # [N, C, H, W] image repeated T times inside
    ("time_loop_sequence", "T,N,C,H,W", "2"),          # for t in range(x.shape[0]) over single-step modules
    ("speech_permute", "N,C,H,W", "in forward"),    # [N, C, T, F] permuted to [T, N, ...] inside
])
def test_layouts_export_and_verify_bit_identical(name, layout, time_steps, tmp_path):
    model, x, path = _export(name, tmp_path)
    runner = rs.OnnxRunner(path)
    assert runner.metadata["sj_realspike.input_layout"] == layout
    assert runner.metadata["sj_realspike.time_steps"] == time_steps
    report = rs.verify(model, path, x)
    assert report.ok, report.failures
    assert report.comparison("trained", "onnx").identical and report.purity == 1.0


def test_image_input_keeps_its_batch_dim_dynamic(tmp_path):
    model, x, path = _export("csnn", tmp_path)
    runner = rs.OnnxRunner(path)
    bigger = torch.rand(5, *x.shape[1:])
    y = runner(bigger.numpy())
    model.eval()
    from spikingjelly.activation_based import functional
    functional.reset_net(model)
    with torch.no_grad():
        expected = model(bigger)
    assert np.asarray(y).shape == tuple(expected.shape)


def test_user_time_loop_exports_with_its_own_T(tmp_path):
    # Primed (not dyadic) weights: on the dyadic grid the tiny output layer stays silent.
    model, x, path = _export("time_loop_mlp", tmp_path, dyadic=False)
    assert rs.OnnxRunner(path).metadata["sj_realspike.step_mode"] == "s"
    report = rs.verify(model, path)  # the default input is scaled until the output layer fires too
    assert report.ok, report.failures
    assert report.bit_identical and report.purity == 1.0


def test_a_graph_specialized_to_T_refuses_another_T(tmp_path):
    model, x, path = _export("time_loop_sequence", tmp_path)
    deploy = rs.fold(model)
    assert rs.fold_report(deploy).fixed_input_dims == {0: 2}
    with pytest.raises(ValueError, match=r"captured for 2 there .*loop over x\.shape\[0\]"):
        rs.export_onnx(deploy, tmp_path / "t3.onnx", torch.rand(3, *x.shape[1:]))


@pytest.mark.parametrize("name, neuron_path", [("ilif", "sn1"), ("analog_surrogate", "sn1")])
def test_neurons_that_never_emit_spikes_are_not_counted_as_impure(name, neuron_path, tmp_path):
    # The model's own ILIF emits counts: not sj-realspike's doing, so purity does not speak for it.
    model, x, path = _export(name, tmp_path, dyadic=False)
    report = rs.verify(model, path, x, rtol=1e-3)
    assert report.not_spiking == [neuron_path]
    assert report.purity == 1.0 and report.neurons and neuron_path not in {n.neuron for n in report.neurons}
    assert "emit non-spike values in the model itself" in str(report)


def test_models_with_several_outputs_are_compared_on_all(tmp_path):
    import torch.nn as nn
    from spikingjelly.activation_based import functional, layer, neuron

    class TwoHeads(nn.Module):  # SpikeDHS returns (logits, aux)
        def __init__(self):
            super().__init__()
            self.fc1, self.sn, self.fc2, self.fc3 = layer.Linear(6, 8), neuron.IFNode(), layer.Linear(8, 3), \
                layer.Linear(8, 2)

        def forward(self, x):
            s = self.sn(self.fc1(x))
            return self.fc2(s), self.fc3(s)

    torch.manual_seed(0)
    net = TwoHeads()
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 6) * 4
    model = rs.convert_model(net, x)
    make_dyadic(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "two.onnx", x)
    report = rs.verify(model, tmp_path / "two.onnx", x)
    assert report.ok, report.failures
    assert report.comparison("trained", "onnx").shapes[0] == (2 * 2 * 3 + 2 * 2 * 2,)


def test_a_kept_neuron_whose_own_forward_cannot_be_exported_is_named(tmp_path):
    # MaskedPSN has no lowering and branches on a buffer's value (lambda_ >= 1) in its forward, so
    # torch.onnx.export fails deep inside SpikingJelly: the error must name the neuron, not the exporter.
    with pytest.raises(rs.UnsupportedPatternError, match=r"node 'sn1': MaskedPSN has no export lowering, and its "
                                                         r"own forward cannot be exported to ONNX \(GuardOnData"):
        _export("masked_psn", tmp_path)
    assert not list(tmp_path.iterdir())  # no partial file


class _RunningMax(torch.nn.Module):
    """A "has this neuron fired yet" read-out: the running maximum of the spikes over time (``dim=0``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        from spikingjelly.activation_based import neuron
        self.fc0, self.sn, self.fc1 = torch.nn.Linear(2, 4), neuron.LIFNode(tau=2.0, step_mode="m"), \
            torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc1(torch.cummax(self.sn(self.fc0(x)), dim=self.dim).values)


@pytest.mark.parametrize("stream, dim", [(False, 0), (True, -1)])  # a stream takes no running max over time
def test_an_op_without_an_onnx_translation_is_named(tmp_path, stream, dim):
    # torch.onnx's "No ONNX function found for aten.cummax" names no node of the user's network.
    x = torch.randint(0, 9, (2, 2, 2)).float() / 4
    deploy = rs.fold(_RunningMax(dim), example_input=x)
    with pytest.raises(rs.UnsupportedPatternError, match=r"node 'cummax': torch.onnx has no ONNX translation of "
                                                         r"cummax \(aten.cummax\)"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x, stream=stream)
    assert not list(tmp_path.iterdir())


def test_a_stateful_module_a_time_flattened_export_would_run_once_is_refused(tmp_path):
    # A single-step net stepped by the user: exported on [T*N, ...], the recurrent container ran once for all
    # steps from a fresh state (ONNX 1.9 off the deploy model; only verify noticed).
    from spikingjelly.activation_based import layer, neuron
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32),
                              layer.ElementWiseRecurrentContainer(neuron.LIFNode(), element_wise_function=torch.add),
                              torch.nn.Linear(32, 32), neuron.LIFNode(), torch.nn.Linear(32, 10))
    x = torch.randint(0, 9, (3, 2, 16)).float() / 4 * 3
    deploy = rs.fold(rs.convert_model(net, x[0]))
    with pytest.raises(rs.UnsupportedPatternError, match=r"node '1': ElementWiseRecurrentContainer keeps state "
                                                         r"between time steps \(v, y\), and this single-step model is "
                                                         r"exported on the time-flattened sequence"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("container", ["LinearRecurrentContainer", "ElementWiseRecurrentContainer"])
def test_a_multi_step_net_with_a_recurrent_container_exports_exactly(tmp_path, container):
    # The container calls its neuron one step at a time in either step mode: export refused "neurons run in
    # both step modes", with a remedy (set_step_mode 'm') the user had applied; convert counted 0 of 0.
    from spikingjelly.activation_based import functional, layer, neuron
    torch.manual_seed(0)
    kind = getattr(layer, container)
    inner = kind(neuron.LIFNode(), 32, 32) if container.startswith("Linear") else \
        kind(neuron.LIFNode(), element_wise_function=torch.add)
    net = torch.nn.Sequential(layer.Linear(16, 32), inner, layer.Linear(32, 32), neuron.LIFNode(), layer.Linear(32, 10))
    functional.set_step_mode(net, "m")
    x = torch.randint(0, 9, (3, 2, 16)).float() / 4 * 3
    model = rs.convert_model(net, x)
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["3"] and report.total == 2
    assert report.skipped[0].reason == (f"it runs inside '1' ({container}), which is kept whole and calls it itself, "
                                        "once per step, so no amplitude can be inserted after it")
    make_dyadic(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    verdict = rs.verify(model, tmp_path / "m.onnx", x)
    assert verdict.ok and verdict.bit_identical, str(verdict)


class _BatchMixing(torch.nn.Module):
    """Single-step net whose forward subtracts the batch mean: exact on [N, ...], wrong on [T*N, ...]."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.sn = neuron.LIFNode(tau=2.0)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        s = self.sn(self.conv(x))
        s = s - s.mean(0, keepdim=True)
        return self.fc(s.flatten(1))


def test_a_single_step_graph_that_mixes_samples_is_refused_at_export(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 9, (2, 3, 2, 8, 8)).float() / 4
    model = rs.convert_model(_BatchMixing(), x[0])
    deploy = rs.fold(model)
    with pytest.raises(rs.UnsupportedPatternError,
                       match=r"node '(mean|sub)': the single-step graph does not compute each sample of the batch "
                             r"on its own .* Switch the network to multi-step mode "
                             r"\(functional.set_step_mode\(net, 'm'\)\) before convert_model"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x)
    assert not list(tmp_path.iterdir())
