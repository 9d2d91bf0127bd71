"""How a model takes its input: the layout export, verify and the runner agree on.

Three kinds of model reach export:

* multi-step models take the whole sequence ``[T, N, …]`` in one call;
* single-step models take one step ``[N, …]`` per call: export and verify step them over
  the leading ``T`` of a sequence ``[T, N, …]`` (the exported graph takes that sequence);
* models whose ``forward`` makes time itself — an ``[N, C, H, W]`` image repeated ``T``
  times inside, or a Python loop over single-step modules — take one call's input in the
  layout recorded at conversion (``input_layout``, e.g. ``"N,C,H,W"``), batch wherever
  ``N`` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .neurons import step_mode_of
from .report import record_of

__all__ = ["InputLayout", "input_layout_of", "sequence_layout", "stack_steps"]

_NAMES = {3: "T,N,F", 4: "T,N,C,L", 5: "T,N,C,H,W", 6: "T,N,C,D,H,W"}


@dataclass(frozen=True)
class InputLayout:
    """What each dim of the exported graph's input is.

    Attributes:
        dims: one name per dim of the exported input (``"T"`` time, ``"N"`` batch).
        per_step: the model is a step function: export/verify call it once per step of ``T``.
        fixed: input dims the deploy graph is specialized to, ``{dim: size}`` (from fold).
    """

    dims: tuple[str, ...]
    per_step: bool
    fixed: dict[int, int]

    @property
    def batch_dim(self) -> int:
        return self.dims.index("N")

    @property
    def name(self) -> str:
        return ",".join(self.dims)

    def time_steps(self, x: torch.Tensor) -> str:
        """``T`` of an input as the metadata records it (``"in forward"`` when the model makes time)."""
        return str(x.shape[self.dims.index("T")]) if "T" in self.dims else "in forward"

    def check(self, x: torch.Tensor, recorded: tuple[int, ...] | None) -> None:
        """Raise ``ValueError`` unless ``x`` fits: rank, the recorded non-batch/time sizes, the fixed dims."""
        if x.dim() != len(self.dims):
            raise ValueError(f"the input has shape {tuple(x.shape)}, but this model takes [{self.name}] "
                             f"({len(self.dims)} dims)")
        if recorded is not None:
            per_call = list(self.dims[1:]) if self.per_step else list(self.dims)
            sizes = dict(zip(per_call, recorded, strict=False))
            offset = 1 if self.per_step else 0
            for i, name in enumerate(per_call):
                if name not in ("T", "N") and x.shape[i + offset] != sizes[name]:
                    raise ValueError(
                        f"the input has shape {tuple(x.shape)}, but the model was converted for "
                        f"{tuple(recorded)} ([{','.join(per_call)}]): dim {i + offset} ({name}) must be "
                        f"{sizes[name]}" + (" (pass the whole time sequence [T, N, ...])" if self.per_step else ""))
        for dim, size in self.fixed.items():
            if x.shape[dim] != size:
                raise ValueError(
                    f"the input has {x.shape[dim]} at dim {dim} ({self.dims[dim]}), but the deploy graph was "
                    f"captured for {size} there (the model's forward depends on that size, e.g. a loop over "
                    f"x.shape[{dim}]): pass inputs of that size, or fold again with such an example_input")


def input_layout_of(model: nn.Module, x: torch.Tensor) -> InputLayout:
    """The layout of ``model``'s exported input, for an input ``x`` given in it.

    Uses what `convert_model` and `fold` recorded; a plain network (nothing recorded)
    is taken as ``[T, N, …]``, stepped over ``T`` when its neurons are single-step.
    """
    record = record_of(model)
    mode = step_mode_of(model)
    fixed = {int(k): int(v) for k, v in (record.get("fixed_input_dims") or {}).items()}
    per_step = mode == "s" and not record.get("sequence_per_call", False)
    recorded = record.get("input_layout")
    if per_step:
        per_call = recorded.split(",") if recorded else sequence_layout(x.dim()).split(",")[1:]
        dims = ("T", *per_call)
        return InputLayout(dims, True, {d + 1: s for d, s in fixed.items()})
    if recorded:
        return InputLayout(tuple(recorded.split(",")), False, fixed)
    return InputLayout(tuple(sequence_layout(x.dim()).split(",")), False, fixed)


def sequence_layout(rank: int) -> str:
    """The default layout of a rank-``rank`` sequence ``[T, N, …]``, e.g. ``"T,N,C,H,W"``."""
    return _NAMES.get(rank, ",".join(["T", "N"] + [f"D{i}" for i in range(rank - 2)]))


def stack_steps(outputs: list[Any]) -> Any:
    """The per-step outputs of a single-step model stacked along a new first (time) dim.

    A step that returns several values (snnTorch's ``(spk, mem)``) gives the same structure
    with each item stacked; ``None`` items stay ``None``.
    """
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs)
    if isinstance(first, (tuple, list)):
        return type(first)(stack_steps([o[i] for o in outputs]) for i in range(len(first)))
    return first
