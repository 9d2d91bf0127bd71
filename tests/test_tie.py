"""tie_summed: neurons whose spikes are added before a synapse share one amplitude, so fold
scales the plain network's synapses (no copy per addend) and stays bit-exact."""

from __future__ import annotations

import copy
from pathlib import Path

import nets
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

import sj_realspike as rs
from sj_realspike.config import shipped_recipes
from sj_realspike.errors import ConfigError
from sj_realspike.fold import NotConvertedWarning
from sj_realspike.report import record_of
from sj_realspike.spiking import amplitude_of
from sj_realspike.state import copy_model
from sj_realspike.synapses import UnsharedConv2d
from sj_realspike.testing import assert_exact_in_fp32, firing_rate, make_dyadic, run, spike_values

SPIKE_SETS = {"real": {0.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}
SUM_GROUP = ("stem.2", "b1.2", "b2.2")  # SumNet: s = stem; s = s + b1(s); s = (s + b2(s)) / 2


class CatSumNet(nn.Module):
    """A residual sum that only a single term may pass: max-pooled, then concatenated with
    another neuron's spikes into one conv."""

    def __init__(self, sn) -> None:
        super().__init__()
        self.stem = nn.Sequential(*nets._block(3, 8, sn))
        self.b1 = nn.Sequential(*nets._block(8, 8, sn))
        self.side = nn.Sequential(*nets._block(8, 4, sn))
        self.pool = layer.MaxPool2d(2)
        self.head = nn.Sequential(*nets._block(12, 8, sn))
        self.flatten = layer.Flatten()
        self.fc = layer.Linear(8 * 8 * 8, 10)
        functional.set_step_mode(self, "m")

    def forward(self, x):
        s = self.stem(x)
        side = self.side(s)
        s = s + self.b1(s)
        return self.fc(self.flatten(self.head(torch.cat([self.pool(s), self.pool(side)], dim=-3))))


def _synapses(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((type(m).__name__, tuple(m.weight.shape)) for m in model.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear, UnsharedConv2d)))


def _vanilla_deploy(net: nn.Module, x: torch.Tensor) -> nn.Module:
    with pytest.warns(NotConvertedWarning):
        return rs.fold(net, example_input=x)


def _check_exact(model: nn.Module, x: torch.Tensor, spike: str, steps: bool = False) -> nn.Module:
    example = x[0] if steps else x
    make_dyadic(model, example)
    expected = assert_exact_in_fp32(model, x, steps)
    rate = firing_rate(model, x, steps)
    assert 0.02 < rate < 0.8, f"test net fires at {rate:.3f}: equality would be (nearly) vacuous"
    deploy = rs.fold(model)
    got = run(deploy, x, steps)
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()} (must be 0 on dyadic)"
    for name, values in spike_values(deploy, x, steps).items():
        assert values <= SPIKE_SETS[spike], f"{name} emits {sorted(values)}"
    return deploy


CELLS = [("m", spike, granularity) for spike in ("real", "ternary") for granularity in ("layer", "channel", "element")]
CELLS += [("s", "real", "layer"), ("s", "ternary", "channel")]  # single-step: the same merge, per step


@pytest.mark.parametrize("step_mode,spike,granularity", CELLS)
def test_sum_net_tied_folds_exact_with_the_plain_synapses(step_mode, spike, granularity):
    x = nets.example("m", size=16)
    steps = step_mode == "s"
    example = x[0] if steps else x
    model = rs.convert_model(nets.custom("sum", "LIF", step_mode), example, spike=spike, granularity=granularity,
                             tie_summed=True)
    report = rs.conversion_report(model)
    assert len(report.converted) == 3 and report.tied == [SUM_GROUP] and not report.untied
    shared = amplitude_of(model.get_submodule("stem.2"))
    assert all(amplitude_of(model.get_submodule(n)) is shared for n in SUM_GROUP)
    assert len(list(rs.amplitude_parameters(model))) == 1
    assert "one amplitude shared (tie_summed) by: stem.2, b1.2, b2.2" in str(report)

    deploy = _check_exact(model, x, spike, steps)
    fold = rs.fold_report(deploy)
    vanilla = _vanilla_deploy(nets.custom("sum", "LIF", step_mode), example)
    if granularity == "element":
        # Element-wise: b2's conv becomes locally connected, pooling + fc one merged Linear; no copies.
        assert len(fold.unshared_convs) == 2 and len(fold.merged_linears) == 1
        assert len(_synapses(deploy)) == len(_synapses(vanilla))
    else:
        assert _synapses(deploy) == _synapses(vanilla)
        assert fold.parameters_after == sum(p.numel() for p in vanilla.parameters())


def test_untied_sum_net_gets_one_copy_per_addend():
    """The cost tie_summed removes (and proof the synapse comparison above can fail)."""
    x = nets.example("m", size=16)
    model = rs.convert_model(nets.custom("sum", "IF"), x)
    assert rs.conversion_report(model).tied == [] and len(list(rs.amplitude_parameters(model))) == 3
    deploy = _check_exact(model, x, "real")
    vanilla = _vanilla_deploy(nets.custom("sum", "IF"), x)
    assert len(_synapses(deploy)) == len(_synapses(vanilla)) + 1 + 2  # b2's conv: 2 addends, fc: 3


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_tied_sum_may_pass_max_pooling_and_concatenation(granularity):
    x = nets.example("m", size=16)
    untied = rs.conversion_report(rs.convert_model(CatSumNet(nets.NEURONS["IF"]), x, granularity=granularity))
    assert {s.module for s in untied.skipped} == {"stem.2", "b1.2"}
    assert all("maximum of a sum of spike trains" in s.reason for s in untied.skipped)

    model = rs.convert_model(CatSumNet(nets.NEURONS["IF"]), x, granularity=granularity, tie_summed=True)
    report = rs.conversion_report(model)
    assert len(report.converted) == 4 and not report.skipped and report.tied == [("stem.2", "b1.2")]
    deploy = _check_exact(model, x, "real")
    assert _synapses(deploy) == _synapses(_vanilla_deploy(CatSumNet(nets.NEURONS["IF"]), x))


