"""convert → fold on networks written the way others write them (tests/wild.py), one test per construct.

Each test checks how many neurons got an amplitude (a conversion that converts nothing must
fail here), that the fold is bit-exact on a dyadic copy whose neurons fire, and the reasons
given for what is skipped or refused.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import wild
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike.spiking import amplitude_of
from sj_realspike.testing import assert_exact_in_fp32, firing_rate, make_dyadic, run


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(threads)


def _convert(name: str, granularity: str = "channel", spike: str = "real", **kwargs):
    net, x = wild.WILD[name].build()
    model = rs.convert_model(net, x, spike=spike, granularity=granularity, **kwargs)
    return net, x, model, rs.conversion_report(model)


def _fold_exact(model, x) -> rs.FoldReport:
    make_dyadic(model, x)
    expected = assert_exact_in_fp32(model, x)
    assert firing_rate(model, x) > 0.01, "the comparison would be vacuous: the net does not fire"
    deploy = rs.fold(model)
    got = run(deploy, x)
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()}"
    return rs.fold_report(deploy)


def _converted(report) -> set[str]:
    return {c.module for c in report.converted}


def _convert_images(net: nn.Module, scale: float = 4.0, **convert) -> tuple[nn.Module, torch.Tensor]:
    """``net`` (multi-step) converted on a seeded ``[2, 2, 3, 8, 8]`` image sequence in ``[0, scale)``, and the input."""
    torch.manual_seed(0)
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * scale
    return rs.convert_model(net, x, **convert), x


def test_rank_dependent_forward_converts_every_neuron_and_folds_exactly():
    # MS-ResNet: `if x.ndim == 4: x = x.unsqueeze(0).repeat(T, ...)` on an [N, C, H, W] image.
    _, x, model, report = _convert("ms_resnet")
    assert x.dim() == 4 and len(report.converted) == report.total == 5
    assert rs.report.record_of(model)["input_layout"] == "N,C,H,W"
    _fold_exact(model, x)


def test_seq_to_ann_container_resnet_is_not_hollow():
    # Official SEW-ResNet code: every synapse inside layer.SeqToANNContainer(nn.Conv2d, nn.BatchNorm2d).
    _, x, model, report = _convert("sew_resnet_add")
    assert _converted(report) == set(wild.WILD["sew_resnet_add"].expect)
    assert sum(1 for _ in rs.amplitude_parameters(model)) == 6
    fold = _fold_exact(model, x)
    assert len(fold.scaled_synapses) >= 6


def test_flatten_reshape_round_trip_into_linear_uses_channels_last():
    # Spikformer's MLP: x.flatten(0, 1) -> Linear -> BN1d (transposed) -> reshape(T, B, N, C) -> LIF.
    _, x, model, report = _convert("spikformer")
    assert {"mlp.fc1_lif", "mlp.fc2_lif", "attn.attn_lif", "patch_embed.rpe_lif"} <= _converted(report)
    a = amplitude_of(model.get_submodule("mlp.fc1_lif")).a
    assert a.shape == (1, 16)  # tokens x channels: one amplitude per channel, the dim the Linear reads
    assert tuple(amplitude_of(model.get_submodule("patch_embed.rpe_lif")).a.shape) == (8, 1, 1)  # conv layout
    _fold_exact(model, x)


def test_attention_matmul_folds_at_layer_granularity_and_refuses_channel_q_k():
    _, x, model, report = _convert("spikformer", granularity="layer")
    assert len(report.converted) == report.total == 10
    fold = _fold_exact(model, x)
    assert any("attn_lif" in d for d in fold.diagonal_synapses)  # q·k·v scales enter the attention membrane
    # Channel-wise q and k: q @ kᵀ contracts the channels, and α_q(c)·α_k(c) is not constant.
    _, _, _, report = _convert("spikformer", granularity="channel")
    skipped = {s.module: s.reason for s in report.skipped}
    assert set(skipped) == {"attn.q_lif", "attn.k_lif"}
    assert all("contracts an index along which the amplitudes of both operands vary" in r for r in skipped.values())
    with pytest.raises(rs.UnsupportedPatternError, match=r"attn\.q_lif.*contracts an index"):
        rs.convert_model(wild.WILD["spikformer"].build()[0], x,
                         config=rs.SpikeConfig().set_name("attn.q_lif", rs.SpikeSpec(granularity="channel")))


def test_elementwise_spike_products_fold():
    # QKFormer: attn_lif's spikes ⊙ k_lif's spikes; the scales multiply, exactly.
    _, x, model, report = _convert("qkformer")
    assert len(report.converted) == report.total == 5
    _fold_exact(model, x)


def test_user_time_loop_shares_one_amplitude_per_module():
    net, x, model, report = _convert("time_loop_mlp")
    assert report.total == 2 and report.calls == {"fc.2": 2, "fc.4": 2}  # modules, not calls
    assert _converted(report) == {"fc.2"}
    assert "reach the network output" in report.skipped[0].reason
    assert [tuple(p.shape) for p in rs.amplitude_parameters(model)] == [(16,)]
    fold = _fold_exact(model, x)
    assert fold.fixed_input_dims == {}  # T is the model's own attribute, batch stays free
    # The converted model is the user's class: another batch size and training mode just work.
    assert type(model) is type(net)
    model.train()
    y = model(torch.rand(5, 1, 8, 8))
    y.sum().backward()
    assert amplitude_of(model.get_submodule("fc.2")).a.grad is not None


def test_time_loop_over_the_input_is_recorded_as_fixed_T():
    _, x, model, _ = _convert("time_loop_sequence")
    fold = _fold_exact(model, x)
    assert fold.fixed_input_dims == {0: 2}  # `for t in range(x.shape[0])` unrolled T=2 times
    # The converted model itself still runs any T (its own forward).
    model.eval()
    assert model(torch.rand(3, 2, 2, 8, 8)).shape == (2, 3)


def test_state_read_in_forward_is_refused_naming_the_module():
    _, x, model, report = _convert("dqsn")
    assert report.state_reads == [("fc.3", "v")]
    assert "fc.3" in {s.module for s in report.skipped}  # NonSpikingLIF: its output is a membrane
    with pytest.raises(rs.UnsupportedPatternError, match=r"fc\.3.*reads this module's state 'v'"):
        rs.fold(model)


def test_image_input_repeated_inside_forward():
    _, x, model, report = _convert("csnn")
    assert x.dim() == 4 and _converted(report) == {"conv_fc.2", "conv_fc.6", "conv_fc.10"}
    assert rs.report.record_of(model)["input_layout"] == "N,C,H,W"
    assert _fold_exact(model, x).fixed_input_dims == {}


@pytest.mark.parametrize("name, module, reason", [
    ("ilif", "sn1", r"ILIFNode emits values \{0, 1, .*spike counts"),
    ("ottt", "features.1", r"OTTTLIFNode returns a list of 2 values .* in training mode"),
    ("charge_only_readout", "net.3", r"outputs real values"),
    ("analog_surrogate", "sn1", r"real values"),
    ("psn", "sn1", r"PSN emits spikes but is not a SpikingJelly BaseNode"),
])
def test_neurons_without_binary_spikes_are_skipped_with_the_reason(name, module, reason):
    _, _, _, report = _convert(name)
    skipped = {s.module: s.reason for s in report.skipped}
    assert module in skipped
    assert re.search(reason, skipped[module]), skipped[module]


def test_a_conversion_that_converts_nothing_warns_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="sj_realspike.convert"):
        _, _, model, report = _convert("ottt")
    assert len(report.converted) == 0
    assert str(report).startswith("0 of 2 neurons converted, 2 skipped")
    assert any("converted 0 of 2 neurons" in r.getMessage() for r in caplog.records)
    assert not list(rs.amplitude_parameters(model))


def test_converted_model_keeps_user_class_and_accepts_other_T_and_batch():
    net, x, model, report = _convert("ms_resnet_seq")
    assert len(report.converted) == 5
    assert type(model) is type(net) and isinstance(model.head_lif, neuron.LIFNode)
    model.train()
    for T, N in ((3, 1), (1, 4)):
        functional.reset_net(model)
        y = model(torch.rand(T, N, *x.shape[2:]))
        assert y.shape[-2] == N
        y.sum().backward()
    assert all(p.grad is not None for p in rs.amplitude_parameters(model))
    net.eval()
    with torch.no_grad():  # and in eval mode the image branch of the same forward
        functional.reset_net(model)
        model.eval()
        assert model(torch.rand(3, 3, 16, 16)).shape[-2] == 3


def test_fused_qkv_neuron_folds_with_one_amplitude_per_slice():
    # One LIF of 3C channels gives q, k and v (reshape + chunk): per-channel amplitudes cannot
    # factor out of q @ kᵀ, one amplitude per q/k/v slice can.
    _, _, _, report = _convert("fused_qkv_attention")
    assert {s.module for s in report.skipped} == {"attn.qkv_lif"}
    config = rs.SpikeConfig().set_name("attn.qkv_lif", rs.SpikeSpec(granularity="slice", slices=3))
    _, x, model, report = _convert("fused_qkv_attention", config=config)
    assert len(report.converted) == report.total == 4
    amp = amplitude_of(model.get_submodule("attn.qkv_lif"))
    assert amp.a.shape == (3, 1) and amp.full().shape == (24, 1)
    _fold_exact(model, x)
    with pytest.raises(rs.UnsupportedPatternError, match=r"do not split into 5 equal slices"):
        _convert("fused_qkv_attention",
                 config=rs.SpikeConfig().set_name("attn.qkv_lif", rs.SpikeSpec(granularity="slice", slices=5)))


def test_fold_of_a_root_sequential_keeps_its_layers():
    # An amplitude must not become one more layer of a root nn.Sequential.
    from spikingjelly.activation_based import layer
    import torch.nn as nn
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode(), layer.Conv2d(4, 4, 3, padding=1),
                        neuron.IFNode(), layer.Flatten(), layer.Linear(4 * 8 * 8, 2))
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * 4
    model = rs.convert_model(net, x)
    assert len(rs.conversion_report(model).converted) == 2
    _fold_exact(model, x)


def test_branch_on_tensor_values_is_refused_not_frozen():
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.sn, self.fc2 = nn.Linear(4, 4), neuron.IFNode(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.sn(self.fc1(x))) if x.sum() > 0 else self.fc2(x)

    x = torch.rand(2, 4) * 4
    model = rs.convert_model(Net(), x)
    report = rs.conversion_report(model)
    assert len(report.value_branches) == 1 and "branches on tensor values" in str(report)
    with pytest.raises(rs.UnsupportedPatternError, match=r"branches \(or loops\) on tensor values"):
        rs.fold(model)
    with pytest.raises(rs.UnsupportedPatternError, match=r"branches \(or loops\) on tensor values"):
        rs.fold(model, example_input=x)


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
def test_concatenated_spikes_fold(granularity):
    # DARTS-style cells (SpikeDHS) concatenate the spikes of several neurons along channels.
    class CatNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), layer.BatchNorm2d(4), neuron.LIFNode()
            self.c2, self.b2, self.n2 = layer.Conv2d(3, 4, 3, padding=1), layer.BatchNorm2d(4), neuron.IFNode()
            self.c3, self.n3 = layer.Conv2d(8, 4, 3, padding=1), neuron.IFNode()
            self.flat, self.fc = layer.Flatten(), layer.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            spikes = torch.cat([self.n1(self.b1(self.c1(x))), self.n2(self.b2(self.c2(x)))], dim=2)
            return self.fc(self.flat(self.n3(self.c3(spikes))))

    torch.manual_seed(0)
    net = CatNet()
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * 4
    model = rs.convert_model(net, x, granularity=granularity)
    assert len(rs.conversion_report(model).converted) == 3
    _fold_exact(model, x)


class _TimeScale(nn.Module):
    """TEBN's learnable per-step scale: a forward that reads its own parameter (``x * self.p``)."""

    def __init__(self, steps: int):
        super().__init__()
        self.p = nn.Parameter(torch.full((steps, 1, 1, 1, 1), 0.75))

    def forward(self, x):
        return x * self.p


