"""SpikeConfig: precedence global < type < regex < name, None opts out, TOML recipes."""

from __future__ import annotations

import os
import re

import nets
import pytest
import torch
from spikingjelly.activation_based import neuron

import sj_realspike as rs
from sj_realspike import SpikeConfig, SpikeSpec
from sj_realspike.config import shipped_recipes
from sj_realspike.spiking import amplitude_of

DEFAULT = SpikeSpec(spike="real", granularity="channel", init=1.0)


def resolve(cfg: SpikeConfig, name: str, module=None):
    return cfg.resolve(name, module or neuron.LIFNode(), DEFAULT)


def test_precedence_global_type_regex_name():
    cfg = (SpikeConfig()
           .set_global(SpikeSpec(granularity="layer"))
           .set_type(neuron.LIFNode, SpikeSpec(spike="ternary"))
           .set_name_regex(r"layer4\.", SpikeSpec(granularity="element"))
           .set_name("layer4.1.sn2", None))
    assert resolve(cfg, "sn1", neuron.IFNode()) == (SpikeSpec("real", "layer", 1.0), "global")
    assert resolve(cfg, "sn1") == (SpikeSpec("ternary", "channel", 1.0), "type")
    assert resolve(cfg, "layer4.0.sn1") == (SpikeSpec("real", "element", 1.0), "regex")
    assert resolve(cfg, "layer4.1.sn2") == (None, "name")


def test_unset_fields_come_from_convert_arguments_and_no_rule_means_default():
    assert resolve(SpikeConfig(), "x") == (DEFAULT, "default")
    assert resolve(SpikeConfig().set_global(None), "x") == (None, "global")


def test_type_rules_follow_the_mro_most_derived_first():
    class MyLIF(neuron.LIFNode):
        pass

    cfg = SpikeConfig().set_type(neuron.BaseNode, SpikeSpec(granularity="layer")).set_type(
        "LIFNode", SpikeSpec(granularity="element"))
    assert resolve(cfg, "a", MyLIF())[0].granularity == "element"
    assert resolve(cfg, "a", neuron.IFNode())[0].granularity == "layer"


def test_first_matching_regex_wins():
    cfg = SpikeConfig().set_name_regex("layer", SpikeSpec(granularity="layer")).set_name_regex(
        "layer4", SpikeSpec(granularity="element"))
    assert resolve(cfg, "layer4.0.sn1")[0].granularity == "layer"


def test_bad_values_are_rejected_with_the_value():
    with pytest.raises(rs.ConfigError, match=r"granularity must be one of .* got 'pixel'"):
        SpikeSpec(granularity="pixel")
    with pytest.raises(rs.ConfigError, match=r"spike must be one of .* got 'binary'"):
        SpikeSpec(spike="binary")
    with pytest.raises(rs.ConfigError, match=r"invalid name regex '\('"):
        SpikeConfig().set_name_regex("(", None)
    with pytest.raises(rs.ConfigError, match="must be a SpikeSpec or None, got str"):
        SpikeConfig().set_global("real")


def test_toml_round_trip(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text("""
[global]
granularity = "layer"
[types.LIFNode]
spike = "ternary"
[[regex]]
pattern = '^layer4\\.'
granularity = "element"
[names."sn1"]
skip = true
""")
    cfg = SpikeConfig.from_file(path)
    assert resolve(cfg, "sn1") == (None, "name")
    assert resolve(cfg, "layer4.0.sn1")[0].granularity == "element"
    assert resolve(cfg, "x")[0].spike == "ternary"
    assert SpikeConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text,match", [
    ("[global]\ngranulrity = 'layer'\n", r"\[global\]: unknown key\(s\) \['granulrity'\]"),
    ("[globl]\n", r"unknown top-level key\(s\) \['globl'\]"),
    ("[[regex]]\ngranularity = 'layer'\n", r"needs a 'pattern'"),
    ("[names.sn1]\nskip = true\nspike = 'real'\n", r"cannot be combined"),
    ("[global\n", r"not valid TOML"),
])
def test_recipe_errors_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(rs.ConfigError, match=match):
        SpikeConfig.from_file(path)


def test_missing_recipe_lists_shipped_ones():
    with pytest.raises(rs.ConfigError, match=r"neither a file nor a shipped recipe \(shipped: .*sew_resnet"):
        SpikeConfig.from_file("no_such_recipe")


