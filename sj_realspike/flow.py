"""Following scaled spikes from each amplitude to the synapses that consume them.

Every tensor downstream of an amplitude is tracked as a sum of *terms*
``Σ_i L_i(a_i ⊙ s_i)`` (plus unscaled real-valued terms), where ``s_i`` are a
neuron's spikes and ``L_i`` are linear ops (reshape, average pooling, dropout,
scalar factors) already applied to the spikes. Linear ops distribute over the sum,
so each term is carried on its own until it meets:

* a conv / linear layer: each term gets its own copy of the layer with ``a_i``
  folded into the weights, and the copies' outputs are summed;
* a neuron: the scaled terms enter the membrane through `DiagonalSynapse`s;
* anything else: not exact, so the amplitudes behind it are blocked.

The same walk serves `convert_model` (``rewrite=False``: which amplitudes could
never be folded) and `fold` (``rewrite=True``: build the deploy graph).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn as nn

from .amplitude import Amplitude
from .errors import UnsupportedPatternError
from .ops import OpKind, classify, describe, scalar_factor
from .synapses import DiagonalSynapse, UnsharedConv2d
from .weights import (
    is_spatially_uniform,
    scale_input_channels,
    scale_linear_columns,
)

__all__ = ["Blocker", "FoldStats", "follow_amplitudes", "neuron_batch_dims"]


@dataclass(frozen=True)
class Term:
    """One addend ``L(scale ⊙ node)`` of a tensor downstream of amplitudes."""

    node: fx.Node  # spikes (or, for scale None, a real-valued tensor) with eager ops applied
    shape: tuple[int, ...]  # full shape of ``node``'s value
    scale: torch.Tensor | None  # broadcasts over the feature dims of ``node``; None: unscaled
    batch_dims: int  # leading [N] or [T, N] dims that scales never touch
    sources: tuple[fx.Node, ...] = ()  # amplitude nodes behind this term
    deferred: tuple[fx.Node, ...] = ()  # linear ops that could not absorb an element-wise scale


@dataclass(frozen=True)
class Blocker:
    """Why the amplitudes ``sources`` cannot be folded exactly."""

    sources: tuple[fx.Node, ...]
    node: str
    reason: str
    remedy: str


@dataclass
class FoldStats:
    """What the rewrite did, for the deploy model's report."""

    scaled_synapses: list[str] = field(default_factory=list)
    unshared_convs: list[str] = field(default_factory=list)
    merged_linears: list[str] = field(default_factory=list)
    diagonal_synapses: list[str] = field(default_factory=list)


class _Blocked(Exception):
    def __init__(self, blocker: Blocker) -> None:
        self.blocker = blocker


def follow_amplitudes(gm: fx.GraphModule, *, rewrite: bool,
                      check_values: bool | None = None) -> tuple[list[Blocker], FoldStats]:
    """Walk every amplitude's spikes to their synapses.

    Args:
        gm: a converted graph with ``tensor_meta`` on its nodes.
        rewrite: if true, fold the amplitudes into the graph (in place) and raise on
            the first blocker; if false, only collect blockers.
        check_values: also block what only the amplitudes' current values forbid (a
            negative amplitude before max pooling). Default: ``rewrite`` (at conversion
            the values are still to be trained).

    Returns:
        The blockers found (empty when ``rewrite``) and, when rewriting, what was built.

    Raises:
        UnsupportedPatternError: ``rewrite`` is true and some amplitude cannot be folded.
    """
    walker = _Walker(gm, rewrite, rewrite if check_values is None else check_values)
    for node in list(gm.graph.nodes):
        try:
            walker.visit(node)
        except _Blocked as b:
            if rewrite:
                src = ", ".join(s.args[0].name for s in b.blocker.sources)
                raise UnsupportedPatternError(
                    b.blocker.node, f"{b.blocker.reason} (spikes of {src})", b.blocker.remedy
                ) from None
            walker.blockers.append(b.blocker)
    if rewrite:
        walker.finish()
    return walker.blockers, walker.stats


