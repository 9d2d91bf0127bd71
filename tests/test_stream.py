"""Stream export (one time step, membranes as inputs and outputs): bit for bit the unrolled graph, or refused."""

from __future__ import annotations

import json

import nets
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import wild
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike import cli
from sj_realspike.testing import dyadic_input, firing_rate, make_dyadic, run


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _block(cin: int, cout: int, sn: nn.Module) -> list[nn.Module]:
    return [layer.Conv2d(cin, cout, 3, padding=1, bias=False), layer.BatchNorm2d(cout), sn]


class MixedNet(nn.Module):
    """One neuron of each lowered kind: IF and LIF with hard resets (one at v_r = −0.5), a soft-reset LIF
    without decay_input charged through an identity shortcut, PLIF, and a soft-reset IF."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.sn1 = _block(3, 8, neuron.IFNode())
        self.conv2, self.bn2, self.sn2 = _block(8, 8, neuron.LIFNode(tau=2.0, v_reset=-0.5))
        self.conv3, self.bn3, self.sn3 = _block(8, 8, neuron.LIFNode(tau=2.0, v_reset=None, decay_input=False))
        self.pool, self.flatten = layer.AvgPool2d(2), layer.Flatten()
        self.fc1, self.sn4 = layer.Linear(8 * 4 * 4, 16), neuron.ParametricLIFNode(init_tau=2.0)
        self.fc2, self.sn5 = layer.Linear(16, 16), neuron.IFNode(v_reset=None)
        self.fc3 = layer.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.sn1(self.bn1(self.conv1(x)))
        s2 = self.sn2(self.bn2(self.conv2(s1)))
        s3 = self.sn3(self.bn3(self.conv3(s2)) + s1)  # the shortcut's spikes go into a membrane
        s4 = self.sn4(self.fc1(self.flatten(self.pool(s3))))
        return self.fc3(self.sn5(self.fc2(s4)))


NEURONS = ["sn1", "sn2", "sn3", "sn4", "sn5"]


def _model(spike: str, step_mode: str, granularity: str, x: torch.Tensor) -> nn.Module:
    net = MixedNet()
    functional.set_step_mode(net, step_mode)
    steps = step_mode == "s"
    model = rs.convert_model(net, x[0] if steps else x, spike=spike, granularity=granularity)
    assert sorted(c.module for c in rs.conversion_report(model).converted) == NEURONS
    make_dyadic(model, x[0] if steps else x)
    rate = firing_rate(model, x, steps)
    assert 0.02 < rate < 0.8, f"test net fires at {rate:.3f}: equality would be (nearly) vacuous"
    return model


@pytest.mark.parametrize("spike, step_mode, granularity", [
    ("real", "m", "element"),  # unshared convs and an element-wise diagonal synapse on the shortcut
    ("ternary", "s", "channel"),  # a channel-wise diagonal synapse
])
def test_stream_equals_unrolled_bit_for_bit(tmp_path, spike, step_mode, granularity):
    x = dyadic_input((3, 2, 3, 8, 8))
    model = _model(spike, step_mode, granularity, x)
    steps = step_mode == "s"
    unrolled, stream = tmp_path / "unrolled.onnx", tmp_path / "stream.onnx"
    rs.export_onnx(model, unrolled, x)
    rs.export_onnx(model, stream, x, stream=True)

    proto = onnx.load(stream)
    assert [i.name for i in proto.graph.input] == ["x"] + [f"state_in.{n}" for n in NEURONS]
    assert [o.name for o in proto.graph.output] == ["y"] + [f"state_out.{n}" for n in NEURONS]
    assert not {n.op_type for n in proto.graph.node} & {"Loop", "Scan", "Where"}
    runner = rs.OnnxRunner(stream, threads=1)
    meta = runner.metadata
    assert (meta["sj_realspike.mode"], meta["sj_realspike.time_steps"]) == ("stream", "any")
    assert rs.OnnxRunner(unrolled).metadata["sj_realspike.mode"] == "unrolled"
    assert json.loads(meta["sj_realspike.stream_states"]) == {"sn1": 0.0, "sn2": -0.5, "sn3": 0.0, "sn4": 0.0,
                                                              "sn5": 0.0}
    assert runner.input_shape[0] == "T" and runner.step_shape[1:] == (3, 8, 8)

    x5 = dyadic_input((3, 5, 3, 8, 8), seed=1)  # another batch size
    y = runner(x5)
    assert torch.equal(y, rs.OnnxRunner(unrolled, threads=1)(x5)) and y.shape[:2] == (3, 5)
    stepped = torch.stack([runner.step(x_t) for x_t in x5])
    assert torch.equal(stepped, y)
    assert set(runner.state) == set(NEURONS) and runner.state["sn2"].shape == (5, 8 * 8 * 8)  # [N, F]
    x7 = dyadic_input((7, 5, 3, 8, 8), seed=2)  # a longer stream than the unrolled graph's T
    assert torch.equal(runner(x7), run(model, x7, steps))

    report = rs.verify(model, stream, x7)
    assert report.ok, report.failures
    assert report.bit_identical and report.comparison("trained", "onnx").max_abs == 0.0
    assert report.pure and report.spike_flip_rate == 0.0
    assert sorted(n.neuron for n in report.neurons) == NEURONS
    expected = {-1.0, 0.0, 1.0} if spike == "ternary" else {0.0, 1.0}
    assert set().union(*(set(n.values) for n in report.neurons)) == expected
    _check_runner_state(runner, x5.numpy(), stepped.numpy())
    with pytest.raises(TypeError, match="unrolled graph"):
        rs.OnnxRunner(unrolled).step(x5[0])


def _check_runner_state(runner: rs.OnnxRunner, x: np.ndarray, expected: np.ndarray) -> None:
    """step() keeps the state of one batch size until reset(); a whole sequence leaves it alone."""
    runner.reset()
    assert runner.state is None
    first = [runner.step(x_t) for x_t in x]
    assert isinstance(first[0], np.ndarray) and np.array_equal(np.stack(first), expected)
    with pytest.raises(ValueError, match=r"kept state is for a batch of 5, this step has 1: call reset\(\)"):
        runner.step(x[0, :1])
    with pytest.raises(ValueError, match=r"must have shape \[batch, 3, 8, 8\], got \[3, 5, 3, 8, 8\]"):
        runner.step(x)
    kept = runner.state
    assert np.array_equal(runner(x), expected)  # a whole sequence starts afresh ...
    assert all(np.array_equal(kept[k], v) for k, v in runner.state.items())  # ... and leaves the state alone
    runner.reset()
    assert np.array_equal(np.stack([runner.step(x_t) for x_t in x]), expected)


@pytest.mark.parametrize("ternary", [False, True])
def test_one_step_form_equals_fire_all_on_nan_and_inf(ternary):
    """Each lowered neuron, stepped with its membrane as an input, gives fire_all's spikes and membranes."""
    from sj_realspike.lowered import LoweredBinaryNeuron, LoweredTernaryNeuron

    cls = LoweredTernaryNeuron if ternary else LoweredBinaryNeuron
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1.0, -1.0])
    xs = torch.cat([special.repeat(4, 1), torch.randint(-8, 9, (4, 26)).float() / 4], 1)  # [T, M]
    for charge, decay in [("if", None), ("lif", 2.0), ("lif", 3.0), ("plif", torch.tensor(0.75))]:
        for v_reset, decay_input in [(0.0, True), (-0.5, False), (None, True), (None, False)]:
            n = cls(1.0, v_reset, charge, decay, decay_input)
            v, v_ref, spikes = torch.full((1, xs.shape[1]), n.rest), None, []
            for x in xs.split(1, 0):
                s, v = n.step(x, v)
                h = n.charged(v_ref, x)  # fire_all's recurrence: the membrane starts as the constant v_r
                v_ref = n.next_membrane(h, n.fire(h) if v_reset is None else None)
                torch.testing.assert_close(v, v_ref, rtol=0, atol=0, equal_nan=True)
                spikes.append(s)
            assert torch.equal(torch.cat(spikes), n.fire_all(xs.split(1, 0))), (charge, v_reset, decay_input)
            assert torch.cat(spikes).isnan().sum() == 0 and v.isnan().any()  # NaN inputs reached the membranes


class MeanOverTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.sn, self.fc2 = layer.Linear(6, 8), neuron.IFNode(), layer.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.sn(self.fc1(x))).mean(0)


class CentredOverTime(MeanOverTime):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.sn(h - h.mean(0, keepdim=True)))  # same shape whole or stepped, other values


class Filtered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.sn, self.filter, self.fc2 = layer.Linear(6, 8), neuron.IFNode(), layer.SynapseFilter(), \
            layer.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.filter(self.sn(self.fc1(x))))


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.sn, self.fc2 = layer.Linear(6, 8), neuron.QIFNode(), layer.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.sn(self.fc1(x)))


@pytest.mark.parametrize("cls, match", [
    (MeanOverTime, r"node 'mean': its output \(call_method mean\) differs between the whole sequence and one "
                   r"step at a time.*e\.g\. a mean over T\). Export it unrolled \(stream=False\)"),
    (CentredOverTime, r"node 'mean': its output \(call_method mean\) differs"),
    (Filtered, r"node 'filter': SynapseFilter keeps state between time steps \(out_i\), which a stream graph cannot"),
    (Quadratic, r"node 'sn': QIFNode has no export lowering, and a stream graph carries each neuron's membrane"),
])
@pytest.mark.filterwarnings("ignore:.*holds no spike amplitudes")
def test_state_outside_lowered_neurons_is_refused(tmp_path, cls, match):
    torch.manual_seed(0)
    net = cls()
    functional.set_step_mode(net, "m")
    x = torch.rand(3, 2, 6) * 4
    deploy = rs.fold(net, example_input=x)
    with pytest.raises(rs.UnsupportedPatternError, match=match):
        rs.export_onnx(deploy, tmp_path / "s.onnx", x, stream=True)
    assert not (tmp_path / "s.onnx").exists()


