"""verify's verdict: PASS only when the ONNX file is this model's export and reproduces it on an input that fires."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron

import nets
import sj_realspike as rs
from sj_realspike.cli import main
from sj_realspike.export import model_fingerprint
from sj_realspike import provenance
from sj_realspike.provenance import remember_export
from sj_realspike.purity import spike_tensors, static_violations
from sj_realspike.testing import dyadic_input, make_dyadic
from sj_realspike.verify import DEFAULT_RTOL

TESTS = Path(__file__).parent


def _model(spike: str = "real", seed: int = 0, name: str = "shortcut") -> torch.nn.Module:
    x = nets.example("m", size=16)
    model = rs.convert_model(nets.custom(name, "IF"), x, spike=spike, granularity="channel")
    make_dyadic(model, x, seed=seed)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path, torch.Tensor]:
    """A dyadic converted model and its export: verify must PASS on it."""
    path = tmp_path_factory.mktemp("verify") / "m.onnx"
    model = _model()
    x = nets.example("m", size=16)
    rs.export_onnx(model, path, x)
    return model, path, x


def _edited(path: Path, out: Path, edit) -> Path:
    proto = onnx.load(path)
    edit(proto)
    onnx.save(proto, out)
    return out


def _first_conv_weight(proto: onnx.ModelProto) -> onnx.TensorProto:
    inits = {t.name: t for t in proto.graph.initializer}
    return next(inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits)


def _add_to_conv_weight(proto: onnx.ModelProto, value: float) -> None:
    t = _first_conv_weight(proto)
    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + np.float32(value), t.name))


def test_correct_export_passes_with_given_and_default_input(exported):
    model, path, x = exported
    report = rs.verify(model, path, x)
    assert report.ok and report.failures == [], str(report)
    assert str(report).startswith("PASS: outputs within rtol 1e-05")
    assert report.bit_identical and report.fingerprint == report.file_fingerprint
    assert not report.silent_neurons and len(report.firing) == 4

    default = rs.verify(model, path)  # no input: noise scaled until every neuron fires
    assert default.ok, str(default)
    assert default.input_shape == tuple(x.shape)
    assert "default: random uniform in [0, " in str(default).splitlines()[1]
    assert "at which every neuron fires" in default.input_note
    # the deploy model verifies against the same file: fold is deterministic, the fingerprint stable
    assert rs.verify(rs.fold(model), path, x).ok


def test_conv_weight_plus_100_in_the_onnx_file_fails_on_the_outputs(exported, tmp_path):
    model, path, x = exported
    bad = _edited(path, tmp_path / "bad.onnx", lambda p: _add_to_conv_weight(p, 100.0))
    report = rs.verify(model, bad, x)
    assert not report.ok
    assert report.fingerprint == report.file_fingerprint  # metadata untouched: the graph and outputs tell
    assert re.match(r"the ONNX graph is not what export_onnx writes for this model: initializer '\S+' holds other "
                    r"values than the export's \(max abs diff 100\)$", report.failures[0]), report.failures
    assert any(f.startswith("onnx output differs from the trained model's: max rel err") for f in report.failures)
    assert str(report).startswith("FAIL: the ONNX graph is not what export_onnx writes")


def _one_ulp_up(proto: onnx.ModelProto) -> None:
    t = _first_conv_weight(proto)
    w = onnx.numpy_helper.to_array(t).copy()
    w.flat[0] = np.nextafter(w.flat[0], np.float32(np.inf))
    t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))


def _scope_dropped(proto: onnx.ModelProto) -> None:
    """The nodes of neuron 'sn1' labelled as the root's: purity would no longer find that neuron."""
    for node in proto.graph.node:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes" and "'sn1'" in p.value:
                p.value = repr(["", node.name])


