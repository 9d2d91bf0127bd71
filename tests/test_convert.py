"""convert_model(): amplitude insertion, ternary swap, refusals, training, the user's net untouched."""

from __future__ import annotations

import copy

import nets
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import sj_realspike as rs
from sj_realspike.fold import capture_converted
from sj_realspike.spiking import amplitude_of, base_class
from sj_realspike.testing import assert_exact_in_fp32, firing_rate, make_dyadic, run, spike_values


def amplitudes(model) -> dict[str, rs.Amplitude]:
    """{neuron path: the amplitude it carries}, for every converted neuron."""
    return {n: amplitude_of(m) for n, m in model.named_modules() if amplitude_of(m) is not None}


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("granularity,conv_shape,linear_shape", [
    ("layer", (), ()), ("channel", (8, 1, 1), (32,)), ("element", (8, 4, 4), (32,))])
def test_amplitude_shapes_per_granularity_and_step_mode(step_mode, granularity, conv_shape, linear_shape):
    x = nets.example("m")
    example = x if step_mode == "m" else x[0]
    model = rs.convert_model(nets.custom("pool", "IF", step_mode), example, granularity=granularity)
    amps = amplitudes(model)
    assert amps["sn_fc"].a.shape == linear_shape
    if granularity == "element":  # neurons before max / average pooling into a conv are skipped
        assert "features.2" not in amps and "features.6" not in amps
        assert amps["features.13"].a.shape == (16, 2, 2)
        assert amps["features.10"].a.shape == conv_shape
    else:
        assert amps["features.2"].a.shape == conv_shape
    assert all(torch.all(a.a == 1.0) for a in amps.values())
    # The same amplitude broadcasts over [T, N, ...] and [N, ...]:
    y = run(model, x, steps=step_mode == "s")
    assert y.shape == (2, 2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("model_name,count", [("spiking_resnet18", 17), ("sew_resnet18", 20),
                                              ("spiking_vgg11_bn", 10)])
def test_zoo_models_convert_every_neuron(model_name, count):
    x = nets.example("m", size=32, T=1)
    model = rs.convert_model(nets.zoo(model_name, "LIF"), x, spike="ternary", granularity="channel")
    report = rs.conversion_report(model)
    assert len(report.converted) == count and not report.skipped
    assert {c.neuron for c in report.converted} == {"TernaryLIFNode"}
    y = model(x)
    assert y.shape == (1, 2, 10)


@pytest.mark.parametrize("neuron_name", ["IF", "LIF", "PLIF", "LIF-soft"])
def test_ternary_swap_keeps_hyperparameters_and_emits_minus_one_zero_one(neuron_name):
    net = nets.custom("shortcut", neuron_name)
    sg = surrogate.ATan(alpha=3.0)
    for m in net.modules():
        if isinstance(m, neuron.BaseNode):
            m.surrogate_function, m.detach_reset, m.v_threshold = sg, True, 0.5
    original = net.get_submodule("sn1")
    with torch.no_grad():
        if isinstance(original, neuron.ParametricLIFNode):
            original.w.fill_(-0.4)
    x = nets.example("m") * 4
    model = rs.convert_model(net, x, spike="ternary")
    swapped = model.get_submodule("sn1")
    assert base_class(swapped).__name__ == {"IF": "TernaryIFNode", "LIF": "TernaryLIFNode", "LIF-soft": "TernaryLIFNode",
                                      "PLIF": "TernaryParametricLIFNode"}[neuron_name]
    # (a copy of) the user's own surrogate, with its settings
    assert type(swapped.surrogate_function) is surrogate.ATan and swapped.surrogate_function.alpha == 3.0
    assert (swapped.v_threshold, swapped.v_reset, swapped.detach_reset, swapped.step_mode) == (
        0.5, original.v_reset, True, "m")
    if hasattr(original, "tau"):
        assert (swapped.tau, swapped.decay_input) == (original.tau, original.decay_input)
    if isinstance(original, neuron.ParametricLIFNode):
        assert torch.equal(swapped.w, original.w) and swapped.decay_input == original.decay_input

    values = set()
    hook = swapped.register_forward_hook(lambda m, i, o: values.update(o.unique().tolist()))
    with torch.no_grad():
        model(x - 0.75)
    hook.remove()
    assert values == {-1.0, 0.0, 1.0}


def test_ternary_plif_matches_ternary_lif_at_fixed_tau():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 32) * 2
    for v_reset, decay_input in [(0.0, True), (None, False), (0.25, True)]:
        plif = rs.TernaryParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_reset=v_reset, step_mode="m")
        lif = neuron.TernaryLIFNode(tau=2.0, decay_input=decay_input, v_reset=v_reset, step_mode="m")
        assert torch.equal(plif(x), lif(x))