@pytest.mark.parametrize("name", ["spiking_resnet", "sew_resnet", "spiking_vgg", "ternary_spike"])
def test_shipped_recipes_load_by_name(name):
    assert name in shipped_recipes()
    assert SpikeConfig.from_file(name).to_dict()["global"]


def test_config_drives_convert_model():
    x = nets.example("m")
    cfg = (SpikeConfig().set_type(neuron.IFNode, SpikeSpec(granularity="layer"))
           .set_name_regex(r"b2\.", SpikeSpec(spike="ternary", init=0.5))
           .set_name("stem.2", None))
    model = rs.convert_model(nets.custom("sum", "IF"), x, config=cfg)
    report = rs.conversion_report(model)
    assert report.untouched == ["stem.2"]
    by_name = {c.module: c for c in report.converted}
    assert (by_name["b1.2"].spike, by_name["b1.2"].granularity, by_name["b1.2"].rule) == ("real", "layer", "type")
    assert (by_name["b2.2"].spike, by_name["b2.2"].neuron, by_name["b2.2"].rule) == ("ternary", "TernaryIFNode", "regex")
    # The regex rule wins outright: its unset granularity comes from convert_model's default
    # (channel), not from the weaker type rule.
    assert torch.equal(amplitude_of(model.get_submodule("b2.2")).a, torch.full((8, 1, 1), 0.5))
    assert amplitude_of(model.get_submodule("stem.2")) is None


@pytest.mark.parametrize("pattern", ["(.*)*" * 16 + "Z", "(a+)+", r"layer(\.\d+)*", "(?:x|y*){2,}", "((a)+)+",
                                     "(?=(a+))*", "(a|ab)*c", "(?:(a)|\\1)*Z"])
def test_name_regex_with_nested_repetition_is_refused(pattern):
    # re has no timeout: '(.*)*' * 16 + 'Z' backtracks for hours on a name without a Z, '(a|a)*b' too
    with pytest.raises(rs.ConfigError, match=rf"^name regex {re.escape(repr(pattern))} repeats a part that itself "
                                             r"repeats or branches \(like '\(a\+\)\*' or '\(a\|ab\)\*'\): matching "
                                             r"it can take exponential time; write it with one level of repetition$"):
        SpikeConfig().set_name_regex(pattern, None)


def test_name_regex_with_many_unbounded_repeats_is_refused():
    # '.*' twelve times then 'Z': polynomial, but of degree 12 (seconds on a 30-character name)
    SpikeConfig().set_name_regex(r".*layer.*conv.*", None)
    with pytest.raises(rs.ConfigError, match=r"^name regex '(\.\*){12}Z' has 12 unbounded repeats \('\*', '\+'\), "
                                             r"more than the 3 allowed"):
        SpikeConfig().set_name_regex(".*" * 12 + "Z", None)


def test_name_regex_limits_keep_ordinary_patterns():
    for pattern in (r"layer4\.1\.sn2$", r"(layer[12])\.\d+\.sn1", "a{2,5}b*", "(ab)?c+", "(" * 300 + "a" + ")" * 300):
        SpikeConfig().set_name_regex(pattern, None)
    with pytest.raises(rs.ConfigError, match=r"^name regex 'x{40}'\.\.\. is 1,001 characters long, more than the "
                                             r"1,000 allowed$"):
        SpikeConfig().set_name_regex("x" * 1001, None)


def test_recipe_regex_that_backtracks_is_refused_naming_the_entry(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[[regex]]\npattern = "(.*)*Z"\n')
    with pytest.raises(rs.ConfigError, match=rf"^recipe {re.escape(str(path))} \[\[regex\]\] #1: name regex "
                                             r"'\(\.\*\)\*Z' repeats a part"):
        SpikeConfig.from_file(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_init_is_refused(tmp_path, value):
    path = tmp_path / "r.toml"
    path.write_text(f"[global]\ninit = {value}\n")
    with pytest.raises(rs.ConfigError, match=rf"^recipe {re.escape(str(path))} \[global\]: init must be a finite "
                                             rf"number, got {value}$"):
        SpikeConfig.from_file(path)
    with pytest.raises(rs.ConfigError, match=rf"^init must be a finite number, got {value}$"):
        SpikeSpec(init=float(value))


def test_recipe_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "r.toml")  # reading it would block
    with pytest.raises(rs.ConfigError, match=rf"^recipe {re.escape(str(tmp_path / 'r.toml'))} is not a "
                                             r"regular file$"):
        SpikeConfig.from_file(tmp_path / "r.toml")
