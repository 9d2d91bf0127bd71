"""`lower_for_stream`: the deploy graph of one time step, the neurons' membranes as inputs and outputs.

An unrolled export (`sj_realspike.lowering`) takes the whole sequence ``[T, N, …]``;
the stream graph takes one step ``x_t`` (``[N, …]``) and one membrane per neuron, and
returns the step's output and the next membranes, so a runtime keeps the state between
calls (a camera, a microphone) and ``T`` is whatever the stream is long.

* single-step (``'s'``) models already are step functions: each neuron call becomes
  the lowered neuron's one-step form ``(x, v) → (spikes, v')``.
* multi-step (``'m'``) models run on ``[1, N, …]`` (``x_t`` unsqueezed in the graph);
  an output ``[1, N, …]`` is squeezed to ``[N, …]``, so per-step outputs are stacked
  along a new time dim, others (``[T·N, …]``) are joined along dim 0. That is the
  unrolled graph only if nothing but the neurons carries information across time
  steps (no mean over ``T`` in ``forward``): `stepwise_mismatch` runs the model both
  ways first and the export is refused, naming the first node that differs.

Membranes start at `LoweredNeuron.rest` (``v_r`` for a hard reset, 0 for a soft
one); from there each step runs the ops of one step of the unrolled neuron, so the
stream equals the unrolled graph bit for bit. A neuron called at several places of one
step carries its membrane from call to call, as SpikingJelly's module does.

Refused, with the node named: models whose ``forward`` makes time itself (an image
repeated ``T`` times inside, a Python loop over the steps) and graphs specialized to
one ``T``: they have no per-step graph; neurons without a lowering and other modules
that keep state between steps (``SynapseFilter``, recurrent containers): their state
lives inside SpikingJelly's module, where a stream graph cannot carry it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .errors import UnsupportedPatternError
from .frameworks import is_neuron, reset, state_of
from .layout import InputLayout
from .lowered import LoweredNeuron, LoweredRecurrence
from .lowering import lower_for_export
from .neurons import step_mode_of
from .state import copy_model
from .tracing import propagate_shapes

__all__ = ["STATE_IN", "STATE_OUT", "StreamGraph", "StreamState", "lower_for_stream", "stepwise_mismatch"]

STATE_IN, STATE_OUT = "state_in.", "state_out."
_CHECK_STEPS, _CHECK_BATCH = 3, 2  # the stepwise check runs this many steps of this many samples


@dataclass(frozen=True)
class StreamState:
    """One neuron's membrane ``[N, F]`` (each sample's features flattened) in the stream graph.

    Its input is ``state_in.<name>``, its output ``state_out.<name>``.
    """

    name: str  # the neuron's module path
    initial: float  # what the membrane starts at
    example: torch.Tensor  # the initial membrane for the example batch


@dataclass(frozen=True)
class StreamGraph:
    """The one-step graph: ``module(x_t, *membranes) → (*outputs, *next membranes)``."""

    module: fx.GraphModule
    step_input: torch.Tensor  # an example x_t (batch ≥ 2 unless the batch is fixed)
    states: tuple[StreamState, ...]
    joins: tuple[str, ...]  # per output: "stack" (a new time dim) or "cat" (along dim 0)


def lower_for_stream(model: fx.GraphModule, example_input: torch.Tensor, layout: InputLayout) -> StreamGraph:
    """The deploy graph of one time step, with each neuron's membrane an input and an output.

    Args:
        model: a deploy ``GraphModule`` (from `fold`); not changed.
        example_input: an input sequence ``[T, N, …]`` in ``layout``.
        layout: the model's input layout (`sj_realspike.layout.input_layout_of`).

    Returns:
        A `StreamGraph` whose module takes one step ``[N, …]`` and the membranes.

    Raises:
        UnsupportedPatternError: the model has no per-step graph (it makes time in its
            ``forward``, or its graph is specialized to ``T``), it keeps state outside
            lowered neurons, or (multi-step) a node mixes time steps.
    """
    mode = step_mode_of(model)
    _refuse_layout(model, layout, mode)
    batch_dim = layout.batch_dim - 1  # of one step
    fixed_batch = layout.batch_dim in layout.fixed
    x_t = example_input[0]
    if not fixed_batch and x_t.shape[batch_dim] == 1:  # batch 1 would be specialized by the exporter
        x_t = torch.cat([x_t, x_t], dim=batch_dim)
    if mode == "m":
        problem = stepwise_mismatch(model, _check_input(example_input, layout, fixed_batch))
        if problem is not None:
            node, reason = problem
            raise UnsupportedPatternError(
                node, f"{reason}, so the model does not compute one time step at a time what it computes on the "
                "whole sequence (it carries information across steps outside its neurons, e.g. a mean over T)",
                "Export it unrolled (stream=False), or move the read-out across time out of forward")
    # Lowered as a sequence of one step [1, N, …] (single-step models: flattened to [N, …] inside).
    gm = lower_for_export(model, x_t.unsqueeze(0), per_step=layout.per_step)
    neurons = {name: m for name, m in gm.named_modules() if isinstance(m, LoweredNeuron)}
    _refuse_state_outside_neurons(gm, neurons, model)
    shapes = _membrane_shapes(gm, x_t.unsqueeze(0), mode, batch_dim + 1, fixed_batch)
    joins = _rewrite(gm, neurons)
    states = tuple(StreamState(name, neurons[name].rest, torch.full(shape, neurons[name].rest))
                   for name, shape in shapes.items())
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return StreamGraph(gm, x_t, states, joins)


def _refuse_layout(model: nn.Module, layout: InputLayout, mode: str) -> None:
    name = type(model).__name__
    if layout.dims[:1] != ("T",):
        raise UnsupportedPatternError(
            name, f"the model takes [{layout.name}] and makes time inside its forward (e.g. an image repeated T "
            "times), so it has no per-step graph to stream",
            "Export it unrolled (stream=False), or export the part after the repeat as its own model")
    if mode == "s" and not layout.per_step:
        raise UnsupportedPatternError(
            name, "its forward loops over the time steps itself (single-step neurons called once per step by the "
            "model's own loop), so one call is the whole sequence, not one step",
            "Export it unrolled (stream=False), or export the loop's body (one step) as its own model")
    if 0 in layout.fixed:
        raise UnsupportedPatternError(
            name, f"the deploy graph is specialized to T={layout.fixed[0]} (its forward depends on the number of "
            "steps, e.g. a loop over x.shape[0])", "Export it unrolled (stream=False)")


def _refuse_state_outside_neurons(gm: fx.GraphModule, lowered: dict[str, nn.Module], model: nn.Module) -> None:
    """Neurons without a one-step lowering and other stateful modules: their state cannot be carried.

    ``model`` is the deploy model ``gm`` was lowered from (messages name its modules' classes).
    """
    for name, m in gm.named_modules():
        if name in lowered:
            continue
        if isinstance(m, LoweredRecurrence):
            source = type(dict(model.named_modules()).get(name, m)).__name__  # the deploy model's neuron
            raise UnsupportedPatternError(
                name, f"{source} is lowered with its recurrence inside one module, so a stream graph would "
                "start it from rest at every step: only the lowered IF/LIF/PLIF neurons (and ternary twins) carry "
                "their membrane as an input and an output", "Export it unrolled (stream=False)")
        memories = sorted(state_of(m))
        if is_neuron(m):
            what = "has no one-step form (the membrane as an input and an output)" \
                if type(m).__module__.startswith("sj_realspike.") else "has no export lowering"
            raise UnsupportedPatternError(
                name, f"{type(m).__name__} {what}, and a stream graph carries each neuron's membrane as an input and "
                "an output, which only the lowered IF/LIF/PLIF neurons (and ternary twins) expose",
                "Export it unrolled (stream=False), which runs the neuron through its whole sequence")
        if memories:
            raise UnsupportedPatternError(
                name, f"{type(m).__name__} keeps state between time steps ({', '.join(memories)}), which a stream "
                "graph cannot carry (only lowered neurons' membranes are inputs and outputs)",
                "Export it unrolled (stream=False)")


def _membrane_shapes(gm: fx.GraphModule, x: torch.Tensor, mode: str, batch_dim: int,
                     fixed_batch: bool) -> dict[str, tuple[int, int]]:
    """Each lowered neuron's membrane ``[N, F]`` for the one-step sequence ``x``: ``(N, F)``.

    The neuron's input must have its batch first (after the time dim of a multi-step
    model): the dim that grows with a second, larger batch.
    """
    first = 1 if mode == "m" else 0  # 'm': the neuron's input is [1, N, …]

    def shapes(xs: torch.Tensor) -> dict[str, tuple[int, ...]]:
        propagate_shapes(gm, xs)
        modules = dict(gm.named_modules())
        found = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(modules[node.target], LoweredNeuron):
                if len(node.args) != 1 or node.kwargs:
                    raise UnsupportedPatternError(node.name, f"neuron '{node.target}' is called with "
                                                  f"{len(node.args)} arguments", "Call neurons on one tensor")
                found.setdefault(node.target, tuple(node.args[0].meta["tensor_meta"].shape))
        return found

    bigger = None if fixed_batch else shapes(torch.cat([x, x.narrow(batch_dim, 0, 1)], dim=batch_dim))
    base = shapes(x)  # last, so that the graph's shape metadata is the example's
    result = {}
    for name, shape in base.items():
        moved = [i for i, (a, b) in enumerate(zip(shape, bigger[name], strict=True)) if a != b] if bigger else [first]
        if moved != [first]:
            raise UnsupportedPatternError(
                name, f"the neuron's input {list(shape)} does not have the batch at dim {first} (dims that follow "
                f"the batch size: {moved}), so its membrane cannot be one [N, F] state per sample",
                "Export it unrolled (stream=False)")
        result[name] = (shape[first], math.prod(shape[first + 1:]))
    return result


def _rewrite(gm: fx.GraphModule, neurons: dict[str, nn.Module]) -> tuple[str, ...]:
    """Take one step ``[N, …]`` and the membranes; thread each membrane through its neuron's calls.

    The graph then returns its outputs (``[1, …]`` squeezed) and the last membranes.
    Returns how each output joins over steps.
    """
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedPatternError(gm.__class__.__name__, f"the model takes {len(placeholders)} inputs",
                                      "Export models with a single input tensor")
    x = placeholders[0]
    with graph.inserting_after(x):  # the lowered graph runs on a sequence of one step
        x1 = graph.call_function(torch.unsqueeze, (x, 0))
    x.replace_all_uses_with(x1, delete_user_cb=lambda user: user is not x1)
    current: dict[str, fx.Node] = {}
    last_input = x
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in neurons:
            continue
        if node.target not in current:
            with graph.inserting_after(last_input):
                last_input = current[node.target] = graph.placeholder(f"state_{len(current)}")
        with graph.inserting_after(node):
            step = graph.call_module(node.target, (node.args[0], current[node.target]))
        with graph.inserting_after(step):
            spikes = graph.call_function(operator.getitem, (step, 0))
        with graph.inserting_after(spikes):
            current[node.target] = graph.call_function(operator.getitem, (step, 1))
        step.meta = dict(node.meta)  # the module stack, which the exporter turns into ONNX scopes
        node.replace_all_uses_with(spikes)
        graph.erase_node(node)
    out = next(n for n in graph.nodes if n.op == "output")
    leaves, _ = pytree.tree_flatten(out.args[0])
    outputs, joins = [], []
    for leaf in leaves:
        if leaf is None:  # ONNX drops None outputs, as the unrolled graph does
            continue
        if not isinstance(leaf, fx.Node):
            raise UnsupportedPatternError("output", f"the model returns a constant ({type(leaf).__name__})",
                                          "Return tensors only")
        if tuple(leaf.meta["tensor_meta"].shape[:1]) == (1,):  # [1, N, …]: this step's output
            with graph.inserting_before(out):
                leaf = graph.call_function(torch.squeeze, (leaf, 0))
            joins.append("stack")
        else:  # [N, …] of a multi-step model that flattens time into the batch
            joins.append("cat")
        outputs.append(leaf)
    out.args = (tuple(outputs) + tuple(current.values()),)
    return tuple(joins)


def _check_input(x: torch.Tensor, layout: InputLayout, fixed_batch: bool) -> torch.Tensor:
    """Seeded noise in ``x``'s range, a few steps and samples shaped like it: what `stepwise_mismatch` runs.

    Not ``x`` itself: an input constant in time (zeros) would hide a mean over ``T``.
    """
    shape = list(x.shape)
    shape[0] = _CHECK_STEPS
    if not fixed_batch:
        shape[layout.batch_dim] = min(shape[layout.batch_dim], _CHECK_BATCH)
    scale = float(x.abs().max()) if x.numel() else 1.0
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return noise * (scale if 0 < scale < float("inf") else 1.0)


@torch.no_grad()
def stepwise_mismatch(model: fx.GraphModule, x: torch.Tensor) -> tuple[str, str] | None:
    """The first node of a multi-step model whose values differ when it runs one step at a time.

    Runs a float64 copy (rounding then cannot flip a spike at the threshold, for any
    realistic weights) on ``x`` (``[T, N, …]``) from reset state, and again step by
    step (``x[t:t+1]``, neurons keeping their state between calls). Every node that
    depends on the input must give, joined along dim 0 over the steps, what it gives on
    the whole sequence: comparing nodes, not only outputs, also finds a node that mixes
    time steps on an input where the neurons after it happen to stay silent.

    Returns:
        ``None`` (no node differs), or ``(node name, what differs)``.
    """
    ref = _float64_copy(model)
    ref.eval()
    xd = x.to(torch.float64)
    records: list[dict[fx.Node, object]] = []

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            records[-1][n] = result = super().run_node(n)
            return result

    def run(xs: torch.Tensor) -> None:
        records.append({})
        Recorder(ref).run(xs)

    reset(ref)
    try:
        run(xd)
        reset(ref)
        for t in range(xd.shape[0]):
            run(xd[t:t + 1])
    except Exception as e:  # the model's own code fails on [1, N, …] (or in float64)
        first = str(e).strip().split("\n")[0]
        return "example_input", f"the model fails on one step at a time ([1, N, …]: {type(e).__name__}: {first})"
    finally:
        reset(ref)
    whole, steps = records[0], records[1:]
    depends: set[fx.Node] = set()
    for node in ref.graph.nodes:
        if node.op == "placeholder" or depends & set(node.all_input_nodes):
            depends.add(node)
        if node.op in ("placeholder", "output") or node not in depends:
            continue
        if not _same_joined(whole[node], [s[node] for s in steps]):
            what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            return node.name, f"its output ({node.op} {what}) differs between the whole sequence and one step at a time"
    return None


def _same_joined(whole: object, steps: list[object]) -> bool:
    """Whether the tensors of ``steps`` joined along dim 0 are ``whole``'s (non-tensors are not compared)."""
    whole_leaves = pytree.tree_leaves(whole)
    step_leaves = [pytree.tree_leaves(s) for s in steps]
    if any(len(s) != len(whole_leaves) for s in step_leaves):
        return False
    for i, w in enumerate(whole_leaves):
        if not isinstance(w, torch.Tensor):
            continue
        parts = [s[i] for s in step_leaves]
        if not all(isinstance(p, torch.Tensor) and p.dim() == w.dim() and p.dim() > 0 for p in parts):
            return False
        joined = torch.cat(parts, 0) if w.dim() else None
        if joined is None or joined.shape != w.shape:
            return False
        if w.is_floating_point():
            scale = float(w.abs().nan_to_num(0.0, 0.0, 0.0).max()) if w.numel() else 0.0
            if not torch.allclose(joined, w, rtol=1e-9, atol=1e-9 * max(scale, 1.0), equal_nan=True):
                return False
        elif not torch.equal(joined, w):
            return False
    return True


def _float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy: parameters, buffers and tensor attributes (fx constants)."""
    ref = copy_model(model).double()
    for m in ref.modules():
        for key, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not isinstance(value, nn.Parameter):
                setattr(m, key, value.double())
    return ref
