"""fold(): bit-exact on dyadic models, pure spikes, idempotent, refuses what is not exact."""

from __future__ import annotations

import nets
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike.fold import NotConvertedWarning
from sj_realspike.spiking import amplitude_of
from sj_realspike.testing import (
    assert_exact_in_fp32,
    firing_rate,
    make_dyadic,
    run,
    spike_values,
)

SPIKE_SETS = {"real": {0.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}


def _check_fold(net: nn.Module, x: torch.Tensor, spike: str, granularity: str, steps: bool = False,
                negative: bool = True) -> rs.FoldReport:
    example = x[0] if steps else x
    model = rs.convert_model(net, example, spike=spike, granularity=granularity)
    make_dyadic(model, example, negative=negative)
    expected = assert_exact_in_fp32(model, x, steps)
    rate = firing_rate(model, x, steps)
    assert 0.02 < rate < 0.8, f"test net fires at {rate:.3f}: equality would be (nearly) vacuous"

    deploy = rs.fold(model)
    got = run(deploy, x, steps)
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()} (must be 0 on dyadic)"
    # Every neuron of the deploy model emits exactly the spike alphabet of its kind.
    allowed = SPIKE_SETS[spike]
    for name, values in spike_values(deploy, x, steps).items():
        assert values <= allowed, f"{name} emits {sorted(values)}"
    assert not any(isinstance(m, rs.Amplitude) for m in deploy.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    return rs.fold_report(deploy)


NETS, STEP_MODES, SPIKES, GRANULARITIES = ["pool", "shortcut", "sum", "mlp"], ["m", "s"], ["real", "ternary"], \
    ["layer", "channel", "element"]
NEURON_NAMES = ["IF", "LIF", "PLIF", "LIF-soft"]
# Every net x step mode x spike x granularity; the neuron type rotates over them so that it meets every
# value of every other factor, and every pair of them (e.g. each neuron type in each net with each
# granularity), in 48 cells instead of the 192 of the full product.
CUSTOM_CELLS = [(net, NEURON_NAMES[(i + j + 2 * k + l) % 4], step, spike, granularity)
                for i, net in enumerate(NETS) for j, step in enumerate(STEP_MODES)
                for k, spike in enumerate(SPIKES) for l, granularity in enumerate(GRANULARITIES)]


@pytest.mark.parametrize("net_name,neuron_name,step_mode,spike,granularity", CUSTOM_CELLS)
def test_custom_nets_fold_bit_exact(net_name, neuron_name, step_mode, spike, granularity):
    x = nets.example("m", size=16)
    report = _check_fold(nets.custom(net_name, neuron_name, step_mode), x, spike, granularity, steps=step_mode == "s")
    # PoolNet's element-wise amplitudes before max pooling / avg pooling into a conv are skipped
    # at convert time: those two neurons stay binary.
    skipped = 2 if (net_name, granularity) == ("pool", "element") else 0
    if (net_name, granularity) == ("sum", "element"):
        assert len(report.merged_linears) == 3  # avg-pool + flatten + Linear, one per addend
    kinds = list(report.neurons.values())
    assert kinds.count("ternary" if spike == "ternary" else "binary") == len(kinds) - (skipped if spike == "ternary" else 0)


ZOO_CELLS = [
    ("spiking_resnet18", "IF", "real", "channel"),
    ("spiking_resnet18", "LIF", "ternary", "layer"),
    ("spiking_resnet18", "PLIF", "real", "element"),
    ("sew_resnet18", "IF", "real", "element"),
    ("sew_resnet18", "LIF", "real", "channel"),
    ("sew_resnet18", "PLIF", "ternary", "channel"),
    ("sew_resnet18", "IF", "ternary", "layer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_name,neuron_name,spike,granularity", ZOO_CELLS)
def test_zoo_fold_bit_exact(model_name, neuron_name, spike, granularity):
    x = nets.example("m", size=32)
    report = _check_fold(nets.zoo(model_name, neuron_name), x, spike, granularity)
    if granularity == "element":
        assert report.unshared_convs and report.parameter_growth > 1.5
    else:
        assert not report.unshared_convs
        if model_name == "spiking_resnet18":
            assert report.parameter_growth < 1.0  # BN folded away, every synapse scaled in place
        else:  # SEW: a conv reading a residual sum of k spike trains gets k scaled copies
            assert report.parameter_growth > 1.0


@pytest.mark.slow
def test_zoo_fold_single_step_mode():
    x = nets.example("m", size=16)
    _check_fold(nets.zoo("sew_resnet18", "LIF", step_mode="s"), x, "real", "channel", steps=True)


@pytest.mark.slow
@pytest.mark.parametrize("spike,granularity", [("real", "channel"), ("ternary", "element")])
def test_spiking_vgg11_bn_fold_bit_exact(spike, granularity):
    # 32x32 is the smallest input VGG-11's five max-pools accept.
    x = nets.example("m", size=32, T=1, N=2)
    report = _check_fold(nets.zoo("spiking_vgg11_bn", "IF"), x, spike, granularity)
    if granularity == "element":
        # conv neurons before max pooling are skipped; the others feed unshared convs
        assert report.unshared_convs


def test_realistic_weights_flip_rate_at_noise_floor():
    """Random (non-dyadic) weights, calibrated firing: folded in float64, spikes flip only at ties."""
    torch.manual_seed(0)
    x = torch.rand(4, 8, 3, 16, 16) * 2
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, granularity="channel")
    with torch.no_grad():
        for a in rs.amplitude_parameters(model):
            a.uniform_(0.5, 1.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.5)
                m.momentum = None
    model.train()
    run(model, x)
    model.eval()
    deploy = rs.fold(model)

    spikes = {}
    for tag, m in (("converted", model), ("deploy", deploy)):
        outs = []
        hooks = [mod.register_forward_hook(lambda mod, i, o: outs.append(o)) for mod in m.modules()
                 if rs.neurons.is_neuron(mod)]
        y = run(m, x)
        for h in hooks:
            h.remove()
        spikes[tag] = (torch.cat([o.flatten() for o in outs]), y)
    a, ya = spikes["converted"]
    b, yb = spikes["deploy"]
    rate = float((a != 0).float().mean())
    flips = float(((a != 0) != (b != 0)).float().mean())  # converted neurons emit a·s
    print(f"firing rate {rate:.3f}, spike flips deploy vs converted {flips:.2e}")
    assert 0.05 < rate < 0.5
    assert flips <= 1e-3, f"spike flip rate {flips:.2e}"
    assert (ya.mean(0).argmax(-1) == yb.mean(0).argmax(-1)).float().mean() == 1.0
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)


