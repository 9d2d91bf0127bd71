"""snnTorch networks through convert → forward/backward → fold → export → verify, bit-exact on dyadic copies."""

from __future__ import annotations

import operator
import re
import warnings

import numpy as np
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


class _OneToOneRecurrent(nn.Module):
    """``RLeaky(all_to_all=False, V=0.5)`` with ``spk, mem = rlif(cur, spk, mem)`` in locals: V·s fed back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)
        self.rlif = snn.RLeaky(beta=0.5, all_to_all=False, V=0.5, threshold=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spk, mem = self.rlif.init_rleaky()
        out = []
        for step in range(x.shape[0]):
            spk, mem = self.rlif(self.fc1(x[step]), spk, mem)
            out.append(self.fc2(spk))
        return torch.stack(out)


@pytest.mark.parametrize("spike, converted", [("real", 1), ("ternary", 0)])  # RLeaky has no ternary twin
def test_one_to_one_recurrence_is_a_synapse_in_the_onnx_graph(tmp_path, spike, converted):
    # V·s is the neuron's recurrent synapse (fold scales V by the amplitude), not an unfolded amplitude: purity
    # used to walk through the lowered neuron's ops of the per-call graph and flag the product.
    x = nets.vectors()
    model = _converted(_OneToOneRecurrent(), x, spike=spike)
    assert len(rs.conversion_report(model).converted) == converted
    path = rs.export_onnx(rs.fold(model), tmp_path / "v.onnx", x)
    report = rs.verify(model, path, x)
    assert report.comparison("trained", "onnx").identical and report.pure and not report.violations


class _ScaledSynapticSpikes(nn.Module):
    """``spk, syn, mem = lif(cur, syn, mem)`` in locals, then ``fc2(0.5 * spk)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif, self.fc2 = nn.Linear(8, 6), snn.Synaptic(alpha=0.5, beta=0.5, threshold=0.5), \
            nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        syn, mem = self.lif.init_synaptic()
        out = []
        for step in range(x.shape[0]):
            spk, syn, mem = self.lif(self.fc1(x[step]), syn, mem)
            out.append(self.fc2(0.5 * spk))
        return torch.stack(out)


@pytest.mark.parametrize("spike, converted", [("real", ["lif"]), ("ternary", [])])
def test_a_constant_factor_before_the_spikes_folds_with_or_without_an_amplitude(tmp_path, spike, converted):
    # `0.5 * spk` (the factor first) used to block the amplitude (only `spk * 0.5` passed), and on a neuron left
    # binary (Synaptic has no ternary twin) fold looked for the factor on the (spk, syn, mem) tuple, not on spk.
    x = nets.vectors()
    model = _converted(_ScaledSynapticSpikes(), x, spike=spike)
    assert [c.module for c in rs.conversion_report(model).converted] == converted
    deploy = rs.fold(model)
    assert not [n for n in deploy.graph.nodes if n.target in (operator.mul, torch.mul)]
    assert _max_diff(run(deploy, x), run(model, x)) == 0.0
    report = rs.verify(model, rs.export_onnx(deploy, tmp_path / "c.onnx", x), x)
    assert report.comparison("trained", "onnx").identical and report.pure and not report.violations


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


# -------------------------------------------------------------------------- NIR
def _nir_net(kind: str) -> nn.Module:
    """``init_hidden`` neurons with the reset NIR's LIF/CubaLIF have (``reset_mechanism="zero"``), thresholds 0.5."""
    zero = {"reset_mechanism": "zero", "init_hidden": True, "threshold": 0.5}
    if kind == "linear":
        return nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=0.5, **zero), nn.Linear(6, 6),
                             snn.Leaky(beta=0.5, **zero), nn.Linear(6, 3))
    if kind == "conv":  # conv, strided conv, flatten, linear; per-neuron beta in the linear layer
        return nn.Sequential(nn.Conv2d(1, 4, 3), snn.Leaky(beta=0.5, **zero), nn.Conv2d(4, 4, 3, stride=2),
                             snn.Leaky(beta=0.5, **zero), nn.Flatten(), nn.Linear(36, 8),
                             snn.Leaky(beta=torch.full((8,), 0.5), learn_beta=True, **zero), nn.Linear(8, 3))
    if kind == "synaptic":  # NIR's CubaLIF is Synaptic with the reset right after the spike
        return nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=0.5, **zero), nn.Linear(6, 6),
                             snn.Synaptic(alpha=0.5, beta=0.5, reset_delay=False, **zero), nn.Linear(6, 3))
    raise ValueError(kind)


