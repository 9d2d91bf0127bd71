"""Copying models whose neurons still hold state from a training step."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
import torch.nn as nn

from .frameworks import state_of

__all__ = ["copy_model", "detached_state_memo"]

M = TypeVar("M", bound=nn.Module)


def detached_state_memo(model: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo replacing every state tensor that has a history by a detached copy.

    After a forward pass with gradients a neuron's membrane is a non-leaf tensor, which
    ``deepcopy`` refuses; it may sit in the framework's state (SpikingJelly's
    ``_memories``), in the module's ``__dict__`` (``v_seq``) or among its buffers (snnTorch
    keeps ``mem`` there). Only tensors with a history are replaced, so everything else is
    copied as usual and the user's model is not touched.
    """
    memo: dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            memo[id(value)] = value.detach().clone()
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for m in model.modules():
        for value in [*state_of(m).values(), *vars(m).values(), *m._buffers.values()]:
            visit(value)
    return memo


def copy_model(model: M) -> M:
    """``copy.deepcopy(model)`` that also works right after a forward pass with gradients."""
    return copy.deepcopy(model, detached_state_memo(model))
