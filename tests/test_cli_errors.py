"""The sj-realspike CLI on bad input, interrupts and odd destinations: one line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nets
import numpy as np
import pytest
import torch

import sj_realspike as rs
from sj_realspike import cli, demo
from sj_realspike.atomic import atomic_write, remove_pending
from sj_realspike.fold import NotConvertedWarning

TESTS = Path(__file__).parent
KWARGS = {"name": "sum", "neuron_name": "LIF"}
FACTORY = ["--model", "nets:custom", "--kwargs", json.dumps(KWARGS)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def cli_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sj_realspike.cli", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


def one_error_line(r: subprocess.CompletedProcess | str, status: int = 2) -> str:
    """The single stderr line of a failed run (asserting exit status, prefix and no traceback)."""
    stderr = r if isinstance(r, str) else r.stderr
    if not isinstance(r, str):
        assert r.returncode == status, (r.returncode, r.stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sj-realspike: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def main_in_process(argv: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """``cli.main(argv)`` run in ``cwd``: (exit status, stdout, stderr). The same code as the console
    script without a fresh interpreter per call (the subprocess tests below cover the process)."""
    monkeypatch.chdir(cwd)
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.startswith("out"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A converted bundle, its deploy bundle, their ONNX export and input arrays good and bad."""
    d = tmp_path_factory.mktemp("cli")
    x = nets.example("m")  # [2, 2, 3, 16, 16]
    model = rs.convert_model(nets.custom(**KWARGS), x)
    rs.save_bundle(model, d / "c.bundle", factory="nets:custom", kwargs=KWARGS)
    deploy = rs.fold(model)
    rs.save_bundle(deploy, d / "d.bundle", factory="nets:custom", kwargs=KWARGS)
    rs.export_onnx(deploy, d / "m.onnx", x)
    np.save(d / "x.npy", x.numpy())
    (d / "empty.npy").write_bytes(b"")
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(d / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "int.npy", np.ones((2, 2, 3, 16, 16), dtype=np.int64))
    np.save(d / "text.npy", np.array(["a", "b"]))
    np.save(d / "rank3.npy", np.ones((3, 16, 16), dtype=np.float32))
    np.save(d / "zero.npy", np.ones((2, 0, 3, 16, 16), dtype=np.float32))
    np.savez(d / "arrays.npz", x=x.numpy())
    (d / "adir").mkdir()
    os.mkfifo(d / "out.fifo")
    return d


