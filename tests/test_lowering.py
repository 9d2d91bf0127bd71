"""Export lowering: each lowered module equals the SpikingJelly/fold module it replaces, and stays compact."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

import nets
import sj_realspike as rs
from sj_realspike.fold import NotConvertedWarning
from sj_realspike.frameworks.spikingjelly import lower_neuron
from sj_realspike.lowered import (LoweredBinaryNeuron, LoweredDiagonalSynapse, LoweredTernaryNeuron,
                                  LoweredUnsharedConv2d)
from sj_realspike.testing import make_dyadic, run

NEURON_TYPES = {
    "IF": lambda **kw: neuron.IFNode(**kw),
    "LIF": lambda **kw: neuron.LIFNode(tau=2.0, **kw),
    "LIF-tau3": lambda **kw: neuron.LIFNode(tau=3.0, **kw),  # not a power of two: division kept
    "PLIF": lambda **kw: neuron.ParametricLIFNode(init_tau=2.7, **kw),
    "TernaryIF": lambda **kw: neuron.TernaryIFNode(**kw),
    "TernaryLIF": lambda **kw: neuron.TernaryLIFNode(tau=2.0, **kw),
    "TernaryPLIF": lambda **kw: rs.TernaryParametricLIFNode(init_tau=2.7, **kw),
}
RESETS = {"hard0": 0.0, "hard-nonzero": -0.25, "soft": None}
CASES = [(n, r, d) for n, r, d in itertools.product(NEURON_TYPES, RESETS, [True, False])
         if d or n not in ("IF", "TernaryIF")]  # IF has no decay_input


def _neuron(name: str, reset: str, decay_input: bool, v_threshold: float = 1.0) -> nn.Module:
    kw = {"v_reset": RESETS[reset], "v_threshold": v_threshold, "step_mode": "m"}
    if name not in ("IF", "TernaryIF"):
        kw["decay_input"] = decay_input
    return NEURON_TYPES[name](**kw).eval()


def _sj(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(m)
    with torch.no_grad():
        y = m(x)
    functional.reset_net(m)
    return y


@pytest.mark.parametrize("name,reset,decay_input", CASES)
def test_lowered_neuron_equals_spikingjelly_on_random_input(name, reset, decay_input):
    """Same fp32 operations in the same order: every spike equal on random inputs (ties have measure zero)."""
    m = _neuron(name, reset, decay_input, v_threshold=0.75)
    x = torch.randn(6, 3, 4, 5, 5, generator=torch.Generator().manual_seed(1)) * 1.5
    expected = _sj(m, x)
    got = lower_neuron(m)(x)
    assert torch.equal(got, expected), f"{(got != expected).sum().item()} of {got.numel()} spikes differ"
    allowed = {-1.0, 0.0, 1.0} if name.startswith("Ternary") else {0.0, 1.0}
    assert set(expected.unique().tolist()) == allowed  # all spike values occur: the test is not vacuous


@pytest.mark.parametrize("name,reset,decay_input", CASES)
def test_lowered_neuron_bit_exact_on_dyadic_input_with_threshold_ties(name, reset, decay_input):
    """Inputs on a 1/4 grid hit h == ±θ exactly: the lowered neuron fires on ties like SpikingJelly (h ≥ θ)."""
    m = _neuron(name, reset, decay_input)
    if isinstance(m, (neuron.ParametricLIFNode, rs.TernaryParametricLIFNode)):
        with torch.no_grad():
            m.w.zero_()  # 1/tau = sigmoid(0) = 1/2: dyadic
    x = torch.randint(-8, 9, (5, 2, 3, 4, 4), generator=torch.Generator().manual_seed(2)).float() / 4
    expected = _sj(m, x)
    assert torch.equal(lower_neuron(m)(x), expected)


@pytest.mark.parametrize("name", ["LIF", "TernaryPLIF"])
def test_lowered_neuron_on_time_flattened_batch_equals_multi_step(name):
    """Single-step models run on [T*N, ...]: the neuron views its input as [T, -1]."""
    m = _neuron(name, "hard0", True)
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(3)) * 2
    expected = _sj(m, x)
    got = lower_neuron(m, time_steps=4)(x.reshape(12, 8)).reshape(4, 3, 8)
    assert torch.equal(got, expected)


def test_lower_neuron_picks_binary_or_ternary_and_refuses_the_rest():
    assert isinstance(lower_neuron(neuron.LIFNode()), LoweredBinaryNeuron)
    assert isinstance(lower_neuron(neuron.TernaryLIFNode()), LoweredTernaryNeuron)
    with pytest.raises(ValueError, match="QIFNode has no compact lowering"):
        lower_neuron(neuron.QIFNode())
    with pytest.raises(ValueError, match="spiking=False"):
        lower_neuron(neuron.IFNode(surrogate_function=surrogate.Sigmoid(spiking=False)))


def _onnx_ops(module: nn.Module, x: torch.Tensor) -> Counter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    return Counter(n.op_type for n in program.model_proto.graph.node)


@pytest.mark.parametrize("name,reset,per_step", [("IF", "hard0", 4), ("LIF", "hard0", 6), ("TernaryIF", "hard0", 5),
                                                  ("IF", "soft", 4), ("TernaryLIF", "soft", 9)])
def test_lowered_neuron_exports_a_compact_op_sequence(name, reset, per_step):
    """T=8 steps: one Split, a few elementwise ops per step, one Concat; never Where, Squeeze or Unsqueeze."""
    ops = _onnx_ops(lower_neuron(_neuron(name, reset, True)), torch.randn(8, 2, 16, 4, 4))
    assert ops["Split"] == 1 and ops["Concat"] <= 2
    assert not ops.keys() & {"Where", "Squeeze", "Unsqueeze", "Gather", "Slice"}, ops
    assert sum(ops.values()) <= 8 * per_step + 8, ops


def _dyadic_(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randint(-4, 5, t.shape, generator=g).float() / 8


GEOMETRIES = [  # in_ch, out_ch, kernel, stride, padding, dilation, groups, in_hw
    (4, 6, 3, 1, 1, 1, 1, (6, 6)),
    (4, 6, 3, 2, 1, 1, 2, (7, 5)),
    (4, 4, 3, 1, 2, 2, 1, (6, 6)),
    (8, 8, 3, 1, 1, 1, 1, (1, 1)),  # only the centre tap ever sees the input
    (3, 5, (1, 3), 1, (0, 1), 1, 1, (2, 4)),
    (2, 4, 5, 3, 0, 1, 1, (9, 9)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_lowered_unshared_conv_equals_unshared_conv(geometry):
    cin, cout, k, stride, padding, dilation, groups, in_hw = geometry
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups)
    with torch.no_grad():
        conv.weight.copy_(_dyadic_(conv.weight, g))
        conv.bias.copy_(_dyadic_(conv.bias, g))
    out_hw = tuple(conv(torch.zeros(1, cin, *in_hw)).shape[-2:])
    scale = torch.randint(1, 9, (cin, *in_hw), generator=g).float() / 4
    unshared = rs.UnsharedConv2d.from_conv(conv, scale, in_hw, out_hw, keep_bias=True)
    lowered = LoweredUnsharedConv2d(unshared)
    x = torch.randint(0, 2, (3, 2, cin, *in_hw), generator=g).float()  # [T, N, ...] spikes
    with torch.no_grad():
        expected = unshared(x)
        assert torch.equal(lowered(x), expected)  # dyadic: exact in any summation order
        assert torch.equal(lowered(x), conv(x.flatten(0, 1) * scale).reshape_as(expected))
    if in_hw == (1, 1):
        assert len(lowered.taps) == 1


@pytest.mark.parametrize("shape", [(), (4, 1, 1), (4, 3, 3)], ids=["layer", "channel", "element"])
def test_lowered_diagonal_synapse_equals_diagonal_synapse(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    syn = rs.DiagonalSynapse(w, step_mode="m")
    x = torch.randint(-1, 2, (2, 5, 4, 3, 3)).float()
    assert torch.equal(LoweredDiagonalSynapse(syn, (4, 3, 3))(x), syn(x))


@pytest.mark.parametrize("net_name,neuron_name,step_mode,spike,granularity", [
    ("shortcut", "PLIF", "m", "real", "element"),  # diagonal synapses, unshared convs
    ("pool", "LIF-soft", "s", "ternary", "channel"),
    ("sum", "IF", "s", "real", "element"),
])
def test_lower_for_export_keeps_the_deploy_function(net_name, neuron_name, step_mode, spike, granularity):
    x = nets.example("m", size=16)
    example = x if step_mode == "m" else x[0]
    model = rs.convert_model(nets.custom(net_name, neuron_name, step_mode), example, spike=spike,
                             granularity=granularity)
    make_dyadic(model, example)
    deploy = rs.fold(model)
    lowered = rs.lower_for_export(deploy, x)
    expected = run(deploy, x, steps=step_mode == "s")
    with torch.no_grad():
        assert torch.equal(lowered(x), expected)
    kinds = {type(m) for m in lowered.modules()}
    assert not kinds & {neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode, rs.UnsharedConv2d,
                        rs.DiagonalSynapse}
    assert any(issubclass(k, (LoweredBinaryNeuron, LoweredTernaryNeuron)) for k in kinds)
    assert any(isinstance(m, neuron.BaseNode) for m in deploy.modules())  # the deploy model is untouched


def test_lowering_refuses_mixed_step_modes():
    net = nets.custom("shortcut", "IF", "m")
    net.sn2.step_mode = "s"
    x = nets.example("m", size=16)
    with pytest.warns(NotConvertedWarning):
        deploy = rs.fold(net, example_input=x)
    with pytest.raises(rs.UnsupportedPatternError,
                       match=r"both step modes .*Use one step mode for the whole network: "
                             r"functional.set_step_mode\(net, 'm'\) before convert_model"):  # SpikingJelly's remedy
        rs.lower_for_export(deploy, x)


def test_step_mode_of_a_model_without_neurons_names_the_frameworks():
    from sj_realspike.neurons import step_mode_of

    with pytest.raises(rs.UnsupportedPatternError, match=r"has no spiking neurons.*Export networks of spikingjelly"):
        step_mode_of(nn.Sequential(nn.Linear(2, 2)))


def test_single_step_neuron_without_lowering_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), neuron.QIFNode())
    with pytest.warns(NotConvertedWarning):
        deploy = rs.fold(net, example_input=nets.example("m", size=16)[0])
    with pytest.raises(rs.UnsupportedPatternError, match="single-step neuron without an export lowering"):
        rs.lower_for_export(deploy, nets.example("m", size=16))
