"""Shapes on the nodes of a deploy graph, from one run of an example input."""

from __future__ import annotations

import contextlib
import io
import re

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UnsupportedPatternError
from .frameworks import reset

__all__ = ["propagate_shapes"]


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor) -> None:
    """Record ``meta['tensor_meta']`` on every node by running ``example_input`` once.

    Runs in eval mode without gradients so BatchNorm statistics do not move, then
    restores each module's training flag and resets neuron state.
    """
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    reset(gm)
    try:
        # ShapeProp prints the traceback of a failing node itself; the error below says it all.
        with contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(example_input)
    except Exception as e:
        cause = e.__cause__ or e
        where = re.search(r"node=%(\w+)", str(e))
        raise UnsupportedPatternError(
            where.group(1) if where else "example_input",
            f"running example_input of shape {tuple(example_input.shape)} through the model failed here "
            f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no message'})",
            "Pass a batch shaped like a training batch: [T, N, ...] for multi-step ('m') models, "
            "[N, ...] for single-step ('s') ones",
        ) from e
    finally:
        for m, training in modes.items():
            m.training = training
        reset(gm)