class _ParamsAndBuffers(nn.Module):
    """Parameters and buffers read in forward: a traced submodule's own parameter between conv and neuron,
    the root's learnable scale on the input, and spikes times an expression of a registered buffer
    (SpikingResformer's ``attn * (1 / sqrt(self.firing_rate * d))``) before a synapse."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.c1, self.scale, self.n1 = layer.Conv2d(3, 4, 3, padding=1), _TimeScale(2), neuron.IFNode()
        self.register_buffer("rate", torch.full((1, 1, 4, 1, 1), 0.25))
        self.c2, self.n2 = layer.Conv2d(4, 4, 3, padding=1), neuron.LIFNode()
        self.flat, self.fc = layer.Flatten(), layer.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        s = self.n1(self.scale(self.c1(x * self.gain)))
        s = s * (1.0 / torch.sqrt(self.rate * 4))
        return self.fc(self.flat(self.n2(self.c2(s))))


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_parameters_and_buffers_read_in_forward_are_traced_and_fold(granularity):
    # fx answers `self.p` with a proxy of its own: reading the value through it recursed (the module was
    # kept whole, or the root could not be captured), and a buffer's node had no shape (a KeyError).
    torch.manual_seed(0)
    net = _ParamsAndBuffers()
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * 4
    model = rs.convert_model(net, x, granularity=granularity)
    report = rs.conversion_report(model)
    assert _converted(report) == {"n1", "n2"} and not report.skipped
    assert len(list(rs.amplitude_parameters(model))) == 2
    _fold_exact(model, x)


class _TokenMix(nn.Module):
    """SpikingResformer's DSSA in small: the spikes feed a patch conv and a product that contracts their
    channels (``yᵀ @ s``), so their amplitude is one per column (channels last) instead of per channel."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.patch = layer.Conv2d(4, 4, 2, 2)
        self.mix, self.n2 = layer.Linear(64, 8), neuron.IFNode()
        self.fc = layer.Linear(16 * 8, 2)

    def forward(self, x):
        s = self.n1(self.c1(x))
        attn = self.patch(s).flatten(3).transpose(-1, -2) @ s.flatten(3)
        return self.fc(self.n2(self.mix(attn)).flatten(2))


