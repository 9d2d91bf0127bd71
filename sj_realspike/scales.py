"""Amplitude scales moved through tensor ops: pure tensor math, no graph.

A scale broadcasts over a tensor's feature dims (trailing alignment): ``()`` for a
layer, ``(C, 1, 1)`` for channels of ``[C, H, W]``, the whole feature shape for
elements. When spikes are permuted, sliced, reduced or multiplied, the scale must
follow exactly; these functions compute the follower, or ``None`` where no scale of
the result can describe it.
"""

from __future__ import annotations

import torch

__all__ = ["compact", "full_rank", "matmul_scale", "permute_scale", "reduce_scale", "slice_scale",
           "uniform_along", "varies_only_along_last"]


def full_rank(scale: torch.Tensor, rank: int) -> torch.Tensor:
    """``scale`` with leading size-1 dims so it has ``rank`` dims (same broadcast)."""
    return scale.reshape((1,) * (rank - scale.dim()) + tuple(scale.shape))


def uniform_along(scale: torch.Tensor, dim: int) -> bool:
    """Whether every slice of ``scale`` along ``dim`` is equal (exactly)."""
    if scale.dim() == 0 or scale.shape[dim] == 1:
        return True
    return bool((scale == scale.narrow(dim, 0, 1)).all())


def compact(scale: torch.Tensor) -> torch.Tensor:
    """The same values with every dim along which they are constant reduced to size 1."""
    for d in range(scale.dim()):
        if scale.shape[d] > 1 and uniform_along(scale, d):
            scale = scale.narrow(d, 0, 1)
    return scale.contiguous()


def varies_only_along_last(scale: torch.Tensor) -> bool:
    """Whether the scale is one factor per entry of the last dim (a Linear's input columns)."""
    return scale.dim() <= 1 or all(s == 1 for s in compact(scale).shape[:-1])


def permute_scale(scale: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The scale of ``x.permute(perm)`` for features ``x`` of rank ``len(perm)``."""
    return full_rank(scale, len(perm)).permute(perm)


def slice_scale(scale: torch.Tensor, rank: int, dim: int, index: slice | int) -> torch.Tensor:
    """The scale of ``x[..., index, ...]`` (``index`` on feature dim ``dim`` of a rank-``rank`` tensor)."""
    s = full_rank(scale, rank)
    if s.shape[dim] == 1:
        return s.squeeze(dim) if isinstance(index, int) else s
    picked = s[(slice(None),) * dim + (index,)]
    return picked


def reduce_scale(scale: torch.Tensor, rank: int, dims: list[int], keepdim: bool) -> torch.Tensor | None:
    """The scale of ``x.mean(dims)`` / ``x.sum(dims)``: only if the scale is constant along ``dims``."""
    s = full_rank(scale, rank)
    if not all(uniform_along(s, d) for d in dims):
        return None
    for d in sorted(dims, reverse=True):
        s = s.narrow(d, 0, 1)
        if not keepdim:
            s = s.squeeze(d)
    return s


def matmul_scale(alpha: torch.Tensor, beta: torch.Tensor, rank: int) -> torch.Tensor | None:
    """The scale of ``(α ⊙ A) @ (β ⊙ B)`` as a scale on ``A @ B``, or ``None``.

    ``Y[i, k] = Σ_j α[i, j] β[j, k] A[i, j] B[j, k]`` (over the last two dims; leading
    dims, e.g. heads, broadcast). The factor comes out of the sum exactly when
    ``α[i, j]·β[j, k]`` does not depend on the contracted index ``j``: then it is
    ``α[i, 0]·β[0, k]``. A scale that depends only on A's row or B's column always
    factors; one on ``j`` only if ``α_j·β_j`` is constant.
    """
    a, b = full_rank(alpha, rank), full_rank(beta, rank)
    product = a.unsqueeze(-1) * b.unsqueeze(-3)  # [..., i, j, k]
    if not uniform_along(product, product.dim() - 2):
        return None
    return compact(product.select(-2, 0))
