"""The CI slice of the compatibility matrix (the full one: tests/compat/matrix.py).

Zoo cells at full size across neuron types, spike kinds, granularities and step modes; then
one network per idiom that others write, each with its exact conversion count: a spiking
transformer, an MS-ResNet, a SeqToANNContainer SEW-ResNet, a user time loop, an image input
repeated inside ``forward``, and SEW's AND/IAND connections (products of spikes fold; IAND's
``1 - y`` blocks ``y``); three of snnTorch's tutorial networks; four of Norse's examples and its refusal of an unlowered stateful cell in a single-step model.
"""

from __future__ import annotations

import pytest

from matrix import CASES, Cell, run_cell
from wild_cases import unlisted_neurons
from zoo_models import uncovered_modules

CI_CELLS = [  # (cell, neurons converted, neurons found)
    (Cell("sew_resnet18 (ADD)", "IF", "ternary", "layer", "s"), 20, 20),
    # The last neuron feeds VotingLayer (an average pool over neurons): skipped.
    (Cell("CIFAR10Net (16 ch)", "PLIF", "ternary", "channel", "s"), 7, 8),
    # Element-wise amplitudes cannot fold through a max: the two neurons before the max pools are skipped too.
    (Cell("CIFAR10Net (16 ch)", "PLIF", "ternary", "element", "m"), 5, 8),
]

_MATMUL = ("matmul contracts an index along which the amplitudes of both operands vary, and their products are "
           "not constant along it")
_OUTPUT = ("spikes reach the network output without passing a synapse, so there is no weight to fold the amplitude "
           "into at node 'output'")
NETWORKS = [  # (table, row, neurons converted, neurons found, skip reasons)
    # Spikformer: channel-wise q and k meet in q @ kᵀ, which contracts the channels: one of them is skipped.
    ("models", "spikformer_cifar10", 9, 10, f"1 neuron(s) skipped: 1× {_MATMUL}"),
    # MS-ResNet: `if x.ndim == 4` in forward, shortcuts into membranes.
    ("models", "ms_resnet18", 17, 17, ""),
    # Official SEW-ResNet code: every synapse inside layer.SeqToANNContainer(nn.Conv2d, nn.BatchNorm2d).
    ("wild", "sew_resnet_add", 6, 6, ""),
    # A time loop over single-step modules inside forward; the last neuron's spikes are the output.
    ("wild", "time_loop_mlp", 1, 2, f"1 neuron(s) skipped: 1× {_OUTPUT}"),
    # conv_fashion_mnist's CSNN: an [N, C, H, W] image expanded to T steps inside forward.
    ("wild", "csnn", 3, 4, f"1 neuron(s) skipped: 1× {_OUTPUT}"),
    # SEW AND: x * y of two spike tensors folds (the scales multiply).
    ("models", "SEWResNet (AND)", 12, 12, ""),
    # SEW IAND: x * (1 - y): the subtraction blocks y (each block's sn2); x still folds through the product.
    ("models", "SEWResNet (IAND)", 8, 12,
     "4 neuron(s) skipped: 4× sub subtracts spike tensors (e.g. SEW 'IAND': (1 - x) * y)"),
]


SNNTORCH_NETWORKS = [  # (row, neurons converted, neurons found): each last layer's spikes are the output
    ("tutorial6_csnn", 2, 3),  # nn.Sequential of init_hidden Leaky neurons, stepped by the caller
    ("tutorial6_graded", 2, 3),  # a learned per-channel graded_spikes_factor, folded into the next conv
    ("rleaky_fc", 1, 2),  # RLeaky with (spk, mem) in locals: its recurrent weights absorb the amplitude
]


