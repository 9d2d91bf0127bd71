"""Energy report: exact synaptic-op counts on hand-computable layers, MAC before fold and AC after."""

from __future__ import annotations

import nets
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike.energy import E_AC_PJ, E_MAC_PJ, count_synaptic_ops
from sj_realspike.synapses import DiagonalSynapse, UnsharedConv2d
from sj_realspike.testing import make_dyadic


def test_linear_counts_out_features_per_nonzero_input():
    fc = nn.Linear(4, 3)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # 3 non-zero inputs
    assert count_synaptic_ops(fc, x) == 3 * 3
    assert count_synaptic_ops(fc, x * 0.37) == 9  # the count ignores the values, only which are non-zero
    assert count_synaptic_ops(DiagonalSynapse(torch.ones(4)), x) == 3


def test_conv_counts_the_windows_each_input_reaches():
    conv = nn.Conv2d(1, 2, 3, padding=1)  # 3x3 input, zero padding
    corner, centre = torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)
    corner[..., 0, 0] = 1
    centre[..., 1, 1] = 1
    # a corner pixel lies in 4 of the 9 windows, the centre in all 9; each feeds 2 output channels
    assert count_synaptic_ops(conv, corner) == 4 * 2
    assert count_synaptic_ops(conv, centre) == 9 * 2
    grouped = nn.Conv2d(2, 4, 1, groups=2)  # one input of group 0 feeds that group's 2 output channels
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0, 0, 0] = 1
    assert count_synaptic_ops(grouped, x) == 2
    multi = layer.Conv2d(1, 2, 3, padding=1, step_mode="m")  # [T, N, C, H, W] inputs fold T into the batch
    assert count_synaptic_ops(multi, torch.stack([corner, centre])) == 8 + 18


def test_counts_match_spikingjelly_synop_counter_on_binary_inputs():
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

    g = torch.Generator().manual_seed(0)
    cases = [(nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 9, 9)),
             (nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), (2, 4, 8, 8)),
             (nn.Conv1d(4, 8, 3, padding=1, groups=4), (2, 4, 10)), (nn.Linear(10, 7), (3, 10))]
    for module, shape in cases:
        x = (torch.rand(shape, generator=g) < 0.3).float()
        counter = SynOpCounter()
        with torch.no_grad(), DispatchCounterMode([counter]):
            module(x)
        assert count_synaptic_ops(module, x) == counter.get_total(), module


def test_unshared_conv_counts_as_its_shared_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    unshared = UnsharedConv2d.from_conv(conv, torch.rand(4, 9, 9), (9, 9), (5, 5), keep_bias=True)
    x = (torch.rand(3, 4, 9, 9, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    assert count_synaptic_ops(unshared, x) == count_synaptic_ops(conv, x) > 0
    with pytest.raises(TypeError, match="not a synapse layer"):
        count_synaptic_ops(nn.ReLU(), x)


class Chain(nn.Module):
    """conv → IF → conv → IF → flatten → linear: every synapse has a single input, no residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.sn1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.conv2, self.sn2 = layer.Conv2d(4, 4, 3, stride=2, padding=1), neuron.IFNode()
        self.flatten, self.fc = layer.Flatten(), layer.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.sn2(self.conv2(self.sn1(self.conv1(x))))))


def _spike_counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Non-zero outputs of each neuron, counted independently of the energy module."""
    counts, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, neuron.BaseNode):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: counts.__setitem__(name, int((out != 0).sum()))))
    functional.reset_net(model)
    with torch.no_grad():
        model(x)
    functional.reset_net(model)
    for h in hooks:
        h.remove()
    return counts


