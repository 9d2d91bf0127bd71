"""~50 random SpikingJelly and 15 Norse architectures from bench/fuzz.py: each folds and exports exactly or is
refused naming a node."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import fuzz  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(50))
def test_random_architecture_folds_exactly_or_is_refused(seed):
    outcome, detail = fuzz.run_case(seed)
    assert outcome in ("exact", "refused"), f"seed {seed}: {detail}"
    if outcome == "refused":  # "<pass>: <node>: <reason>"
        assert re.match(r"^(convert|fold|export): [\w.]+: \S", detail), detail


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(15))
def test_random_norse_architecture_folds_exactly_or_is_refused(seed):
    pytest.importorskip("norse")
    outcome, detail = fuzz.run_case(seed, "norse")
    assert outcome in ("exact", "refused"), f"seed {seed}: {detail}"
    if outcome == "refused":
        assert re.match(r"^(convert|fold|export): [\w.]+: \S", detail), detail
