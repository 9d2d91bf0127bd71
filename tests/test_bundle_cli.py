"""Bundles (save/load, safe loading) and the sj-realspike CLI on bad and good input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nets
import numpy as np
import pytest
import torch

import sj_realspike as rs
from sj_realspike.bundle import resolve_kwargs
from sj_realspike.testing import run
from test_cli_errors import main_in_process

FACTORY = ["--model", "nets:custom", "--kwargs", '{"name": "sum", "neuron_name": "LIF"}',
           "--example-shape", "2,2,3,16,16"]


@pytest.fixture
def cli_in_process(capsys, monkeypatch):
    """`main_in_process` answering like ``subprocess.run`` of the console script: the same code without the
    ~4 s of a fresh interpreter importing torch per command (the README's CLI walkthrough and test_cli_errors
    run the commands as processes)."""
    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(list(args), *main_in_process(list(args), cwd, capsys, monkeypatch))

    return call


def test_bundle_round_trip_of_a_trained_model(tmp_path):
    x = nets.example("m")
    model = rs.convert_model(nets.custom("shortcut", "PLIF"), x, spike="ternary", granularity="element")
    with torch.no_grad():
        for a in rs.amplitude_parameters(model):
            a.uniform_(-1, 2)
    model(x).sum().backward()  # a "trained" model: PLIF w and amplitudes moved away from init
    with pytest.raises(rs.RealSpikeError, match="does not record its factory"):
        rs.save_bundle(model, tmp_path / "m.bundle")
    rs.save_bundle(model, tmp_path / "m.bundle", factory="nets:custom",
                   kwargs={"name": "shortcut", "neuron_name": "PLIF"})
    loaded = rs.load_bundle(tmp_path / "m.bundle", trust=["nets"])
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(loaded, x), run(model, x))
    # a loaded model remembers its factory, so it saves without arguments
    rs.save_bundle(rs.fold(loaded), tmp_path / "d.bundle")
    deploy = rs.load_bundle(tmp_path / "d.bundle", trust=["nets"])
    assert torch.equal(run(deploy, x), run(rs.fold(model), x))


def test_bundle_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.bundle"
    torch.save({"manifest": "{}", "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(rs.RealSpikeError, match="not a weights-only torch file"):
        rs.load_bundle(path)


def test_kwargs_resolve_classes_only():
    from spikingjelly.activation_based import neuron

    kw = resolve_kwargs({"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode", "cnf": "ADD",
                         "path": "data/x.npy", "file": "x.npy", "n": 3})
    assert kw == {"spiking_neuron": neuron.LIFNode, "cnf": "ADD", "path": "data/x.npy", "file": "x.npy", "n": 3}
    with pytest.raises(rs.RealSpikeError, match=r"'no_such_pkg:thing' is not in .* --trust no_such_pkg"):
        resolve_kwargs({"f": "no_such_pkg:thing"})
    with pytest.raises(rs.RealSpikeError, match="cannot import module 'no_such_pkg'"):
        resolve_kwargs({"f": "no_such_pkg:thing"}, trust=["no_such_pkg"])


def test_cli_convert_fold_inspect(tmp_path, cli_in_process):
    cli = cli_in_process
    r = cli("convert", *FACTORY, "--granularity", "element", "-o", "c.bundle", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 neurons converted" in r.stdout
    r = cli("fold", "c.bundle", "-o", "d.bundle", cwd=tmp_path)
    assert r.returncode == 2 and "--trust nets" in r.stderr  # convert trusted --model; reading a file does not
    r = cli("fold", "c.bundle", "-o", "d.bundle", "--trust", "nets", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pooling+linear merged into one linear  3" in r.stdout
    r = cli("inspect", "c.bundle", "--trust", "nets", cwd=tmp_path)
    assert r.returncode == 0 and "stem.2" in r.stdout and "8x16x16" in r.stdout
    manifest = json.loads(torch.load(tmp_path / "d.bundle", weights_only=True)["manifest"])
    assert (manifest["stage"], manifest["granularity"], manifest["factory"]) == ("deploy", "element", "nets:custom")


BAD_INPUTS = [
    (["fold", "missing.bundle", "-o", "out.bundle"], r"bundle missing.bundle does not exist"),
    (["convert", "--model", "nets:no_such_factory", *FACTORY[2:], "-o", "out.bundle"],
     r"module 'nets' has no attribute 'no_such_factory'"),
    (["convert", "--model", "no_pkg.mod:f", *FACTORY[2:], "-o", "out.bundle"], r"cannot import module 'no_pkg.mod'"),
    (["convert", *FACTORY[:2], "--kwargs", "{name: sum}", *FACTORY[4:], "-o", "out.bundle"],
     r"--kwargs is not valid JSON"),
    (["convert", *FACTORY[:4], "--example-shape", "2,2,3,15", "--step-mode", "m", "-o", "out.bundle"],
     r"running the example input through the model failed here .*torch\.Size\(\[2, 2, 3, 15\]\)"),
    (["convert", *FACTORY, "--recipe", "bad.toml", "-o", "out.bundle"], r"unknown key\(s\) \['granulrity'\]"),
    (["fold", "corrupt.bundle", "-o", "out.bundle"], r"corrupt, truncated or not a weights-only torch file"),
    (["convert", *FACTORY, "-o", "no_dir/out.bundle"], r"directory no_dir does not exist"),
    (["inspect", "corrupt.onnx"], r"corrupt.onnx is not a readable ONNX model"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_cli_bad_input_one_line_error_exit_2_no_output(tmp_path, argv, message, cli_in_process):
    (tmp_path / "bad.toml").write_text("[global]\ngranulrity = 'layer'\n")
    (tmp_path / "corrupt.bundle").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    r = cli_in_process(*argv, cwd=tmp_path)  # test_cli_errors runs such errors through the console script
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sj-realspike: error: "), r.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_truncated_bundle_is_reported(tmp_path, cli_in_process):
    cli = cli_in_process
    r = cli("convert", *FACTORY, "-o", "c.bundle", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "c.bundle").read_bytes()
    (tmp_path / "t.bundle").write_bytes(data[: len(data) // 2])
    r = cli("fold", "t.bundle", "-o", "out.bundle", "--trust", "nets", cwd=tmp_path)
    assert r.returncode == 2 and "corrupt, truncated" in r.stderr
    assert not (tmp_path / "out.bundle").exists()


@pytest.mark.parametrize("command", ["convert", "fold", "export", "verify", "run", "inspect", "demo"])
def test_every_command_help_shows_an_example(command):
    r = subprocess.run([sys.executable, "-m", "sj_realspike.cli", command, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "example" in r.stdout and f"sj-realspike {command}" in r.stdout


@pytest.mark.slow
def test_cli_end_to_end_sew_resnet18_with_recipe(tmp_path, cli_in_process):
    cli = cli_in_process
    kwargs = json.dumps({"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode", "cnf": "ADD",
                         "num_classes": 10})
    steps = [
        ("convert", "--model", "spikingjelly.activation_based.model.sew_resnet:sew_resnet18", "--kwargs", kwargs,
         "--example-shape", "2,2,3,32,32", "--recipe", "sew_resnet", "-o", "c.bundle"),
        ("fold", "c.bundle", "-o", "d.bundle"),
        ("export", "d.bundle", "-o", "model.onnx"),
    ]
    for argv in steps:
        r = cli(*argv, cwd=tmp_path)
        assert r.returncode == 0, f"{argv[0]}: {r.stderr}"
    # An untrained sew_resnet18 leaves its deep neurons silent even on the scaled default input:
    # verify says so and exits 1, though the file is this model's export and its spikes are pure.
    r = cli("verify", "c.bundle", "model.onnx", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith("FAIL: ") and "neurons never fired on this input" in r.stdout.splitlines()[0]
    assert "purity (spike values only)                  100.00%" in r.stdout
    assert "ONNX file was exported from a different model" not in r.stdout
    np.save(tmp_path / "x.npy", np.random.rand(2, 3, 3, 32, 32).astype(np.float32))
    r = cli("run", "model.onnx", "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npy").shape == (2, 3, 10)
    # wrong T at run time: one line, expected vs given, no output file
    np.save(tmp_path / "x4.npy", np.random.rand(4, 3, 3, 32, 32).astype(np.float32))
    r = cli("run", "model.onnx", "--input", "x4.npy", "-o", "y4.npy", cwd=tmp_path)
    assert r.returncode == 2 and "must have shape [2, " in r.stderr and "got [4, 3, 3, 32, 32]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "y4.npy").exists()
    r = cli("inspect", "model.onnx", cwd=tmp_path)
    assert r.returncode == 0 and "sj_realspike.spike" in r.stdout and "binary" in r.stdout