BAD = [
    (["run", "m.onnx", "--input", "empty.npy"], r"input empty.npy is empty: expected a .npy array"),
    (["run", "m.onnx", "--input", "garbage.npy"], r"input garbage.npy is not a readable .npy array"),
    (["run", "m.onnx", "--input", "object.npy"], r"not a readable .npy array \(Object arrays cannot be loaded"),
    (["run", "m.onnx", "--input", "int.npy"], r"input int.npy holds int64 values; the model takes float32"),
    (["run", "m.onnx", "--input", "text.npy"], r"input text.npy holds <U1 values"),
    (["run", "m.onnx", "--input", "rank3.npy"], r"input 'x' must have shape \[2, batch, 3, 16, 16\], got \[3, 16, 16\]"),
    (["run", "m.onnx", "--input", "zero.npy"], r"input zero.npy is empty: shape \[2, 0, 3, 16, 16\]"),
    (["run", "m.onnx", "--input", "arrays.npz"], r"arrays.npz is an .npz archive"),
    (["run", "m.onnx", "--input", "adir"], r"input adir is not a regular file"),
    (["run", "m.onnx", "--input", "x.npy", "--threads", "-3"], r"argument --threads: must be at least 1, got -3"),
    (["run", "m.onnx", "--input", "x.npy", "--threads", "two"], r"argument --threads: expected a positive integer"),
    (["run", "m.onnx", "--input", "x.npy", "--threads", "20000"],  # 20,000 threads ran for many minutes
     r"threads must be an integer from 1 to \d+ \(the CPUs this process may run on\), got 20000"),
    (["run", "m.onnx"], r"the following arguments are required: --input \(see sj-realspike run --help\)"),
    (["run", "m.onnx", "--input", "x.npy", "-o", "adir"], r"cannot write adir: it is a directory"),
    (["run", "m.onnx", "--input", "x.npy", "-o", "out.fifo"], r"cannot write out.fifo: it is a FIFO"),
    (["run", "m.onnx", "--input", "x.npy", "-o", "/dev/null"], r"cannot write /dev/null: it is a device"),
    (["convert", *FACTORY, "--example-shape", "1099511627776,1099511627776", "-o", "out.bundle"],
     r"argument --example-shape: 1099511627776,1099511627776 is 1,208,925,819,614,629,174,706,176 values"),
    (["convert", *FACTORY, "--example-shape", "2,-1,3,16,16", "-o", "out.bundle"],
     r"every dimension must be positive, got '2,-1,3,16,16'"),
    (["convert", *FACTORY, "--example-shape", "2,3,16,16", "-o", "out.bundle"],
     r"--example-shape 2,3,16,16 is ambiguous \(4-d\): pass --step-mode s to read it as single-step "
     r"\[N, C, H, W\] or --step-mode m for multi-step \[T, N, C, L\]"),
    (["convert", *FACTORY, "--example-shape", "2,2,3,16,16", "--step-mode", "x", "-o", "out.bundle"],
     r"argument --step-mode: invalid choice: 'x'"),
    (["export", "d.bundle", "-o", "out.onnx", "--trust", "nets", "--opset", "99"],
     r"--opset 99 is not supported by the installed torch.onnx exporter: choose 18 to \d\d"),
    (["export", "d.bundle", "-o", "out.onnx", "--trust", "nets", "--opset", "5"], r"--opset 5 is not supported"),
    (["export", "d.bundle", "-o", "out.onnx", "--trust", "nets", "--time-steps", "0"],
     r"argument --time-steps: must be at least 1, got 0"),
    (["export", "d.bundle", "-o", "adir", "--trust", "nets"], r"cannot write adir: it is a directory"),
    (["fold", "d.bundle", "-o", "out.bundle", "--trust", "nets"],
     r"d.bundle is a deploy bundle: it is folded already, nothing to do \(export it: sj-realspike export d.bundle"),
    (["fold", "c.bundle", "-o", "out.fifo", "--trust", "nets"], r"cannot write out.fifo: it is a FIFO \(named pipe\)"),
    (["inspect", "out.fifo"], r"out.fifo is not a regular file"),
    (["inspect", "c.bundle", "--trust", "nets", "--energy-plot", "adir"], r"cannot write adir: it is a directory"),
    (["verify", "m.onnx", "c.bundle", "--trust", "nets"],
     r"m.onnx is an ONNX file and c.bundle is not: the bundle comes first \(sj-realspike verify c.bundle m.onnx\)"),
    (["export", "c.bundle", "-o", "out.onnx", "--trust", "nets", "--opset", "99"], r"--opset 99 is not supported"),
    (["frobnicate"], r"argument COMMAND: invalid choice: 'frobnicate'"),
    (["fold", "c.bundle", "-o", "out.bundle", "--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    (["demo", "--epochs", "0"], r"argument --epochs: must be at least 1, got 0 \(see sj-realspike demo --help\)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work, argv, message, capsys, monkeypatch):
    status, _, err = main_in_process(argv, work, capsys, monkeypatch)
    assert status == 2, err
    line = one_error_line(err)
    assert re.search(message, line), line
    assert leftovers(work) == ["out.fifo"]
    assert (work / "out.fifo").is_fifo() and not any((work / "adir").iterdir())


@pytest.mark.parametrize("index", [0, 15])
def test_bad_input_in_a_real_process(work, index):
    """Some of the cases above through the console script's process: exit status 2, one line, no traceback."""
    argv, message = BAD[index]
    line = one_error_line(cli_run(*argv, cwd=work))
    assert re.search(message, line), line
    assert leftovers(work) == ["out.fifo"]


def test_opset_range_is_the_exporters(work, capsys, monkeypatch, caplog):
    """18 is torchlib's opset (lower ones come back as 18), the top is onnxscript's converter's maximum."""
    import onnx
    from onnxscript.version_converter import _version_converter

    top = _version_converter.SUPPORTED_MAX_ONNX_OPSET
    argv = ["export", "d.bundle", "--trust", "nets", "--opset"]
    status, _, err = main_in_process([*argv, str(top + 1), "-o", "out.onnx"], work, capsys, monkeypatch)
    assert status == 2 and f"choose 18 to {top}" in one_error_line(err)
    with caplog.at_level(logging.INFO, logger="sj_realspike"):
        status, _, err = main_in_process([*argv, "21", "-o", "ok.onnx"], work, capsys, monkeypatch)
    assert status == 0, err
    assert [o.version for o in onnx.load(work / "ok.onnx").opset_import if o.domain in ("", "ai.onnx")] == [21]
    assert "exporting d.bundle to ok.onnx (T=2)" in caplog.text  # the long step says what it does


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), EOFError(),
                                   RuntimeError("bad\nmultiline"), MemoryError(), KeyError("stage")],
                         ids=lambda e: type(e).__name__)
