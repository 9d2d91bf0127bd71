"""Tracing SpikingJelly networks into fx graphs with shapes attached."""

from __future__ import annotations

import contextlib
import io
import re

import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import base, functional
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UnsupportedPatternError

__all__ = ["StepModuleTracer", "trace", "propagate_shapes"]


class StepModuleTracer(fx.Tracer):
    """Keeps every SpikingJelly ``StepModule`` (neurons, ``layer.*``, containers) a leaf.

    Their forward methods branch on the step mode and reshape by runtime shape,
    which fx proxies cannot follow; as leaves they stay the user's own modules.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, base.StepModule) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with `StepModuleTracer` (no copy is made)."""
    tracer = StepModuleTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types; turn them into one actionable message
        raise UnsupportedPatternError(
            type(model).__name__,
            f"torch.fx could not trace the model ({type(e).__name__}: {e})",
            "Data-dependent Python control flow in forward() cannot be traced; move it into a "
            "leaf module (any spikingjelly StepModule is kept whole) or make it static.",
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor) -> None:
    """Record ``meta['tensor_meta']`` on every node by running ``example_input`` once.

    Runs in eval mode without gradients so BatchNorm statistics do not move, then
    restores each module's training flag and resets neuron state.
    """
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    functional.reset_net(gm)
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
        functional.reset_net(gm)
