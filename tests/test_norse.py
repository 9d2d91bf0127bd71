"""Norse through the same passes: convert → forward/backward → fold → export_onnx → verify.

Networks in Norse's three styles (`norse_nets`): ``SequentialState(Lift(...), LIF(), ...)``
on the whole sequence, cell-style time loops in ``forward`` (Norse's ``ConvNet``, the MNIST
tutorial), and single-step models the user steps with ``model(x[t], state)``. Exactness is
bit for bit on dyadic copies that fire.
"""

from __future__ import annotations

import subprocess
import sys

import norse_nets
import numpy as np
import pytest
import torch
import torch.nn as nn
from norse.torch import (LI, LIF, IAFCell, LIBoxCell, LICell, LIFBoxCell, LIFCell, LIFParameters, LIFRecurrent,
                         LIFRecurrentCell, LIFRefracCell, LILinearCell, LIParameters, LSNNCell, LSNNRecurrentCell,
                         RegularizationCell, SequentialState)
from norse.torch.module.encode import ConstantCurrentLIFEncoder

import sj_realspike as rs
from sj_realspike.frameworks.norse import (LoweredNorseNeuron, LoweredNorseReadout, TernaryLIF, TernaryLIFBoxCell,
                                          TernaryLIFCell)
from sj_realspike.spiking import amplitude_of, base_class
from sj_realspike.testing import firing_rate, make_dyadic, spike_values

SPIKE_SETS = {"real": {0.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}
# Neurons converted per network: every LIF layer (each feeds a synapse).
CONVERTED = {"seq_conv": 3, "seq_mlp": 2, "tutorial_mlp": 2, "box_net": 2, "step_mlp": 2, "recurrent_mlp": 1}


def _outputs(model: nn.Module, x: torch.Tensor, single_step: bool) -> torch.Tensor:
    """The network's output over the sequence (item 0 of Norse's ``(out, state)``)."""
    with torch.no_grad():
        y = norse_nets.run_steps(model, x) if single_step else model(x)
    return y[0] if isinstance(y, tuple) else y


def _build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, bool]:
    torch.manual_seed(seed)
    build, shape, single_step = norse_nets.NETS[name]
    return build(), norse_nets.image(*shape, seed=seed) * 2, single_step


def _skipped(name: str, granularity: str, spike: str = "real") -> tuple[str, ...]:
    """Neurons convert must skip: an element-wise amplitude cannot pass average pooling into a conv;
    a ``LIFRecurrentCell`` has no ternary twin."""
    if (name, granularity) == ("seq_conv", "element"):
        return ("1",)
    return ("l1",) if (name, spike) == ("recurrent_mlp", "ternary") else ()


