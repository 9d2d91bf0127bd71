"""Pure tensor math of the fold: amplitudes and BatchNorm into synapse weights.

No fx here: every function takes and returns tensors, so each can be tested with
two tensors. Callers pass float64 and cast once at the end (one rounding instead
of one per folded factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

__all__ = [
    "is_spatially_uniform",
    "channel_vector",
    "scale_input_channels",
    "scale_transposed_input_channels",
    "scale_linear_columns",
    "unshared_conv_weight",
    "fuse_conv_bn_weights",
    "fuse_linear_bn_weights",
]


def is_spatially_uniform(scale: torch.Tensor) -> bool:
    """Whether a scale of shape ``()``, ``(C, 1, …)`` or ``(F,)`` is constant within each channel."""
    return scale.dim() <= 1 or all(s == 1 for s in scale.shape[1:])


def channel_vector(scale: torch.Tensor, channels: int) -> torch.Tensor:
    """A layer/channel scale as one factor per channel, shape ``(C,)``."""
    return scale.reshape(-1).expand(channels) if scale.numel() == 1 else scale.reshape(channels)


def scale_input_channels(weight: torch.Tensor, scale: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv weight for input ``scale ⊙ x``: ``W'[o, j] = W[o, j] · a[g(o)·C/g + j]``.

    Conv weight is ``[O, C/g, *k]``; output channel ``o`` reads input channels of its
    own group ``g(o) = o // (O/g)``. Exact with zero padding (padded zeros stay zero)
    and with reflect/replicate/circular padding (padding copies within a channel).
    """
    out_ch, in_per_group = weight.shape[:2]
    a = channel_vector(scale, in_per_group * groups).to(weight.dtype)
    per_output = a.reshape(groups, 1, in_per_group).expand(groups, out_ch // groups, in_per_group)
    return weight * per_output.reshape(out_ch, in_per_group, *([1] * (weight.dim() - 2)))


def scale_transposed_input_channels(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Transposed-conv weight for input ``scale ⊙ x``: ``W'[c] = W[c] · a[c]``.

    A transposed conv's weight is ``[C, O/g, *k]``: input channel ``c`` is its first dim,
    whatever the groups, and each input element spreads ``a[c] · x`` over its outputs.
    """
    a = channel_vector(scale, weight.shape[0]).to(weight.dtype)
    return weight * a.reshape(-1, *([1] * (weight.dim() - 1)))


def scale_linear_columns(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Linear weight ``[O, F]`` for input ``scale ⊙ x``: column ``f`` times ``a[f]``."""
    return weight * scale.reshape(-1).to(weight.dtype).expand(weight.shape[1])


def unshared_conv_weight(
    weight: torch.Tensor,
    scale: torch.Tensor,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Per-position kernels of ``conv_W(a ⊙ x)`` for an element-wise ``a`` of shape ``(C, H, W)``.

    ``W'_p[o, c, k] = W[o, c, k] · a[c, p·stride + k·dilation − padding]``: the kernel
    that output position ``p`` applies sees the amplitudes under its receptive field.
    Unfolding ``a`` with the conv's geometry gathers exactly those amplitudes (zeros
    at padded positions, where the input is zero anyway).

    Returns:
        ``[L, g, O/g, C/g·kh·kw]`` with ``L = H_out·W_out``, the layout of `UnsharedConv2d`.
    """
    out_ch, in_per_group, kh, kw = weight.shape
    patches = F.unfold(scale.unsqueeze(0).to(weight.dtype), (kh, kw), dilation=dilation,
                       padding=padding, stride=stride)[0]  # [C·kh·kw, L]
    patches = patches.reshape(groups, in_per_group * kh * kw, -1)
    w = weight.reshape(groups, out_ch // groups, in_per_group * kh * kw)
    return torch.einsum("goj,gjl->lgoj", w, patches).contiguous()
