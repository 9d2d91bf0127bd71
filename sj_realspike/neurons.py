"""Neuron questions the passes ask, answered by the framework adapters (`sj_realspike.frameworks`)."""

from __future__ import annotations

import torch.nn as nn

from .frameworks import is_neuron, is_ternary, neuron_adapter

__all__ = [
    "is_neuron",
    "is_ternary",
    "ternary_problem",
    "to_ternary",
]


def ternary_problem(m: nn.Module) -> str | None:
    """Why neuron ``m`` cannot become ternary (``None``: `to_ternary` takes it, or it is ternary)."""
    adapter = neuron_adapter(m)
    if adapter is None:
        return f"{type(m).__name__} is not a spiking neuron of a supported framework"
    return adapter.ternary_problem(m)


def to_ternary(m: nn.Module) -> nn.Module:
    """A ternary neuron of ``m``'s framework with ``m``'s hyper-parameters, surrogate and step mode.

    Raises:
        ValueError: ``m`` has no ternary counterpart, or hyper-parameters a ternary
            neuron cannot take (e.g. ``v_reset`` outside ``(−θ, θ)``).
    """
    adapter = neuron_adapter(m)
    if adapter is None:
        raise ValueError(f"{type(m).__name__} is not a spiking neuron of a supported framework")
    return adapter.to_ternary(m)