def _snntorch_leaky() -> nn.Module:
    snn = pytest.importorskip("snntorch")
    return nn.Sequential(nn.Linear(6, 8), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(8, 3))


def _norse_cells() -> nn.Module:
    norse = pytest.importorskip("norse.torch")
    return norse.SequentialState(nn.Linear(6, 8), norse.LIFCell(), nn.Linear(8, 3), norse.LICell())


@pytest.mark.parametrize("build, match", [
    (_snntorch_leaky, r"node '1': Leaky is lowered with its recurrence inside one module, so a stream graph would "
                      r"start it from rest at every step"),
    (_norse_cells, r"node '1': LIFCell is lowered with its recurrence inside one module"),
])
def test_neurons_lowered_with_their_recurrence_inside_are_refused(tmp_path, build, match):
    # snnTorch's and Norse's lowerings keep the state inside: the stream graph restarted them at every step
    # and differed from the deploy model from the second step on, with nothing said at export.
    torch.manual_seed(0)
    x = dyadic_input((3, 2, 6))
    deploy = rs.fold(rs.convert_model(build(), x[0]))
    with pytest.raises(rs.UnsupportedPatternError, match=match):
        rs.export_onnx(deploy, tmp_path / "s.onnx", x, stream=True)
    assert not (tmp_path / "s.onnx").exists()
    rs.export_onnx(deploy, tmp_path / "u.onnx", x)  # unrolled: the state crosses the steps inside the graph


@pytest.mark.parametrize("name, match", [
    ("csnn", r"takes \[N,C,H,W\] and makes time inside its forward .*no per-step graph to stream"),
    ("time_loop_sequence", r"loops over the time steps itself .*one call is the whole sequence, not one step"),
])
def test_models_that_make_time_themselves_have_no_stream(tmp_path, name, match):
    net, x = wild.WILD[name].build()
    deploy = rs.fold(rs.convert_model(net, x))
    with pytest.raises(rs.UnsupportedPatternError, match=match):
        rs.export_onnx(deploy, tmp_path / "s.onnx", x, stream=True)


def test_cli_exports_a_stream_and_runs_both_kinds(tmp_path, capsys, monkeypatch):
    kwargs = {"name": "sum", "neuron_name": "LIF"}
    x = nets.example("m")  # [2, 2, 3, 16, 16]
    model = rs.convert_model(nets.custom(**kwargs), x)
    make_dyadic(model, x)  # stream and unrolled equal bit for bit
    rs.save_bundle(rs.fold(model), tmp_path / "d.bundle", factory="nets:custom", kwargs=kwargs)
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", dyadic_input((5, 4, 3, 16, 16), seed=3).numpy())
    np.save(tmp_path / "x2.npy", dyadic_input((2, 4, 3, 16, 16), seed=3).numpy())  # its first two steps
    assert cli.main(["export", "d.bundle", "-o", "s.onnx", "--trust", "nets", "--stream"]) == 0
    assert cli.main(["export", "d.bundle", "-o", "u.onnx", "--trust", "nets"]) == 0
    assert cli.main(["run", "s.onnx", "--input", "x.npy", "-o", "ys.npy"]) == 0
    assert "wrote ys.npy (5, 4, 10) float32" in capsys.readouterr().out
    assert cli.main(["run", "u.onnx", "--input", "x2.npy", "-o", "yu.npy"]) == 0
    assert np.array_equal(np.load("yu.npy"), np.load("ys.npy")[:2])
    capsys.readouterr()
    assert cli.main(["export", "d.bundle", "-o", "t.onnx", "--trust", "nets", "--stream", "--time-steps", "2"]) == 2
    assert "--time-steps does not apply to --stream" in capsys.readouterr().err
