"""snnTorch networks through convert → forward/backward → fold → export → verify, bit-exact on dyadic copies."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn as nn

snn = pytest.importorskip("snntorch")

import snntorch_nets as nets  # noqa: E402
from spikingjelly.activation_based import neuron as sj_neuron  # noqa: E402

import sj_realspike as rs  # noqa: E402
from sj_realspike.frameworks import framework_of, reset  # noqa: E402
from sj_realspike.frameworks.snntorch import TernaryLeaky  # noqa: E402
from sj_realspike.neurons import is_neuron  # noqa: E402
from sj_realspike.state import copy_model  # noqa: E402
from sj_realspike.testing import make_dyadic, run, spike_values  # noqa: E402

SEQUENTIAL = ["leaky", "synaptic", "rleaky", "lapicque", "alpha"]


def _converted(net: nn.Module, x: torch.Tensor, **kwargs) -> nn.Module:
    model = rs.convert_model(net, x, **kwargs)
    make_dyadic(model, x)
    return model


def _max_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max())
    return max(_max_diff(p, q) for p, q in zip(a, b, strict=True))


# ------------------------------------------------------------------ fold, bit for bit
@pytest.mark.parametrize("neuron", SEQUENTIAL)
def test_sequential_init_hidden_folds_bit_exact(neuron):
    x = nets.vectors()
    model = _converted(nets.sequential(neuron), x[0])
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["1", "3"]  # the output layer's spikes reach the output
    assert "network output" in report.skipped[0].reason
    trained = run(model, x, steps=True)
    deploy = rs.fold(model)
    assert _max_diff(run(deploy, x, steps=True), trained) == 0.0
    values = spike_values(deploy, x, steps=True)
    assert values["1"] == {0.0, 1.0} and values["3"] <= {0.0, 1.0}


@pytest.mark.parametrize("style", ["leaky", "synaptic", "recurrent"])
def test_state_in_locals_with_the_time_loop_in_forward_folds_bit_exact(style):
    net = nets.Recurrent() if style == "recurrent" else nets.FullyConnected(style)
    x = nets.vectors()
    model = _converted(net, x)
    assert [c.module for c in rs.conversion_report(model).converted] == [
        "rlif1" if style == "recurrent" else "lif1"]
    spk, mem = run(model, x)
    deploy = rs.fold(model)
    spk_d, mem_d = run(deploy, x)
    assert _max_diff((spk_d, mem_d), (spk, mem)) == 0.0
    assert set(spk_d.unique().tolist()) <= {0.0, 1.0}


def test_rleaky_recurrent_weights_absorb_the_amplitude():
    x = nets.vectors()
    model = _converted(nets.sequential("rleaky"), x[0])
    a = rs.amplitude_parameters(model)
    amps = [p.detach().clone() for p in a]
    assert len(amps) == 2 and all((p != 1).any() for p in amps)  # randomized, so the fold has work to do
    w = model[1].recurrent.weight.detach().clone()
    deploy = rs.fold(model)
    assert "1.recurrent" in rs.fold_report(deploy).scaled_synapses
    torch.testing.assert_close(deploy.get_submodule("1").recurrent.weight, w * amps[0], rtol=0, atol=0)


def test_ternary_leaky_folds_bit_exact_with_ternary_spikes():
    x = nets.vectors()
    model = _converted(nets.sequential("leaky"), x[0], spike="ternary")
    converted = rs.conversion_report(model).converted
    assert [(c.module, c.spike) for c in converted] == [("1", "ternary"), ("3", "ternary")]
    assert isinstance(model[1], TernaryLeaky) and model[1].beta == 0.5
    trained = run(model, x, steps=True)
    deploy = rs.fold(model)
    assert _max_diff(run(deploy, x, steps=True), trained) == 0.0
    assert spike_values(deploy, x, steps=True)["1"] == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
def test_conv_tutorial6_folds_bit_exact(granularity):
    x = nets.image()
    model = _converted(nets.conv_tutorial6(), x[0], granularity=granularity)
    assert len(rs.conversion_report(model).converted) == 2
    trained = run(model, x, steps=True)
    deploy = rs.fold(model)
    assert _max_diff(run(deploy, x, steps=True), trained) == 0.0
    assert spike_values(deploy, x, steps=True)["2"] == {0.0, 1.0}


# ------------------------------------------------- snnTorch's own graded_spikes_factor
@pytest.mark.parametrize("learn", [False, True])
def test_graded_spikes_factor_of_a_plain_snntorch_net_folds_into_the_next_synapse(learn):
    x = nets.vectors()
    net = nets.sequential("leaky")
    make_dyadic(net, x[0])
    factors = {"1": torch.tensor([0.5, 1.5, 2.0, -0.75, 1.25, 3.0]), "3": torch.tensor(2.5)}
    for name, g in factors.items():
        net.get_submodule(name).graded_spikes_factor = nn.Parameter(g) if learn else g
    plain = run(net, x, steps=True)
    assert spike_values(net, x, steps=True)["1"] - {0.0} <= {0.5, 1.5, 2.0, -0.75, 1.25, 3.0}

    model = rs.convert_model(net, x[0])
    assert len(rs.conversion_report(model).converted) == 2
    for name, g in factors.items():  # the factor became the amplitude, the neuron sends plain spikes
        neuron = model.get_submodule(name)
        torch.testing.assert_close(neuron.spike_amplitude.a.detach(), g.expand_as(neuron.spike_amplitude.a))
        assert float(neuron.graded_spikes_factor) == 1.0 and not isinstance(neuron.graded_spikes_factor, nn.Parameter)
    assert _max_diff(run(model, x, steps=True), plain) == 0.0
    deploy = rs.fold(model)
    assert _max_diff(run(deploy, x, steps=True), plain) == 0.0
    assert spike_values(deploy, x, steps=True)["1"] == {0.0, 1.0}
    assert float(net[1].graded_spikes_factor.detach()[0]) == 0.5  # the user's network is untouched


def test_graded_spikes_factor_finer_than_the_amplitude_is_refused_naming_the_neuron():
    x = nets.vectors()
    net = nets.sequential("leaky")
    net[1].graded_spikes_factor = torch.arange(1.0, 7.0)
    with pytest.raises(rs.UnsupportedPatternError, match=r"'1'.*graded_spikes_factor\) of shape \(6,\) varies where a layer amplitude"):
        rs.convert_model(net, x[0], granularity="layer")


# ------------------------------------------------------------- training and state
def test_converted_model_trains_and_copies_after_a_step():
    x = nets.vectors()
    model = rs.convert_model(nets.FullyConnected(), x)
    spk, mem = model(x)
    (spk.sum() + mem.sum()).backward()
    amp = model.lif1.spike_amplitude.a
    assert amp.grad is not None and amp.grad.abs().sum() > 0
    assert model.lif1.mem.grad_fn is not None  # snnTorch keeps the membrane, with its history, in a buffer
    twin = copy_model(model)  # deepcopy alone refuses that non-leaf buffer
    assert twin.lif1.mem.grad_fn is None


def test_reset_clears_the_state_of_a_deep_copy():
    x = nets.vectors()
    net = nets.sequential("synaptic")
    net(x[0])
    twin = copy_model(net)
    assert twin[1].mem.numel() > 0
    reset(twin)  # snntorch.utils.reset would miss it: the copy is not in SpikingNeuron.instances
    assert twin[1].mem.numel() == 0 and twin[1].syn.numel() == 0 and net[1].mem.numel() > 0


# --------------------------------------------------------------- export and verify
@pytest.mark.parametrize("build, example", [
    (lambda: nets.sequential("leaky"), lambda: nets.vectors()),
    (lambda: nets.sequential("synaptic"), lambda: nets.vectors()),
    (lambda: nets.sequential("rleaky"), lambda: nets.vectors()),
    (lambda: nets.sequential("lapicque"), lambda: nets.vectors()),
    (lambda: nets.conv_tutorial6(), lambda: nets.image()),
    (lambda: nets.FullyConnected(), lambda: nets.vectors()),
    (lambda: nets.FullyConnected("synaptic"), lambda: nets.vectors()),
    (lambda: nets.Recurrent(), lambda: nets.vectors()),
    (lambda: nets.KeywordState(), lambda: nets.vectors()),
], ids=["leaky", "synaptic", "rleaky", "lapicque", "conv6", "fc-loop", "synaptic-loop", "rleaky-loop", "keyword-loop"])
def test_onnx_is_pure_and_bit_identical_to_the_deploy_model(tmp_path, build, example):
    x = example()
    per_call = x if isinstance(build(), (nets.FullyConnected, nets.Recurrent, nets.KeywordState)) else x[0]
    model = _converted(build(), per_call)
    path = rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    report = rs.verify(model, path, x)
    assert report.comparison("deploy", "onnx").identical and report.comparison("trained", "onnx").identical
    assert report.pure and not report.violations
    values = {n.neuron: set(n.values) for n in report.neurons}
    neurons = [name for name, m in model.named_modules() if is_neuron(m)]
    assert sorted(values) == sorted(neurons) and all(v <= {0.0, 1.0} for v in values.values()), values
    assert sum(v == {0.0, 1.0} for v in values.values()) >= len(neurons) - 1, values  # they fire


def test_ternary_onnx_spikes_are_ternary(tmp_path):
    x = nets.vectors()
    model = _converted(nets.sequential("leaky"), x[0], spike="ternary")
    path = rs.export_onnx(rs.fold(model), tmp_path / "t.onnx", x)
    report = rs.verify(model, path, x)
    assert report.comparison("deploy", "onnx").identical and report.pure
    values = {n.neuron: (n.kind, set(n.values)) for n in report.neurons}
    assert values["1"] == ("ternary", {-1.0, 0.0, 1.0})


def test_alpha_export_is_refused_naming_the_node(tmp_path):
    x = nets.vectors()
    deploy = rs.fold(_converted(nets.sequential("alpha"), x[0]))
    with pytest.raises(rs.UnsupportedPatternError, match=r"node '1'.*Alpha has no export lowering.*Use Leaky"):
        rs.export_onnx(deploy, tmp_path / "a.onnx", x)


# ---------------------------------------------------------------- what is refused
@pytest.mark.parametrize("kwargs, match", [
    ({"inhibition": True}, r"inhibition=True fires only the largest membrane"),
    ({"reset_delay": False}, r"reset_delay=False resets by spk / graded_spikes_factor"),
])
def test_settings_an_amplitude_would_change_are_skipped_with_the_reason(kwargs, match):
    x = nets.vectors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snnTorch warns that inhibition is unstable
        net = nets.sequential("leaky", **kwargs)
    report = rs.conversion_report(rs.convert_model(net, x[0]))
    assert not report.converted
    reasons = {s.module: s.reason for s in report.skipped}
    assert re.search(match, reasons["1"]) and re.search(match, reasons["3"])
    with pytest.raises(rs.UnsupportedPatternError, match=r"'1'.*cannot convert this neuron: " + match):
        rs.convert_model(net, x[0], config=rs.SpikeConfig().set_name("1", rs.SpikeSpec()))


def test_a_network_mixing_frameworks_is_refused():
    net = nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(6, 4),
                        sj_neuron.LIFNode())
    with pytest.raises(rs.UnsupportedPatternError, match=r"'3'.*mixes neurons of snntorch \('1'\) and spikingjelly \('3'\)"):
        rs.convert_model(net, nets.vectors()[0])
    assert framework_of(nets.sequential("leaky")).name == "snntorch"
