"""Copying SpikingJelly models whose neurons still hold state from a training step."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn as nn

__all__ = ["copy_model"]

M = TypeVar("M", bound=nn.Module)


def copy_model(model: M) -> M:
    """``copy.deepcopy(model)`` that also works right after a forward pass with gradients.

    A neuron's membrane (``v``, ``v_seq``, …) is then a non-leaf tensor, which
    ``deepcopy`` refuses. Such tensors are copied detached (via the memo), so the
    user's model is not touched.
    """
    memo: dict[int, object] = {}
    for m in model.modules():
        for value in list(getattr(m, "_memories", {}).values()) + list(vars(m).values()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)