def test_neuron_without_ternary_counterpart():
    net = nn.Sequential(layer.Conv2d(3, 4, 3), neuron.QIFNode(), layer.Flatten(), layer.Linear(4 * 14 * 14, 2))
    functional.set_step_mode(net, "m")
    x = nets.example("m")
    model = rs.convert_model(net, x, spike="ternary")
    assert "has no ternary counterpart" in rs.conversion_report(model).skipped[0].reason
    with pytest.raises(rs.UnsupportedPatternError, match=r"node '1': cannot convert this neuron: QIFNode has no ternary"):
        rs.convert_model(net, x, config=rs.SpikeConfig().set_name("1", rs.SpikeSpec(spike="ternary")))


def test_gradients_reach_amplitudes_and_training_step_changes_them():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("sum", "LIF"), x, granularity="element")
    amps = list(rs.amplitude_parameters(model))
    assert len(amps) == 3
    amp_ids = {id(a) for a in amps}
    opt = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in amp_ids], "weight_decay": 5e-4},
        {"params": amps, "weight_decay": 0.0}], lr=0.5)
    before = [a.detach().clone() for a in amps]
    loss = model(x * 4).mean(0).logsumexp(-1).mean()
    loss.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in amps)
    opt.step()
    assert all(not torch.equal(b, a) for b, a in zip(before, amps))


def test_amplitude_gradient_matches_plain_multiplication():
    """The int8-saving autograd function gives exactly the gradients of s * a."""
    torch.manual_seed(0)
    s = (torch.rand(3, 2, 4, 5, 5) > 0.6).float().requires_grad_()
    amp = rs.Amplitude((4, 1, 1), "channel", init=1.0)
    with torch.no_grad():
        amp.a.uniform_(-1, 2)
    g = torch.randn(3, 2, 4, 5, 5)
    amp(s).backward(g)
    a_ref = amp.a.detach().clone().requires_grad_()
    s_ref = s.detach().clone().requires_grad_()
    (s_ref * a_ref).backward(g)
    torch.testing.assert_close(amp.a.grad, a_ref.grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(s.grad, s_ref.grad)


def test_reset_net_resets_converted_and_swapped_neurons():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, spike="ternary")
    with torch.no_grad():
        first = model(x)
    states = [m.v for m in model.modules() if isinstance(m, neuron.BaseNode)]
    assert all(isinstance(v, torch.Tensor) for v in states)
    functional.reset_net(model)
    assert all(m.v == 0.0 for m in model.modules() if isinstance(m, neuron.BaseNode))
    with torch.no_grad():
        assert torch.equal(model(x), first)


def test_users_net_is_not_mutated():
    net = nets.custom("shortcut", "PLIF")
    x = nets.example("m")
    modules_before = dict(net.named_modules())
    state_before = copy.deepcopy(net.state_dict())
    model = rs.convert_model(net, x, spike="ternary", granularity="element")
    model(x).sum().backward()
    assert dict(net.named_modules()) == modules_before
    assert all(torch.equal(state_before[k], v) for k, v in net.state_dict().items())
    assert all(type(m) is neuron.ParametricLIFNode for n, m in net.named_modules() if "sn" in n)
    assert not any(isinstance(m, rs.Amplitude) for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_inplace_reuses_the_users_modules():
    net = nets.custom("pool", "IF")
    model = rs.convert_model(net, nets.example("m"), inplace=True)
    assert model.get_submodule("features.0") is net.features[0]


def test_converting_a_converted_model_is_refused():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x)
    with pytest.raises(rs.UnsupportedPatternError, match="already converted.*fold"):
        rs.convert_model(model, x)


def test_conversion_keeps_training_mode_and_bn_statistics():
    net = nets.custom("sum", "IF")
    x = nets.example("m")
    model = rs.convert_model(net, x)
    assert model.training
    assert torch.equal(model.get_submodule("stem.1").running_mean, torch.zeros(8))


def test_report_lists_converted_and_skipped_neurons():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x, granularity="element")
    text = str(rs.conversion_report(model))
    assert text.startswith("3 of 5 neurons converted, 2 skipped, 0 left alone by config\n")
    assert "features.2" in text and "element-wise amplitude before max pooling" in text
    assert "8x4x4" in text


# ------------------------------------------------------------------------ refusals
def test_sew_and_converts_every_neuron_and_folds_exactly():
    """SEW 'AND' multiplies spike tensors: (α⊙A)⊙(β⊙B) = (αβ)⊙(A⊙B), which the next conv absorbs."""
    x = nets.example("m")
    net = nets.GateNet(nets.NEURONS["IF"], "AND")
    functional.set_step_mode(net, "m")
    model = rs.convert_model(net, x)
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["stem.2", "branch.2", "head.2"] and not report.skipped
    make_dyadic(model, x)
    assert 0.02 < firing_rate(model, x) < 0.8
    deploy = rs.fold(model)
    assert torch.equal(run(deploy, x), assert_exact_in_fp32(model, x))
    assert all(v <= {0.0, 1.0} for v in spike_values(deploy, x).values())