def amplitudes(model: nn.Module) -> dict[str, rs.Amplitude]:
    return {n: amplitude_of(m) for n, m in model.named_modules() if amplitude_of(m) is not None}


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
@pytest.mark.parametrize("name", list(norse_nets.NETS))
def test_convert_gives_every_lif_an_amplitude_and_trains(name, granularity):
    net, x, single_step = _build(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = rs.convert_model(net, x[0] if single_step else x, granularity=granularity)
    report = rs.conversion_report(model)
    skipped = _skipped(name, granularity)
    assert len(report.converted) == CONVERTED[name] - len(skipped), report.skipped
    assert [s.module for s in report.skipped] == list(skipped)
    amps = amplitudes(model)
    for path, amp in amps.items():
        neuron = model.get_submodule(path)
        assert isinstance(neuron, base_class(neuron)) and base_class(neuron) in (LIFCell, LIF, LIFBoxCell,
                                                                                  LIFRecurrentCell)
        assert amp.a.numel() == 1 if granularity == "layer" else amp.a.numel() > 1
    # The user's net is untouched: same classes, same weights.
    assert not amplitudes(net) and all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    # A training step: spikes scaled by the amplitudes, gradients reach every amplitude.
    # Weights that make every layer fire; amplitudes stay at their initial 1 (a first training step).
    make_dyadic(model, x[0] if single_step else x, amplitudes=False)
    assert all(len(v) > 1 for v in spike_values(model, x, steps=single_step).values()), "a silent layer"
    model.train()
    y = norse_nets.run_steps(model, x) if single_step else model(x)
    (y[0] if isinstance(y, tuple) else y).sum().backward()
    assert all(amp.a.grad is not None and amp.a.grad.abs().sum() > 0 for amp in amps.values())


def _folded(name: str, spike: str, granularity: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """``(converted model, deploy model, input sequence)`` of a dyadic copy that fires; fold checked bit-exact."""
    net, x, single_step = _build(name)
    example = x[0] if single_step else x
    model = rs.convert_model(net, example, spike=spike, granularity=granularity)
    assert len(rs.conversion_report(model).converted) == CONVERTED[name] - len(_skipped(name, granularity, spike))
    make_dyadic(model, example)
    rate = firing_rate(model, x, steps=single_step)
    assert 0.02 < rate < 0.9, f"test net fires at {rate:.3f}: equality would be (nearly) vacuous"
    expected = _outputs(model, x, single_step)

    deploy = rs.fold(model)
    got = _outputs(deploy, x, single_step)
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()} (must be 0 on dyadic)"
    for neuron, values in spike_values(deploy, x, steps=single_step).items():
        assert values <= SPIKE_SETS[spike], f"{neuron} emits {sorted(values)}"
        assert len(values) > 1, f"{neuron} is silent"
    if spike == "ternary" and not _skipped(name, granularity, spike):
        assert {type(m) for m in deploy.modules()} & {TernaryLIFCell, TernaryLIF, TernaryLIFBoxCell}
    return model, deploy, x


@pytest.mark.parametrize("spike", ["real", "ternary"])
@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
@pytest.mark.parametrize("name", list(norse_nets.NETS))
def test_fold_bit_exact_on_dyadic_copies(name, granularity, spike):
    _folded(name, spike, granularity)


EXPORT_CELLS = [(name, "real", "channel") for name in norse_nets.NETS] + [
    ("seq_conv", "ternary", "element"), ("box_net", "ternary", "layer"), ("step_mlp", "ternary", "element"),
    ("tutorial_mlp", "real", "element"), ("recurrent_mlp", "real", "channel")]


@pytest.mark.parametrize("name, spike, granularity", EXPORT_CELLS)
def test_export_verify_bit_identical_and_pure(name, spike, granularity, tmp_path):
    model, deploy, x = _folded(name, spike, granularity)
    path = tmp_path / f"{name}.onnx"
    rs.export_onnx(deploy, path, x)  # single-step models export the whole [T, N, ...] sequence too
    report = rs.verify(model, path, x)
    assert report.ok, report.failures
    assert report.bit_identical and report.comparison("trained", "deploy").identical
    # Every LIF layer is found in the graph (once per call of a cell), converted ones with their spike kind.
    converted = {c.module for c in rs.conversion_report(model).converted}
    lifs = {path for path, m in deploy.named_modules() if isinstance(m, (LIFCell, LIF, LIFBoxCell, LIFRecurrentCell))}
    assert report.purity == 1.0 and {n.neuron for n in report.neurons} == lifs
    for n in report.neurons:
        assert n.kind == ("ternary" if spike == "ternary" and n.neuron in converted else "binary"), n


def test_norse_convnet_converts_the_lifs_before_synapses_and_names_the_relu():
    net = norse_nets.norse_convnet()
    x = norse_nets.image(2, 2, 1, 16, 16) * 2
    model = rs.convert_model(net, x, granularity="channel")
    report = rs.conversion_report(model)
    assert sorted(c.module for c in report.converted) == ["lif0", "lif1"]
    (skipped,) = report.skipped
    assert skipped.module == "lif2" and "relu" in skipped.reason


def test_lowered_neurons_equal_norse_on_nan_and_inf():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5) * 30
    x[0, 0, 0], x[1, 0, 1], x[2, 1, 2] = float("inf"), float("nan"), -float("inf")
    p = LIFParameters(tau_syn_inv=torch.tensor(137.3), tau_mem_inv=torch.tensor(91.7), v_leak=torch.tensor(0.3),
                      v_th=torch.tensor(0.7), v_reset=torch.tensor(-0.2))
    for neuron in (LIFCell(p, dt=0.0013), LIFBoxCell(), TernaryLIFCell(p), LIF(p), TernaryLIF(p),
                   LIFRecurrentCell(5, 5, p), LIFRecurrent(5, 5, p)):
        lowered = LoweredNorseNeuron(neuron)
        with torch.no_grad():
            if isinstance(neuron, (LIF, LIFRecurrent)):
                expected, state = neuron(x)
                h, lowered_state = lowered(x)
                pairs = [(lowered.fire(h), expected), (lowered_state.v, state.v)]
            else:
                state = lowered_state = None
                pairs = []
                for xt in x:
                    z, state = neuron(xt, state)
                    h, lowered_state = lowered(xt, lowered_state)
                    pairs += [(lowered.fire(h), z), (lowered_state.v, state.v)]
        for a, b in pairs:
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), \
                type(neuron).__name__
    li = LIParameters(tau_syn_inv=torch.tensor(137.3), tau_mem_inv=torch.tensor(91.7), v_leak=torch.tensor(0.3))
    for readout in (LICell(li, dt=0.0013), LIBoxCell(), LILinearCell(5, 3, li), LI(li)):
        lowered = LoweredNorseReadout(readout)
        with torch.no_grad():
            if isinstance(readout, LI):
                pairs = [(lowered(x)[0], readout(x)[0])]
            else:
                state = lowered_state = None
                pairs = []
                for xt in x:
                    v, state = readout(xt, state)
                    vl, lowered_state = lowered(xt, lowered_state)
                    pairs.append((vl, v))
        for a, b in pairs:
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), \
                type(readout).__name__