def test_unexpected_exceptions_are_one_line(monkeypatch, capsys, error):
    def boom(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_inspect", boom)
    assert cli.main(["inspect", __file__]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"sj-realspike: error: unexpected {type(error).__name__}") and "--debug" in line
    with pytest.raises(type(error)):
        cli.main(["--debug", "inspect", __file__])


def test_keyboard_interrupt_is_one_line_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_inspect", interrupted)
    assert cli.main(["inspect", __file__]) == 130
    assert one_error_line(capsys.readouterr().err) == "sj-realspike: error: interrupted (SIGINT)"


# A CLI run whose output write stalls once its temporary file is complete, so the test can
# signal it mid-write; SIGINT is re-enabled in case the test runner ignores it.
SLOW_WRITER = textwrap.dedent("""
    import signal, sys, time
    import onnx, torch
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def stalling(real):
        def write(obj, f, *args, **kwargs):
            real(obj, f, *args, **kwargs)
            print("WRITING", flush=True)
            time.sleep(120)
        return write

    torch.save = stalling(torch.save)
    onnx.save_model = stalling(onnx.save_model)
    from sj_realspike.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("argv,sig,status", [
    (["fold", "c.bundle", "-o", "out.bundle", "--trust", "nets"], signal.SIGTERM, 143),
    (["export", "d.bundle", "-o", "out.onnx", "--trust", "nets"], signal.SIGINT, 130),
], ids=["fold-SIGTERM", "export-SIGINT"])
def test_signal_mid_write_removes_the_temporary_file(work, argv, sig, status):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *argv], cwd=work, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:
            if line.strip() == "WRITING":
                break
        partial = [p.name for p in work.iterdir() if p.name.endswith(".tmp")]
        assert len(partial) == 1 and partial[0].startswith(f".{argv[3]}."), partial
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert stderr.strip().splitlines()[-1] == \
        f"sj-realspike: error: {'terminated' if name == 'SIGTERM' else 'interrupted'} ({name})", stderr
    assert "Traceback" not in stderr and proc.returncode == status
    assert leftovers(work) == ["out.fifo"]


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(work, tmp_path, capsys, monkeypatch):
    target = tmp_path / "real" / "deploy.bundle"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.bundle"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.bundle"
    dangling.symlink_to(tmp_path / "real" / "new.bundle")
    for out in (link, dangling):
        status, _, err = main_in_process(["fold", str(work / "c.bundle"), "-o", str(out), "--trust", "nets"],
                                         tmp_path, capsys, monkeypatch)
        assert status == 0, err
        assert out.is_symlink()
    manifest = json.loads(torch.load(target, weights_only=True)["manifest"])
    assert manifest["stage"] == "deploy"
    assert (target.stat().st_mode & 0o777) == 0o640  # the replaced file keeps its permissions
    assert (tmp_path / "real" / "new.bundle").is_file()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_atomic_write_cleans_up_on_base_exceptions(tmp_path):
    def interrupted(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    (tmp_path / "out.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.bin", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"old"
    assert remove_pending() == []  # nothing left pending either


def test_convert_says_how_it_read_the_example_shape(tmp_path, capsys, monkeypatch):
    status, out, err = main_in_process(["convert", *FACTORY, "--example-shape", "2,2,3,16,16", "-o", "m.bundle"],
                                       tmp_path, capsys, monkeypatch)
    assert status == 0, err
    assert out.splitlines()[0] == "example shape 2,2,3,16,16 read as multi-step [T, N, C, H, W]"
    status, out, err = main_in_process(["convert", *FACTORY, "--example-shape", "2,3,16,16", "--step-mode", "s",
                                        "-o", "s.bundle"], tmp_path, capsys, monkeypatch)
    assert status == 0, err
    assert out.splitlines()[0] == "example shape 2,3,16,16 read as single-step [N, C, H, W]"
    manifest = json.loads(torch.load(tmp_path / "s.bundle", weights_only=True)["manifest"])
    assert (manifest["step_mode"], manifest["example_shape"]) == ("s", [2, 3, 16, 16])


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom sj_realspike.cli import main\nassert main(['--help']) == 0\n"
            "assert main(['fold', '--help']) == 0\n"
            "heavy = sorted({'torch', 'numpy', 'onnx', 'spikingjelly'} & set(sys.modules))\n"
            "assert not heavy, heavy\nimport sj_realspike\nassert not {'torch'} & set(sys.modules)\n"
            "from sj_realspike import fold, verify, __version__\nassert callable(fold) and callable(verify)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Real Spike / Ternary Spike" in r.stdout


def test_run_and_inspect_of_an_onnx_file_do_not_import_torch(tmp_path):
    # numpy, onnx and onnxruntime are enough to run a graph: the command answers ~2 s sooner without torch.
    code = ("import sys\nimport numpy as np\nimport onnx\nfrom onnx import TensorProto, helper\n"
            "from sj_realspike.cli import main\n"
            "io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 'batch', 3]) for n in 'xy']\n"
            "graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', io[:1], io[1:])\n"
            "onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]), 'm.onnx')\n"
            "np.save('x.npy', np.array([[[-1, 2, 0]], [[3, -4, 5]]], dtype=np.float32))\n"
            "assert main(['run', 'm.onnx', '--input', 'x.npy', '-o', 'y.npy']) == 0\n"
            "assert main(['inspect', 'm.onnx']) == 0\n"
            "assert np.load('y.npy').tolist() == [[[0, 2, 0]], [[3, 0, 5]]]\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote y.npy (2, 1, 3) float32" in r.stdout and "1 nodes, 0 parameters" in r.stdout


def test_public_names_resolve_lazily_to_their_functions():
    import sj_realspike.verify  # noqa: F401  (binds the submodule on the package)

    assert set(rs.__all__) <= set(dir(rs))
    assert all(getattr(rs, name) is not None for name in rs.__all__)
    assert callable(rs.fold) and callable(rs.verify) and rs.__version__
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        rs.nope  # noqa: B018


def test_demo_help_lists_the_demo_options():
    r = cli_run("demo", "--help", cwd=TESTS)
    assert r.returncode == 0, r.stderr
    assert all(flag in r.stdout for flag in ("--quick", "--epochs", "--time-steps", "--seed", "--out"))


def test_demo_training_logs_a_line_per_epoch_off_a_terminal(caplog):
    data = demo.load_digits_split()
    small = demo.Digits(data.train_x[:32], data.train_y[:32], data.test_x[:8], data.test_y[:8])
    x = demo.encode(small.train_x[:4], 2)
    model = demo.build_model(demo.VARIANTS[1], x)
    with caplog.at_level(logging.INFO, logger="sj_realspike"):
        demo.train(model, small, T=2, epochs=2, seed=0, batch_size=16, desc="real-layer T=2")
    lines = [r.getMessage() for r in caplog.records if r.name == "sj_realspike.demo"]
    assert [line.split(",")[0] for line in lines] == ["real-layer T=2: epoch 1/2", "real-layer T=2: epoch 2/2"]
    assert all(re.search(r"loss \d+\.\d{3}, train acc \d+\.\d%$", line) for line in lines), lines


def test_fold_of_a_plain_network_warns_and_export_stays_quiet(tmp_path):
    net = nets.custom(**KWARGS)
    with pytest.warns(NotConvertedWarning, match=r"SumNet holds no spike amplitudes .*convert_model"):
        rs.fold(net, example_input=nets.example("m"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvertedWarning)
        rs.fold(rs.fold(rs.convert_model(net, nets.example("m"))))  # converted, then deploy: no warning
        rs.export_onnx(net, tmp_path / "plain.onnx", nets.example("m"))  # announces its fold in a log line


def test_export_onnx_api_checks_the_opset_too(tmp_path):
    x = nets.example("m")
    deploy = rs.fold(rs.convert_model(nets.custom(**KWARGS), x))
    with pytest.raises(ValueError, match=r"opset 99 is not supported by the installed torch.onnx exporter"):
        rs.export_onnx(deploy, tmp_path / "m.onnx", x, opset=99)
    assert not list(tmp_path.iterdir())


def test_output_into_a_closed_pipe_is_quiet(work, monkeypatch, capsys):
    """`sj-realspike inspect ... | head -1`: once the reader has gone, no 'Broken pipe' error line."""
    import io

    class ClosedPipe(io.TextIOBase):
        def __init__(self):
            self.fd = os.open(os.devnull, os.O_WRONLY)

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self.fd

    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["inspect", "m.onnx"]) == 141
    assert "Broken pipe" not in capsys.readouterr().err


# ------------------------------------------------------------------- paths, outputs, warnings
@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise `TimeoutError` in the main thread after ``seconds``: a blocked call fails the test, not the run."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


NOT_FILES = [
    (["verify", "c.bundle", "out.fifo", "--trust", "nets"], "ONNX model out.fifo is not a regular file"),
    (["verify", "c.bundle", "/dev/zero", "--trust", "nets"], "ONNX model /dev/zero is not a regular file"),
    (["run", "out.fifo", "--input", "x.npy"], "ONNX model out.fifo is not a regular file"),
    (["convert", *FACTORY, "--example-shape", "2,2,3,16,16", "--recipe", "adir", "-o", "out.bundle"],
     "recipe adir is not a regular file"),
]


@pytest.mark.parametrize("argv,message", NOT_FILES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(NOT_FILES)])
def test_inputs_that_are_not_regular_files_are_refused_before_reading(work, argv, message, capsys, monkeypatch):
    # verify handed its ONNX path to onnx.load: a FIFO blocked forever, /dev/zero filled the memory
    with deadline(60):
        status, _, err = main_in_process(argv, work, capsys, monkeypatch)
    assert status == 2 and one_error_line(err) == f"sj-realspike: error: {message}"
    assert leftovers(work) == ["out.fifo"]


REPLACES_INPUT = "writing it would replace a file this command reads; choose another output name"
BAD_OUTPUTS = [
    (["run", "m.onnx", "--input", "x.npy", "-o", "x.npy"], f"-o x.npy is the input x.npy: {REPLACES_INPUT}"),
    (["export", "d.bundle", "--trust", "nets", "-o", "d.bundle"],
     f"-o d.bundle is the bundle d.bundle: {REPLACES_INPUT}"),
    (["fold", "c.bundle", "--trust", "nets", "-o", "./c.bundle"],  # the same file by another name
     f"-o ./c.bundle is the bundle c.bundle: {REPLACES_INPUT}"),
    (["inspect", "c.bundle", "--trust", "nets", "--energy-plot", "c.bundle"],
     f"--energy-plot c.bundle is the input c.bundle: {REPLACES_INPUT}"),
    (["run", "m.onnx", "--input", "x.npy", "-o", "newdir/"],
     "cannot write newdir/: a path ending in '/' names a directory; give a file name"),
]


@pytest.mark.parametrize("argv,message", BAD_OUTPUTS, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD_OUTPUTS)])
def test_outputs_that_replace_an_input_or_name_a_directory_are_refused(work, argv, message, capsys, monkeypatch):
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    status, _, err = main_in_process(argv, work, capsys, monkeypatch)
    assert status == 2 and one_error_line(err) == f"sj-realspike: error: {message}"
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before  # nothing replaced or added
    assert not (work / "newdir").exists()


def test_third_party_warnings_stay_off_stderr(tmp_path):
    # torch.load warns in two lines ("Detected pickle protocol") before refusing a pickled checkpoint; a
    # subprocess, because pytest records warnings instead of printing them
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    r = cli_run("convert", *FACTORY, "--example-shape", "2,2,3,16,16", "--checkpoint", "p.pt", "-o", "out.bundle",
                cwd=tmp_path)
    assert one_error_line(r).startswith("sj-realspike: error: checkpoint p.pt is corrupt, truncated or not a "
                                        "weights-only torch file")
    assert not (tmp_path / "out.bundle").exists()


def test_the_cli_shows_its_own_warnings_in_one_line_and_no_others(capsys):
    from sj_realspike.console import own_warnings_only

    with own_warnings_only():
        warnings.warn("`torch.jit.script` is deprecated.\nPlease switch", FutureWarning)
        warnings.warn("Model holds no spike amplitudes\n(was convert_model forgotten?)", NotConvertedWarning)
    assert capsys.readouterr().err == ("sj-realspike: warning: Model holds no spike amplitudes (was convert_model "
                                       "forgotten?)\n")