def test_fold_is_idempotent_and_copies():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, granularity="element")
    make_dyadic(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy = rs.fold(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, rs.Amplitude) for m in model.modules())

    again = rs.fold(deploy)
    assert again.code == deploy.code
    assert again.state_dict().keys() == deploy.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in deploy.state_dict().items())
    assert torch.equal(run(again, x), run(deploy, x))


def test_fold_inplace_takes_the_model_apart_instead_of_copying():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x)
    make_dyadic(model, x)
    sn = model.get_submodule("features.2")
    copied = rs.fold(model)
    assert copied.get_submodule("features.2") is not sn
    deploy = rs.fold(model, inplace=True)
    assert isinstance(deploy, torch.fx.GraphModule) and deploy.get_submodule("features.2") is sn
    assert not any(isinstance(m, rs.Amplitude) for m in deploy.modules())
    assert torch.equal(run(deploy, x), run(copied, x))


def test_negative_amplitude_before_max_pool_is_refused():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x, granularity="channel")
    make_dyadic(model, x, negative=False)
    with torch.no_grad():
        amplitude_of(model.get_submodule("features.2")).a[3] = -0.5
    with pytest.raises(rs.UnsupportedPatternError, match=r"negative amplitude before max pooling.*features_3"):
        rs.fold(model)


def test_element_amplitude_into_reflect_padded_conv_is_refused():
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode(),
                        layer.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), neuron.IFNode(),
                        layer.Flatten(), layer.Linear(4 * 16 * 16, 2))
    functional.set_step_mode(net, "m")
    x = nets.example("m")
    with pytest.raises(rs.UnsupportedPatternError, match=r"needs an unshared Conv2d with zero padding .*'reflect'"):
        rs.convert_model(net, x, config=rs.SpikeConfig().set_name("1", rs.SpikeSpec(granularity="element")))
    # channel-wise amplitudes commute with reflect padding: folded exactly
    model = rs.convert_model(net, x, granularity="channel")
    make_dyadic(model, x)
    assert torch.equal(run(rs.fold(model), x), assert_exact_in_fp32(model, x))


def test_fold_of_plain_network_fuses_batchnorm_only():
    x = nets.example("m")
    net = nets.custom("sum", "LIF")
    make_dyadic(net, x)
    with pytest.warns(NotConvertedWarning, match=r"SumNet holds no spike amplitudes \(was sj_realspike.convert_model"):
        deploy = rs.fold(net, example_input=x)
    assert torch.equal(run(deploy, x), run(net, x))
    assert len(rs.fold_report(deploy).fused_batchnorms) == 3
    assert set(rs.fold_report(deploy).neurons.values()) == {"binary"}


def test_shortcut_becomes_diagonal_synapse_and_residual_sum_splits_synapses():
    x = nets.example("m")
    shortcut = rs.fold(rs.convert_model(nets.custom("shortcut", "IF"), x, granularity="channel"))
    assert rs.fold_report(shortcut).diagonal_synapses == ["sn2__in_stem_2"]
    sums = rs.fold(rs.convert_model(nets.custom("sum", "IF"), x, granularity="channel"))
    # b2's conv reads stem + b1 spikes: one scaled copy per addend
    assert {n for n in rs.fold_report(sums).scaled_synapses if n.startswith("b2.0__")} == {
        "b2.0__stem_2", "b2.0__b1_2"}


def _neuron_states(model: nn.Module) -> list:
    return [m.v for m in model.modules() if rs.neurons.is_neuron(m)]


