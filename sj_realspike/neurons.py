"""Neuron questions the passes ask, answered by the framework adapters (`sj_realspike.frameworks`)."""

from __future__ import annotations

import torch.nn as nn

from .errors import UnsupportedPatternError
from .frameworks import adapters, is_leaf, is_neuron, is_spiking_module, is_ternary, neuron_adapter
from .frameworks import step_mode as neuron_step_mode

__all__ = [
    "is_neuron",
    "is_ternary",
    "kept_module_around",
    "step_mode_of",
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


def step_mode_of(model: nn.Module) -> str:
    """The step mode shared by all neurons of ``model`` (``'s'`` or ``'m'``).

    Raises:
        UnsupportedPatternError: no neurons, or neurons in both step modes.
    """
    neurons = {name: m for name, m in model.named_modules() if is_neuron(m)}
    own = {name: m for name, m in neurons.items() if kept_module_around(model, name) is None}
    modes = {name: neuron_step_mode(m) for name, m in (own or neurons).items()}
    if not modes:
        _refuse_unsupported_spiking(model)
        raise UnsupportedPatternError(type(model).__name__, "the model has no spiking neurons",
                                      f"Export networks of {', '.join(a.name for a in adapters())} neurons "
                                      "(or models from sj_realspike.fold)")
    if len(set(modes.values())) > 1:
        single = sorted(n for n, s in modes.items() if s == "s")[:3]
        switch = neuron_adapter(neurons[single[0]]).multi_step_remedy()
        raise UnsupportedPatternError(
            single[0], f"neurons run in both step modes (single-step: {', '.join(single)}, …)",
            "Use one step mode for the whole network" + (f": {switch} before convert_model" if switch else ""))
    return next(iter(modes.values()))


def kept_module_around(model: nn.Module, path: str) -> str | None:
    """The module capture keeps whole that the neuron at ``path`` runs inside (``None``: none), which steps it.

    SpikingJelly's recurrent containers call their neuron one step at a time in either step mode
    of their own (they feed its output back): its step mode is theirs to choose, not the model's.
    """
    parts = path.split(".")
    return next((outer for outer in (".".join(parts[:i]) for i in range(1, len(parts)))
                 if is_leaf(m := model.get_submodule(outer)) and not is_neuron(m)), None)


def _refuse_unsupported_spiking(model: nn.Module) -> None:
    """Refuse a model whose spiking modules are all of types sj_realspike does not support, naming the first.

    Such a model does fire (convert's report lists each module as staying binary), so
    "no spiking neurons" would be untrue: what it lacks is a neuron that has an export lowering.
    """
    spiking = [(name, m) for name, m in model.named_modules() if is_spiking_module(m)]
    if spiking:
        name, m = spiking[0]
        raise UnsupportedPatternError(
            name, f"none of the model's {len(spiking)} spiking module(s) is a neuron sj_realspike supports, so none "
                  f"has an export lowering: {neuron_adapter(m).not_neuron_reason(m)}",
            "Use a supported neuron type (the conversion report lists each skipped neuron and why)")
