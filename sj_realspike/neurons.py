"""Recognising SpikingJelly neurons and swapping them for their ternary counterparts."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

__all__ = [
    "TernaryParametricLIFNode",
    "is_neuron",
    "is_ternary",
    "ternary_counterpart",
    "to_ternary",
]

_NEURON_BASES = (neuron.BaseNode, neuron.SimpleBaseNode)


class TernaryParametricLIFNode(neuron.BaseNode):
    """Ternary spikes with ParametricLIF dynamics (learnable ``1/τ = sigmoid(w)``).

    SpikingJelly ships ternary IF and LIF neurons but no ternary PLIF; this one
    charges exactly like ``ParametricLIFNode`` and fires/resets like
    ``TernaryLIFNode``: +1 at ``h ≥ θ``, −1 at ``h ≤ −θ``, both polarities reset.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        surrogate_function: surrogate.SurrogateFunctionBase = surrogate.Sigmoid(),
        detach_reset: bool = False,
        step_mode: str = "s",
        store_v_seq: bool = False,
    ) -> None:
        # Validate exactly as SpikingJelly's ternary neurons do (same messages).
        neuron.TernaryIFNode(v_threshold, v_reset, surrogate_function, detach_reset)
        if not isinstance(init_tau, float) or init_tau <= 1.0:
            raise ValueError("init_tau must be a float greater than 1.0.")
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset,
                         step_mode=step_mode, store_v_seq=store_v_seq)
        self.decay_input = decay_input
        self.w = nn.Parameter(torch.as_tensor(-torch.log(torch.tensor(init_tau - 1.0)).item()))

    def extra_repr(self) -> str:
        with torch.no_grad():
            tau = 1.0 / self.w.sigmoid()
        return super().extra_repr() + f", tau={tau}"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x, v = inputs[0], states[0]
        q = self.w.sigmoid()
        rest = 0.0 if self.v_reset is None else self.v_reset
        h = v + (x - (v - rest)) * q if self.decay_input else v - (v - rest) * q + x
        positive = self.surrogate_function(h - self.v_threshold)
        negative = self.surrogate_function(-h - self.v_threshold)
        spike = positive - negative
        reset_event = spike if self.v_reset is None else positive + negative
        v = functional.voltage_reset(h, reset_event, self.v_threshold, self.v_reset, self.detach_reset)
        return (spike,), (v, *states[1:])


_TERNARY_OF: dict[type, type] = {
    neuron.IFNode: neuron.TernaryIFNode,
    neuron.LIFNode: neuron.TernaryLIFNode,
    neuron.ParametricLIFNode: TernaryParametricLIFNode,
}
_TERNARY_TYPES = tuple(_TERNARY_OF.values())


def is_neuron(m: nn.Module) -> bool:
    """Whether ``m`` is a SpikingJelly spiking neuron (emits spikes, keeps a membrane)."""
    return isinstance(m, _NEURON_BASES)


def is_ternary(m: nn.Module) -> bool:
    """Whether ``m`` emits ternary spikes {−1, 0, +1}."""
    return isinstance(m, _TERNARY_TYPES)


def ternary_counterpart(m: nn.Module) -> type | None:
    """The ternary class for this neuron's exact type, or ``None`` if there is none."""
    return _TERNARY_OF.get(type(m))


def to_ternary(m: nn.Module) -> nn.Module:
    """A ternary neuron with ``m``'s hyper-parameters, surrogate, step mode and precision.

    The surrogate function object is shared (not copied) so users keep their own
    surrogate instance and its settings; PLIF's learned ``w`` is copied.

    Raises:
        ValueError: ``m`` has no ternary counterpart, or hyper-parameters a ternary
            neuron cannot take (e.g. ``v_reset`` outside ``(−θ, θ)``).
    """
    if is_ternary(m):
        return m
    cls = ternary_counterpart(m)
    if cls is None:
        raise ValueError(
            f"{type(m).__name__} has no ternary counterpart "
            f"(supported: {', '.join(t.__name__ for t in _TERNARY_OF)})"
        )
    common = dict(
        v_threshold=float(m.v_threshold),
        v_reset=None if m.v_reset is None else float(m.v_reset),
        surrogate_function=m.surrogate_function,
        detach_reset=m.detach_reset,
        step_mode=m.step_mode,
        store_v_seq=m.store_v_seq,
    )
    if isinstance(m, neuron.ParametricLIFNode):
        new = cls(init_tau=2.0, decay_input=m.decay_input, **common)
        with torch.no_grad():
            new.w.copy_(m.w)
        new.w.requires_grad_(m.w.requires_grad)
    elif isinstance(m, neuron.LIFNode):
        new = cls(tau=float(m.tau), decay_input=m.decay_input, **common)
    else:
        new = cls(**common)
    new._neuron_precision = copy.copy(getattr(m, "_neuron_precision", None))
    new.train(m.training)
    return new