def test_passes_leave_neuron_state_reset_and_deploy_runs_on_any_batch(tmp_path):
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, spike="ternary")
    assert all(v == 0.0 for v in _neuron_states(model))
    make_dyadic(model, x)  # ONNX and PyTorch agree bit for bit below
    model(x)  # the user runs it and forgets to reset
    deploy = rs.fold(model)
    assert all(v == 0.0 for v in _neuron_states(deploy))
    with torch.no_grad():
        deploy(x)  # state left over from a run must not leak into the exported graph
    rs.export_onnx(deploy, tmp_path / "m.onnx", x)
    assert torch.equal(rs.OnnxRunner(tmp_path / "m.onnx")(x), run(deploy, x))
    small, large = run(deploy, x), run(deploy, nets.example("m", N=5, seed=1))
    assert small.shape == (2, 2, 10) and large.shape == (2, 5, 10)
    assert torch.equal(run(deploy, x), small)


def test_data_parallel_wrapper_is_refused_with_remedy():
    model = rs.convert_model(nets.custom("pool", "IF"), nets.example("m"))
    with pytest.raises(rs.UnsupportedPatternError, match=r"fold\(model.module\)"):
        rs.fold(nn.DataParallel(model))


def test_a_torch_compiled_model_is_the_model_it_wraps(tmp_path):
    # The README trains converted models under torch.compile: fold, reports and export said the compiled model
    # was "not produced by convert_model" or that its forward "takes no positional argument".
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x)
    make_dyadic(model, x)
    compiled = torch.compile(model)
    assert len(rs.conversion_report(compiled).converted) == len(rs.conversion_report(model).converted) > 0
    deploy = rs.fold(compiled)
    assert torch.equal(run(deploy, x), run(rs.fold(model), x))
    rs.export_onnx(compiled, tmp_path / "m.onnx", x)
    assert rs.verify(compiled, tmp_path / "m.onnx", x).ok
    assert len(rs.conversion_report(rs.convert_model(torch.compile(nets.custom("pool", "IF")), x)).converted) > 0


def test_a_model_cast_to_half_after_conversion_folds_on_its_own_dtype():
    # The default example (zeros of the recorded float32 shape) met float16 weights: "Pass an example input
    # shaped like a training batch", blaming the shape of an input the user never gave.
    x = nets.example("m")
    model = rs.convert_model(nets.custom("pool", "IF"), x)
    make_dyadic(model, x)
    deploy = rs.fold(model.half())
    assert next(deploy.parameters()).dtype == torch.float16
    assert torch.equal(run(deploy, x.half()), run(model, x.half()))


class _ConstantFactorNet(nn.Module):
    """conv → IF → ``factor · s`` → max-pool → conv → IF → linear; ``sn1`` is kept binary by the config."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.conv1, self.sn1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.pool = layer.MaxPool2d(2)
        self.conv2, self.sn2 = layer.Conv2d(4, 4, 3, padding=1), neuron.IFNode()
        self.fc = layer.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        s = self.sn1(self.conv1(x)) * self.factor
        s = self.sn2(self.conv2(self.pool(s)))
        return self.fc(s.flatten(2))


def _binary_sn1(factor: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    net = _ConstantFactorNet(factor)
    functional.set_step_mode(net, "m")
    x = nets.example("m", size=16)
    model = rs.convert_model(net, x, config=rs.SpikeConfig().set_name("sn1", None))
    make_dyadic(model, x)
    return model, x, assert_exact_in_fp32(model, x, False)


def test_constant_factor_on_binary_spikes_is_folded_into_the_synapse():
    model, x, expected = _binary_sn1(2.0)
    deploy = rs.fold(model)
    assert torch.equal(run(deploy, x, False), expected)
    # The conv after the pool now reads sn1's spikes directly: no multiplication is left.
    assert not [n for n in deploy.graph.nodes if n.op == "call_function" and "mul" in str(n.target)]
    assert "conv2" in " ".join(rs.fold_report(deploy).scaled_synapses)


def test_negative_constant_factor_before_max_pooling_stays_in_fold_and_is_refused_by_export(tmp_path):
    model, x, expected = _binary_sn1(-1.0)
    deploy = rs.fold(model)  # the model's own factor: fold keeps the function as it is
    assert torch.equal(run(deploy, x, False), expected)
    assert [n for n in deploy.graph.nodes if n.op == "call_function" and "mul" in str(n.target)]
    # ... but conv2 would receive {-1, 0}, not spikes: no pure export exists.
    with pytest.raises(rs.UnsupportedPatternError, match=r"node 'mul': multiplies the spikes of 'sn1' by -1"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_plain_network_folds_its_constant_factors(tmp_path):
    net = _ConstantFactorNet(0.5)  # never converted: export folds it, recording shapes on the way
    functional.set_step_mode(net, "m")
    x = nets.example("m", size=16)
    make_dyadic(net, x)
    rs.export_onnx(net, tmp_path / "plain.onnx", x)
    report = rs.verify(net, tmp_path / "plain.onnx", x)
    assert report.pure and report.bit_identical, str(report)
