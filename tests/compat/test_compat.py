"""The CI slice of the zoo compatibility matrix (the full one: tests/compat/matrix.py)."""

from __future__ import annotations

import pytest

from matrix import Cell, run_cell

CI_CELLS = [
    Cell("spiking_resnet18", "PLIF", "ternary", "element", "m"),
    Cell("sew_resnet18 (ADD)", "LIF", "real", "channel", "m"),
    Cell("sew_resnet18 (ADD)", "IF", "ternary", "layer", "s"),
    Cell("spiking_vgg11", "LIF", "real", "element", "m"),
    Cell("CIFAR10Net (16 ch)", "PLIF", "ternary", "channel", "s"),
]


@pytest.mark.slow
@pytest.mark.parametrize("cell", CI_CELLS, ids=lambda c: f"{c.model}-{c.neuron}-{c.spike}-{c.granularity}-{c.step_mode}")
def test_zoo_cell_passes(cell, tmp_path):
    result = run_cell(cell, tmp_path)
    assert result.status == "pass", result.note


@pytest.mark.slow
@pytest.mark.parametrize("cnf", ["AND", "IAND"])
def test_sew_gates_are_skipped_cleanly(cnf, tmp_path):
    result = run_cell(Cell(f"sew_resnet18 ({cnf})", "IF", "real", "channel", "m"), tmp_path)
    # AND: x * y; IAND: (1 - x) * y, which blocks x at the subtraction and y at the product.
    whys = {"AND": "12× mul multiplies spike tensors (e.g. SEW 'AND')",
            "IAND": "8× sub subtracts spike tensors (e.g. SEW 'IAND': (1 - x) * y); "
                    "4× mul multiplies spike tensors (e.g. SEW 'AND')"}
    assert result.status == "pass" and result.note == f"12 neuron(s) skipped: {whys[cnf]}", result.note


@pytest.mark.parametrize("model", ["ms_resnet18", "spikformer_cifar10"])
def test_untraceable_zoo_model_is_refused_with_reason(model, tmp_path):
    result = run_cell(Cell(model, "LIF", "real", "channel", "m"), tmp_path)
    assert result.status == "refused" and "torch.fx could not trace the model" in result.note, result.note