def test_sew_resnet18_tied_deploy_has_the_vanilla_convolutions():
    x = nets.example("m", size=8)
    model = rs.convert_model(nets.zoo("sew_resnet18", "LIF"), x, granularity="channel", tie_summed=True)
    report = rs.conversion_report(model)
    assert len(report.converted) == 20 and len(report.tied) == 4
    assert report.tied[0] == ("sn1", "layer1.0.sn2", "layer1.1.sn2")
    assert report.tied[1] == ("layer2.0.sn2", "layer2.0.downsample_sn", "layer2.1.sn2")
    deploy = _check_exact(model, x, "real")
    vanilla = _vanilla_deploy(nets.zoo("sew_resnet18", "LIF"), x)
    assert _synapses(deploy) == _synapses(vanilla)
    assert len(rs.fold_report(deploy).scaled_synapses) == 20


def test_group_with_unlike_amplitudes_stays_untied_and_exact():
    x = nets.example("m", size=16)
    cfg = rs.SpikeConfig().set_tie_summed().set_name("b1.2", rs.SpikeSpec(granularity="layer"))
    model = rs.convert_model(nets.custom("sum", "IF"), x, granularity="channel", config=cfg)
    report = rs.conversion_report(model)
    assert report.tied == [] and len(report.converted) == 3
    (group, why), = report.untied
    assert group == SUM_GROUP
    assert "differ in shape" in why and "b1.2: scalar real layer" in why and "stem.2: 8x1x1 real channel" in why
    assert "summed but not tied: stem.2, b1.2, b2.2" in str(report)
    _check_exact(model, x, "real")


def test_shared_amplitude_trains_as_one_parameter_and_survives_copies():
    x = nets.example("m", size=16)
    model = rs.convert_model(nets.custom("sum", "IF"), x, tie_summed=True)
    for clone in (copy.deepcopy(model), copy_model(model)):
        assert amplitude_of(clone.get_submodule("stem.2")) is amplitude_of(clone.get_submodule("b2.2"))
    (a,) = rs.amplitude_parameters(model)
    model.train()
    functional.reset_net(model)
    model(x).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    # state_dict lists the shared tensor under each neuron; loading it keeps them one.
    state = model.state_dict()
    assert {k for k in state if k.endswith("spike_amplitude.a")} == {f"{n}.spike_amplitude.a" for n in SUM_GROUP}
    other = rs.convert_model(nets.custom("sum", "IF"), x, tie_summed=True)
    other.load_state_dict(state)
    assert torch.equal(amplitude_of(other.get_submodule("b1.2")).a, a)


def test_tie_summed_config_toml_keyword_and_record():
    cfg = rs.SpikeConfig.from_dict({"tie_summed": True, "global": {"granularity": "layer"}})
    assert cfg.tie_summed is True and cfg.to_dict()["tie_summed"] is True
    assert rs.SpikeConfig().tie_summed is None and "tie_summed" not in rs.SpikeConfig().to_dict()
    with pytest.raises(ConfigError, match=r"recipe <dict>: tie_summed must be true or false, got 'yes'"):
        rs.SpikeConfig.from_dict({"tie_summed": "yes"})
    with pytest.raises(ConfigError, match="expected global, types, regex, names, tie_summed, description"):
        rs.SpikeConfig.from_dict({"tie": True})

    x = nets.example("m", size=16)
    # A config that sets it decides over the keyword; the record holds the effective setting.
    untied = rs.convert_model(nets.custom("sum", "IF"), x, tie_summed=True,
                              config=rs.SpikeConfig().set_tie_summed(False))
    assert rs.conversion_report(untied).tied == []
    keyword = rs.convert_model(nets.custom("sum", "IF"), x, tie_summed=True)
    recorded = record_of(keyword)["config"]
    assert recorded == {"tie_summed": True}
    again = rs.convert_model(nets.custom("sum", "IF"), x, config=rs.SpikeConfig.from_dict(recorded))
    assert rs.conversion_report(again).tied == [SUM_GROUP]


def test_sew_recipe_documents_the_tied_alternative():
    text = shipped_recipes()["sew_resnet"].read_text()
    assert "# tie_summed = true" in text
    cfg = rs.SpikeConfig.from_dict(__import__("tomllib").loads(text.replace("# tie_summed = true",
                                                                              "tie_summed = true")))
    assert cfg.tie_summed is True


def test_cli_convert_tie_summed_round_trips_through_the_bundle(tmp_path, monkeypatch):
    from sj_realspike.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    argv = ["convert", "--model", "nets:custom", "--kwargs", '{"name": "sum", "neuron_name": "IF"}',
            "--example-shape", "2,2,3,16,16", "--tie-summed", "-o", str(tmp_path / "c.bundle")]
    assert main(argv) == 0
    model = rs.load_bundle(tmp_path / "c.bundle", trust=["nets"])
    assert rs.conversion_report(model).tied == [SUM_GROUP]
    assert record_of(model)["config"] == {"tie_summed": True}
