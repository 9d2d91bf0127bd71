"""Synapse modules that only the fold creates.

* `UnsharedConv2d`: a locally connected convolution (one kernel per output
  position), the exact inference form of an element-wise amplitude feeding a conv.
* `DiagonalSynapse`: one weight per input element, added into a membrane; the exact
  form of a scaled spike train that reaches a neuron without a conv or linear layer
  (e.g. the identity shortcut of spiking ResNets).

Both accept ``[N, …]`` and ``[T, N, …]`` and belong to no framework (any framework's
deploy model holds them). They are SpikingJelly ``StepModule``s (SpikingJelly is a required
dependency) for SpikingJelly's own tools only: ``functional.set_step_mode`` on a SpikingJelly
deploy model sets their ``step_mode``, validated and without a warning, like the layers
they replace; nothing here depends on it otherwise.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import base

from .weights import unshared_conv_weight

__all__ = ["UnsharedConv2d", "DiagonalSynapse"]


class UnsharedConv2d(nn.Module, base.StepModule):
    """Convolution geometry with a separate kernel at every output position.

    ``weight`` is ``[L, g, O/g, C/g·kh·kw]`` (``L = H_out·W_out``); parameters grow
    by a factor ``L`` over the shared conv. Input is ``[N, C, H, W]`` (``'s'``) or
    ``[T, N, C, H, W]`` (``'m'``, time folded into the batch).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 groups: int, in_hw: tuple[int, int], out_hw: tuple[int, int], bias: bool,
                 step_mode: str = "s") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.in_hw, self.out_hw = in_hw, out_hw
        positions = out_hw[0] * out_hw[1]
        fan_in = in_channels // groups * kernel_size[0] * kernel_size[1]
        self.weight = nn.Parameter(torch.zeros(positions, groups, out_channels // groups, fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.step_mode = step_mode

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scale: torch.Tensor, in_hw: tuple[int, int],
                  out_hw: tuple[int, int], keep_bias: bool) -> UnsharedConv2d:
        """The unshared conv equal to ``conv(scale ⊙ x)`` for inputs of spatial size ``in_hw``."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, in_hw, out_hw, keep_bias and conv.bias is not None,
                  getattr(conv, "step_mode", "s"))
        w = unshared_conv_weight(conv.weight.detach().double(), scale.double(), stride=conv.stride,
                                 padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
        with torch.no_grad():
            new.weight.copy_(w.to(conv.weight.dtype))
            if new.bias is not None:
                new.bias.copy_(conv.bias.detach())
        return new.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if tuple(x.shape[-2:]) != self.in_hw:
            raise ValueError(
                f"UnsharedConv2d was folded for {self.in_hw[0]}x{self.in_hw[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}: element-wise amplitudes fix the spatial size"
            )
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                           stride=self.stride)  # [B, C·kh·kw, L]
        patches = patches.reshape(x.shape[0], self.groups, -1, patches.shape[-1])
        out = torch.einsum("bgjl,lgoj->bgol", patches, self.weight)
        out = out.reshape(x.shape[0], self.out_channels, *self.out_hw)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out.reshape(*lead, *out.shape[1:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"in_hw={self.in_hw}, out_hw={self.out_hw}, step_mode={self.step_mode}")


class DiagonalSynapse(nn.Module, base.StepModule):
    """``y = w ⊙ s``: one synaptic weight per input element (or channel, or layer).

    The exact form of ``a ⊙ s`` entering a membrane directly. ``weight`` has the
    amplitude's shape and broadcasts over ``[N, …]`` / ``[T, N, …]``.
    """

    def __init__(self, weight: torch.Tensor, step_mode: str = "s") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, step_mode={self.step_mode}"
