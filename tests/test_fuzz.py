"""~50 random SpikingJelly, 15 Norse and 15 snnTorch architectures from bench/fuzz.py: each folds and exports
exactly or is refused naming a node."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import fuzz  # noqa: E402



def _exact_or_refused(seed: int, framework: str) -> None:
    """The case of ``seed`` folds and exports exactly, or a pass refuses it naming the node."""
    outcome, detail = fuzz.run_case(seed, framework)
    assert outcome in ("exact", "refused"), f"seed {seed}: {detail}"
    if outcome == "refused":  # "<pass>: <node>: <reason>"
        assert re.match(r"^(convert|fold|export): [\w.]+: \S", detail), detail

@pytest.mark.slow
@pytest.mark.parametrize("seed", range(50))
def test_random_architecture_folds_exactly_or_is_refused(seed):
    _exact_or_refused(seed, "spikingjelly")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(15))
def test_random_norse_architecture_folds_exactly_or_is_refused(seed):
    pytest.importorskip("norse")
    _exact_or_refused(seed, "norse")


# Of `python bench/fuzz.py --framework snntorch --n 100` (83 exact, 17 refused, 0 bugs): the quicker ones, all three
# styles (stepped nn.Sequential, tutorial 6's forward_pass, state in locals), and refusals at convert (a per-channel
# graded_spikes_factor under a layer amplitude; a ternary Synaptic/Lapicque named by set_name; nothing converted, as
# ternary RLeaky has no twin) and at export (Alpha).
SNNTORCH_SEEDS = [2, 4, 5, 8, 9, 12, 20, 24, 27, 32, 43, 46, 48, 53, 58]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SNNTORCH_SEEDS)
def test_random_snntorch_architecture_folds_exactly_or_is_refused(seed):
    pytest.importorskip("snntorch")
    _exact_or_refused(seed, "snntorch")
