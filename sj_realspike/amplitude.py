"""The learnable spike amplitude inserted after each converted neuron."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from .config import Granularity

__all__ = ["Amplitude", "amplitude_shape", "amplitude_parameters"]


def amplitude_shape(feature_shape: tuple[int, ...], granularity: Granularity,
                    channels_last: bool = False, slices: int = 1) -> tuple[int, ...]:
    """Shape of ``a`` for one sample's feature shape (``(C, H, W)``, ``(F,)`` or tokens ``(L, C)``).

    layer → ``()``; channel → ``(C, 1, …)`` (``(1, …, C)`` with ``channels_last``: token
    layouts whose channels a Linear reads from the last dim); slice → the same with
    ``slices`` in place of ``C`` (expanded to the channels by `Amplitude.full`); element →
    the whole feature shape. Trailing alignment makes the same ``a`` broadcast over
    ``[N, …]`` and ``[T, N, …]``.
    """
    if granularity == "layer" or not feature_shape:
        return ()
    if granularity in ("channel", "slice"):
        channels = slices if granularity == "slice" else (feature_shape[-1] if channels_last else feature_shape[0])
        if channels_last:
            return (1,) * (len(feature_shape) - 1) + (channels,)
        return (channels,) + (1,) * (len(feature_shape) - 1)
    return tuple(feature_shape)


class _ScaleSpikes(torch.autograd.Function):
    """``o = a ⊙ s`` that keeps ``s`` for backward as int8.

    Spikes are exactly {0, 1} or {−1, 0, 1}, so the int8 copy is lossless and costs a
    quarter of the float tensor a plain ``Mul`` would keep alive (the output ``a ⊙ s``
    is kept by the next synapse anyway).
    """

    @staticmethod
    def forward(ctx, spikes: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(spikes.to(torch.int8), a)
        else:
            ctx.save_for_backward(None, a)
        return spikes * a

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        spikes_i8, a = ctx.saved_tensors
        grad_spikes = grad_out * a if ctx.needs_input_grad[0] else None
        grad_a = None
        if ctx.needs_input_grad[1]:
            grad_a = (grad_out * spikes_i8.to(grad_out.dtype)).sum_to_size(a.shape)
        return grad_spikes, grad_a


class Amplitude(nn.Module, base.StepModule):
    """Learnable amplitude ``a`` applied to a neuron's spikes: ``o = a ⊙ s``.

    Stateless and shared across time steps; works in both step modes because ``a``
    broadcasts over the leading ``[T, N]`` or ``[N]`` dimensions. It is a SpikingJelly
    ``StepModule`` (SpikingJelly is a required dependency) for SpikingJelly's own tools
    only: on a converted SpikingJelly network ``functional.set_step_mode`` sets its mode,
    validated and without a warning, and SpikingJelly-aware tracers keep it a leaf.
    sj_realspike itself never reads it (capture keeps `Amplitude` whole on its own, the
    SpikingJelly adapter does not own it), so snnTorch and Norse networks carry it alike.

    Args:
        shape: shape of ``a`` (see `amplitude_shape`).
        granularity: ``"layer"``, ``"channel"`` or ``"element"`` (recorded for reports and fold).
        init: initial value of every entry of ``a``.
        spike: ``"real"`` or ``"ternary"``: which spike values ``s`` takes.
    """

    def __init__(self, shape: tuple[int, ...], granularity: Granularity, init: float = 1.0,
                 spike: str = "real", repeat: int = 1, repeat_dim: int = 0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full(shape, float(init)))
        self.granularity = granularity
        self.spike = spike
        self.repeat = repeat  # slice granularity: each entry of `a` covers this many consecutive channels
        self.repeat_dim = repeat_dim  # ... along this dim of `a`
        self._step_mode = "s"

    def full(self, a: torch.Tensor | None = None) -> torch.Tensor:
        """``a`` (or a tensor of its shape) as it multiplies the spikes: slices expanded to channels."""
        a = self.a if a is None else a
        if self.repeat == 1:
            return a
        return a.repeat_interleave(self.repeat, dim=self.repeat_dim)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        a = self.full()
        a = a if a.dtype == spikes.dtype else a.to(spikes.dtype)
        if torch.is_grad_enabled() and (spikes.requires_grad or a.requires_grad):
            return _ScaleSpikes.apply(spikes, a)
        return spikes * a

    def extra_repr(self) -> str:
        repeat = f", repeat={self.repeat}" if self.repeat != 1 else ""
        return f"shape={tuple(self.a.shape)}, granularity={self.granularity}, spike={self.spike}{repeat}"


def amplitude_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The amplitude parameters of a converted model.

    Use them as their own optimizer group, without weight decay, as the authors do::

        amps = set(map(id, rs.amplitude_parameters(model)))
        opt = torch.optim.SGD([
            {"params": [p for p in model.parameters() if id(p) not in amps]},
            {"params": list(rs.amplitude_parameters(model)), "weight_decay": 0.0},
        ], lr=0.1, weight_decay=5e-4)
    """
    for m in model.modules():
        if isinstance(m, Amplitude):
            yield m.a