def _read_back(graph) -> nn.Module:
    """The graph through snnTorch's own importer (``snntorch.import_nir.import_from_nir``).

    snnTorch 1.0 applies NIR's ``Flatten`` dims, which count over one sample's features, from
    the batch dim (``nn.Flatten(0, 2)`` on ``[N, C, H, W]``); the importer's flattens are moved
    one dim on, everything else is its own.
    """
    import contextlib
    import io

    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line and weight-scale notes
        back = import_from_nir(graph)
    for name, m in list(back.named_children()):
        if isinstance(m, nn.Flatten):
            assert (m.start_dim, m.end_dim) == (graph.nodes[name].start_dim, graph.nodes[name].end_dim)
            setattr(back, name, nn.Flatten(m.start_dim + 1, m.end_dim + 1))
    return back


def _run_read_back(back: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """``back``'s outputs over the steps of ``x`` (nirtorch's ``(y, state)`` calls), and each neuron's spike count."""
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: counts.__setitem__(
        name, counts.get(name, 0) + int(out.sum()))) for name, m in back.named_modules() if is_neuron(m)]
    ys = []
    with torch.no_grad():
        for xt in x:
            y, _ = back(xt)
            ys.append(y)
    for h in hooks:
        h.remove()
    return torch.stack(ys), counts


@pytest.mark.parametrize("kind, example, converted, nodes", [
    ("linear", nets.vectors, 2, ["Input", "Affine", "LIF", "Affine", "LIF", "Affine", "Output"]),
    ("conv", lambda: nets.image(), 3,
     ["Input", "Conv2d", "LIF", "Conv2d", "LIF", "Flatten", "Affine", "LIF", "Affine", "Output"]),
    ("synaptic", nets.vectors, 1, ["Input", "Affine", "LIF", "Affine", "CubaLIF", "Affine", "Output"]),
])
def test_folded_net_exports_to_nir_that_snntorchs_importer_reads_back_bit_identical(tmp_path, kind, example,
                                                                                  converted, nodes):
    nir = pytest.importorskip("nir")
    x = example() * 2 if kind == "conv" else example()
    model = rs.convert_model(_nir_net(kind), x[0])
    assert len(rs.conversion_report(model).converted) == converted  # Synaptic(reset_delay=False) stays binary
    make_dyadic(model, x[0])  # random, also negative, amplitudes: fold puts them into the weights
    deploy = rs.fold(model)
    graph = rs.export_nir(deploy, tmp_path / "m.nir", x[0])
    assert [type(n).__name__ for n in graph.nodes.values()] == nodes
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))  # snnTorch's convention, beta = 1/2
    assert np.all(lif.tau == 2 * rs.NIR_DT) and np.all(lif.r == 2.0) and not lif.v_leak.any() and not lif.v_reset.any()
    assert np.all(lif.v_threshold == 0.5)
    back = _read_back(nir.read(tmp_path / "m.nir"))
    leaky = [m for m in back.modules() if is_neuron(m)]
    assert all(m.reset_mechanism == "zero" and not m.reset_delay for m in leaky)  # what NIR's reset reads as
    y, counts = _run_read_back(back, x)
    assert len(counts) == nodes.count("LIF") + nodes.count("CubaLIF") and all(c > 0 for c in counts.values()), counts
    assert torch.equal(y, run(deploy, x, steps=True))
    assert torch.equal(y, run(model, x, steps=True))  # the trained network, amplitudes and all


def test_graded_spikes_factor_of_a_plain_net_is_in_the_nir_weights():
    pytest.importorskip("nir")
    x = nets.vectors()
    net = _nir_net("linear")
    make_dyadic(net, x[0])
    net[1].graded_spikes_factor = torch.tensor(3.0)
    net[3].graded_spikes_factor = nn.Parameter(torch.tensor(3.0))  # learned in plain snnTorch
    graph = rs.export_nir(net, None, x[0])  # a plain net: converted and folded first
    for neuron, synapse in (("_1", "_2___1"), ("_3", "_4___3")):  # the Linear after each neuron carries its 3.0
        assert np.array_equal(graph.nodes[synapse].weight, 3.0 * net[int(neuron[1]) + 1].weight.detach().numpy())
    y, counts = _run_read_back(_read_back(graph), x)
    assert all(c > 0 for c in counts.values()), counts
    assert torch.equal(y, run(net, x, steps=True))  # the plain snnTorch network's own outputs
    assert float(net[1].graded_spikes_factor) == 3.0  # the user's network is untouched


