"""`lower_for_export`: the deploy graph with export-friendly neurons and synapses.

An export-time pass (the deploy model itself stays SpikingJelly's): every IF/LIF/PLIF
neuron and ternary twin becomes a `LoweredNeuron`, every `UnsharedConv2d` a
`LoweredUnsharedConv2d`, every `DiagonalSynapse` a `LoweredDiagonalSynapse` (see
`sj_realspike.lowered` for the op sequences and why).

Step modes. The ONNX graph is stateless, so it always takes the whole sequence
``[T, N, …]`` with a static ``T``:

* multi-step (``'m'``) models already do; their neurons get ``[T, N, …]``.
* single-step (``'s'``) models are run on the time-flattened batch ``[T·N, …]``:
  every non-neuron op of a single-step model acts on each sample on its own, so it
  computes all ``T`` steps at once, and each neuron views its input as ``[T, N·…]``
  to run the recurrence. The lowered graph flattens the input and unflattens the
  output (``[T, N, …]``, the stacked per-step outputs).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import UnsupportedPatternError
from .fold import constant_factors_on_spikes
from .frameworks import adapters, neuron_adapter, reset, state_of, step_output
from .lowered import LoweredDiagonalSynapse, LoweredUnsharedConv2d
from .neurons import is_neuron, step_mode_of
from .ops import scalar_factor
from .report import META_KEY
from .samples import check_per_sample
from .state import copy_model
from .synapses import DiagonalSynapse, UnsharedConv2d
from .tracing import propagate_shapes

__all__ = ["lower_for_export"]

logger = logging.getLogger(__name__)


def lower_for_export(model: fx.GraphModule, example_input: torch.Tensor, *,
                     inplace: bool = False, per_step: bool | None = None) -> fx.GraphModule:
    """The deploy graph rewritten for ``torch.onnx.export``; same function of the input sequence.

    Args:
        model: a deploy ``GraphModule`` (from `fold`).
        example_input: the whole input sequence ``[T, N, …]``, in both step modes;
            used once to record shapes (and ``T`` for single-step models).
        inplace: rewrite ``model`` itself instead of a deep copy.
        per_step: one call of ``model`` is one time step (default: its neurons are
            single-step). ``False`` for a single-step model whose ``forward`` loops over
            time itself: its neurons then keep SpikingJelly's forward, called once per step
            by the model, and ``example_input`` is one call's input.

    Returns:
        An eval-mode ``GraphModule`` taking ``[T, N, …]`` and returning what the deploy
        model returns for the sequence (single-step models: the per-step outputs stacked).
        Neurons without a lowering are kept (multi-step only) and logged.

    Raises:
        UnsupportedPatternError: mixed step modes, a single-step neuron that has no lowering,
            or a constant factor on spikes before a synapse that fold could not absorb (the
            synapse would not receive spikes).
    """
    gm = model if inplace else copy_model(model)
    gm.eval()
    reset(gm)
    mode = step_mode_of(gm)
    if unfolded := constant_factors_on_spikes(gm):
        neuron, factor = unfolded[0]
        raise UnsupportedPatternError(
            factor.name, f"multiplies the spikes of '{neuron.target}' by {scalar_factor(factor):g} on their way "
            "into a synapse, and fold could not move the factor into the synapse's weights exactly (e.g. a "
            "negative factor before max pooling), so the exported graph would not be binary/ternary",
            "Apply the factor after the pooling or to the synapse's weights, or keep it non-negative")
    per_step = mode == "s" if per_step is None else per_step
    steps = int(example_input.shape[0])
    if mode == "s" and per_step:
        check_per_sample(gm, example_input, reset)
    propagate_shapes(gm, example_input[0] if per_step else example_input)
    modules = dict(gm.named_modules())
    replaced: dict[str, nn.Module] = {}
    kept: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in replaced:
            continue
        m = modules[node.target]
        new: nn.Module | None = None
        if is_neuron(m):
            adapter = neuron_adapter(m)  # each framework lowers its own neurons
            reason = adapter.lowering_problem(m)
            if mode == "s" and not per_step:  # called once per step by the model's own time loop
                new = adapter.lower_step(m)
                if new is None and node.target not in kept:
                    kept.append(node.target)
            elif reason is None:
                new = adapter.lower(m, steps if mode == "s" else None)
            elif mode == "s":
                raise UnsupportedPatternError(
                    node.target, f"single-step neuron without an export lowering: {reason}",
                    adapter.lowering_remedy(m))
            elif node.target not in kept:
                kept.append(node.target)
                logger.warning("neuron '%s' kept as %s's %s (%s); exported through its own forward, which is "
                               "correct but slower", node.target, adapter.name, type(m).__name__, reason)
        elif isinstance(m, UnsharedConv2d):
            new = LoweredUnsharedConv2d(m)
        elif isinstance(m, DiagonalSynapse):
            batch_dims = 2 if getattr(m, "step_mode", "s") == "m" else 1
            new = LoweredDiagonalSynapse(m, tuple(node.args[0].meta["tensor_meta"].shape[batch_dims:]))
        if new is not None:
            replaced[node.target] = new.to(_device_of(m))
            _set_module(gm, node.target, replaced[node.target])
    if per_step:
        _refuse_state_left(gm, modules, replaced)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in replaced:
            _record_module_class(node, type(replaced[node.target]))
    for adapter in adapters():
        adapter.rewrite_lowered(gm)
    if per_step:
        _flatten_time(gm, steps)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.eval()
    gm.meta[META_KEY] = {**gm.meta.get(META_KEY, {}), "stage": "lowered", "step_mode": mode,
                         "time_steps": steps if per_step or mode == "m" else None, "kept_neurons": kept}
    return gm


def _refuse_state_left(gm: fx.GraphModule, modules: dict[str, nn.Module], replaced: dict[str, nn.Module]) -> None:
    """Refuse a stateful module that a single-step graph run on ``[T·N, …]`` would run once for all steps.

    Lowered neurons run the recurrence over ``T`` themselves; any other module that keeps
    state between calls (SpikingJelly's recurrent containers, a neuron inside one, a
    ``SynapseFilter``) would see the ``T`` steps as one batch, from a fresh state, and the
    graph would compute something else than the model stepped over time.
    """
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in replaced:
            continue
        memories = sorted({key for sub in modules[node.target].modules() for key in state_of(sub)})
        if memories:
            raise UnsupportedPatternError(
                node.target, f"{type(modules[node.target]).__name__} keeps state between time steps "
                f"({', '.join(memories)}), and this single-step model is exported on the time-flattened sequence "
                "[T*N, ...], where it would run once, from a fresh state, for all steps",
                "Keep it out of the exported network, or export a multi-step version of the model, in which it "
                "runs over T itself")


def _flatten_time(gm: fx.GraphModule, steps: int) -> None:
    """Feed ``[T, N, …]`` as ``[T·N, …]`` to a single-step graph; unflatten its outputs.

    Further arguments with defaults keep them (a Norse model's ``state=None``: a fresh
    state; the lowered neurons run the recurrence over ``T`` themselves); the output is the
    step's output without the state it returns (`step_output`).
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders or any(not p.args for p in placeholders[1:]):
        raise UnsupportedPatternError(
            gm.__class__.__name__, f"the model takes {len(placeholders)} inputs",
            "Export models with a single input tensor")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (step_output(gm, out.args[0]),)
    for p in placeholders[1:]:
        for user in list(p.users):
            user.args = fx.node.map_arg(user.args, lambda n, p=p: p.args[0] if n is p else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n, p=p: p.args[0] if n is p else n)
        gm.graph.erase_node(p)
    gm.graph.eliminate_dead_code()
    x = placeholders[0]
    with gm.graph.inserting_after(x):
        flat = gm.graph.call_function(torch.flatten, (x, 0, 1))
    x.replace_all_uses_with(flat, delete_user_cb=lambda user: user is not flat)
    with gm.graph.inserting_before(out):
        new_args = fx.node.map_arg(out.args, lambda n: gm.graph.call_function(torch.unflatten, (n, 0, (steps, -1))))
    out.args = new_args


def _record_module_class(node: fx.Node, cls: type) -> None:
    """Name the new class in the node's module stack, which the ONNX exporter copies into node metadata."""
    stack = OrderedDict(node.meta.get("nn_module_stack") or {node.target: (node.target, cls)})
    key = next(reversed(stack))
    stack[key] = (stack[key][0], cls)
    node.meta["nn_module_stack"] = stack


def _device_of(m: nn.Module) -> torch.device:
    t = next(iter(m.parameters()), None)
    if t is None:
        t = next(iter(m.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
