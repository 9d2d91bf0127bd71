"""Random SpikingJelly, Norse and snnTorch architectures from bench/fuzz.py: each folds and exports exactly or is
refused naming a node.

CI runs a fixed slice: of seeds 0-49 (SpikingJelly) and 0-14 (Norse), the fewest that together draw everything
those seeds draw (chosen greedily by new features per second): step mode, spike kind × granularity, a
per-name override, input size, each program op (residual sum, shortcut into a membrane, branch, scalar
factor ±, pooling kind, dropout, head), each conv shape (kernel, dilation, stride, groups, bias), each
neuron type with its reset and decay_input, Norse's three styles, and each outcome (exact, skipped, silent,
refused at convert and at fold). The wide run is ``python bench/fuzz.py --n 500 [--framework ...]``.
"""

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


SPIKINGJELLY_SEEDS = [0, 6, 7, 9, 19, 20, 23, 28, 29, 31, 33, 36, 42, 44, 48]  # 52 s of the 50 seeds' 216 s
NORSE_SEEDS = [0, 2, 3, 4, 5, 7, 12, 14]  # 26 s of 54 s


@pytest.mark.slow
@pytest.mark.parametrize("seed", SPIKINGJELLY_SEEDS)
def test_random_architecture_folds_exactly_or_is_refused(seed):
    _exact_or_refused(seed, "spikingjelly")


@pytest.mark.slow
@pytest.mark.parametrize("seed", NORSE_SEEDS)
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