@pytest.mark.parametrize("spike, after_op", [("real", "AC"), ("ternary", "AC±")])
def test_fold_turns_macs_into_acs_with_exact_counts(spike, after_op):
    net = Chain()
    functional.set_step_mode(net, "m")
    x = nets.example("m")  # [T=2, N=2, 3, 16, 16], analog input on a 1/4 grid
    model = rs.convert_model(net, x, spike=spike, granularity="channel")
    make_dyadic(model, x, negative=False)
    with torch.no_grad():  # amplitudes away from 1 (and from -1): the scaled spikes are real-valued
        for a in rs.amplitude_parameters(model):
            a.copy_(torch.linspace(1.25, 2.0, a.numel()).reshape(a.shape))
    spikes = _spike_counts(rs.fold(model), x)
    report = rs.energy_report(model, x)
    assert report.before is not None and report.after.samples == 2
    rows = {name: (b, a) for name, b, a in report.rows()}
    assert list(rows) == ["conv1", "conv2", "fc"]
    for counted in rows["conv1"]:  # analog input: MACs in both models
        assert counted.op == "MAC" and counted.nonzero == int((x != 0).sum())
    assert rows["conv2"][0].nonzero == rows["conv2"][1].nonzero == spikes["sn1"] > 0
    assert rows["fc"][1].ops == spikes["sn2"] * 5 > 0  # 5 output features per spike
    for name in ("conv2", "fc"):
        before, after = rows[name]
        assert (before.op, after.op) == ("MAC", after_op)
        assert before.ops == after.ops  # fold is exact: the same spikes reach the same weights
        assert before.energy_pj == before.ops * E_MAC_PJ and after.energy_pj == after.ops * E_AC_PJ
    saving = sum(rows[n][0].energy_pj - rows[n][1].energy_pj for n in rows)
    assert report.before.energy_pj - report.after.energy_pj == pytest.approx(saving)
    assert report.ratio == pytest.approx(report.before.energy_pj / report.after.energy_pj)
    text = str(report)
    assert "conv2" in text and "total" in text and "before fold ->" in report.summary()


def test_energy_constants_are_parameters():
    net = Chain()
    functional.set_step_mode(net, "m")
    x = nets.example("m")
    report = rs.energy_report(net, x, e_ac_pj=1.0, e_mac_pj=10.0)  # a plain network: counted as it is
    assert report.before is None and report.ratio is None
    for layer_ in report.after.layers:
        assert layer_.energy_pj == layer_.ops * (10.0 if layer_.op == "MAC" else 1.0)
    assert "AC 1 pJ, MAC 10 pJ" in report.summary()


def test_residual_copies_merge_and_shortcuts_appear_after_fold_only():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x, granularity="channel")
    make_dyadic(model, x)
    rows = {name: (b, a) for name, b, a in rs.energy_report(model, x).rows()}
    before, after = rows["sn2"]  # the identity shortcut into sn2's membrane became a DiagonalSynapse
    assert before is None and after.kind == "DiagonalSynapse" and after.ops == after.nonzero > 0
    model = rs.convert_model(nets.custom("sum", "LIF"), x, granularity="channel")
    make_dyadic(model, x)
    before, after = {name: (b, a) for name, b, a in rs.energy_report(model, x).rows()}["b2.0"]
    # s + b1(s) feeds b2.0: after fold each addend has its own copy, so overlapping spikes count twice
    assert after.inputs == 2 * before.inputs and after.ops >= before.ops


def test_report_restores_training_mode_and_statistics_and_notes_untrained_amplitudes():
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x)  # every amplitude still 1
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    report = rs.energy_report(model, x)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert "every amplitude is still 1" in str(report)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x)
    make_dyadic(model, x)
    path = rs.energy_report(model, x).plot(tmp_path / "energy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_inspect_energy(tmp_path, capsys):
    from sj_realspike.cli import main

    x = nets.example("m")
    model = rs.convert_model(nets.custom("sum", "LIF"), x)
    rs.save_bundle(model, tmp_path / "c.bundle", factory="nets:custom", kwargs={"name": "sum", "neuron_name": "LIF"})
    assert main(["inspect", str(tmp_path / "c.bundle"), "--energy", "--trust", "nets"]) == 0
    out = capsys.readouterr().out
    assert "energy before" in out and "synaptic energy per sample:" in out and "after fold" in out
    assert main(["inspect", str(tmp_path / "c.bundle"), "--energy-plot", str(tmp_path / "e.png"), "--trust", "nets"]) == 0
    assert (tmp_path / "e.png").is_file()
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "m.onnx"), "--energy"]) == 2
    assert "--energy needs a bundle" in capsys.readouterr().err


def test_report_leaves_the_users_live_neuron_state_as_it_was():
    """A user mid-sequence keeps the membranes of the steps run so far: energy_report puts them back."""
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "LIF"), x)
    with torch.no_grad():
        model(x)
    live = {name: m.v for name, m in model.named_modules() if isinstance(m, neuron.BaseNode)}
    assert live and all(isinstance(v, torch.Tensor) for v in live.values())
    rs.energy_report(model, x)
    assert {name: m.v for name, m in model.named_modules() if isinstance(m, neuron.BaseNode)}.keys() == live.keys()
    assert all(m.v is live[name] for name, m in model.named_modules() if isinstance(m, neuron.BaseNode))