def _triggered(proto: onnx.ModelProto) -> None:
    """A backdoor: +100 on every output once the input holds a value above 1000 (never on real data)."""
    out = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [o if o != out else "clean" for o in node.output]
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.float32), n)
                                    for n, v in (("limit", 1000.0), ("bonus", 100.0))])
    proto.graph.node.extend([
        onnx.helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        onnx.helper.make_node("Greater", ["peak", "limit"], ["armed"]),
        onnx.helper.make_node("Cast", ["armed"], ["on"], to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Mul", ["on", "bonus"], ["kick"]),
        onnx.helper.make_node("Add", ["clean", "kick"], [out])])


def _shadowed_weight(proto: onnx.ModelProto) -> None:
    """A tampered copy of a conv weight before the real one: onnxruntime runs the first, a name map keeps the last."""
    t = _first_conv_weight(proto)
    w = onnx.numpy_helper.to_array(t).copy()
    w.flat[0] += 0.01
    proto.graph.initializer.insert(0, onnx.numpy_helper.from_array(w, t.name))


@pytest.mark.parametrize("edit, reason", [
    (_shadowed_weight, r"initializer '\S+' appears 2 times \(a runtime may take any copy\)"),
    (_one_ulp_up, r"initializer '\S+' holds other values than the export's \(max abs diff [0-9.e-]+\)"),
    (_scope_dropped, r"node \d+ \((\w+) '\S+', outputs (\[.*\])\) differs from the exported node \(\1, outputs \2\)"),
    (_triggered, r"node \d+ \(Add '\S+', outputs \['clean'\]\) differs from the exported node \(Add, outputs \['\S+'\]\)"),
])
@pytest.mark.parametrize("fresh_process", [False, True])
def test_a_file_that_is_not_exactly_the_models_export_fails(exported, tmp_path, monkeypatch, edit, reason,
                                                            fresh_process):
    # Each edit keeps the recorded fingerprint and passed: one ulp and a trigger far from the input stay within
    # rtol, a relabelled neuron escapes purity. The graph is now compared with the model's export, remembered
    # from this process's export_onnx or (a fresh process) exported again.
    model, path, x = exported
    if fresh_process:
        monkeypatch.setattr("sj_realspike.provenance._exported", type(provenance._exported)(set))
    assert rs.verify(model, path, x).ok  # the genuine file: deterministic export, same graph
    report = rs.verify(model, _edited(path, tmp_path / "bad.onnx", edit), x)
    assert not report.ok and report.fingerprint == report.file_fingerprint
    assert re.match(r"the ONNX graph is not what export_onnx writes for this model: " + reason + "$",
                    report.failures[0]), report.failures


def test_verify_leaves_the_models_neuron_state_as_it_was(exported):
    model, path, x = exported
    with torch.no_grad():
        model(x)  # mid-sequence: the user's membranes hold values
    before = {name: m.v.clone() for name, m in model.named_modules() if isinstance(getattr(m, "v", None), torch.Tensor)}
    assert before and rs.verify(model, path, x).ok
    assert all(torch.equal(model.get_submodule(name).v, v) for name, v in before.items())
    functional.reset_net(model)


def test_nan_and_inf_inputs_fail(exported):
    model, path, x = exported
    for value in (math.nan, math.inf):
        bad = x.clone()
        bad[0, 0, 0, :4, :4] = value
        report = rs.verify(model, path, bad)
        assert not report.ok
        assert report.failures[0] == ("the input holds 16 NaN/Inf values: outputs compared on it prove nothing "
                                      "(NaN never fires a neuron); pass finite data")


def test_nan_weights_fail_and_never_count_as_agreement(tmp_path):
    x = nets.example("m", size=16)
    model = _model()
    with torch.no_grad():
        model.fc.weight.fill_(math.nan)  # every output NaN
    rs.export_onnx(model, tmp_path / "nan.onnx", x)
    report = rs.verify(model, tmp_path / "nan.onnx", x)
    assert not report.ok
    assert re.match(r"the deploy model's weights hold NaN/Inf: fc\S*\.weight \(160\)$", report.failures[0])
    assert any(f.startswith("the onnx output holds 40 NaN/Inf values") for f in report.failures)
    for c in report.comparisons:
        assert math.isnan(c.max_abs) and c.top1_agreement == 0.0 and not c.identical



def test_nan_in_an_onnx_initializer_fails_even_where_outputs_stay_finite(exported, tmp_path):
    """One NaN in the first conv: its neurons stop firing (NaN never fires), the outputs may stay finite."""
    model, path, x = exported
    report = rs.verify(model, _edited(path, tmp_path / "nan.onnx", lambda p: _add_to_conv_weight(p, math.nan)), x)
    assert not report.ok and report.failures[0].endswith("holds other values than the export's (max abs diff nan)")
    assert any(f.startswith("the ONNX file's initializers hold NaN/Inf") for f in report.failures)


def _mlp(fc1_sign: float, fc2_sign: float) -> torch.nn.Module:
    """The MLP net with fc1/fc2 weights forced to a sign: -1 makes the neuron after it silent on x >= 0."""
    x = nets.example("m", size=16)
    model = rs.convert_model(nets.custom("mlp", "IF"), x, spike="real", granularity="layer")
    with torch.no_grad():
        for name, sign in (("fc1", fc1_sign), ("fc2", fc2_sign)):
            fc = getattr(model, name)
            fc.weight.copy_(fc.weight.abs() * sign)
            if fc.bias is not None:
                fc.bias.zero_()
    return model


def test_default_input_on_a_silent_network_fails(tmp_path):
    x = nets.example("m", size=16)
    silent = _mlp(-1.0, 1.0)  # inputs are >= 0: no neuron ever fires
    rs.export_onnx(silent, tmp_path / "silent.onnx", x)
    report = rs.verify(silent, tmp_path / "silent.onnx")
    assert not report.ok and report.comparison("trained", "onnx").identical  # a vacuous "bit-identical"
    assert report.failures[0].startswith("no spikes observed: none of the 2 neurons fired on this input")
    assert "pass --input with real data" in report.failures[0]
    assert "fires the most neurons of 1, 2, 4" in report.input_note

    deep = _mlp(1.0, -1.0)  # the first layer fires, the second never does
    rs.export_onnx(deep, tmp_path / "deep.onnx", x)
    report = rs.verify(deep, tmp_path / "deep.onnx")
    assert not report.ok and report.silent_neurons == ["sn2"]
    assert report.failures == ["1 of 2 neurons never fired on this input (sn2): the synapses after them were "
                               "not checked; pass --input with real data"]


def test_exciting_input_scales_until_every_neuron_fires():
    deep = rs.fold(_mlp(1.0, 1.0))
    x, scale = rs.exciting_input(deep, (2, 3, 3, 16, 16), seed=1)
    assert x.shape == (2, 3, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) < scale
    torch.testing.assert_close(x / scale, torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    _, silent_scale = rs.exciting_input(rs.fold(_mlp(-1.0, 1.0)), (2, 3, 3, 16, 16), scales=(4.0, 2.0))
    assert silent_scale == 4.0  # none fires at any scale: the first of the most-firing ones


def test_file_from_another_model_fails_naming_the_fingerprint_or_kind(exported, tmp_path):
    model, path, x = exported
    ternary = _model("ternary")
    report = rs.verify(ternary, path, x)
    assert not report.ok
    assert report.failures[0] == ("ONNX file was exported from a different model: its spikes are binary, "
                                  "this model's are ternary")

    other = _model(seed=1)  # same net and kind, other weights
    report = rs.verify(other, path, x)
    assert not report.ok
    assert report.failures[0].startswith(f"ONNX file was exported from a different model (fingerprint "
                                         f"{report.file_fingerprint[:12]} in the file vs {report.fingerprint[:12]}")

    def drop_fingerprint(proto):
        keep = [p for p in proto.metadata_props if p.key != "sj_realspike.fingerprint"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(keep)

    report = rs.verify(model, _edited(path, tmp_path / "anon.onnx", drop_fingerprint), x)
    assert not report.ok and report.failures[0].startswith("ONNX file records no sj_realspike.fingerprint")


def test_fingerprint_is_recorded_and_reproducible(exported, tmp_path):
    model, path, x = exported
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    fingerprint = meta["sj_realspike.fingerprint"]
    assert len(fingerprint) == 64
    assert model_fingerprint(rs.fold(model), 2, "T,N,C,H,W") == fingerprint  # fold is deterministic
    rs.export_onnx(model, tmp_path / "t4.onnx", nets.example("m", size=16, T=4))  # T is part of it
    assert {p.key: p.value for p in onnx.load(tmp_path / "t4.onnx").metadata_props}[
        "sj_realspike.fingerprint"] != fingerprint


class _Scaled(torch.nn.Module):
    """Spikes times 0.75 on their way into a conv: an amplitude fold never saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.sn1 = layer.Conv2d(3, 4, 3, padding=1), neuron.IFNode()
        self.conv2, self.sn2 = layer.Conv2d(4, 4, 3, padding=1), neuron.IFNode()
        functional.set_step_mode(self, "m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn2(self.conv2(self.sn1(self.conv1(x)) * 0.75))


def _planted_export(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Scaled().eval(), (nets.example("m", size=8),), path, dynamo=True, verbose=False)


def test_static_purity_ignores_value_info(tmp_path):
    _planted_export(tmp_path / "planted.onnx")
    proto = onnx.load(tmp_path / "planted.onnx")
    expected = static_violations(proto)
    assert [(v.neuron, v.op_type) for v in expected] == [("sn1", "Mul")]

    bare = onnx.load(tmp_path / "planted.onnx")
    del bare.graph.value_info[:]  # changes nothing the model computes
    assert static_violations(bare) == expected

    lying = onnx.load(tmp_path / "planted.onnx")
    for v in lying.graph.value_info:  # every intermediate claims to be an integer
        v.type.tensor_type.elem_type = onnx.TensorProto.INT64
    assert spike_tensors(lying) == spike_tensors(proto)
    assert static_violations(lying) == expected


def _offset_outputs(proto: onnx.ModelProto, offset: float) -> None:
    """output ← output + offset: every logit moves alike, so top-1 is unchanged."""
    out = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [o if o != out else "pre_offset" for o in node.output]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(offset, np.float32), "offset"))
    proto.graph.node.append(onnx.helper.make_node("Add", ["pre_offset", "offset"], [out]))


def test_rtol_is_validated_and_applied(exported, tmp_path):
    model, path, x = exported
    with pytest.raises(ValueError, match=r"rtol must be a finite number >= 0, got -1"):
        rs.verify(model, path, x, rtol=-1)
    with pytest.raises(ValueError, match=r"rtol must be a finite number >= 0, got nan"):
        rs.verify(model, path, x, rtol=math.nan)
    nudged = _edited(path, tmp_path / "nudged.onnx", lambda p: _offset_outputs(p, 1e-3))
    # the output comparison alone: as if the nudged graph were what export_onnx writes for the model
    recorded = {p.key: p.value for p in onnx.load(path).metadata_props}["sj_realspike.fingerprint"]
    remember_export(recorded, onnx.load(nudged))
    report = rs.verify(model, nudged, x)
    c = report.comparison("trained", "onnx")
    assert c.top1_agreement == 1.0 and DEFAULT_RTOL < c.max_rel < 1e-2
    assert not report.ok and report.failures[0].startswith(
        f"onnx output differs from the trained model's: max rel err {c.max_rel:.3g} > rtol 1e-05")
    assert rs.verify(model, nudged, x, rtol=1e-2).ok


# ---------------------------------------------------------------------------------------------- CLI
# BatchNorm's eps is set by the constructor, not stored in the weights: a factory that builds the
# test nets with eps=0 keeps a dyadic model exact after a bundle round trip.
DYADIC_FACTORY = """
import torch
import nets


def custom(**kwargs):
    net = nets.custom(**kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0
    return net
"""


@pytest.fixture
def factory_dir(tmp_path, monkeypatch) -> Path:
    (tmp_path / "dyadic_nets.py").write_text(DYADIC_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _bundle(model: torch.nn.Module, path: Path, name: str) -> torch.nn.Module:
    """Save ``model`` as a bundle of the dyadic factory; return what loading it rebuilds."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0
    rs.save_bundle(model, path, factory="dyadic_nets:custom", kwargs={"name": name, "neuron_name": "IF"})
    return rs.load_bundle(path, trust=["dyadic_nets"])


def _verify_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["verify", *args, "--trust", "dyadic_nets"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.slow
def test_cli_verify_exit_status_follows_the_verdict(factory_dir, capsys, monkeypatch):
    tmp = factory_dir
    monkeypatch.chdir(tmp)
    model = _bundle(_model(), tmp / "m.bundle", "shortcut")
    x = nets.example("m", size=16)
    rs.export_onnx(model, tmp / "m.onnx", x)
    _edited(tmp / "m.onnx", tmp / "bad.onnx", lambda p: _add_to_conv_weight(p, 100.0))
    np.save(tmp / "x.npy", x.numpy())
    nan = x.clone()
    nan[0, 0, 0, 0, 0] = math.nan
    np.save(tmp / "nan.npy", nan.numpy())

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "sj_realspike.cli", "verify", "m.bundle", "m.onnx", "--input", "x.npy",
                        "--trust", "dyadic_nets"], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("PASS: ")

    status, out, _ = _verify_cli(capsys, "m.bundle", "bad.onnx", "--input", "x.npy")
    assert status == 1 and out.startswith("FAIL: the ONNX graph is not what export_onnx writes for this model: "
                                          "initializer "), out
    assert "also: onnx output differs from the trained model's" in out
    status, out, _ = _verify_cli(capsys, "m.bundle", "m.onnx", "--input", "nan.npy")
    assert status == 1 and out.startswith("FAIL: the input holds 1 NaN/Inf values"), out
    status, out, err = _verify_cli(capsys, "m.bundle", "m.onnx", "--rtol", "-1")
    assert status == 2 and out == ""
    assert err.strip().splitlines() == ["sj-realspike: error: rtol must be a finite number >= 0, got -1.0"]


def test_cli_verify_default_input_and_another_models_file(factory_dir, capsys, monkeypatch):
    tmp = factory_dir
    monkeypatch.chdir(tmp)
    deep = _bundle(_mlp(1.0, -1.0), tmp / "deep.bundle", "mlp")
    rs.export_onnx(deep, tmp / "deep.onnx", nets.example("m", size=16))
    status, out, _ = _verify_cli(capsys, "deep.bundle", "deep.onnx")
    assert status == 1
    first, second = out.splitlines()[:2]
    assert first == ("FAIL: 1 of 2 neurons never fired on this input (sn2): the synapses after them were not "
                     "checked; pass --input with real data")
    assert "default: random uniform in [0, " in second

    _bundle(_mlp(1.0, 1.0), tmp / "other.bundle", "mlp")
    status, out, _ = _verify_cli(capsys, "other.bundle", "deep.onnx")
    assert status == 1 and out.startswith("FAIL: ONNX file was exported from a different model (fingerprint")
    assert main(["verify", "--help"]) == 0
    assert f"default: {DEFAULT_RTOL:g}" in " ".join(capsys.readouterr().out.split())


def test_realistic_weights_fail_at_the_default_rtol_with_a_hint(tmp_path):
    """BN with eps=1e-5: fold's rounding flips a few spikes, which moves the outputs by whole weights."""
    x = nets.example("m", size=16)
    model = _model()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-5
    rs.export_onnx(model, tmp_path / "m.onnx", x)
    report = rs.verify(model, tmp_path / "m.onnx", x)
    c = report.comparison("trained", "onnx")
    assert c.top1_agreement == 1.0 and DEFAULT_RTOL < c.max_rel < 0.5 and report.spike_flip_rate > 0
    assert not report.ok and "top-1 still agrees on every sample" in report.failures[0]
    assert "pass a larger rtol (--rtol)" in report.failures[0]
    assert rs.verify(model, tmp_path / "m.onnx", x, rtol=0.5).ok


class _Gate(torch.nn.Module):
    """TCJA-style attention: spikes times a gate the network computes from them, ``s · σ(mean(s))``."""

    def forward(self, s):
        return s * torch.sigmoid(s.mean(dim=(3, 4), keepdim=True))


def test_spikes_times_a_gate_from_the_data_are_the_architecture_not_an_amplitude(tmp_path):
    # The gate's Mul reaches conv2: statically it was "an amplitude that was not folded", and verify FAILed a
    # bit-identical, pure export. A factor from the weights alone is still one (test_export's planted Muls).
    net = torch.nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(), _Gate(),
                              layer.Conv2d(4, 4, 3, padding=1), neuron.LIFNode(), layer.Flatten(),
                              layer.Linear(4 * 8 * 8, 3))
    functional.set_step_mode(net, "m")
    x = nets.example("m", size=8, T=4)[:, :, :2] * 4
    model = rs.convert_model(net, x, granularity="channel")
    report = rs.conversion_report(model)
    assert [c.module for c in report.converted] == ["4"] and [s.module for s in report.skipped] == ["1"]
    make_dyadic(model, x)
    rs.export_onnx(rs.fold(model), tmp_path / "gate.onnx", x)
    result = rs.verify(model, tmp_path / "gate.onnx", x)
    assert result.violations == [] and result.pure and result.bit_identical, str(result)
    assert result.ok and str(result).startswith("PASS: ")


# ------------------------------------------------------- ops on spikes that are no unfolded amplitude
class _Between(torch.nn.Module):
    """``fc1(mid(sn(fc0(x))))`` on ``[T, N, 4]``: ``mid`` is an op of the network's own on spikes."""

    def __init__(self, mid: torch.nn.Module) -> None:
        super().__init__()
        self.fc0, self.sn = torch.nn.Linear(4, 8), neuron.LIFNode(tau=2.0, step_mode="m")
        self.mid, self.fc1 = mid, torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.mid(self.sn(self.fc0(x))))


class _Op(torch.nn.Module):
    """A lambda as a module: ``f`` applied to the spikes."""

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.f(s)


class _GroupNorm(torch.nn.GroupNorm):
    """GroupNorm on ``[T, N, C]`` spikes (ONNX: ``InstanceNormalization``, then ``γ``, ``β``)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return super().forward(s.flatten(0, 1)).reshape(s.shape)


def _verified(net: torch.nn.Module, x: torch.Tensor, path: Path) -> rs.VerifyReport:
    model = rs.convert_model(net, x, spike="real", granularity="channel")
    make_dyadic(model, x)
    rs.export_onnx(rs.fold(model), path, x)
    return rs.verify(model, path, x)


def _static(net: torch.nn.Module, x: torch.Tensor, path: Path) -> list[tuple[str, str]]:
    """``(neuron, op)`` of each violation in ``net``'s plain export (no convert, no fold: factors stay)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), path, dynamo=True, verbose=False)
    return [(v.neuron, v.op_type) for v in static_violations(onnx.load(path))]


_FEATURES = dyadic_input((4, 2, 4)) * 2  # [T, N, 4]

NOT_AMPLITUDES = {
    "layer_norm": torch.nn.LayerNorm(8),  # pre-norm spiking transformers: (s − μ) / σ · γ + β
    "group_norm": _GroupNorm(2, 8),
    "rms_norm": torch.nn.RMSNorm(8),  # exported as s · 1/√mean(s²) · γ
    "temporal_shift": _Op(lambda s: torch.cat([s[:1] * 0, s[:-1]])),  # spikes of t − 1; none at t = 0
}


@pytest.mark.parametrize("name", list(NOT_AMPLITUDES))
def test_norms_signs_and_zeros_on_spikes_are_no_amplitude(name, tmp_path):
    # Each FAILed: "<op> node ... scales the spikes of 'sn' before any synapse: an amplitude that was not folded".
    mid = NOT_AMPLITUDES[name]
    report = _verified(_Between(mid), _FEATURES, tmp_path / "m.onnx")
    assert report.violations == [] and report.pure and report.ok, str(report)
    assert str(report).startswith("PASS: ") and report.comparison("deploy", "onnx").max_rel < 1e-6
    # onnxruntime's LayerNormalization/InstanceNormalization kernels round σ otherwise than torch: not bit for bit
    assert report.bit_identical == (name not in ("layer_norm", "group_norm"))
    # An amplitude left before the op still reaches fc1 through it.
    scaled = _Between(_Op(lambda s: mid(s * 0.75)))
    assert _static(scaled, _FEATURES, tmp_path / "scaled.onnx") == [("sn", "Mul")]


def test_pixel_unshuffle_shape_arithmetic_is_no_amplitude(tmp_path):
    # Div(Shape(spikes), 2): PixelUnshuffle's H / 2 computes a shape from the spikes, not a factor on them.
    net = torch.nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                              layer.SeqToANNContainer(torch.nn.PixelUnshuffle(2)), layer.Conv2d(16, 3, 1))
    functional.set_step_mode(net, "m")
    x = nets.example("m", size=8, T=4) * 4
    report = _verified(net, x, tmp_path / "m.onnx")
    assert any(n.op_type == "Div" for n in onnx.load(tmp_path / "m.onnx").graph.node)
    assert report.violations == [] and report.ok and report.bit_identical, str(report)
    scaled = _Op(lambda s: torch.nn.functional.pixel_unshuffle((s * 0.75).reshape(8, 2, 2, 2), 2).reshape(4, 2, 8))
    assert _static(_Between(scaled), _FEATURES, tmp_path / "scaled.onnx") == [("sn", "Mul")]


def test_factors_of_minus_one_zero_and_one_and_data_gates_are_no_amplitude(tmp_path):
    """Only a factor of the weights alone with a magnitude (not in {−1, 0, 1}) is an amplitude."""
    def violations(f) -> list[tuple[str, str]]:
        return _static(_Between(_Op(f)), _FEATURES, tmp_path / "m.onnx")

    gate = lambda s: torch.sigmoid(s.mean(-1, keepdim=True))  # noqa: E731
    mask = torch.tensor([1.0, 0.0, -1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    assert violations(torch.neg) == []  # −s (fold folds it into fc1; a graph may keep it): a sign, no magnitude
    assert violations(lambda s: s * mask) == []
    assert violations(lambda s: (s * gate(s)) * 0.5) == []  # 0.5 scales the gated activation, not spikes
    assert violations(lambda s: s * torch.where(mask == 0, 0.5, mask)) == [("sn", "Mul")]
    assert violations(lambda s: -s * 0.75) == [("sn", "Mul")]
    assert violations(lambda s: -(s * 0.75)) == [("sn", "Mul")]
    assert violations(lambda s: s * 0.75 * gate(s)) == [("sn", "Mul")]
    assert violations(lambda s: s / 4) == [("sn", "Div")]


def test_norse_recorded_states_are_not_read_as_spikes(tmp_path):
    """LIF(record_states=True) returns (z, (v, i) over time): only z is the neuron's spikes, and it is still checked."""
    norse = pytest.importorskip("norse.torch")
    net = norse.SequentialState(norse.Lift(torch.nn.Linear(10, 16)), norse.LIF(record_states=True),
                                norse.Lift(torch.nn.Linear(16, 4)))
    x = torch.randint(0, 9, (3, 2, 10), generator=torch.Generator().manual_seed(0)).float() * 2
    model = rs.convert_model(net, x)
    make_dyadic(model, x)
    path = tmp_path / "rec.onnx"
    rs.export_onnx(rs.fold(model), path, x)
    report = rs.verify(model, path, x)  # FAILed: "2 of 3 neurons emit non-spike values" (the v and i traces)
    assert [(n.neuron, n.values, n.flip_rate) for n in report.neurons] == [("1", (0.0, 1.0), 0.0)]
    assert report.ok and report.bit_identical, str(report)

    def halve_spikes(proto: onnx.ModelProto) -> None:  # z · 0.5 in the neuron's scope, read in place of z
        (z,) = [s.value for s in spike_tensors(proto)]
        for node in proto.graph.node:
            node.input[:] = [v if v != z else "halved" for v in node.input]
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
        after = next(i for i, n in enumerate(proto.graph.node) if z in n.output) + 1
        proto.graph.node.insert(after, onnx.helper.make_node("Mul", [z, "half"], ["halved"]))

    report = rs.verify(model, _edited(path, tmp_path / "halved.onnx", halve_spikes), x)
    assert [(n.neuron, n.values, n.pure) for n in report.neurons] == [("1", (0.0, 0.5), False)]
    assert "1 of 1 neurons emit non-spike values in the ONNX graph: 1 (0, 0.5)" in report.failures