class _Walker:
    def __init__(self, gm: fx.GraphModule, rewrite: bool, check_values: bool) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.rewrite = rewrite
        self.check_values = check_values
        self.modules = dict(gm.named_modules())
        self.exprs: dict[fx.Node, tuple[Term, ...]] = {}
        self.blockers: list[Blocker] = []
        self.stats = FoldStats()
        self._replayed: dict[tuple[fx.Node, fx.Node], fx.Node] = {}

    # ------------------------------------------------------------------ walk
    def visit(self, node: fx.Node) -> None:
        kind = classify(node, self.modules)
        if kind is OpKind.AMPLITUDE:
            self._amplitude(node)
            return
        carried = [a for a in node.all_input_nodes if a in self.exprs]
        if not carried:
            return
        handler = {
            OpKind.RESHAPE: self._linear_op,
            OpKind.AVGPOOL: self._linear_op,
            OpKind.IDENTITY: self._identity,
            OpKind.SCALAR: self._scalar,
            OpKind.MAXPOOL: self._maxpool,
            OpKind.ADD: self._add,
            OpKind.CONV: self._synapse,
            OpKind.LINEAR: self._synapse,
            OpKind.NEURON: self._membrane,
            OpKind.SHAPE: self._shape_query,
        }.get(kind)
        only_first_input = len(carried) == 1 and node.args[:1] == (carried[0],) and carried[0] not in (
            *node.args[1:], *node.kwargs.values())
        if handler is None or (kind is not OpKind.ADD and not only_first_input):
            self._block(node, carried, self._unsupported_reason(node, kind),
                        "Scaled spikes may only pass reshapes, pooling, dropout, scalar factors and "
                        "additions on their way to a conv/linear layer or a neuron; leave this neuron "
                        "binary (SpikeConfig.set_name(<neuron>, None)) or restructure the model")
        handler(node)

    def _unsupported_reason(self, node: fx.Node, kind: OpKind) -> str:
        if kind is OpKind.OUTPUT:
            return "spikes reach the network output without passing a synapse, so there is no weight to fold the amplitude into"
        what = describe(node, self.modules)
        if node.op == "call_function" and node.target in (operator.mul, torch.mul):
            return f"{what} multiplies spike tensors (e.g. SEW 'AND'), which is not linear in the spikes"
        if node.op == "call_function" and node.target in (operator.sub, torch.sub, torch.rsub):
            return f"{what} subtracts spike tensors (e.g. SEW 'IAND': (1 - x) * y), which is not linear in the spikes"
        return f"{what} consumes scaled spikes but is not linear in them (or not supported)"

    def _block(self, node: fx.Node, carried: list[fx.Node], reason: str, remedy: str) -> None:
        sources = tuple(dict.fromkeys(s for c in carried for t in self.exprs[c] for s in t.sources))
        raise _Blocked(Blocker(sources, node.name, reason, remedy))

    def _terms(self, node: fx.Node) -> tuple[Term, ...]:
        return self.exprs[node.args[0]]

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    # --------------------------------------------------------------- sources
    def _amplitude(self, node: fx.Node) -> None:
        amp: Amplitude = self.modules[node.target]
        spikes = node.args[0]
        batch_dims = neuron_batch_dims(self.modules[spikes.target])
        self.exprs[node] = (Term(spikes, self._shape(spikes), amp.a.detach().double(), batch_dims, (node,)),)

    # ------------------------------------------------------------ linear ops
    def _linear_op(self, node: fx.Node) -> None:
        kind = classify(node, self.modules)
        out_shape = self._shape(node)
        terms = []
        for t in self._terms(node):
            if t.deferred:
                terms.append(replace(t, deferred=t.deferred + (node,)))
            elif t.scale is None:
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape))
            elif kind is OpKind.AVGPOOL:
                if is_spatially_uniform(t.scale):
                    terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape))
                else:  # element-wise scale: pooling mixes positions; only a Linear can absorb both
                    terms.append(replace(t, deferred=(node,)))
            else:  # reshape: the scale is reshaped with the features
                b = t.batch_dims
                if out_shape[:b] != t.shape[:b]:
                    self._block(node, [node.args[0]],
                                f"{describe(node, self.modules)} reshapes {t.shape} to {out_shape}, "
                                f"mixing the {b} batch/time dim(s) with the features",
                                f"Reshape only the feature dims (e.g. torch.flatten(x, {b}))")
                scale = t.scale if t.scale.dim() == 0 else t.scale.expand(t.shape[b:]).reshape(out_shape[b:])
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, scale=scale))
        self.exprs[node] = tuple(terms)

    def _identity(self, node: fx.Node) -> None:
        self.exprs[node] = self._terms(node)

    def _scalar(self, node: fx.Node) -> None:
        c = scalar_factor(node)
        terms = []
        for t in self._terms(node):
            if t.scale is None:
                terms.append(replace(t, node=self._replay(node, t.node)))
            else:
                terms.append(replace(t, scale=t.scale * c))
        self.exprs[node] = tuple(terms)

    def _maxpool(self, node: fx.Node) -> None:
        terms = self._terms(node)
        where = describe(node, self.modules)
        if len(terms) != 1 or terms[0].scale is None:
            self._block(node, [node.args[0]], f"{where} takes the maximum of a sum of spike trains, which does not commute with the amplitudes",
                        "Use average pooling here, or leave the neurons feeding it binary")
        t = terms[0]
        if t.deferred or not is_spatially_uniform(t.scale):
            self._block(node, [node.args[0]], f"element-wise amplitude before max pooling {where}: max does not commute with a per-position scale",
                        "Use layer or channel granularity for this neuron")
        if self.check_values and bool((t.scale < 0).any()):
            self._block(node, [node.args[0]],
                        f"negative amplitude before max pooling {where}: max(a·s) = a·min(s) for a < 0, which a binary max-pool cannot express",
                        "Keep these amplitudes non-negative (e.g. clamp them during training) or use average pooling")
        self.exprs[node] = (replace(t, node=self._replay(node, t.node), shape=self._shape(node)),)

    def _add(self, node: fx.Node) -> None:
        out_shape = self._shape(node)
        terms: list[Term] = []
        for arg in node.args:
            if not isinstance(arg, fx.Node):
                self._block(node, [a for a in node.all_input_nodes if a in self.exprs],
                            f"{describe(node, self.modules)} adds the constant {arg!r} to scaled spikes (affine, not linear)",
                            "Move the constant into a bias of the next layer, or leave this neuron binary")
            if self._shape(arg) != out_shape:
                self._block(node, [a for a in node.all_input_nodes if a in self.exprs],
                            f"{describe(node, self.modules)} broadcasts {self._shape(arg)} to {out_shape}",
                            "Add tensors of equal shape, or leave the neurons feeding it binary")
            terms.extend(self.exprs.get(arg, (Term(arg, out_shape, None, 0),)))
        self.exprs[node] = tuple(terms)

    def _shape_query(self, node: fx.Node) -> None:
        if not self.rewrite:
            return
        # Any eager term has the same shape; point the query at it so the old chain dies.
        for t in self._terms(node):
            if not t.deferred and t.shape == self._shape(node.args[0]):
                node.replace_input_with(node.args[0], t.node)
                return

    # ----------------------------------------------------------------- sinks
    def _synapse(self, node: fx.Node) -> None:
        terms = self._terms(node)
        syn = self.modules[node.target]
        conv = isinstance(syn, (nn.Conv1d, nn.Conv2d))
        for t in terms:
            if t.scale is None:
                continue
            if conv and t.deferred:
                self._block(node, [node.args[0]],
                            f"element-wise amplitude passes {describe(t.deferred[0], self.modules)} before conv "
                            f"{describe(node, self.modules)}; pooling mixes positions, so no conv kernel can absorb it",
                            "Use channel granularity for this neuron (only a Linear layer can absorb pooled element-wise amplitudes)")
            if not conv and not t.deferred and t.scale.dim() > 1:
                self._block(node, [node.args[0]],
                            f"{describe(node, self.modules)} acts on the last dim of a {len(t.shape)}-d tensor, "
                            "so the amplitude is not a per-input-column factor",
                            "Flatten the features before the Linear layer")
            if conv and not is_spatially_uniform(t.scale):
                if not isinstance(syn, nn.Conv2d) or syn.padding_mode != "zeros":
                    self._block(node, [node.args[0]],
                                f"element-wise amplitude into {describe(node, self.modules)} needs an unshared Conv2d "
                                f"with zero padding (got {type(syn).__name__}, padding_mode={syn.padding_mode!r})",
                                "Use channel granularity for this neuron or zero padding in the conv")
        if not self.rewrite:
            return
        with self.graph.inserting_before(node):
            outputs = [self._build_synapse(node, syn, t, keep_bias=(i == 0)) for i, t in enumerate(terms)]
            total = outputs[0]
            for o in outputs[1:]:
                total = self.graph.call_function(operator.add, (total, o))
        total.meta = dict(node.meta)
        node.replace_all_uses_with(total)
        self.graph.erase_node(node)

    def _build_synapse(self, node: fx.Node, syn: nn.Module, t: Term, keep_bias: bool) -> fx.Node:
        name = f"{node.target}__{t.node.name}"
        if t.deferred:
            self.stats.merged_linears.append(name)
            return self._merged_linear(name, syn, t, keep_bias)
        if t.scale is not None and isinstance(syn, nn.Conv2d) and not is_spatially_uniform(t.scale):
            out_hw = tuple(self._shape(node)[-2:])
            new = UnsharedConv2d.from_conv(syn, t.scale, tuple(t.shape[-2:]), out_hw, keep_bias)
            self.stats.unshared_convs.append(name)
        else:
            new = copy.deepcopy(syn)
            with torch.no_grad():
                if t.scale is not None:
                    w = syn.weight.detach().double()
                    w = scale_input_channels(w, t.scale, syn.groups) if isinstance(syn, (nn.Conv1d, nn.Conv2d)) \
                        else scale_linear_columns(w, t.scale)
                    new.weight.copy_(w.to(syn.weight.dtype))
                    self.stats.scaled_synapses.append(name)
                if not keep_bias and new.bias is not None:
                    new.bias = None
        return self._call_new(name, new, t.node)

    def _merged_linear(self, name: str, syn: nn.Linear, t: Term, keep_bias: bool) -> fx.Node:
        """One Linear on the flattened spikes equal to ``syn(L(scale ⊙ s))`` for the deferred ops ``L``."""
        b = t.batch_dims
        features = t.shape[b:]
        n = 1
        for d in features:
            n *= d
        basis = torch.eye(n, dtype=torch.float64).reshape(*([1] * (b - 1)), n, *features)
        columns = basis
        with torch.no_grad():
            for op in t.deferred:
                columns = self._apply(op, columns)
        lin = columns.reshape(n, -1)  # row i: the deferred ops applied to basis vector e_i
        if lin.shape[1] != syn.in_features:
            self._block(t.deferred[-1], [], f"ops {[o.name for o in t.deferred]} do not end in {syn.in_features} features", "")
        w = torch.sparse.mm(lin.to_sparse(), syn.weight.detach().double().t()).t()
        w = scale_linear_columns(w, t.scale.expand(features).reshape(-1))
        new = copy.deepcopy(syn)
        new.in_features = n
        new.weight = nn.Parameter(w.to(syn.weight.dtype))
        if not keep_bias:
            new.bias = None
        flat = self.graph.call_function(torch.flatten, (t.node, b))
        return self._call_new(name, new, flat)

    def _apply(self, op: fx.Node, x: torch.Tensor) -> torch.Tensor:
        args = [x] + list(op.args[1:])
        if any(isinstance(a, fx.Node) for a in args[1:]) or any(isinstance(v, fx.Node) for v in op.kwargs.values()):
            self._block(op, [], f"{describe(op, self.modules)} has tensor-valued arguments and cannot be merged into a Linear", "Use channel granularity for this neuron")
        if op.op == "call_module":
            return self.modules[op.target](*args, **op.kwargs)
        if op.op == "call_method":
            return getattr(x, op.target)(*args[1:], **op.kwargs)
        return op.target(*args, **op.kwargs)

    def _membrane(self, node: fx.Node) -> None:
        if not self.rewrite:
            return
        with self.graph.inserting_before(node):
            parts = []
            for t in self._terms(node):
                if t.scale is None:
                    parts.append(t.node)
                    continue
                name = f"{node.target}__in_{t.node.name}"
                step_mode = getattr(self.modules[node.target], "step_mode", "s")
                x = self._call_new(name, DiagonalSynapse(t.scale.to(torch.float32), step_mode), t.node)
                self.stats.diagonal_synapses.append(name)
                for op in t.deferred:
                    x = self._replay(op, x)
                parts.append(x)
            total = parts[0]
            for p in parts[1:]:
                total = self.graph.call_function(operator.add, (total, p))
        node.replace_input_with(node.args[0], total)

    # --------------------------------------------------------------- helpers
    def _replay(self, op: fx.Node, x: fx.Node) -> fx.Node:
        """``op`` applied to ``x`` instead of its original input (new node when rewriting)."""
        if not self.rewrite:
            return op
        key = (op, x)
        if key not in self._replayed:
            with self.graph.inserting_before(op):
                new = self.graph.create_node(op.op, op.target, (x,) + tuple(op.args[1:]), dict(op.kwargs))
            new.meta = dict(op.meta)
            self._replayed[key] = new
        return self._replayed[key]

    def _call_new(self, name: str, module: nn.Module, x: fx.Node) -> fx.Node:
        target = _unique_name(self.gm, name)
        self.gm.add_submodule(target, module)
        self.modules[target] = module
        return self.graph.call_module(target, (x,))

    def finish(self) -> None:
        """Detach the amplitudes: their spikes now flow unscaled into the folded synapses."""
        for node in list(self.graph.nodes):
            if node.op == "call_module" and isinstance(self.modules.get(node.target), Amplitude):
                node.replace_all_uses_with(node.args[0])
                self.graph.erase_node(node)
        self.graph.eliminate_dead_code()


def neuron_batch_dims(neuron: nn.Module) -> int:
    """Leading dims a neuron's output has before its features: ``[T, N]`` in 'm', ``[N]`` in 's'."""
    return 2 if getattr(neuron, "step_mode", "s") == "m" else 1


def _unique_name(gm: fx.GraphModule, name: str) -> str:
    base = name.replace(".", "_")
    candidate, i = base, 1
    while hasattr(gm, candidate):
        candidate, i = f"{base}_{i}", i + 1
    return candidate