@pytest.mark.slow
def test_a_snntorch_network_where_nothing_converts_is_refused_not_passed(tmp_path):
    # SLSTM is not a neuron sj_realspike converts and the Leaky after it feeds the output: nothing converted,
    # so the cell must not read "pass"; and export refuses the SLSTM, whose state a time-flattened graph would
    # not carry across the steps.
    pytest.importorskip("snntorch")
    result = run_cell(_cell("snntorch", "slstm_fc"), tmp_path)
    assert (result.status, result.converted, result.total) == ("refused", 0, 2)
    assert result.note.startswith("node '2': SLSTM keeps state between time steps (mem, syn), and this single-step "
                                  "model is exported on the time-flattened sequence")
    assert "1× SLSTM emits spikes but sj_realspike supports the snnTorch neurons" in result.skipped


_RELU = "1 neuron(s) skipped: 1× relu consumes scaled spikes but is not linear in them (or not supported)"
NORSE_NETWORKS = [  # (row, neurons converted, neurons found, skip reasons)
    ("convnet", 2, 3, _RELU),  # Norse's own ConvNet: cell loop, voltages[ts] = v; relu before its LILinearCell
    ("tutorial_recurrent", 1, 1, ""),  # the MNIST tutorial: LIFRecurrentCell, Linear, LICell, max over time
    ("lifted_mlp", 1, 1, ""),  # SequentialState(Lift(Linear), LIF(), Lift(Linear)) on [T, N, 10]
    ("stepped_mlp", 1, 1, ""),  # SequentialState(Linear, LIFCell(), Linear), stepped with its state
]


def _cell(table: str, name: str) -> Cell:
    case = CASES[table][name]
    return Cell(name, case.neuron, "real", "channel", "s" if case.single_step else "m", table=table)


@pytest.mark.slow
@pytest.mark.parametrize("cell, converted, total", CI_CELLS,
                         ids=[f"{c.model}-{c.neuron}-{c.spike}-{c.granularity}-{c.step_mode}" for c, _, _ in CI_CELLS])
def test_zoo_cell_passes(cell, converted, total, tmp_path):
    result = run_cell(cell, tmp_path)
    assert result.status == "pass", result.note
    assert (result.converted, result.total) == (converted, total), result.skipped


@pytest.mark.slow
@pytest.mark.parametrize("table, name, converted, total, skipped", NETWORKS, ids=[n[1] for n in NETWORKS])
def test_network_written_by_others_passes_with_exact_counts(table, name, converted, total, skipped, tmp_path):
    result = run_cell(_cell(table, name), tmp_path)
    assert result.status == "pass", result.note
    assert (result.converted, result.total) == (converted, total)
    assert result.skipped == skipped


def test_every_zoo_module_and_neuron_class_has_a_row():
    # A module or neuron class added to SpikingJelly must show up in the matrix, not go unnoticed.
    assert uncovered_modules() == []
    assert unlisted_neurons() == []


@pytest.mark.slow
@pytest.mark.parametrize("name, converted, total", SNNTORCH_NETWORKS, ids=[n[0] for n in SNNTORCH_NETWORKS])
def test_snntorch_tutorial_network_passes_with_exact_counts(name, converted, total, tmp_path):
    pytest.importorskip("snntorch")
    result = run_cell(_cell("snntorch", name), tmp_path)
    assert result.status == "pass", result.note
    assert (result.converted, result.total) == (converted, total)
    assert result.skipped.startswith("1 neuron(s) skipped: 1× ")  # the output layer, its spikes are the output


@pytest.mark.slow
@pytest.mark.parametrize("name, converted, total, skipped", NORSE_NETWORKS, ids=[n[0] for n in NORSE_NETWORKS])
def test_norse_example_network_passes_with_exact_counts(name, converted, total, skipped, tmp_path):
    pytest.importorskip("norse")
    result = run_cell(_cell("norse", name), tmp_path)
    assert result.status == "pass", result.note
    assert (result.converted, result.total) == (converted, total)
    assert result.skipped == skipped


def test_norse_single_step_model_with_an_unlowered_stateful_cell_is_refused_naming_it(tmp_path):
    pytest.importorskip("norse")
    result = run_cell(_cell("norse", "lsnn"), tmp_path)
    assert result.status == "refused" and "node '3'" in result.note and "LSNNRecurrentCell keeps state" in result.note
    assert (result.converted, result.total) == (1, 2)
