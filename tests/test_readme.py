"""Every ```python and ```bash block of README.md runs as written, in order, in a fresh directory.

Python blocks share one namespace (one process: this one), bash blocks run with ``bash -e``
in the same directory. The two fresh-machine commands install the package (it is installed
here) and run the demo and the whole suite: while the README says exactly those commands,
they run in a reduced form (the demo with ``--quick`` and one variant; pytest only collects: never the suite
from inside itself). Nothing in the README text is edited.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```$", re.S | re.M)

# documented fresh-machine command -> (what runs instead, where)
FRESH = {
    # test_demo runs every variant of the demo; here the console script runs one, end to end.
    "python -m pip install -e '.[demo]' && sj-realspike demo\n": (
        "sj-realspike demo --quick --variants real-channel --out demo_out\n", None),
    "python -m pip install -e '.[dev]' && python -m pytest -q\n": ("python -m pytest -q --collect-only\n", REPO),
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


@pytest.mark.slow
def test_readme_blocks_run_in_order(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples")  # blocks run from the repository root
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, (lang, code) in enumerate(blocks()):
        if lang == "python":
            exec(compile(code, f"README.md block {i}", "exec"), namespace)
            continue
        code, cwd = FRESH.get(code, (code, None))
        r = subprocess.run(["bash", "-e", "-c", code], cwd=cwd or tmp_path, capture_output=True,
                           text=True, timeout=1200)
        assert r.returncode == 0, f"README.md block {i} failed ({r.returncode}):\n{code}\n{r.stdout[-3000:]}\n" \
                                  f"{r.stderr[-3000:]}"
    assert {"net.onnx", "trained.bundle", "deploy.bundle", "x.npy", "y.npy"} <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "demo_out" / "amplitudes_and_rates.png").is_file()
    assert namespace["y"].shape == (2, 1, 10)  # the last python block's onnxruntime output
