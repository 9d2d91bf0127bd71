"""One adapter per SNN framework; the passes ask these functions, which ask the adapters.

See `sj_realspike.frameworks.base` for the protocol and docs/design.md ("Framework
adapters") for what a new framework's module provides. The functions below answer for
any module: a plain torch module belongs to no framework and gets the neutral answer.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .base import (
    BUILTIN,
    FrameworkAdapter,
    Refusal,
    adapter_for,
    adapters,
    defined_beyond,
    framework_of,
    frameworks_in,
    register,
)

__all__ = [
    "BUILTIN",
    "FrameworkAdapter",
    "Refusal",
    "adapter_for",
    "adapters",
    "batch_dims",
    "defined_beyond",
    "framework_of",
    "frameworks_in",
    "identity_types",
    "invalidate",
    "is_container",
    "is_leaf",
    "is_neuron",
    "is_spiking_module",
    "is_ternary",
    "layer_wrappers",
    "neuron_adapter",
    "neuron_types",
    "register",
    "reset",
    "run_steps",
    "set_state",
    "spike_index",
    "spikes_of",
    "state_of",
    "step_mode",
    "step_output",
    "synapse_types",
    "ternary_types",
]


def neuron_adapter(m: nn.Module) -> FrameworkAdapter | None:
    """The adapter for which ``m`` is a spiking module, or ``None``."""
    return next((a for a in adapters() if a.is_spiking(m)), None)


def is_spiking_module(m: nn.Module) -> bool:
    """Whether ``m`` fires, in any framework (a candidate for an amplitude; check its output too)."""
    return any(a.is_spiking(m) for a in adapters())


def is_neuron(m: nn.Module) -> bool:
    """Whether ``m`` is a neuron amplitudes, fold and export support, in any framework."""
    return any(a.is_neuron(m) for a in adapters())


def is_ternary(m: nn.Module) -> bool:
    """Whether ``m`` emits ternary spikes {−1, 0, +1}."""
    return any(a.is_ternary(m) for a in adapters())


def is_leaf(m: nn.Module) -> bool:
    """Whether capture keeps ``m`` whole (a framework's neuron or stateful module)."""
    return any(a.is_leaf(m) and not a.is_container(m) for a in adapters())


def is_container(m: nn.Module) -> bool:
    """Whether capture traces through ``m`` although it is a framework module (step containers)."""
    return any(a.is_container(m) for a in adapters())


def reset(model: nn.Module) -> None:
    """Reset the state of every neuron and stateful module in ``model``, whatever their framework."""
    for a in adapters():
        a.reset(model)


def invalidate(model: nn.Module) -> None:
    """Drop what frameworks cached about ``model``'s modules (after swapping modules)."""
    for a in adapters():
        a.invalidate(model)


def state_of(m: nn.Module) -> dict[str, Any]:
    """``m``'s own state tensors by attribute (empty for stateless modules)."""
    adapter = adapter_for(m)
    return adapter.state(m) if adapter is not None else {}


def set_state(m: nn.Module, state: dict[str, Any]) -> None:
    """Put back a `state_of` snapshot."""
    adapter = adapter_for(m)
    if adapter is not None:
        adapter.set_state(m, state)


def batch_dims(m: nn.Module) -> int:
    """Leading batch/time dims of neuron ``m``'s input: 2 for ``[T, N, …]`` (multi-step), else 1."""
    adapter = adapter_for(m)
    return adapter.batch_dims(m) if adapter is not None else (2 if getattr(m, "step_mode", "s") == "m" else 1)


def step_mode(m: nn.Module) -> str:
    """``'m'`` (one call takes the whole sequence) or ``'s'`` (one call is one step)."""
    adapter = adapter_for(m)
    return adapter.step_mode(m) if adapter is not None else getattr(m, "step_mode", "s")


def spike_index(m: nn.Module, out: Any) -> int | None:
    """Where the spikes are in ``out``, what a call of neuron ``m`` returned (``None``: ``out`` itself)."""
    adapter = neuron_adapter(m)
    return adapter.spike_index(m, out) if adapter is not None else None


def spikes_of(m: nn.Module, out: Any) -> Any:
    """The spikes in ``out``, what a call of neuron ``m`` returned (``out`` itself, or its spike item)."""
    index = spike_index(m, out)
    return out if index is None else out[index]


def neuron_types() -> tuple[type, ...]:
    """Every framework's neuron classes (ONNX purity resolves module classes from scopes)."""
    return tuple(t for a in adapters() for t in a.neuron_types())


def ternary_types() -> tuple[type, ...]:
    """Every framework's ternary neuron classes."""
    return tuple(t for a in adapters() for t in a.ternary_types())


def identity_types() -> tuple[type, ...]:
    """Every framework's modules that are the identity at inference (dropout)."""
    return tuple(t for a in adapters() for t in a.identity_types())


def layer_wrappers() -> tuple[type, ...]:
    """Every framework's step-mode subclasses of torch's Conv1d/Conv2d/Linear (`FrameworkAdapter.layer_wrappers`)."""
    return tuple(t for a in adapters() for t in a.layer_wrappers())


def synapse_types() -> tuple[type, ...]:
    """Every framework's own synaptic modules other than conv/linear (filters integrating spikes)."""
    return tuple(t for a in adapters() for t in a.synapse_types())


def run_steps(model: nn.Module, xs: Any) -> list[Any]:
    """The outputs of single-step ``model`` fed ``xs`` one step at a time, state carried as its framework does."""
    adapter = _model_adapter(model)
    carry, outs = None, []
    for x in xs:
        out, carry = adapter.step_call(model, x, carry)
        outs.append(out)
    return outs


def step_output(model: nn.Module, out: Any) -> Any:
    """The output in what one call of single-step ``model`` returned (`FrameworkAdapter.step_output`)."""
    return _model_adapter(model).step_output(model, out)


def _model_adapter(model: nn.Module) -> FrameworkAdapter:
    """The adapter of ``model``'s neurons, or of its framework modules (a lowered graph's), else the neutral one."""
    adapter = framework_of(model)
    if adapter is None:
        adapter = next((a for m in model.modules() if (a := adapter_for(m)) is not None), None)
    return adapter or FrameworkAdapter()