def test_ternary_twins_keep_parameters_and_emit_minus_one():
    p = LIFParameters(v_th=torch.tensor(0.5), tau_mem_inv=torch.tensor(500.0))
    net = SequentialState(nn.Linear(6, 8), LIFCell(p, dt=0.002), nn.Linear(8, 3))
    model = rs.convert_model(net, torch.rand(4, 6), spike="ternary")
    twin = model.get_submodule("1")
    assert base_class(twin) is TernaryLIFCell and twin.dt == 0.002 and torch.equal(twin.p.v_th, p.v_th)
    with torch.no_grad():
        z, _ = twin(torch.tensor([[4.0, -4.0, 0.0, 0.1, -0.1, 2.0, -2.0, 0.0]]))
    assert z.tolist() == [[1.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0]]  # amplitudes start at 1


def test_ternary_is_refused_where_it_makes_no_sense():
    bio = LIFParameters(v_leak=torch.tensor(-65.0), v_th=torch.tensor(-50.0), v_reset=torch.tensor(-65.0))
    net = SequentialState(nn.Linear(6, 8), LIFCell(bio), nn.Linear(8, 3))
    model = rs.convert_model(net, torch.rand(4, 6), spike="ternary")
    (skipped,) = rs.conversion_report(model).skipped
    assert "v_leak=-65.0 lies outside (-v_th, v_th)" in skipped.reason
    cfg = rs.SpikeConfig().set_name("1", rs.SpikeSpec(spike="ternary"))
    with pytest.raises(rs.UnsupportedPatternError, match="node '1'.*outside"):
        rs.convert_model(net, torch.rand(4, 6), config=cfg)


def test_unsupported_norse_neuron_is_listed_with_the_reason():
    net = SequentialState(nn.Linear(6, 8), LSNNCell(), nn.Linear(8, 3), LIFCell(), nn.Linear(3, 2))
    model = rs.convert_model(net, torch.rand(4, 6) * 8)
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["3"]
    (skipped,) = report.skipped
    assert skipped.module == "1" and "LSNNCell is a Norse neuron sj_realspike does not support" in skipped.reason


