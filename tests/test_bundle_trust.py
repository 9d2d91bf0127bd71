"""Loading a bundle runs no code the user did not trust, and bad bundles are one-line errors.

Every attack bundle is written by hand (``torch.save({"manifest": ..., "state_dict": ...})``),
as an attacker would, and each test checks that nothing ran: no sentinel file, no deleted
directory, no module imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import torch

import sj_realspike as rs
from sj_realspike.bundle import FORMAT, BundleError, read_manifest
from test_cli_errors import main_in_process

TESTS = Path(__file__).parent
ZOO_NET = "spikingjelly.activation_based.model.parametric_lif_net:MNISTNet"
IF_NODE = "spikingjelly.activation_based.neuron.IFNode"


def manifest(**fields) -> dict:
    """A manifest that passes the schema; ``fields`` replace (or, set to ``...``, remove) entries."""
    m = {"format": FORMAT, "format_version": 1, "stage": "converted", "factory": ZOO_NET,
         "kwargs": {"channels": 2, "spiking_neuron": IF_NODE}, "step_mode": "m", "example_shape": [2, 1, 1, 28, 28],
         "spike": "real", "granularity": "channel", "config": {}}
    m.update(fields)
    return {k: v for k, v in m.items() if v is not ...}


def write(path: Path, content, state: dict | None = None) -> Path:
    """A bundle file as an attacker writes it: any manifest text (or JSON value) and state_dict."""
    text = content if isinstance(content, str) else json.dumps(content)
    torch.save({"manifest": text, "state_dict": state or {}}, path)
    return path


def module(tmp_path: Path, source: str) -> str:
    """A fresh importable module in ``tmp_path`` (a unique name, so no earlier import is cached)."""
    name = f"m_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(source)
    return name


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sj_realspike.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sj-realspike: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


# ------------------------------------------------------------------------------- factories
def test_system_factories_are_refused_before_import(tmp_path):
    sentinel, victim = tmp_path / "SENTINEL", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    attacks = [
        ("os:system", {"command": f"touch {sentinel}"}, "os"),
        ("os.system", {"command": f"touch {sentinel}"}, "os"),
        ("subprocess:run", {"args": ["touch", str(sentinel)]}, "subprocess"),
        ("subprocess.check_call", {"args": ["touch", str(sentinel)]}, "subprocess"),
        ("shutil:rmtree", {"path": str(victim)}, "shutil"),
        ("builtins:eval", {"source": f"open({str(sentinel)!r}, 'w')"}, "builtins"),
        ("torch:load", {"f": str(sentinel)}, "torch"),
    ]
    for factory, kwargs, flag in attacks:
        path = write(tmp_path / "evil.bundle", manifest(factory=factory, kwargs=kwargs))
        with pytest.raises(BundleError, match=rf"factory '{factory}' is not in SpikingJelly's model zoo .* "
                                              rf"pass trust=\['{flag}'\] / --trust {flag} if you trust it"):
            rs.load_bundle(path)
    assert not sentinel.exists() and (victim / "keep.txt").read_text() == "precious"


def test_untrusted_module_is_not_even_imported(tmp_path, monkeypatch):
    sentinel = tmp_path / "IMPORTED"
    name = module(tmp_path, f"open({str(sentinel)!r}, 'w').close()\n\ndef net(**kw):\n    raise AssertionError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path / "b.bundle", manifest(factory=f"{name}:net", kwargs={}))
    with pytest.raises(BundleError, match=rf"--trust {name} if you trust it"):
        rs.load_bundle(path)
    assert not sentinel.exists() and name not in sys.modules


@pytest.mark.parametrize("factory,message", [
    # attribute paths that walk out of the zoo through a module it imports
    ("spikingjelly.activation_based.model.sew_resnet:torch.load", r"goes through module 'torch'"),
    ("spikingjelly.activation_based.model.sew_resnet:nn.Module", r"goes through module 'torch.nn'"),
    ("spikingjelly.activation_based.model:sew_resnet.sew_resnet18", r"goes through module '.*sew_resnet'"),
    # names the zoo imported from elsewhere
    ("spikingjelly.activation_based.model.sew_resnet:deepcopy", r"defined in module 'copy'.* --trust copy"),
    ("spikingjelly.activation_based.model.sew_resnet:load_state_dict_from_url", r"defined in module 'torch\.hub'"),
    ("spikingjelly.activation_based.model.sew_resnet:_sew_resnet", r"private attribute '_sew_resnet'"),
    ("spikingjelly.activation_based.model.sew_resnet:sew_resnet18.__globals__", r"private attribute '__globals__'"),
    ("spikingjelly.activation_based.model.sew_resnet.os.system", r"cannot import module"),
    ("spikingjelly.activation_based.model.sew_resnet:model_urls", r"is a dict, not a function or class"),
    ("spikingjelly.activation_based.modelx:net", r"is not in SpikingJelly's model zoo"),
])
def test_attribute_paths_cannot_escape_the_zoo(tmp_path, factory, message):
    with pytest.raises(BundleError, match=message):
        rs.load_bundle(write(tmp_path / "b.bundle", manifest(factory=factory)))


def test_trusted_module_cannot_reexport_foreign_code(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    name = module(tmp_path, "from shutil import rmtree\nimport os\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for factory, message in [(f"{name}:rmtree", r"defined in module 'shutil'.* --trust shutil"),
                             (f"{name}:os.system", r"goes through module 'os'")]:
        path = write(tmp_path / "b.bundle", manifest(factory=factory, kwargs={"path": str(victim)}))
        with pytest.raises(BundleError, match=message):
            rs.load_bundle(path, trust=[name])
    assert victim.is_dir()


def test_trust_matches_whole_module_name_components(tmp_path):
    path = write(tmp_path / "b.bundle", manifest(factory="nets:custom", kwargs={"name": "mlp"}))
    for trust in (["net"], ["nets.sub"], ["netsx"]):
        with pytest.raises(BundleError, match=r"--trust nets if you trust it"):
            rs.load_bundle(path, trust=trust)
    with pytest.raises(BundleError, match=r"trust must be a list of module names, e\.g\. trust=\['nets'\]"):
        rs.load_bundle(path, trust="nets")
    with pytest.raises(BundleError, match=r"'nets/x' is not a module name"):
        rs.load_bundle(path, trust=["nets/x"])


# ---------------------------------------------------------------------------------- kwargs
@pytest.mark.parametrize("kwargs,message", [
    ({"spiking_neuron": "os.system"}, r"kwargs\['spiking_neuron'\] = 'os\.system' is not in .* --trust os if"),
    ({"spiking_neuron": "os:system"}, r"'os:system' is not in .* --trust os if"),
    ({"spiking_neuron": "builtins.eval"}, r"'builtins\.eval' is not in .* --trust builtins if"),
    ({"spiking_neuron": "subprocess.run"}, r"'subprocess\.run' is not in .* --trust subprocess if"),
    ({"spiking_neuron": "spikingjelly.activation_based.functional.reset_net"},
     r"--trust spikingjelly\.activation_based\.functional if"),
    ({"spiking_neuron": "spikingjelly.activation_based.neuron.lif:torch.load"}, r"goes through module 'torch'"),
    ({"spiking_neuron": "spikingjelly.activation_based.neuron.lif.Optional"}, r"defined in module 'typing'"),
    ({"spiking_neuron": IF_NODE, "layers": ["os.system"]},
     r"kwargs\['layers'\]\[0\] = 'os\.system' looks like a reference; only top-level"),
    ({"spiking_neuron": IF_NODE, "opts": {"a": [{"b": "subprocess:run"}]}},
     r"kwargs\['opts'\]\['a'\]\[0\]\['b'\] = 'subprocess:run' looks like a reference"),
])
def test_kwargs_may_name_only_spikingjelly_classes(tmp_path, kwargs, message):
    with pytest.raises(BundleError, match=message):
        rs.load_bundle(write(tmp_path / "b.bundle", manifest(kwargs={"channels": 2, **kwargs})))


def test_kwargs_functions_are_refused_even_in_trusted_modules(tmp_path):
    path = write(tmp_path / "b.bundle", manifest(kwargs={"channels": 2, "spiking_neuron": "nets.custom"}))
    with pytest.raises(BundleError, match=r"'nets\.custom' is a function, not a class: kwargs may name only classes"):
        rs.load_bundle(path, trust=["nets"])
    path = write(tmp_path / "b.bundle", manifest(kwargs={"channels": 2, "spiking_neuron": "spikingjelly."
                                                         "activation_based.functional.reset_net"}))
    with pytest.raises(BundleError, match=r"is a function, not a class"):
        rs.load_bundle(path, trust=["spikingjelly.activation_based.functional"])


def test_pretrained_zoo_weights_are_not_downloaded_on_load(tmp_path):
    path = write(tmp_path / "b.bundle", manifest(factory="spikingjelly.activation_based.model.sew_resnet:sew_resnet18",
                                                 kwargs={"pretrained": True, "spiking_neuron": IF_NODE}))
    with pytest.raises(BundleError, match=r"kwargs 'pretrained' is true: loading would download other weights"):
        rs.load_bundle(path)


# ------------------------------------------------------------------------ manifest schema
SCHEMA_CASES = [
    ([1, 2], r"manifest must be a JSON object, got list"),
    ("[" * 100_000 + "]" * 100_000, r"manifest is nested too deeply to parse"),
    ("{not json", r"manifest is not valid JSON"),
    ("x" * (2 << 20), r"manifest must be a JSON string of at most 1,048,576 characters"),
    (manifest(kwargs=[1, 2]), r"manifest field 'kwargs' must be a JSON object, got \[1, 2\]"),
    (manifest(kwargs={"a": [[[[[[[[[1]]]]]]]]]}), r"manifest field 'kwargs' nests deeper than 8 levels"),
    (manifest(kwargs={"a": list(range(20_000))}), r"manifest field 'kwargs' holds more than 10000 values"),
    (manifest(factory=123), r"manifest field 'factory' must be a string like 'pkg\.module:function', got 123"),
    (manifest(factory="os system"), r"manifest field 'factory' is not an importable reference"),
    (manifest(example_shape=[2, -1, 3]), r"manifest field 'example_shape' must be a list of 1 to 8 positive"),
    (manifest(example_shape=[2**40, 2**40]), r"'example_shape' has 1,208,925,819,614,629,174,706,176 elements, more"),
    (manifest(example_shape="2,1,28,28"), r"'example_shape' must be a list of 1 to 8 positive integers"),
    (manifest(stage="trained"), r"manifest field 'stage' must be one of \['converted', 'deploy'\], got 'trained'"),
    (manifest(step_mode=None), r"manifest field 'step_mode' must be one of \['m', 's'\]"),
    (manifest(format_version=2), r"'format_version' is 2, newer than this sj-realspike reads \(1\): upgrade"),
    (manifest(format="zip"), r"manifest field 'format' must be 'sj-realspike-bundle'"),
    (manifest(config={"types": []}), r"manifest field 'config' must have 'types' as dict"),
    (manifest(factory=...), r"manifest lacks \['factory'\]"),
    (manifest(extra=1), r"manifest has unknown field\(s\) \['extra'\]"),
]


@pytest.mark.parametrize("content,message", SCHEMA_CASES,
                         ids=[re.sub(r"[^\w']+", " ", m).strip()[:50] for _, m in SCHEMA_CASES])
def test_manifest_schema_errors_are_one_line(tmp_path, content, message):
    path = write(tmp_path / "b.bundle", content)
    with pytest.raises(BundleError, match=message) as info:
        rs.load_bundle(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"bundle {path}: ")


def test_state_dict_must_be_tensors(tmp_path):
    path = tmp_path / "b.bundle"
    torch.save({"manifest": json.dumps(manifest()), "state_dict": {"w": [1, 2]}}, path)
    with pytest.raises(BundleError, match=r"state_dict is not a mapping of names to tensors"):
        rs.load_bundle(path)


# ---------------------------------------------------------------------------------- factories failing
def test_factory_errors_are_one_line(tmp_path, monkeypatch):
    name = module(tmp_path, "def broken(**kw):\n    raise RuntimeError('boom\\nsecond line')\n"
                            "def value(n):\n    raise ValueError(f'bad n {n}')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        (manifest(factory=f"{name}:broken", kwargs={}), [name],
         rf"factory '{name}:broken' failed on its kwargs: RuntimeError: boom$"),
        (manifest(factory=f"{name}:value", kwargs={"n": 3}), [name], r"failed on its kwargs: ValueError: bad n 3$"),
        (manifest(factory=f"{name}:value", kwargs={"m": 3}), [name], r"failed on its kwargs: TypeError: .*'m'"),
        (manifest(kwargs={"channels": -1, "spiking_neuron": IF_NODE}), [], r"MNISTNet' failed on its kwargs: "),
        (manifest(kwargs={"channels": 2}), [],
         r"TypeError: 'NoneType' object is not callable; SpikingJelly zoo models need --kwargs "
         r"'\{\"spiking_neuron\": \"spikingjelly\.activation_based\.neuron\.LIFNode\"\}'"),
    ]
    for content, trust, message in cases:
        with pytest.raises(BundleError, match=message):
            rs.load_bundle(write(tmp_path / "b.bundle", content), trust=trust)


def test_kwargs_that_build_a_huge_network_are_refused_before_building(tmp_path):
    # a 512 x 10**8 Linear: 205 GB of weights, counted on the meta device
    path = write(tmp_path / "b.bundle", manifest(factory="spikingjelly.activation_based.model.sew_resnet:sew_resnet18",
                                                 kwargs={"spiking_neuron": IF_NODE, "num_classes": 10**8}))
    with pytest.raises(BundleError, match=r"kwargs make '.*sew_resnet18' build 205,\d{3},\d{3},\d{3} bytes of "
                                          r"parameters and buffers, but the bundle holds only 0 bytes"):
        rs.load_bundle(path)


# ---------------------------------------------------------------------------------- archive
@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 255 KB bundle whose pickle inflates to 256 MiB (written in chunks: the test never holds it)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.bundle"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            for _ in range(256):
                fh.write(bytes(1 << 20))
    assert path.stat().st_size < 300_000
    return path


def test_decompression_bomb_is_refused_before_reading(bomb):
    with pytest.raises(BundleError, match=r"entry 'archive/data\.pkl' inflates from 2\d\d,\d{3} to 268,435,456 bytes "
                                          r"\(268,435,456 in all compressed entries\); torch\.save never compresses"):
        rs.load_bundle(bomb)


def test_many_small_compressed_entries_are_refused(tmp_path):
    path = tmp_path / "b.bundle"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"archive/data/{i}", bytes(1 << 19))
    with pytest.raises(BundleError, match=r"inflates from \d+ to 524,288 bytes \(2,097,152 in all compressed "
                                          r"entries\); torch\.save never compresses"):
        rs.load_bundle(path)


def test_oversized_pickle_and_non_regular_files_are_refused(tmp_path):
    path = write(tmp_path / "big.bundle", "x" * (5 << 20))  # stored, not compressed: 5 MiB on disk
    with pytest.raises(BundleError, match=r"entry '.*data\.pkl' is 5,\d{3},\d{3} bytes, more than the 4,194,304"):
        rs.load_bundle(path)
    os.mkfifo(tmp_path / "fifo.bundle")  # reading it would block forever
    with pytest.raises(BundleError, match=r"fifo\.bundle is not a regular file"):
        rs.load_bundle(tmp_path / "fifo.bundle")


def test_bundle_holding_far_more_data_than_its_model_is_refused(tmp_path):
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.model import parametric_lif_net

    net = parametric_lif_net.MNISTNet(channels=2, spiking_neuron=neuron.IFNode)
    functional.set_step_mode(net, "m")
    model = rs.convert_model(net, torch.rand(2, 1, 1, 28, 28))
    state = dict(model.state_dict())
    path = write(tmp_path / "ok.bundle", manifest(), state)
    rs.load_bundle(path)  # the honest bundle loads
    state["padding"] = torch.zeros(2 << 20)  # 8 MiB no model parameter needs
    with pytest.raises(BundleError, match=r"holds [\d,]+ bytes of tensor data, more than the [\d,]+ bytes of "
                                          r"parameters and buffers the manifest's model needs"):
        rs.load_bundle(write(tmp_path / "padded.bundle", manifest(), state))


def test_bomb_through_the_cli_stays_small(bomb, tmp_path):
    """Peak memory of the process loading the bomb grows by far less than the 256 MiB it inflates to."""
    code = ("import resource, sys\nfrom sj_realspike.cli import main\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"rc = main(['inspect', {str(bomb)!r}])\n"
            "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    rc, grown_kib = map(int, r.stdout.split())
    assert rc == 2 and "inflates from" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert grown_kib < 32 * 1024, f"peak memory grew by {grown_kib} KiB"


# ------------------------------------------------------------------------------------ positive
def test_zoo_bundle_loads_without_trust_and_names_its_entries(tmp_path):
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.model import parametric_lif_net

    net = parametric_lif_net.MNISTNet(channels=2, spiking_neuron=neuron.IFNode)
    functional.set_step_mode(net, "m")
    x = torch.rand(2, 1, 1, 28, 28)
    model = rs.convert_model(net, x)
    rs.save_bundle(model, tmp_path / "zoo.bundle", factory=ZOO_NET, kwargs={"channels": 2, "spiking_neuron": IF_NODE})
    names = zipfile.ZipFile(tmp_path / "zoo.bundle").namelist()
    assert "archive/data.pkl" in names and all(n.startswith("archive/") for n in names)
    loaded = rs.load_bundle(tmp_path / "zoo.bundle")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_norse_zoo_bundle_loads_without_trust(tmp_path):
    norse_conv = pytest.importorskip("norse.torch.models.conv")
    net = norse_conv.ConvNet()
    x = torch.rand(2, 1, 1, 28, 28) * 4
    model = rs.convert_model(net, x)
    assert len(rs.conversion_report(model).converted) == 2
    rs.save_bundle(model, tmp_path / "norse.bundle", factory="norse.torch.models.conv:ConvNet", kwargs={})
    versions = read_manifest(tmp_path / "norse.bundle")[0]["versions"]
    assert set(versions) == {"sj-realspike", "torch", "norse"}
    loaded = rs.load_bundle(tmp_path / "norse.bundle")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("reference,message", [
    ("snntorch.utils:reset", r"'snntorch\.utils:reset' is not in .* --trust snntorch\.utils if"),
    ("norse.torch.functional.lif:lif_step", r"is not in .* --trust norse\.torch\.functional\.lif if"),
    ("snntorch.spikegen:rate", r"'snntorch\.spikegen:rate' is not in .* --trust snntorch\.spikegen if"),
    ("snntorch:surrogate", r"goes through module 'snntorch\.surrogate'"),
])
def test_kwargs_may_name_snntorch_and_norse_neurons_only(reference, message):
    from sj_realspike.bundle import resolve_kwargs

    pytest.importorskip("snntorch")
    pytest.importorskip("norse")
    import norse.torch as norse_torch
    import snntorch

    assert resolve_kwargs({"neuron": "snntorch.Leaky"})["neuron"] is snntorch.Leaky
    assert resolve_kwargs({"layer": "snntorch.GradedSpikes"})["layer"] is snntorch.GradedSpikes
    assert resolve_kwargs({"neuron": "norse.torch.module.lif:LIFCell"})["neuron"] is norse_torch.LIFCell
    with pytest.raises(BundleError, match=message):
        resolve_kwargs({"neuron": reference})


def test_test_factory_needs_trust(tmp_path):
    import nets

    model = rs.convert_model(nets.custom("mlp"), nets.example("m"))
    rs.save_bundle(model, tmp_path / "n.bundle", factory="nets:custom", kwargs={"name": "mlp"})
    with pytest.raises(BundleError, match=r"factory 'nets:custom' is not in .* pass trust=\['nets'\] / --trust nets"):
        rs.load_bundle(tmp_path / "n.bundle")
    assert rs.load_bundle(tmp_path / "n.bundle", trust=["nets"]).state_dict().keys() == model.state_dict().keys()


def test_save_records_pretrained_false(tmp_path):
    import nets

    model = rs.convert_model(nets.custom("mlp"), nets.example("m"))
    rs.save_bundle(model, tmp_path / "n.bundle", factory="nets:custom", kwargs={"name": "mlp", "pretrained": True})
    manifest_ = json.loads(torch.load(tmp_path / "n.bundle", weights_only=True)["manifest"])
    assert manifest_["kwargs"] == {"name": "mlp", "pretrained": False}


# ------------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_refuses_attacks_in_one_line_and_runs_nothing(tmp_path, bomb, capsys, monkeypatch):
    sentinel, victim = tmp_path / "SENTINEL", tmp_path / "victim"
    victim.mkdir()
    write(tmp_path / "system.bundle", manifest(factory="os:system", kwargs={"command": f"touch {sentinel}"}))
    write(tmp_path / "run.bundle", manifest(factory="subprocess:run", kwargs={"args": ["touch", str(sentinel)]}))
    write(tmp_path / "rmtree.bundle", manifest(factory="shutil:rmtree", kwargs={"path": str(victim)}))
    write(tmp_path / "eval.bundle", manifest(kwargs={"spiking_neuron": "builtins.eval"}))
    write(tmp_path / "list.bundle", [1, 2])
    write(tmp_path / "shape.bundle", manifest(example_shape=[2, -1, 3]))
    write(tmp_path / "int.bundle", manifest(factory=123))
    (tmp_path / "net.onnx").touch()  # verify reads the bundle first; the ONNX path must be a file
    cases = [
        (["inspect", "system.bundle"], r"factory 'os:system' is not in .* --trust os if you trust it"),
        (["fold", "run.bundle", "-o", "out.bundle"], r"factory 'subprocess:run' .* --trust subprocess if"),
        (["export", "rmtree.bundle", "-o", "out.onnx"], r"factory 'shutil:rmtree' .* --trust shutil if"),
        (["verify", "eval.bundle", "net.onnx"], r"kwargs\['spiking_neuron'\] = 'builtins\.eval' .* --trust builtins"),
        (["fold", "list.bundle", "-o", "out.bundle"], r"manifest must be a JSON object, got list"),
        (["inspect", "shape.bundle"], r"'example_shape' must be a list of 1 to 8 positive integers"),
        (["export", "int.bundle", "-o", "out.onnx"], r"'factory' must be a string like 'pkg\.module:function'"),
        (["inspect", str(bomb)], r"entry 'archive/data\.pkl' inflates from"),
    ]
    monkeypatch.syspath_prepend(str(tmp_path))
    for i, (argv, message) in enumerate(cases):
        # The first through the console script; the others in this process (the same code, and
        # what would run here if a check failed, the sentinel and the victim directory show).
        r = cli(*argv, cwd=tmp_path) if i == 0 else subprocess.CompletedProcess(
            argv, *main_in_process(argv, tmp_path, capsys, monkeypatch))
        line = one_line_error(r)
        assert re.search(message, line), line
    assert not sentinel.exists() and victim.is_dir()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("out.", ".out."))]


@pytest.mark.slow
def test_cli_trust_flag(tmp_path):
    name = module(tmp_path, "def broken(**kw):\n    raise RuntimeError('boom')\n")
    write(tmp_path / "broken.bundle", manifest(factory=f"{name}:broken", kwargs={}))
    line = one_line_error(cli("fold", "broken.bundle", "-o", "out.bundle", cwd=tmp_path))
    assert f"--trust {name} if you trust it" in line
    line = one_line_error(cli("fold", "broken.bundle", "-o", "out.bundle", "--trust", "os", "--trust", name,
                              cwd=tmp_path))
    assert line.endswith(f"factory '{name}:broken' failed on its kwargs: RuntimeError: boom"), line
    # convert trusts the --model the user typed, and says what zoo models need
    line = one_line_error(cli("convert", "--model", ZOO_NET, "--example-shape", "2,1,1,28,28", "-o", "c.bundle",
                              cwd=tmp_path))
    assert "'NoneType' object is not callable; SpikingJelly zoo models need --kwargs" in line
    assert not (tmp_path / "out.bundle").exists() and not (tmp_path / "c.bundle").exists()


def test_checking_an_onnx_file_imports_no_module_its_metadata_names(tmp_path, monkeypatch):
    # The exporter records each node's module classes as text; spike purity resolves them to classes.
    # Resolving by importing ran the top-level code of any module a crafted file named (a .py beside it).
    import onnx
    from onnx import helper

    from sj_realspike import purity

    name = f"sjr_evil_{uuid.uuid4().hex}"
    sentinel = tmp_path / "ran"
    (tmp_path / f"{name}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nclass Stem: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    node = helper.make_node("Relu", ["x"], ["y"])
    for key, value in (("pkg.torch.onnx.name_scopes", ["stem", "stem.0", "relu"]),
                       ("pkg.torch.onnx.class_hierarchy", [f"{name}.Stem", "torch.nn.Conv2d", "aten.relu"])):
        node.metadata_props.add(key=key, value=repr(value))
    info = [helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, [1]) for v in ("x", "y")]
    model = helper.make_model(helper.make_graph([node], "g", info[:1], info[1:]))
    purity.spike_tensors(model)
    purity.static_violations(model)
    assert not sentinel.exists() and name not in sys.modules
    # classes of what is imported (a model in memory) still resolve
    assert purity._resolve("sj_realspike.lowered.LoweredBinaryNeuron") is rs.lowered.LoweredBinaryNeuron


# ------------------------------------------------------------------------- size, uncountable
HALF_IF = "spikingjelly.activation_based.neuron.integrate_and_fire.HalfThresholdIFNode"


def test_neurons_that_read_values_while_built_are_still_counted(tmp_path, monkeypatch):
    # HalfThresholdIFNode checks torch.isfinite(torch.tensor(v_threshold)): on the meta device that read
    # failed, the size check was skipped, and 100 KB of kwargs built gigabytes for real.
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model.parametric_lif_net import MNISTNet
    from spikingjelly.activation_based.neuron.integrate_and_fire import HalfThresholdIFNode

    net = MNISTNet(channels=2, spiking_neuron=HalfThresholdIFNode)
    functional.set_step_mode(net, "m")
    model = rs.convert_model(net, torch.rand(2, 1, 1, 28, 28))
    kwargs = {"channels": 2, "spiking_neuron": HALF_IF}
    rs.save_bundle(model, tmp_path / "ok.bundle", factory=ZOO_NET, kwargs=kwargs)
    monkeypatch.setattr("sj_realspike.bundle.BUILD_SLACK", (4.0, 0))  # no slack: a small network shows it
    assert isinstance(rs.load_bundle(tmp_path / "ok.bundle"), MNISTNet)  # a genuine zoo bundle still loads
    path = write(tmp_path / "big.bundle", manifest(kwargs={**kwargs, "channels": 64}))
    with pytest.raises(BundleError, match=r"kwargs make '.*MNISTNet' build [\d,]+ bytes of parameters and buffers, "
                                          r"but the bundle holds only 0 bytes of tensor data$"):
        rs.load_bundle(path)


def test_an_untrusted_network_that_cannot_be_counted_is_not_built(tmp_path, monkeypatch):
    name = module(tmp_path, "import torch\nfrom spikingjelly.activation_based import neuron\n"
                            "class Probed(neuron.IFNode):\n"
                            "    def __init__(self, **kwargs):\n"
                            "        super().__init__(**kwargs)\n"
                            "        self.gain = torch.nn.Parameter(torch.ones(1))\n"
                            "        assert float(self.gain.detach()) == 1.0  # reads a value of a sized tensor\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path / "b.bundle", manifest(kwargs={"channels": 2, "spiking_neuron": f"{name}.Probed"}))
    zoo = ZOO_NET.split(":")[0]
    with pytest.raises(BundleError, match=rf"^bundle {re.escape(str(path))}: counting its size on the meta device "
                                          rf"before building it, factory '{ZOO_NET}' failed on its kwargs: "
                                          r"RuntimeError: Tensor\.item\(\) cannot be called on meta tensors; a network "
                                          r"whose size cannot be counted could allocate any amount of memory, so it is "
                                          rf"not built: pass trust=\['{zoo}'\] / --trust {zoo} to build it anyway$"):
        rs.load_bundle(path, trust=[name])
    with pytest.raises(BundleError, match=r"weights do not fit the model rebuilt from its manifest"):
        rs.load_bundle(path, trust=[name, zoo])  # trusted: built for real (and this one holds no weights)


def test_scope_metadata_that_exhausts_the_parser_is_ignored():
    # ast.literal_eval('-' * 100000 + '1') raises MemoryError, which the CLI reported as "unexpected"
    from onnx import helper

    from sj_realspike import purity

    for value in ("-" * 100_000 + "1", "-" * 60_000 + "1"):
        node = helper.make_node("Relu", ["x"], ["y"])
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=value)
        assert purity._scope(node) == purity._Scope(None, False, "", "")


def test_external_data_that_reads_past_its_tensor_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    # A 150-byte ONNX file naming a 1 GiB sparse file without a length: onnx.load read all of it (8 GB peak
    # for a 4 GiB one) in inspect and verify before any check.
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(2 ** 30)
    w = numpy_helper.from_array(np.ones(8, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="big.bin")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])], [w])
    onnx.save(helper.make_model(graph), tmp_path / "bomb.onnx")
    message = r"bomb.onnx: initializer 'w' would read 1,073,741,824 bytes of external data from 'big.bin', " \
              r"but its \[8\] values hold 32"
    with pytest.raises(ValueError, match=message):
        rs.OnnxRunner(tmp_path / "bomb.onnx")
    status, _, err = main_in_process(["inspect", "bomb.onnx"], tmp_path, capsys, monkeypatch)
    assert status == 2 and re.fullmatch(r"sj-realspike: error: .*" + message + r"\n", err), err


def test_kwargs_that_build_too_many_modules_are_refused_while_counting(tmp_path, monkeypatch):
    # SEWResNet(layers=[40000, 1, 1, 1]) is one JSON integer: the counting build made 40,000 blocks on the meta
    # device (61 s, 1.7 GB) before anything was counted.
    monkeypatch.setattr("sj_realspike.bundle.MAX_BUILD_MODULES", 200)
    kwargs = {"block": "spikingjelly.activation_based.model.sew_resnet.BasicBlock", "layers": [40, 1, 1, 1],
              "cnf": "ADD", "spiking_neuron": IF_NODE}
    path = write(tmp_path / "blocks.bundle",
                 manifest(factory="spikingjelly.activation_based.model.sew_resnet:SEWResNet", kwargs=kwargs))
    with pytest.raises(BundleError, match=r"kwargs make '.*:SEWResNet' build more than 200 modules \(the largest zoo "
                                          r"networks hold about a thousand\), so it is not built$"):
        rs.load_bundle(path)