def test_a_channels_last_amplitude_into_a_conv_folds_into_an_unshared_conv():
    # The conv saw the [W] amplitude as a 1-row image and fold failed inside F.unfold.
    torch.manual_seed(0)
    net = _TokenMix()
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * 4
    model = rs.convert_model(net, x, granularity="channel")
    assert tuple(amplitude_of(model.n1).a.shape) == (1, 1, 8)
    assert len(list(rs.amplitude_parameters(model))) == 2
    assert len(_fold_exact(model, x).unshared_convs) == 1


class _DefaultsLIF(neuron.LIFNode):
    """SpikingResformer's neuron: a LIFNode subclass that only sets constructor defaults."""

    def __init__(self):
        super().__init__(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=True, step_mode="m")


class _ChargeLIF(_DefaultsLIF):
    """A subclass that changes the charge: not a LIFNode's dynamics any more."""

    def neuronal_charge(self, x):
        self.v = self.v + 2 * x


def _subclassed_net(neuron_class: type) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron_class(), layer.Conv2d(4, 4, 3, padding=1),
                        neuron_class(), layer.Flatten(), layer.Linear(4 * 8 * 8, 2))
    functional.set_step_mode(net, "m")
    return net


def test_a_neuron_subclass_that_only_sets_defaults_is_its_base_for_ternary_and_export(tmp_path, caplog):
    x = torch.rand(2, 2, 3, 8, 8) * 4
    real = rs.convert_model(_subclassed_net(_DefaultsLIF), x, granularity="channel")
    with caplog.at_level(logging.WARNING, logger="sj_realspike"):
        rs.export_onnx(rs.fold(real), tmp_path / "real.onnx", x)
    assert "no compact lowering" not in caplog.text  # lowered like a LIFNode, not exported through its forward
    model = rs.convert_model(_subclassed_net(_DefaultsLIF), x, spike="ternary", granularity="layer")
    assert len(rs.conversion_report(model).converted) == 2 and not rs.conversion_report(model).skipped
    _fold_exact(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    report = rs.verify(model, tmp_path / "m.onnx", x)
    assert report.bit_identical and report.pure and {n.kind for n in report.neurons} == {"ternary"}, str(report)

    changed = rs.convert_model(_subclassed_net(_ChargeLIF), x, spike="ternary", granularity="layer")
    reasons = {s.reason for s in rs.conversion_report(changed).skipped}
    assert reasons == {"_ChargeLIF has no ternary counterpart (IFNode, LIFNode, ParametricLIFNode have; it "
                       "overrides neuronal_charge of LIFNode, which may change its dynamics)"}


class _Unsqueezed(nn.Module):
    """(Un)squeeze around the layers: spikes given a channel dim for a Conv1d, and TCJA's VotingLayer
    (``avg_pool1d(x.unsqueeze(1)).squeeze(1)``) on the time-averaged output spikes."""

    def __init__(self):
        super().__init__()
        self.fc1, self.n1 = layer.Linear(4, 8), neuron.IFNode()
        self.conv, self.n2 = layer.Conv1d(1, 2, 3, padding=1), neuron.IFNode()
        self.fc2, self.n3 = layer.Linear(16, 2), neuron.IFNode()

    def forward(self, x):
        s = self.n1(self.fc1(x)).unsqueeze(2)
        y = self.n2(self.conv(s)).flatten(2)
        return F.avg_pool1d(self.n3(self.fc2(y)).mean(0).unsqueeze(1), 2).squeeze(1)


def test_squeeze_and_unsqueeze_move_amplitudes_like_a_reshape(tmp_path):
    # They were "not linear in the spikes": n1 was skipped, and n3 for that instead of for its real reason.
    torch.manual_seed(0)
    net = _Unsqueezed()
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 3, 4) * 4
    model = rs.convert_model(net, x, granularity="layer")
    report = rs.conversion_report(model)
    assert _converted(report) == {"n1", "n2"}
    assert [(s.module, s.reason) for s in report.skipped] == [
        ("n3", "spikes reach the network output without passing a synapse, so there is no weight to fold the "
               "amplitude into at node 'output'")]
    _fold_exact(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    assert rs.verify(model, tmp_path / "m.onnx", x).bit_identical


def _weight_standardized_net() -> nn.Module:
    """conv → IF → WSConv2d (weight standardization, as in OTTT's and NF-ResNet-style SNNs) → BN → IF → Linear."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode(), layer.WSConv2d(4, 4, 3, padding=1),
                        layer.BatchNorm2d(4), neuron.IFNode(), layer.Flatten(), layer.Linear(4 * 8 * 8, 2))
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[3].running_mean.uniform_(-1, 1)
        net[3].running_var.uniform_(0.5, 2)
    return net.eval()


def test_a_conv_that_computes_its_weight_in_forward_is_not_scaled_or_fused():
    # WSConv2d applies standardize(weight): fold scaled `weight` (and fused the BN after it into `weight`),
    # and the standardization undid both. Silently wrong by up to 0.29 on this net.
    x = torch.rand(2, 2, 3, 8, 8) * 4
    net = _weight_standardized_net()
    vanilla = rs.fold(net, example_input=x)
    assert torch.equal(run(vanilla, x), run(net, x)) and rs.fold_report(vanilla).fused_batchnorms == []

    model = rs.convert_model(_weight_standardized_net(), x, granularity="channel")
    report = rs.conversion_report(model)
    assert _converted(report) == {"4"}
    assert [(s.module, s.reason) for s in report.skipped] == [
        ("1", "'_2' (WSConv2d) computes the weight it applies in its own _forward, forward, get_weight (not "
              "Conv2d's), so scaling its weight would not scale its input")]
    with torch.no_grad():
        for a in rs.amplitude_parameters(model):
            a.uniform_(0.5, 1.5)
    assert torch.equal(run(rs.fold(model), x), run(model, x))


def test_a_pruned_conv_is_not_scaled_and_a_monitored_one_is():
    # torch.nn.utils.prune recomputes weight = weight_orig * mask in a forward pre-hook, which would undo a
    # scaled weight; a forward hook after the call (a monitor) sees the output only.
    import torch.nn.utils.prune as prune

    x = torch.rand(2, 2, 3, 8, 8) * 4
    pruned = _subclassed_net(neuron.IFNode)
    prune.l1_unstructured(pruned[2], "weight", amount=0.5)
    report = rs.conversion_report(rs.convert_model(pruned, x, granularity="channel"))
    assert _converted(report) == {"3"} and "forward pre-hooks or parametrizations" in report.skipped[0].reason

    monitored = _subclassed_net(neuron.IFNode)
    seen = []
    monitored[2].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    model = rs.convert_model(monitored, x, granularity="channel")
    assert _converted(rs.conversion_report(model)) == {"1", "3"} and seen
    _fold_exact(model, x)


class _PooledView(nn.Module):
    """Pooled spikes viewed to sizes computed in ``forward``: the classic ``y.view(y.size(0), -1)``
    flatten, with the sizes unpacked or in a list, or TET's own copy of SeqToANNContainer, back to
    ``[T, N, …]`` (``y_shape = [T, N]; y_shape.extend(y.shape[1:]); y.view(y_shape)``)."""

    def __init__(self, view: str):
        super().__init__()
        self.view = view
        self.c1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(tau=2.0)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        s = self.n1(self.c1(x))
        y = self.pool(s.flatten(0, 1))
        if self.view == "unpacked":
            return self.fc(y.view(y.size(0), -1))
        if self.view == "list":
            return self.fc(y.view([y.shape[0], -1]))
        y_shape = [s.shape[0], s.shape[1]]
        y_shape.extend(y.shape[1:])
        return self.fc(y.view(y_shape).flatten(2))


@pytest.mark.parametrize("view", ["unpacked", "list"])
def test_element_amplitude_through_pooling_and_a_view_to_computed_sizes_folds(view):
    # Pooled element-wise amplitudes merge into the Linear; the view's sizes are nodes (inside a list, too)
    # naming the real batch, which the merge's basis vectors do not have (was a TypeError in fold).
    model, x = _convert_images(_PooledView(view), granularity="element")
    assert len(rs.conversion_report(model).converted) == 1
    assert len(_fold_exact(model, x).merged_linears) == 1


def test_pooled_element_amplitude_whose_batch_is_regrouped_is_skipped_at_convert():
    report = rs.conversion_report(_convert_images(_PooledView("seq_to_ann_copy"), granularity="element")[0])
    assert not report.converted and len(report.skipped) == 1
    assert report.skipped[0].reason == ("'view' (view) regroups the batch/time dims of spikes whose element-wise "
                                        "amplitude was pooled, which the Linear they are merged into cannot follow")


class _NegUpsample(nn.Module):
    """A signed SEW-style sum ``-a + 2·b`` and a U-Net decoder's nearest upsampling of spikes before a conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.c2, self.n2 = layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(tau=2.0)
        self.pool, self.up = layer.AvgPool2d(2), layer.SeqToANNContainer(nn.Upsample(scale_factor=2))
        self.c3, self.n3 = layer.Conv2d(4, 4, 3, padding=1), neuron.IFNode()
        self.flat, self.fc = layer.Flatten(), layer.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        s = -self.n1(self.c1(x)) + 2 * self.n2(self.c2(x))
        return self.fc(self.flat(self.n3(self.c3(self.up(self.pool(s))))))


def test_negated_spikes_and_upsampled_spikes_fold():
    # Negation and upsampling are linear: they were "not linear in them", the neurons skipped (and verify
    # then FAILed the negation as an unfolded amplitude).
    model, x = _convert_images(_NegUpsample(), granularity="channel")
    assert _converted(rs.conversion_report(model)) == {"n1", "n2", "n3"}
    _fold_exact(model, x)


class _SpikingUNet(nn.Module):
    """A spiking U-Net: a strided conv down, a transposed conv up, the skip concatenated (and a 3-D conv head)."""

    def __init__(self, groups: int):
        super().__init__()
        self.c1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.down, self.n2 = layer.Conv2d(4, 8, 3, stride=2, padding=1), neuron.LIFNode(tau=2.0)
        self.up, self.n3 = layer.ConvTranspose2d(8, 4, 2, stride=2, groups=groups), neuron.IFNode()
        self.head = layer.Conv3d(8, 2, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x):
        a = self.n1(self.c1(x))
        u = self.n3(self.up(self.n2(self.down(a))))
        return self.head(torch.cat([a, u], 2).unsqueeze(3))  # [T, N, C, 1, H, W]


@pytest.mark.parametrize("groups, spike, granularity", [(1, "ternary", "channel"), (2, "real", "layer")])
def test_transposed_and_3d_convs_are_synapses(tmp_path, groups, spike, granularity):
    # A transposed conv (decoders, U-Nets) and a 3-D conv read scaled spikes linearly: the neurons before
    # them were skipped ("computes the weight it applies" / "not linear").
    # x up to 16: every neuron fires (verify checks the synapses after each)
    model, x = _convert_images(_SpikingUNet(groups), 16.0, spike=spike, granularity=granularity)
    assert _converted(rs.conversion_report(model)) == {"n1", "n2", "n3"}
    _fold_exact(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    report = rs.verify(model, tmp_path / "m.onnx", x)
    assert report.ok and report.bit_identical, str(report)


def test_element_amplitude_into_a_transposed_conv_is_skipped():
    report = rs.conversion_report(_convert_images(_SpikingUNet(1), granularity="element")[0])
    only = "only a Conv2d takes one (as an unshared conv)"
    assert {s.module: s.reason for s in report.skipped} == {
        "n1": f"element-wise amplitude into 'head' (Conv3d): {only}",
        "n2": f"element-wise amplitude into 'up' (ConvTranspose2d): {only}",
        "n3": f"element-wise amplitude into 'head' (Conv3d): {only}"}


class _BatchFirstLIFSpike(nn.Module):
    """TET's authors' LIFSpike on a batch-first ``[N, T, …]`` input: a single-step neuron called on each
    ``x.select(1, t)``, the spikes stacked back on dim 1 and flattened with the batch for the next conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.node, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(tau=2.0), \
            nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):  # [N, T, C, H, W]
        y = self.conv1(x.flatten(0, 1)).view(*x.shape[:2], 4, *x.shape[3:])
        self.node.reset()
        s = torch.stack([self.node(y.select(1, t)) for t in range(y.shape[1])], dim=1)
        return self.conv2(s.flatten(0, 1)).mean((1, 2, 3))


@pytest.mark.parametrize("net, layout", [
    (_BatchFirstLIFSpike, "N,T,C,H,W"),
    (lambda: nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                           layer.MultiStepContainer(nn.AvgPool2d(2)), layer.Flatten(), layer.Linear(64, 2)), None),
])
def test_per_step_slices_of_spikes_fold(net, layout):
    # Spikes stacked right after the batch dim are time steps (TET: "flatten mixes batch and features" before);
    # MultiStepContainer's per-step x.select(0, t) is a slice ("'select' is not linear" before).
    torch.manual_seed(0)
    net = net()
    if layout is None:  # the Sequential: multi-step
        functional.set_step_mode(net, "m")
    x = torch.rand(2, 2, 3, 8, 8) * 4
    model = rs.convert_model(net, x, input_layout=layout)
    assert len(rs.conversion_report(model).converted) == 1
    _fold_exact(model, x)


def test_a_functional_conv_after_a_neuron_is_named_as_such():
    # MS-ResNet's Snn_Conv2d loops over T with F.conv2d on its own weight: "not linear in them" was untrue.
    class FunctionalConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn, self.weight = neuron.IFNode(step_mode="m"), nn.Parameter(torch.randn(2, 3, 3, 3))

        def forward(self, x):
            s = self.sn(x)
            return torch.stack([F.conv2d(s[t], self.weight) for t in range(s.shape[0])])

    report = rs.conversion_report(rs.convert_model(FunctionalConv(), torch.rand(2, 2, 3, 8, 8) * 4))
    assert report.skipped[0].reason.startswith("'conv2d' (conv2d) applies a weight tensor it is given (a functional "
                                               "conv/linear), and fold scales the weights of conv/linear modules only")


class _MadeInForward(nn.Module):
    """SpikeDHS's cells make ``layer.SeqToANNContainer(Nearest(size))`` on every call: a module without weights,
    created in ``forward``, between the spikes and the next conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.c2, self.n2 = layer.Conv2d(4, 4, 3, padding=1), neuron.LIFNode(tau=2.0)
        self.flat, self.fc = layer.Flatten(), layer.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        up = layer.SeqToANNContainer(nn.Upsample(size=(16, 16)))
        return self.fc(self.flat(self.n2(self.c2(up(self.n1(self.c1(x)))))))


def test_a_module_made_in_forward_without_weights_is_traced_through():
    # Its call raised "module is not installed as a submodule": the whole model was kept whole, 0 converted.
    model, x = _convert_images(_MadeInForward(), granularity="channel")
    assert _converted(rs.conversion_report(model)) == {"n1", "n2"}
    _fold_exact(model, x)
