"""`check_per_sample`: does a single-step graph compute each sample of the batch on its own?

Single-step models are exported on the time-flattened batch ``[T·N, …]`` (one graph run
computes all ``T`` steps of every non-neuron op), which is exact only when no op mixes
samples. SpikingJelly code written for ``[T, N, …]`` and switched to single-step mode can
break that silently: Spikformer's ``x.flatten(0, 1)`` then merges the batch with the
channels, and a batch-statistic (``x.mean(0)``) mixes samples outright. The check runs
the graph for two steps from reset on the example batch alone and with other samples
appended; every output row of the example's samples must come out the same.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .errors import UnsupportedPatternError
from .frameworks import framework_of


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping each node's tensor value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and n.op not in ("placeholder", "get_attr", "output"):
            self.values[n.name] = out.detach().clone()
        return out


def _run(gm: fx.GraphModule, steps: list[torch.Tensor], reset) -> tuple[list[list[torch.Tensor]], list[dict]]:
    reset(gm)
    outs, values = [], []
    with torch.no_grad():
        for x in steps:
            rec = _Recorder(gm)
            outs.append(_tensors(rec.run(x)))
            values.append(rec.values)
    reset(gm)
    return outs, values


def _differs(alone: torch.Tensor, joined: torch.Tensor) -> bool:
    """Whether ``joined`` (the batch doubled) does not start with ``alone``'s rows.

    Leading rows, not samples: a per-sample graph that ends in ``flatten(0, 1)`` returns
    the example's ``N·C`` rows first too.
    """
    if alone.dim() == 0 or joined.shape[0] != 2 * alone.shape[0] or joined.shape[1:] != alone.shape[1:]:
        return True
    return not torch.allclose(joined[:alone.shape[0]], alone, rtol=1e-4, atol=1e-5, equal_nan=True)


def check_per_sample(gm: fx.GraphModule, sequence: torch.Tensor, reset) -> None:
    """Raise if the single-step graph ``gm`` lets samples of one batch influence each other.

    Args:
        gm: a single-step deploy graph (one call: ``[N, …]``), eval mode.
        sequence: the example sequence ``[T, N, …]``.
        reset: resets ``gm``'s state in place.

    Raises:
        UnsupportedPatternError: naming the first node whose values for the example's
            samples change when other samples share the batch (or the model if only
            its output shows it).
    """
    steps = [sequence[t] for t in range(min(2, sequence.shape[0]))]
    n = int(steps[0].shape[0])
    others = [x.flip(0) * 0.5 + 0.25 for x in steps]
    alone, alone_values = _run(gm, steps, reset)
    joined, joined_values = _run(gm, [torch.cat([x, o]) for x, o in zip(steps, others)], reset)
    if all(not _differs(a, j) for out_a, out_j in zip(alone, joined) for a, j in zip(out_a, out_j)):
        return
    culprit = gm.__class__.__name__
    for node in gm.graph.nodes:  # the first node whose batch rows for the example's samples changed
        if any(node.name in va and node.name in vj and va[node.name].dim() > 0
               and va[node.name].shape[0] == n and _differs(va[node.name], vj[node.name])
               for va, vj in zip(alone_values, joined_values)):
            culprit = node.name
            break
    adapter = framework_of(gm)
    switch = adapter.multi_step_remedy() if adapter is not None else None
    raise UnsupportedPatternError(
        culprit, "the single-step graph does not compute each sample of the batch on its own (the example's "
        "outputs change when other samples share its batch), so it cannot be exported on the time-flattened "
        "batch [T*N, ...]: a model written for [T, N, ...] input (e.g. x.flatten(0, 1)) run in single-step mode",
        f"Switch the network to multi-step mode ({switch}) before convert_model" if switch else
        "Write the model's forward for one time step's input [N, ...], which export runs on [T*N, ...]")