def test_a_network_mixing_frameworks_is_refused():
    from spikingjelly.activation_based import neuron

    net = SequentialState(nn.Linear(6, 8), LIFCell(), nn.Linear(8, 8), neuron.LIFNode(), nn.Linear(8, 3))
    with pytest.raises(rs.UnsupportedPatternError, match="mixes neurons of .*norse.*spikingjelly|spikingjelly.*norse"):
        rs.convert_model(net, torch.rand(4, 6))


def test_package_imports_and_converts_without_norse():
    code = ("import sys; sys.modules['norse'] = None\n"
            "import torch, sj_realspike as rs\n"
            "from spikingjelly.activation_based import neuron\n"
            "net = torch.nn.Sequential(torch.nn.Linear(4, 4), neuron.IFNode(), torch.nn.Linear(4, 2))\n"
            "m = rs.convert_model(net, torch.rand(3, 4))\n"
            "assert len(rs.conversion_report(m).converted) == 1\n"
            "assert sys.modules['norse'] is None\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class EncodedMLP(nn.Module):
    """The MNIST task's pattern: Norse's constant-current encoder inside ``forward``, then a cell loop."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ConstantCurrentLIFEncoder(seq_length=2)
        self.fc1, self.lif, self.fc2 = nn.Linear(12, 16), LIFCell(norse_nets.FAST), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, outs = None, []
        for xt in self.encoder(x * 16):
            z, s = self.lif(self.fc1(xt), s)
            outs.append(self.fc2(z))
        return torch.stack(outs)


def test_capture_leaves_no_tensor_constants_on_the_model_and_fold_is_deterministic():
    from sj_realspike.export import model_fingerprint

    x = norse_nets.image(2, 12)
    model = rs.convert_model(EncodedMLP(), x, input_layout="N,F")
    assert len(rs.conversion_report(model).converted) == 1
    # The encoder's torch.as_tensor(...) calls are graph constants, not attributes of the user's model.
    assert not [k for k in vars(model) if k.startswith("_tensor_constant")]
    first, second = rs.fold(model), rs.fold(model)
    assert model_fingerprint(first, "2", "N,F") == model_fingerprint(second, "2", "N,F")


def test_fingerprint_tells_norse_time_constants_and_thresholds_apart():
    """Norse keeps a neuron's parameters in its ``p`` tuple, outside the state_dict: the fingerprint
    must still change with each of them (verify names a file exported from another model)."""
    from sj_realspike.export import model_fingerprint

    def deploy(p: LIFParameters) -> nn.Module:
        torch.manual_seed(0)
        net = SequentialState(nn.Linear(6, 8), LIF(p), nn.Linear(8, 2))
        return rs.fold(rs.convert_model(net, norse_nets.image(2, 2, 6)))

    prints = {model_fingerprint(deploy(p), "2", "T,N,F") for p in (
        LIFParameters(), LIFParameters(), LIFParameters(tau_mem_inv=torch.tensor(100.0 + 1 / 64)),
        LIFParameters(v_th=torch.tensor(0.5)), LIFParameters(v_reset=torch.tensor(0.25)))}
    assert len(prints) == 4  # the two default neurons agree, every other setting differs


def test_single_step_model_with_an_unlowered_stateful_neuron_is_refused_at_export(tmp_path):
    net = SequentialState(nn.Linear(6, 8), LIFCell(), nn.Linear(8, 8), LSNNRecurrentCell(8, 8), nn.Linear(8, 2))
    x = norse_nets.image(2, 2, 6) * 16
    deploy = rs.fold(rs.convert_model(net, x[0]))
    with pytest.raises(rs.UnsupportedPatternError, match="node '3'.*LSNNRecurrentCell keeps state but has no export"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()


def test_nir_export_of_a_stepped_norse_net_round_trips_through_norse_bit_exactly():
    nir = pytest.importorskip("nir")
    from norse.torch import from_nir

    from sj_realspike.nir_export import export_nir

    torch.manual_seed(0)
    net = SequentialState(nn.Linear(12, 16), LIFBoxCell(), nn.Linear(16, 16), LIFBoxCell(), nn.Linear(16, 4))
    x = norse_nets.image(4, 2, 12) * 4
    model = rs.convert_model(net, x[0])
    assert len(rs.conversion_report(model).converted) == 2
    make_dyadic(model, x[0])
    deploy = rs.fold(model)
    dt = 2.0 ** -10  # make_dyadic's Norse dt: NIR's tau = dt / (dt_norse * tau_mem_inv) = 1 / 512
    graph = export_nir(deploy, None, x[0], dt=dt)
    assert [type(n).__name__ for n in graph.nodes.values()].count("LIF") == 2
    assert all(np.all(n.tau == 1 / 512) for n in graph.nodes.values() if isinstance(n, nir.LIF))
    back, state, outs = from_nir(graph, dt=dt), None, []
    with torch.no_grad():
        for xt in x:
            out, state = back(xt, state)
            outs.append(out)
    expected = torch.stack([o for o in norse_nets.run_steps(deploy, x)])
    assert torch.equal(torch.stack(outs), expected)
    assert firing_rate(deploy, x, steps=True) > 0.05


def test_nir_export_maps_read_outs_and_refuses_what_nir_cannot_hold():
    nir = pytest.importorskip("nir")
    from sj_realspike.nir_export import export_nir

    x = norse_nets.image(2, 12)
    readout = rs.fold(rs.convert_model(SequentialState(nn.Linear(12, 8), LIFCell(), nn.Linear(8, 4), LICell()), x))
    graph = export_nir(readout, None, x)
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"CubaLIF", "CubaLI"}
    ternary = rs.fold(rs.convert_model(SequentialState(nn.Linear(12, 8), LIFCell(), nn.Linear(8, 4)), x,
                                       spike="ternary"))
    with pytest.raises(rs.UnsupportedPatternError, match="node '_1'.*ternary spikes"):
        export_nir(ternary, None, x)
    recurrent = rs.fold(rs.convert_model(SequentialState(LIFRecurrentCell(12, 8), nn.Linear(8, 4)), x))
    with pytest.raises(rs.UnsupportedPatternError, match="recurrent weights live inside the neuron"):
        export_nir(recurrent, None, x)


class _Regularized(nn.Module):
    """Norse's ``RegularizationCell`` as its docstring shows it: it keeps its running total on ``self.state``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif, self.reg, self.fc2 = nn.Linear(10, 16), LIFCell(), RegularizationCell(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, outs = None, []
        for t in range(x.shape[0]):
            z, s = self.lif(self.fc1(x[t]), s)
            z, _ = self.reg(z, s)
            outs.append(self.fc2(z))
        return torch.stack(outs)


def test_capture_leaves_no_tracing_object_in_a_cells_state_attribute():
    torch.manual_seed(0)
    net, x = _Regularized(), torch.rand(3, 2, 10) * 8
    expected = net(x)
    model = rs.convert_model(net, x)
    assert type(model.reg.state) is torch.Tensor
    assert rs.conversion_report(model).total == 1
    assert torch.equal(model(x), expected)  # a traced value left in reg.state: RecursionError
    assert torch.equal(rs.fold(model)(x), expected)


@pytest.mark.parametrize("cell", [LIFRefracCell, IAFCell])
def test_export_of_a_net_whose_only_neuron_is_unsupported_names_it(cell, tmp_path):
    net = SequentialState(nn.Linear(10, 16), cell(), nn.Linear(16, 4))
    x = norse_nets.image(3, 2, 10) * 8
    model = rs.convert_model(net, x[0])
    assert [s.module for s in rs.conversion_report(model).skipped] == ["1"]
    with pytest.raises(rs.UnsupportedPatternError, match=rf"node '1': none of the model's 1 spiking module\(s\) is a "
                       rf"neuron sj_realspike supports, so none has an export lowering: {cell.__name__} is a Norse"):
        rs.export_onnx(rs.fold(model), tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()
