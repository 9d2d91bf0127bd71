"""Every ```python and ```bash block of README.md runs as written.

The python blocks run in order in one namespace (one process: this one) and one fresh directory; each
bash block runs with ``bash -e`` in a fresh directory of its own (a reader copies one command block at a
time, so each must stand alone), as a test of its own so that the long ones run side by side. The two
fresh-machine commands install the package (it is installed here) and run the demo and the whole suite:
while the README says exactly those commands, they run in a reduced form (the demo with ``--quick`` and one
variant; pytest only collects: never the suite from inside itself). Nothing in the README text is edited.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import sj_realspike as rs

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```$", re.S | re.M)

# documented fresh-machine command -> (what runs instead, where)
FRESH = {
    # test_demo runs every variant of the demo; here the console script runs one, end to end.
    "python -m pip install -e '.[demo]' && sj-realspike demo\n": (
        "sj-realspike demo --quick --variants real-channel --out demo_out\n", None),
    "python -m pip install -e '.[dev]' && python -m pytest -q\n": ("python -m pytest -q --collect-only -n 0\n", REPO),
}


def blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every python/bash block, in README order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_every_block_is_known_and_parses():
    found = blocks()
    assert [lang for lang, _ in found].count("python") >= 3 and [lang for lang, _ in found].count("bash") >= 4
    for lang, code in found:
        if lang == "python":
            ast.parse(code)
        else:
            r = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
            assert r.returncode == 0, f"{code}\n{r.stderr}"
            assert "pip install" not in code or code in FRESH, f"an unknown install command in README.md:\n{code}"
    assert set(FRESH) <= {code for _, code in found}, "a fresh-machine command changed: update FRESH"


def _fresh_directory(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "examples").symlink_to(REPO / "examples")  # blocks run from the repository root
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    _fresh_directory(tmp_path, monkeypatch)
    namespace: dict = {"__name__": "__readme__"}
    for i, (lang, code) in enumerate(blocks()):
        if lang == "python":
            exec(compile(code, f"README.md block {i}", "exec"), namespace)
    assert {"net.onnx", "step.onnx"} <= {p.name for p in tmp_path.iterdir()}
    assert namespace["y"].shape == (2, 1, 10)  # the last python block's onnxruntime output


# What a bash block leaves behind, by a command it runs (each block must run one of these).
BASH_OUTPUTS = {
    "sj-realspike demo": ["demo_out/amplitudes_and_rates.png"],
    "python -m pytest": [],
    "sj-realspike convert": ["converted.bundle", "trained.bundle", "deploy.bundle", "net.onnx", "x.npy", "y.npy"],
    "torchrun": ["ddp_out/model.onnx"],
}


def _ddp_kept_amplitudes_in_sync(out: Path, stdout: str) -> None:
    """The torchrun block (examples/train_ddp.py, 2 gloo processes): amplitudes trained, identical on both
    ranks, and rank 0's fold and export runs."""
    rank0 = torch.load(out / "ddp_out/amplitudes_rank0.pt", weights_only=True)
    rank1 = torch.load(out / "ddp_out/amplitudes_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) == 3
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.all(a == 1.0) for a in rank0.values()), "training did not move the amplitudes"
    assert "rank 0 of 2: folded and exported" in stdout
    y = rs.OnnxRunner(out / "ddp_out/model.onnx")(np.random.rand(4, 3, 1, 16, 16).astype(np.float32))
    assert y.shape == (4, 3, 10)


# What else a bash block's outcome must show, by a command it runs.
BASH_CHECKS = {"torchrun": _ddp_kept_amplitudes_in_sync}
BASH_BLOCKS = [(i, code) for i, (lang, code) in enumerate(blocks()) if lang == "bash"]


@pytest.mark.slow
@pytest.mark.parametrize("index,code", BASH_BLOCKS, ids=[f"block{i}" for i, _ in BASH_BLOCKS])
def test_readme_bash_block_runs(tmp_path, monkeypatch, index, code):
    outputs = [files for command, files in BASH_OUTPUTS.items() if command in code]
    assert len(outputs) == 1, f"README.md block {index} runs none (or several) of {list(BASH_OUTPUTS)}: " \
                              "say in BASH_OUTPUTS what it leaves behind"
    run, cwd = FRESH.get(code, (code, None))
    r = subprocess.run(["bash", "-e", "-c", run], cwd=cwd or _fresh_directory(tmp_path, monkeypatch),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"README.md block {index} failed ({r.returncode}):\n{code}\n{r.stdout[-3000:]}\n" \
                              f"{r.stderr[-3000:]}"
    missing = [f for f in outputs[0] if not (tmp_path / f).is_file()]
    assert not missing, f"README.md block {index} did not write {missing}"
    for command, check in BASH_CHECKS.items():
        if command in code:
            check(tmp_path, r.stdout)
