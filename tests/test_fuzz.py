"""~50 random SpikingJelly, 15 Norse and 15 snnTorch architectures from bench/fuzz.py: each folds and exports
exactly or is refused naming a node."""

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


# Of `python bench/fuzz.py --framework snntorch --n 100` (83 exact, 17 refused, 0 bugs): the quicker ones, all three
# styles (stepped nn.Sequential, tutorial 6's forward_pass, state in locals), and refusals at convert (a per-channel
# graded_spikes_factor under a layer amplitude; a ternary Synaptic/Lapicque named by set_name; nothing converted, as
# ternary RLeaky has no twin) and at export (Alpha).
SNNTORCH_SEEDS = [2, 4, 5, 8, 9, 12, 20, 24, 27, 32, 43, 46, 48, 53, 58]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SNNTORCH_SEEDS)
def test_random_snntorch_architecture_folds_exactly_or_is_refused(seed):
    pytest.importorskip("snntorch")
    outcome, detail = fuzz.run_case(seed, "snntorch")
    assert outcome in ("exact", "refused"), f"seed {seed}: {detail}"
    if outcome == "refused":
        assert re.match(r"^(convert|fold|export): [\w.]+: \S", detail), detail
