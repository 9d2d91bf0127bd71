"""Copying models whose neurons still hold state from a training step, and leaving them as they were."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn as nn

from .frameworks import set_state, state_of

__all__ = ["Snapshot", "copy_model", "detached_state_memo", "left_as_is", "restore", "snapshot"]

Snapshot = list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]

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


def snapshot(model: nn.Module) -> Snapshot:
    """Each module's framework state (`state_of`: SpikingJelly's ``_memories``, snnTorch's ``mem``) and
    attributes (``training``, ``v_seq``, what a ``forward`` stores): the objects themselves, not copies,
    so that `restore` gives the user's live state back as it was, autograd history included."""
    return [(m, state_of(m), dict(vars(m))) for m in model.modules()]


def restore(saved: Snapshot) -> None:
    """Put back what `snapshot` saw; attributes added since are removed.

    The parameter, buffer and submodule dicts are the same objects, so their contents are
    not rolled back: a pass that changes weights must work on a copy.
    """
    for m, state, attributes in saved:
        if state:
            set_state(m, state)
        current = vars(m)
        for key in current.keys() - attributes.keys():
            del current[key]
        current.update(attributes)


@contextmanager
def left_as_is(model: nn.Module) -> Iterator[None]:
    """Run the body (which may reset, run or trace ``model``), then give ``model`` its state and attributes back."""
    saved = snapshot(model)
    try:
        yield
    finally:
        restore(saved)
