"""Following scaled spikes from each amplitude to the synapses that consume them.

Every tensor downstream of an amplitude is tracked as a sum of *terms*
``Σ_i L_i(a_i ⊙ s_i)`` (plus unscaled real-valued terms), where ``s_i`` are a
neuron's spikes and ``L_i`` are linear ops (reshape, average pooling, dropout,
scalar factors) already applied to the spikes. Linear ops distribute over the sum,
so each term is carried on its own until it meets:

* an addition of terms that carry the same amplitudes with equal scales (one
  amplitude shared by the neurons of a residual stream, `SpikeConfig.set_tie_summed`,
  or one neuron's spikes added to themselves): ``a⊙A + a⊙B = a⊙(A + B)``, so they
  continue as one term on the sum of their spikes;

* a conv / linear layer: each term gets its own copy of the layer with ``a_i``
  folded into the weights, and the copies' outputs are summed;
* a neuron: the scaled terms enter the membrane through `DiagonalSynapse`s;
* anything else: not exact, so the amplitudes behind it are blocked.

The same walk serves `convert_model` (``rewrite=False``: which amplitudes could
never be folded) and `fold` (``rewrite=True``: build the deploy graph).
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import zlib
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn as nn

from .amplitude import Amplitude
from .capture import OPAQUE_KEY
from .errors import UnsupportedPatternError
from .frameworks import batch_dims, neuron_adapter
from .ops import CONV_TYPES, OpKind, classify, computed_weight, describe, permutation, reduction, scalar_factor
from .scales import compact, full_rank, matmul_scale, permute_scale, reduce_scale, slice_scale, varies_only_along_last
from .synapses import DiagonalSynapse, UnsharedConv2d
from .weights import (
    is_spatially_uniform,
    scale_input_channels,
    scale_linear_columns,
    scale_transposed_input_channels,
)

__all__ = ["Blocker", "FoldStats", "follow_amplitudes", "neuron_batch_dims"]

_FUNCTIONAL_SYNAPSES = frozenset({torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
                                  torch.nn.functional.linear, torch.conv1d, torch.conv2d, torch.conv3d})


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
    """What the walk found (``sums``) and the rewrite did (the rest, for the deploy model's report)."""

    scaled_synapses: list[str] = field(default_factory=list)
    unshared_convs: list[str] = field(default_factory=list)
    merged_linears: list[str] = field(default_factory=list)
    diagonal_synapses: list[str] = field(default_factory=list)
    sums: list[tuple[fx.Node, ...]] = field(default_factory=list)  # per addition: amplitude nodes it sums
    max_pooled: list[fx.Node] = field(default_factory=list)  # amplitude nodes whose spikes pass a max-pool


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
        check_values: decide on the amplitudes' current values (a negative amplitude
            before max pooling is blocked) rather than on generic stand-ins for values
            still to be trained. Default: ``rewrite``.

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
                reason = f"{b.blocker.reason} (spikes of {src})" if src else b.blocker.reason
                raise UnsupportedPatternError(b.blocker.node, reason, b.blocker.remedy) from None
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
        if kind is OpKind.NEURON:  # its own spikes passed back to it: read by its recurrent weights, scaled by fold
            carried = [a for a in carried if not self._fed_back(node, a)]
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
            OpKind.PERMUTE: self._permute,
            OpKind.MEAN: self._mean,
            OpKind.SPLIT: self._split,
            OpKind.GETITEM: self._getitem,
            OpKind.MATMUL: self._matmul,
            OpKind.HADAMARD: self._hadamard,
            OpKind.CAT: self._cat,
            OpKind.STACK: self._stack,
        }.get(kind)
        inputs = tuple(node.args)
        if kind is OpKind.SCALAR and not isinstance(inputs[0], fx.Node):  # c * x: the spikes are the second factor
            inputs = inputs[::-1]
        only_first_input = len(carried) == 1 and inputs[:1] == (carried[0],) and carried[0] not in (
            *inputs[1:], *node.kwargs.values())
        if handler is None or (kind not in (OpKind.ADD, OpKind.MATMUL, OpKind.HADAMARD, OpKind.CAT, OpKind.STACK)
                               and not only_first_input):
            self._block(node, carried, self._unsupported_reason(node, kind),
                        "Scaled spikes may only pass reshapes, pooling, dropout, scalar factors and "
                        "additions on their way to a conv/linear layer or a neuron; leave this neuron "
                        "binary (SpikeConfig.set_name(<neuron>, None)) or restructure the model")
        handler(node)

    def _fed_back(self, neuron: fx.Node, arg: fx.Node) -> bool:
        """Whether ``arg`` is ``neuron``'s own amplitude-scaled spikes, passed back only where it reads its own spikes.

        An ``RLeaky`` call ``rlif(cur, spk, mem)`` takes its previous spikes back; its recurrent
        weights read them (`FrameworkAdapter.internal_synapses`), and fold scales those weights
        by the neuron's amplitude, so the amplitude ends there like at any synapse.
        """
        module = self.modules[neuron.target]
        adapter = neuron_adapter(module)
        positions = adapter.spike_arguments(module) if adapter is not None else ()
        if not positions or classify(arg, self.modules) is not OpKind.AMPLITUDE \
                or _call_of(arg.args[0]).target != neuron.target:
            return False
        names = [name for i, name in enumerate(inspect.signature(module.forward).parameters) if i in positions]
        at = [i for i, a in enumerate(neuron.args) if a is arg] + [k for k, v in neuron.kwargs.items() if v is arg]
        return bool(at) and all(i in positions or i in names for i in at)

    def _unsupported_reason(self, node: fx.Node, kind: OpKind) -> str:
        if kind is OpKind.OUTPUT:
            return "spikes reach the network output without passing a synapse, so there is no weight to fold the amplitude into"
        what = describe(node, self.modules)
        if node.op == "call_function" and node.target in (operator.mul, torch.mul):
            return f"{what} multiplies spike tensors (e.g. SEW 'AND'), which is not linear in the spikes"
        if node.op == "call_function" and node.target in (operator.sub, torch.sub, torch.rsub):
            return f"{what} subtracts spike tensors (e.g. SEW 'IAND': (1 - x) * y), which is not linear in the spikes"
        opaque = self.gm.meta.get(OPAQUE_KEY, {})
        if node.op == "call_module" and node.target in opaque:
            return f"{what} was kept whole ({opaque[node.target]}), so nothing can be folded through it"
        if node.op == "call_module" and (computed := computed_weight(self.modules[node.target])) is not None:
            return f"{what} {computed}, so scaling its weight would not scale its input"
        if node.op == "call_function" and node.target in _FUNCTIONAL_SYNAPSES:
            return (f"{what} applies a weight tensor it is given (a functional conv/linear), and fold scales the "
                    "weights of conv/linear modules only")
        return f"{what} consumes scaled spikes but is not linear in them (or not supported)"

    def _block(self, node: fx.Node, carried: list[fx.Node], reason: str, remedy: str) -> None:
        sources = tuple(dict.fromkeys(s for c in carried for t in self.exprs[c] for s in t.sources))
        raise _Blocked(Blocker(sources, node.name, reason, remedy))

    def _block_term(self, t: Term, node: fx.Node, reason: str, remedy: str) -> None:
        """Block only the amplitudes behind term ``t`` (the other addends may still fold)."""
        raise _Blocked(Blocker(t.sources, node.name, reason, remedy))

    def _terms(self, node: fx.Node) -> tuple[Term, ...]:
        return self.exprs[node.args[0]]

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    # --------------------------------------------------------------- sources
    def _amplitude(self, node: fx.Node) -> None:
        amp: Amplitude = self.modules[node.target]
        spikes = node.args[0]
        batch_dims = neuron_batch_dims(self.modules[_call_of(spikes).target])
        scale = amp.full(amp.a.detach().double() if self.check_values else _generic(amp.a.shape, node.target))
        self.exprs[node] = (Term(spikes, self._shape(spikes), scale, batch_dims, (node,)),)

    # ------------------------------------------------------------ linear ops
    def _linear_op(self, node: fx.Node) -> None:
        kind = classify(node, self.modules)
        out_shape = self._shape(node)
        terms = []
        for t in self._terms(node):
            if t.deferred:
                if kind is OpKind.RESHAPE and _batch_prefix(self._shape(node.args[0]), out_shape, t) is None:
                    self._block_term(t, node, f"{describe(node, self.modules)} regroups the batch/time dims of "
                                              f"spikes whose element-wise amplitude was pooled, which the Linear "
                                              f"they are merged into cannot follow",
                                     "Use channel granularity for this neuron, or reshape the batch/time dims "
                                     "after the Linear")
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
                k = _batch_boundary(t.shape, b, out_shape)
                if k is None:
                    self._block_term(t, node,
                                f"{describe(node, self.modules)} reshapes {t.shape} to {out_shape}, "
                                f"mixing the {b} batch/time dim(s) with the features",
                                f"Reshape the batch/time dims (e.g. x.flatten(0, 1)) and the feature dims "
                                f"(e.g. torch.flatten(x, {b})) separately")
                scale = t.scale if t.scale.dim() == 0 else t.scale.expand(t.shape[b:]).reshape(out_shape[k:])
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape,
                                     scale=compact(scale), batch_dims=k))
        self.exprs[node] = tuple(terms)

    def _identity(self, node: fx.Node) -> None:
        self.exprs[node] = self._terms(node)

    def _scalar(self, node: fx.Node) -> None:
        c = scalar_factor(node)
        swapped = not isinstance(node.args[0], fx.Node)  # c * x, replayed as x * c (else x * c, x / c)
        terms = []
        for t in self.exprs[node.args[1] if swapped else node.args[0]]:
            if t.scale is None:
                terms.append(replace(t, node=self._replay(node, t.node, swapped)))
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
        self.stats.max_pooled.extend(t.sources)
        self.exprs[node] = (replace(t, node=self._replay(node, t.node), shape=self._shape(node)),)

    def _add(self, node: fx.Node) -> None:
        out_shape = self._shape(node)
        terms: list[Term] = []
        for arg in node.args:
            if isinstance(arg, (int, float)) and arg == 0:
                continue  # `acc = 0.; acc = acc + s` (a time loop's accumulator) adds nothing
            if not isinstance(arg, fx.Node):
                self._block(node, [a for a in node.all_input_nodes if a in self.exprs],
                            f"{describe(node, self.modules)} adds the constant {arg!r} to scaled spikes (affine, not linear)",
                            "Move the constant into a bias of the next layer, or leave this neuron binary")
            if self._shape(arg) != out_shape:
                self._block(node, [a for a in node.all_input_nodes if a in self.exprs],
                            f"{describe(node, self.modules)} broadcasts {self._shape(arg)} to {out_shape}",
                            "Add tensors of equal shape, or leave the neurons feeding it binary")
            terms.extend(self.exprs.get(arg, (Term(arg, out_shape, None, 0),)))
        summed = tuple(dict.fromkeys(s for t in terms if t.scale is not None and not t.deferred for s in t.sources))
        if summed:
            self.stats.sums.append(summed)
        self.exprs[node] = self._merge_shared(node, terms)

    def _merge_shared(self, node: fx.Node, terms: list[Term]) -> tuple[Term, ...]:
        """Terms of one sum with the same amplitudes and equal scales, merged: ``a⊙A + a⊙B = a⊙(A + B)``.

        Only terms whose amplitude modules are the same (a shared amplitude, or one neuron's
        spikes added to themselves) merge, so the deploy graph never depends on values that
        happen to be equal. In the rewrite the merged term reads a new addition of the
        spike tensors, placed before ``node``.
        """
        out_shape = self._shape(node)
        merged: list[Term] = []
        for t in terms:
            if t.scale is not None and not t.deferred and t.shape == out_shape:
                key = frozenset(s.target for s in t.sources)
                at = next((i for i, m in enumerate(merged)
                           if m.scale is not None and not m.deferred and m.shape == out_shape
                           and m.batch_dims == t.batch_dims and frozenset(s.target for s in m.sources) == key
                           and m.scale.shape == t.scale.shape and torch.equal(m.scale, t.scale)), None)
                if at is not None:
                    m = merged[at]
                    merged[at] = replace(m, node=self._add_nodes(node, m.node, t.node),
                                         sources=tuple(dict.fromkeys(m.sources + t.sources)))
                    continue
            merged.append(t)
        return tuple(merged)

    def _add_nodes(self, op: fx.Node, x: fx.Node, y: fx.Node) -> fx.Node:
        """``x + y`` placed before ``op`` (``op`` itself when only analysing)."""
        if not self.rewrite:
            return op
        with self.graph.inserting_before(op):
            new = self.graph.call_function(operator.add, (x, y))
        new.meta = dict(op.meta)
        return new

    def _permute(self, node: fx.Node) -> None:
        out_shape = self._shape(node)
        terms = []
        for t in self._terms(node):
            perm = permutation(node, len(t.shape))
            if perm is None:
                self._block_term(t, node, f"{describe(node, self.modules)} permutes dims that are not static",
                            "Pass the dims as integers")
            if t.scale is None or t.deferred:
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape) if t.scale is None
                             else replace(t, deferred=t.deferred + (node,)))
                continue
            b = t.batch_dims
            if sorted(perm[:b]) != list(range(b)):
                self._block_term(t, node,
                            f"{describe(node, self.modules)} moves the batch/time dims of {t.shape} into the features",
                            "Keep [T, N] (or [N]) leading while scaled spikes travel to their synapse")
            scale = permute_scale(t.scale, [p - b for p in perm[b:]])
            terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, scale=compact(scale)))
        self.exprs[node] = tuple(terms)

    def _mean(self, node: fx.Node) -> None:
        out_shape = self._shape(node)
        dims, keepdim = reduction(node)
        terms = []
        for t in self._terms(node):
            rank, b = len(t.shape), t.batch_dims
            reduced = sorted({d % rank for d in dims})
            batch = [d for d in reduced if d < b]
            features = [d - b for d in reduced if d >= b]
            new_b = b if keepdim else b - len(batch)
            if t.scale is None:
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, batch_dims=new_b))
                continue
            scale = reduce_scale(t.scale, rank - b, features, keepdim) if not t.deferred else None
            if scale is None:
                if batch:
                    self._block_term(t, node,
                                f"{describe(node, self.modules)} averages over time/batch after an element-wise "
                                "amplitude was pooled", "Use channel granularity for this neuron")
                terms.append(replace(t, deferred=t.deferred + (node,)))  # only a Linear can absorb it
                continue
            terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, scale=compact(scale),
                                 batch_dims=new_b))
        self.exprs[node] = tuple(terms)

    def _split(self, node: fx.Node) -> None:
        # The tuple carries the terms (shape: the tensor split); each getitem of it takes its slice.
        self.exprs[node] = tuple(replace(t, node=self._replay(node, t.node)) if not t.deferred else t
                                 for t in self._terms(node))

    def _getitem(self, node: fx.Node) -> None:
        source = node.args[0]
        out_shape = self._shape(node)
        terms = []
        for t in self.exprs[source]:
            if classify(source, self.modules) is OpKind.SPLIT:
                dim, index = _split_slice(source, node.args[1], t.shape)
                indices: tuple = (slice(None),) * dim + (index,)
            elif node.target is torch.select or node.target == "select":  # x.select(d, i) is x[:, …, :, i]
                dim, index = (list(node.args[1:]) + [node.kwargs.get("dim"), node.kwargs.get("index")])[:2]
                indices = (slice(None),) * (dim % len(t.shape)) + (index,)
            else:
                indices = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            picked = _feature_index(indices, len(t.shape), t.batch_dims)
            if picked is None:
                self._block(node, [source], f"{describe(node, self.modules)} indexes scaled spikes in a way "
                                            "that is not a plain slice", "Slice with integers and ranges only")
            b_removed, feature_index = picked
            new_b = t.batch_dims - b_removed
            if t.scale is None:
                terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, batch_dims=new_b))
                continue
            if t.deferred:
                self._block(node, [source], f"{describe(node, self.modules)} slices pooled element-wise amplitudes",
                            "Use channel granularity for this neuron")
            scale, rank = t.scale, len(t.shape) - t.batch_dims
            for d, index in reversed(feature_index):
                scale = slice_scale(scale, rank, d, index)
                rank = rank - 1 if isinstance(index, int) else rank
            terms.append(replace(t, node=self._replay(node, t.node), shape=out_shape, scale=compact(scale),
                                 batch_dims=new_b))
        self.exprs[node] = tuple(terms)

    def _matmul(self, node: fx.Node) -> None:
        left, right = node.args[:2]
        if node.kwargs or len(node.args) != 2:
            self._block(node, [a for a in (left, right) if a in self.exprs], f"{describe(node, self.modules)} "
                        "has extra arguments", "Use a plain a @ b")
        sides = []
        for arg in (left, right):
            terms = self.exprs.get(arg, (Term(arg, self._shape(arg), None, 0),)) if isinstance(arg, fx.Node) else ()
            if len(terms) != 1 or terms[0].deferred:
                self._block(node, [a for a in (left, right) if a in self.exprs],
                            f"{describe(node, self.modules)} multiplies a sum of spike trains (or pooled element-wise "
                            "amplitudes), which does not factor", "Leave the neurons feeding this product binary")
            sides.append(terms[0])
        a, b = sides
        batch = max(a.batch_dims, b.batch_dims)
        if a.scale is not None and b.scale is not None and a.batch_dims != b.batch_dims:
            self._block(node, [x for x in (left, right) if x in self.exprs], f"{describe(node, self.modules)} multiplies spikes with different "
                        "batch/time layouts", "Keep [T, N] leading on both operands")
        rank = len(self._shape(node)) - batch
        one = torch.ones((), dtype=torch.float64)
        alpha = a.scale if a.scale is not None else one
        beta = b.scale if b.scale is not None else one
        scale = matmul_scale(alpha, beta, rank)
        if scale is None:
            self._block(node, [x for x in (left, right) if x in self.exprs],
                        f"{describe(node, self.modules)} contracts an index along which the amplitudes of both "
                        "operands vary, and their products are not constant along it",
                        "Use layer granularity (or one amplitude per q/k/v slice) for the neurons feeding it")
        new = self._replay2(node, a.node, b.node)
        self.exprs[node] = (Term(new, self._shape(node), scale, batch, a.sources + b.sources),)

    def _hadamard(self, node: fx.Node) -> None:
        """``(α ⊙ A) ⊙ (β ⊙ B) = (α·β) ⊙ (A ⊙ B)``: exact for single terms of the same rank (SEW AND)."""
        out_shape = self._shape(node)
        sides = []
        for arg in node.args:
            terms = self.exprs.get(arg, (Term(arg, self._shape(arg), None, 0),))
            if len(terms) != 1 or terms[0].deferred or len(self._shape(arg)) != len(out_shape):
                self._block(node, [a for a in node.args if a in self.exprs],
                            f"{describe(node, self.modules)} multiplies a sum of spike trains (or a broadcast or "
                            "pooled element-wise amplitude), which does not factor",
                            "Leave the neurons feeding this product binary")
            sides.append(terms[0])
        a, b = sides
        scaled = [t for t in sides if t.scale is not None]
        if len({t.batch_dims for t in scaled}) > 1:
            self._block(node, [x for x in node.args if x in self.exprs], f"{describe(node, self.modules)} "
                        "multiplies spikes with different batch/time layouts", "Keep [T, N] leading on both operands")
        batch = scaled[0].batch_dims
        scale = None
        for t in scaled:
            scale = t.scale if scale is None else compact(full_rank(scale, len(out_shape) - batch)
                                                          * full_rank(t.scale, len(out_shape) - batch))
        new = self._replay2(node, a.node, b.node)
        self.exprs[node] = (Term(new, out_shape, scale, batch, a.sources + b.sources),)

    def _cat(self, node: fx.Node) -> None:
        """``cat([α ⊙ A, β ⊙ B], d)`` = ``cat(α, β) ⊙ cat(A, B)`` along a feature dim (unscaled parts: 1)."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        carried = [a for a in parts if isinstance(a, fx.Node) and a in self.exprs]
        out_shape = self._shape(node)
        sides = []
        for arg in parts:
            terms = self.exprs.get(arg, (Term(arg, self._shape(arg), None, 0),))
            if len(terms) != 1 or terms[0].deferred:
                self._block(node, carried, f"{describe(node, self.modules)} concatenates a sum of spike trains "
                            "(or pooled element-wise amplitudes)", "Leave the neurons feeding it binary")
            sides.append(terms[0])
        scaled = [t for t in sides if t.scale is not None]
        b = scaled[0].batch_dims
        rank = len(out_shape)
        d = dim % rank
        if any(t.batch_dims != b for t in scaled) or d < b:
            self._block(node, carried, f"{describe(node, self.modules)} concatenates along a batch/time dim or "
                        "spikes with different batch/time layouts", "Concatenate feature dims of [T, N, ...] spikes")
        one = torch.ones((), dtype=torch.float64)
        scale = torch.cat([full_rank(t.scale if t.scale is not None else one, rank - b)
                           .expand(t.shape[b:]) for t in sides], dim=d - b)
        if self.rewrite:
            with self.graph.inserting_before(node):
                new = self.graph.create_node(node.op, node.target, ([t.node for t in sides], *node.args[1:]),
                                             dict(node.kwargs))
            new.meta = dict(node.meta)
        else:
            new = node
        self.exprs[node] = (Term(new, out_shape, compact(scale), b, tuple(s for t in sides for s in t.sources)),)

    def _stack(self, node: fx.Node) -> None:
        """``stack([α ⊙ A₀, α ⊙ A₁, …], d)`` = ``α ⊙ stack(A₀, A₁, …)``: the same amplitude on every part.

        Stacking along a batch/time position or right after them (the per-step outputs of a
        time loop, Norse's ``Lift``) adds a batch dim; further into the features the scale is
        broadcast over the new dim. Parts must carry the same amplitudes with equal scales (an unscaled part,
        or another neuron's spikes, would need a scale that differs along the new dim).
        """
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        carried = [a for a in parts if isinstance(a, fx.Node) and a in self.exprs]
        sides = [self.exprs.get(arg, (Term(arg, self._shape(arg), None, 0),)) for arg in parts]
        first = sides[0][0]
        if any(t.deferred for terms in sides for t in terms):
            self._block(node, carried, f"{describe(node, self.modules)} stacks pooled element-wise amplitudes, which "
                        "only a Linear layer right after the pooling can absorb", "Use channel granularity for this neuron")
        if any(len(terms) != 1 or terms[0].scale is None for terms in sides) or any(
                t.batch_dims != first.batch_dims or frozenset(s.target for s in t.sources)
                != frozenset(s.target for s in first.sources) or t.scale.shape != first.scale.shape
                or not torch.equal(t.scale, first.scale) for (t,) in sides):
            self._block(node, carried, f"{describe(node, self.modules)} stacks spike tensors that do not all carry "
                        "the same amplitude", "Stack the spikes of one neuron only")
        out_shape = self._shape(node)
        b, d = first.batch_dims, dim % len(out_shape)
        # Right after the batch dims too: the same neuron's spikes from several calls are its time steps
        # (TET's batch-first loop stacks x[:, t]'s spikes on dim 1, then flattens [N, T] into the batch).
        if d <= b or b == 0:
            scale, batch_dims = first.scale, b + 1
        else:  # a new feature dim: the scale is the same along it
            scale, batch_dims = full_rank(first.scale, len(first.shape) - b).unsqueeze(d - b), b
        if self.rewrite:
            with self.graph.inserting_before(node):
                new = self.graph.create_node(node.op, node.target, ([t.node for (t,) in sides], *node.args[1:]),
                                             dict(node.kwargs))
            new.meta = dict(node.meta)
        else:
            new = node
        self.exprs[node] = (Term(new, out_shape, compact(scale), batch_dims,
                                 tuple(dict.fromkeys(s for (t,) in sides for s in t.sources))),)

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
        conv = isinstance(syn, CONV_TYPES)
        for t in terms:
            if t.scale is None:
                continue
            if conv and t.deferred:
                self._block_term(t, node,
                            f"element-wise amplitude passes {describe(t.deferred[0], self.modules)} before conv "
                            f"{describe(node, self.modules)}; pooling mixes positions, so no conv kernel can absorb it",
                            "Use channel granularity for this neuron (only a Linear layer can absorb pooled element-wise amplitudes)")
            if not conv and not t.deferred and not varies_only_along_last(t.scale):
                self._block_term(t, node,
                            f"{describe(node, self.modules)} acts on the last dim of a {len(t.shape)}-d tensor, "
                            "but the amplitude also varies along the other dims, so it is not a per-input-column factor",
                            "Flatten the features before the Linear layer, or use channel granularity")
            if conv and not is_spatially_uniform(t.scale):
                if not isinstance(syn, nn.Conv2d):
                    self._block_term(t, node,
                                     f"element-wise amplitude into {describe(node, self.modules)}: only a Conv2d "
                                     "takes one (as an unshared conv)", "Use channel granularity for this neuron")
                if syn.padding_mode != "zeros":
                    self._block_term(t, node,
                                f"element-wise amplitude into {describe(node, self.modules)} needs an unshared Conv2d "
                                f"with zero padding (got padding_mode={syn.padding_mode!r})",
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
            # in full [C, H, W]: a channels-last amplitude ([W], one per column) broadcasts from the right
            scale = t.scale.expand(t.shape[t.batch_dims:]).contiguous()
            new = UnsharedConv2d.from_conv(syn, scale, tuple(t.shape[-2:]), out_hw, keep_bias)
            self.stats.unshared_convs.append(name)
        else:
            new = copy.deepcopy(syn)
            with torch.no_grad():
                if t.scale is not None:
                    w = syn.weight.detach().double()
                    if isinstance(syn, nn.modules.conv._ConvTransposeNd):
                        w = scale_transposed_input_channels(w, t.scale)
                    elif isinstance(syn, CONV_TYPES):
                        w = scale_input_channels(w, t.scale, syn.groups)
                    else:
                        w = scale_linear_columns(w, compact(t.scale).reshape(-1))
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
        columns = torch.eye(n, dtype=torch.float64).reshape(*([1] * (b - 1)), n, *features)
        with torch.no_grad():
            for op in t.deferred:
                if classify(op, self.modules) is OpKind.RESHAPE:
                    # from the recorded shapes, not op's arguments: those name the real batch (x.view(x.size(0),
                    # -1)), where columns holds the basis vectors; the batch dims stay (`_linear_op`)
                    k = _batch_prefix(self._shape(op.args[0]), self._shape(op), t)
                    columns = columns.reshape(*columns.shape[:k], *self._shape(op)[k:])
                else:
                    columns = self._apply(op, columns)
        lin = columns.reshape(n, -1)  # row i: the deferred ops applied to basis vector e_i
        if lin.shape[1] != syn.in_features:
            self._block_term(t, t.deferred[-1],
                             f"ops {[o.name for o in t.deferred]} do not end in {syn.in_features} features",
                             "Use channel granularity for this neuron")
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
        nested: list[fx.Node] = []
        fx.node.map_arg((op.args[1:], op.kwargs), nested.append)  # nodes inside lists and dicts too
        if nested:
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
                for op in t.deferred:  # after the synapse, right here (not at the op's old place)
                    x = self.graph.create_node(op.op, op.target, (x,) + tuple(op.args[1:]), dict(op.kwargs))
                parts.append(x)
            total = parts[0]
            for p in parts[1:]:
                total = self.graph.call_function(operator.add, (total, p))
        node.replace_input_with(node.args[0], total)

    # --------------------------------------------------------------- helpers
    def _replay(self, op: fx.Node, x: fx.Node, swapped: bool = False) -> fx.Node:
        """``op`` applied to ``x`` instead of its original input (new node when rewriting).

        ``swapped``: ``op`` is a commutative ``c * y`` whose input ``y`` is its second
        argument; it is replayed as ``x * c``.
        """
        if not self.rewrite:
            return op
        key = (op, x)
        if key not in self._replayed:
            args = (x, op.args[0]) if swapped else (x,) + tuple(op.args[1:])
            with self.graph.inserting_before(op):
                new = self.graph.create_node(op.op, op.target, args, dict(op.kwargs))
            new.meta = dict(op.meta)
            self._replayed[key] = new
        return self._replayed[key]

    def _replay2(self, op: fx.Node, x: fx.Node, y: fx.Node) -> fx.Node:
        """Binary ``op`` applied to ``x`` and ``y`` instead of its original inputs."""
        if not self.rewrite:
            return op
        if (x, y) == tuple(op.args[:2]):
            return op
        with self.graph.inserting_before(op):
            new = self.graph.create_node(op.op, op.target, (x, y), dict(op.kwargs))
        new.meta = dict(op.meta)
        return new

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


def _generic(shape: torch.Size, name: str) -> torch.Tensor:
    """Distinct positive stand-in values for an amplitude still to be trained.

    What folds must not depend on the values an amplitude happens to hold at
    conversion (all 1): checks such as "constant along the contracted index" are made
    on generic values, which are equal only where the structure makes them equal (the
    same entry of the same amplitude).
    """
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return 1.0 + torch.rand(shape, generator=g, dtype=torch.float64)


def _batch_prefix(shape: tuple[int, ...], out_shape: tuple[int, ...], t: Term) -> int | None:
    """How many leading dims ``reshape(shape → out_shape)`` keeps as they are, holding term ``t``'s batch.

    Along a chain of ops deferred into a merged Linear the batch/time dims hold the same
    elements as where ``t`` was deferred; a reshape of the features alone keeps them as the
    same leading dims. ``None``: the reshape regroups them (``[T·N, …] → [T, N, …]``).
    """
    batch = math.prod(t.shape[:t.batch_dims])
    for k in range(1, min(len(shape), len(out_shape)) + 1):
        if math.prod(shape[:k]) == batch:
            return k if tuple(shape[:k]) == tuple(out_shape[:k]) else None
    return None


def _batch_boundary(shape: tuple[int, ...], b: int, out_shape: tuple[int, ...]) -> int | None:
    """Batch dims of ``reshape(shape → out_shape)`` when the first ``b`` dims of ``shape`` are batch dims.

    A row-major reshape keeps batch and features apart exactly when some prefix of
    ``out_shape`` has the batch dims' element count: ``[T, N, C, H, W] → [T·N, C, H, W]``
    (``flatten(0, 1)``), ``[T·N, F] → [T, N, F]`` and ``[T, N, C, H, W] → [T, N, C·H·W]``
    all do; ``[T, N, C] → [T, N·C]`` does not. ``None`` if no prefix fits.
    """
    batch = math.prod(shape[:b])
    if tuple(out_shape[:b]) == tuple(shape[:b]):
        return b
    for k in range(1, len(out_shape) + 1):
        if math.prod(out_shape[:k]) == batch and math.prod(out_shape[k:]) == math.prod(shape[b:]):
            return k
    return None


def _split_slice(split: fx.Node, index: object, shape: tuple[int, ...]) -> tuple[int, slice]:
    """``(dim, slice)`` that getitem ``index`` of the ``chunk``/``split`` node ``split`` takes."""
    pieces = split.meta["tensor_meta"]
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    dim %= len(shape)
    sizes = [p.shape[dim] for p in pieces]
    start = sum(sizes[:index])
    return dim, slice(start, start + sizes[index])


def _feature_index(indices: tuple, rank: int, b: int) -> tuple[int, list[tuple[int, slice | int]]] | None:
    """``(batch dims removed, [(feature dim, index)])`` for basic indexing, or ``None`` for anything else."""
    if any(i is Ellipsis for i in indices):
        at = indices.index(Ellipsis)
        indices = indices[:at] + (slice(None),) * (rank - len(indices) + 1) + indices[at + 1:]
    if len(indices) > rank or not all(isinstance(i, (int, slice)) for i in indices):
        return None
    if any(isinstance(i, slice) and not all(isinstance(v, (int, type(None))) for v in (i.start, i.stop, i.step))
           for i in indices):
        return None
    removed, features = 0, []
    for d, i in enumerate(indices):
        if d < b:
            removed += isinstance(i, int)
        elif i != slice(None):
            features.append((d - b, i))
    return removed, features


def neuron_batch_dims(neuron: nn.Module) -> int:
    """Leading dims a neuron's output has before its features: ``[T, N]`` in 'm', ``[N]`` in 's'."""
    return batch_dims(neuron)


def _call_of(spikes: fx.Node) -> fx.Node:
    """The neuron call whose spikes ``spikes`` are (itself, or the call whose spike item it takes)."""
    if spikes.op == "call_function" and spikes.target is operator.getitem and isinstance(spikes.args[0], fx.Node):
        return spikes.args[0]
    return spikes


def _unique_name(gm: fx.GraphModule, name: str) -> str:
    base = name.replace(".", "_")
    candidate, i = base, 1
    while hasattr(gm, candidate):
        candidate, i = f"{base}_{i}", i + 1
    return candidate