def test_only_leakys_zero_reset_is_naturally_the_reset_nir_neurons_do():
    """Why `SnnTorchAdapter.nir_node` refuses the other resets: snnTorch's delayed reset (the default) equals
    resetting right after the spike, as NIR and snnTorch's importer (``reset_delay=False``) do, only there."""
    x = torch.rand(16, 4, 12, generator=torch.Generator().manual_seed(0)) * 2

    def spikes(neuron: nn.Module) -> torch.Tensor:
        return torch.stack([neuron(xt) for xt in x])

    def pair(cls, **kwargs):
        return [spikes(cls(threshold=1.0, init_hidden=True, reset_delay=delay, **kwargs)) for delay in (True, False)]

    leaky_zero = pair(snn.Leaky, beta=0.5, reset_mechanism="zero")
    assert torch.equal(*leaky_zero) and leaky_zero[0].sum() > 0
    assert not torch.equal(*pair(snn.Leaky, beta=0.5, reset_mechanism="subtract"))
    assert not torch.equal(*pair(snn.Synaptic, alpha=0.5, beta=0.5, reset_mechanism="zero"))


def _leaky_net(**last) -> nn.Module:
    zero = {"reset_mechanism": "zero", "init_hidden": True}
    return nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=0.5, **zero), nn.Linear(6, 3),
                         snn.Leaky(beta=0.5, **{**zero, **last}))


@pytest.mark.parametrize("build, convert, match", [
    (lambda: nets.sequential("leaky"), {},
     r"node '_1'.*Leaky.*reset_mechanism='subtract', snnTorch's default.*reset_mechanism='zero' for NIR"),
    (lambda: nets.sequential("leaky", reset_mechanism="none"), {}, r"node '_1'.*never resets"),
    (lambda: nets.sequential("synaptic", reset_mechanism="zero"), {},
     r"node '_1'.*Synaptic.*reset_delay=True zeroes the whole membrane update"),
    (lambda: nets.sequential("rleaky", reset_mechanism="zero"), {}, r"node '_1'.*RLeaky.*recurrent weights"),
    (lambda: nets.sequential("lapicque", reset_mechanism="zero"), {}, r"node '_1'.*Lapicque has no NIR neuron"),
    (lambda: nets.sequential("alpha", reset_mechanism="zero"), {}, r"node '_1'.*Alpha's excitatory and inhibitory"),
    (lambda: nets.sequential("leaky", reset_mechanism="zero"), {"spike": "ternary"},
     r"node '_1'.*TernaryLeaky.*ternary spikes"),
    (lambda: _leaky_net(graded_spikes_factor=3.0), {}, r"node '_3'.*graded_spikes_factor=3, which fold did not"),
    (lambda: _leaky_net(output=True), {}, r"node 'getitem_1'.*item 1 of what '_3' \(Leaky\).*output=False"),
    (lambda: nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=1.0, reset_mechanism="zero", init_hidden=True),
                           nn.Linear(6, 3)), {}, r"node '_1'.*beta = 1 \(no leak\)"),
    (lambda: _leaky_net(threshold=-0.25), {}, r"node '_3'.*threshold is negative"),
    (lambda: nets.conv_tutorial6(), {}, r"node '_1'.*MaxPool2d.*NIR has no max pooling"),
])
def test_what_nir_cannot_carry_is_refused_naming_the_node(tmp_path, build, convert, match):
    pytest.importorskip("nir")
    x = nets.image() if "MaxPool" in match else nets.vectors()
    model = rs.convert_model(build(), x[0], **convert)
    path = tmp_path / "refused.nir"
    with pytest.raises(rs.UnsupportedPatternError, match=match):
        rs.export_nir(rs.fold(model), path, x[0])
    assert not path.exists()