def test_sew_iand_is_skipped_or_refused():
    x = nets.example("m")
    net = nets.GateNet(nets.NEURONS["IF"], "IAND")
    functional.set_step_mode(net, "m")
    report = rs.conversion_report(rs.convert_model(net, x))
    # (1 - s) ⊙ b: not linear in s, but linear in b (its amplitude passes the product)
    assert [s.module for s in report.skipped] == ["stem.2"]
    assert [c.module for c in report.converted] == ["branch.2", "head.2"]
    with pytest.raises(rs.UnsupportedPatternError, match=r"subtracts spike tensors \(e.g. SEW 'IAND'"):
        rs.convert_model(net, x, config=rs.SpikeConfig().set_name("stem.2", rs.SpikeSpec()))


def test_element_amplitude_before_max_pool_refused_when_named():
    with pytest.raises(rs.UnsupportedPatternError,
                       match=r"node 'features.2': cannot convert this neuron: element-wise amplitude before max pooling"):
        rs.convert_model(nets.custom("pool", "IF"), nets.example("m"),
                         config=rs.SpikeConfig().set_name("features.2", rs.SpikeSpec(granularity="element")))


def test_spikes_reaching_the_output_are_skipped():
    net = nn.Sequential(layer.Linear(4, 3), neuron.IFNode())
    functional.set_step_mode(net, "m")
    report = rs.conversion_report(rs.convert_model(net, torch.rand(2, 2, 4)))
    assert report.skipped[0].module == "1" and "network output" in report.skipped[0].reason


def test_a_neuron_whose_spikes_are_never_read_is_skipped_not_counted():
    """An unused read-out (Meta-SpikeFormer's last neuron without distillation) has nothing to fold into."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.sn1, self.fc2, self.sn2 = layer.Linear(4, 4), neuron.IFNode(), layer.Linear(4, 2), \
                neuron.IFNode()

        def forward(self, x):
            y = self.fc2(self.sn1(self.fc1(x)))
            self.sn2(y)  # computed, never read
            return y

    model = rs.convert_model(Net(), torch.rand(2, 4))
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["sn1"] and list(amplitudes(model)) == ["sn1"]
    assert [(s.module, s.reason) for s in report.skipped] == [("sn2", "its spikes are never used")]


def test_nonlinear_consumer_is_skipped():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.sn, self.fc2 = layer.Linear(4, 4), neuron.IFNode(), layer.Linear(4, 2)

        def forward(self, x):
            return self.fc2(torch.sigmoid(self.sn(self.fc1(x))))

    report = rs.conversion_report(rs.convert_model(Net(), torch.rand(2, 4)))
    assert "'sigmoid' (sigmoid) consumes scaled spikes but is not linear" in report.skipped[0].reason


def test_shape_dependent_forward_converts():
    """``if x.ndim == 2`` defeats torch.fx; capture answers it from the example, the model keeps its forward."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.sn, self.fc2 = layer.Linear(4, 4), neuron.IFNode(), layer.Linear(4, 2)
            functional.set_step_mode(self, "m")

        def forward(self, x):
            if x.ndim == 2:  # [N, F]: repeat over T = 2 steps
                x = x.unsqueeze(0).repeat(2, 1, 1)
            return self.fc2(self.sn(self.fc1(x)))

    net = Net()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(net)
    model = rs.convert_model(net, torch.rand(3, 4) * 4)
    report = rs.conversion_report(model)
    assert (report.total, [c.module for c in report.converted], report.skipped) == (1, ["sn"], [])
    assert list(amplitudes(model)) == ["sn"]
    assert amplitudes(model)["sn"].a.shape == (4,)
    # The user's forward still takes both ranks, and other T and batch sizes.
    assert run(model, torch.rand(5, 4)).shape == (2, 5, 2)
    assert run(model, torch.rand(3, 5, 4)).shape == (3, 5, 2)


def test_wrong_example_shape_names_the_failing_node():
    with pytest.raises(rs.UnsupportedPatternError,
                       match=r"node 'features_0': running the example input through the model failed here "
                             r"\(ValueError: expected x with shape \[T, N, C, H, W\], .*\[2, 3, 16, 16\]"):
        rs.convert_model(nets.custom("pool", "IF", "m"), nets.example("m")[0])


def test_amplitude_nodes_do_not_claim_the_neurons_module_scope():
    # Exporters name ops by nn_module_stack: the amplitude must not be attributed to the neuron.
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF", "m"), x)
    gm, _, after = capture_converted(copy.deepcopy(model), x)
    assert sorted(after) == ["features.10", "features.13", "features.2", "features.6", "sn_fc"]
    amps = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in after.values()]
    assert len(amps) == 5
    for node in amps:
        neuron_path = node.args[0].target
        scopes = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        assert neuron_path not in scopes, (node.name, scopes)
        assert scopes == [p for p, _ in node.args[0].meta.get("nn_module_stack", {}).values()][:len(scopes)]
        assert tuple(node.meta["tensor_meta"].shape) == tuple(node.args[0].meta["tensor_meta"].shape)