class _GradedReadout(nn.Module):
    """A time loop whose output neuron sends graded spikes (``graded_spikes_factor=0.25``) to the output."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(8, 16), snn.Leaky(beta=0.5)
        self.fc2, self.lif2 = nn.Linear(16, 4), snn.Leaky(beta=0.5, graded_spikes_factor=0.25)

    def forward(self, x):
        mem1, mem2, out = self.lif1.init_leaky(), self.lif2.init_leaky(), []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


def test_an_output_neurons_graded_spikes_are_its_read_out_not_an_unfolded_amplitude(tmp_path):
    # The factor scales what the network returns, not spikes sent to a synapse: verify FAILed it as "an
    # amplitude that was not folded". Scaled spikes into a synapse still are one (test_verify, test_export).
    torch.manual_seed(0)
    x = torch.rand(4, 2, 8) * 4
    model = rs.convert_model(_GradedReadout(), x)
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["lif1"] and [s.module for s in report.skipped] == ["lif2"]
    make_dyadic(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    result = rs.verify(model, tmp_path / "m.onnx", x)
    assert result.violations == [] and result.bit_identical, str(result)


class _DeltaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.d1 = nn.Linear(8, 16), snn.DeltaLeaky(beta=0.5, delta_threshold=0.5, init_hidden=True)
        self.fc2, self.lif2 = nn.Linear(16, 4), snn.Leaky(beta=0.5, init_hidden=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spk, _ = self.d1(self.fc1(x))  # DeltaLeaky returns (spk, (mem, mem_prev)) even with init_hidden
        return self.lif2(self.fc2(spk))


def test_reset_is_each_neurons_own_so_a_subclass_keeps_running():
    """``DeltaLeaky`` (snnTorch's own ``Leaky`` subclass) resets its state to ``None`` and tests for it:
    the empty tensor a ``Leaky`` resets to broke its next step."""
    torch.manual_seed(0)
    x, net = nets.vectors(), _DeltaNet()
    fresh = copy_model(net)
    model = rs.convert_model(net, x[0])
    assert model.d1.mem is None and model.lif2.mem.numel() == 0
    with torch.no_grad():
        for t in range(x.shape[0]):
            assert torch.equal(model(x[t]), fresh(x[t]))
    reset(model)
    assert model.d1.mem is None and model.lif2.mem.numel() == 0


def test_a_subclass_that_makes_its_spikes_itself_is_skipped_not_folded_wrong():
    """``DeltaLeaky``'s own forward never calls ``fire``, where snnTorch neurons carry the amplitude: converted,
    it kept emitting binary spikes while fold scaled the Linear after it (deploy 0.79 off the trained model)."""
    torch.manual_seed(0)
    x = nets.vectors()
    report = rs.conversion_report(rs.convert_model(_DeltaNet(), x[0]))
    assert {s.module: s.reason for s in report.skipped}["d1"] == (
        "DeltaLeaky's forward does not apply the amplitude where snntorch neurons make their spikes (a subclass "
        "that makes them itself), so its spikes would stay binary")
    assert not report.converted


class _ExplicitIF(snn.SpikingNeuron):
    """A user's IF neuron on ``SpikingNeuron`` whose state is a required argument: ``forward(x, mem)``."""

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mem = mem + x
        spk = self.fire(mem)
        return spk, mem - spk.detach() * self.threshold


class _ExplicitIFNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.n1 = nn.Linear(8, 16), _ExplicitIF()
        self.fc2, self.n2, self.fc3 = nn.Linear(16, 16), snn.Leaky(beta=0.5), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1, mem2, out = torch.zeros(x.shape[1], 16), self.n2.init_leaky(), []
        for t in range(x.shape[0]):
            spk1, mem1 = self.n1(self.fc1(x[t]), mem1)
            spk2, mem2 = self.n2(self.fc2(spk1), mem2)
            out.append(self.fc3(spk2))
        return torch.stack(out)


def test_a_neuron_whose_forward_requires_its_state_is_skipped_for_that_reason():
    # The check calls the neuron on its input alone; the net calls it with (x, mem): no TypeError of "its input".
    torch.manual_seed(0)
    model = rs.convert_model(_ExplicitIFNet(), nets.vectors())
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["n2"]
    (skipped,) = report.skipped
    assert skipped.module == "n1"
    assert re.fullmatch(r"_ExplicitIF: its forward cannot be called with its input alone \(missing a required "
                        r"argument: 'mem'\), and the check has only that input, so whether it emits spikes cannot be "
                        r"checked", skipped.reason), skipped.reason
