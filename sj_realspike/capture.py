"""Capturing a user's network as an fx graph, with real shapes answering its Python control flow.

`torch.fx.symbolic_trace` fails on the SNN code people write: ``if x.ndim == 4:``,
``T, N = x.shape[:2]`` followed by ``range(T)``, ``len(x.shape)``, SpikingJelly's
containers (``SeqToANNContainer`` flattens ``[T, N]`` by runtime shape). `capture`
traces with a `ConcreteTracer` instead: every proxy also carries the value the
example input gives it, computed as the graph is recorded, so wherever Python needs
a real value (``bool``, ``len``, ``range``, ``int``, iteration) it gets it from the
example, while tensors and the shape arithmetic that feeds tensor ops stay symbolic.
This is the same idea as PyTorch's meta tracer, with real values (neuron state has
to evolve step by step for a time loop to unroll faithfully).

What the example decides is fixed in the graph; `capture` reports where that
happened (``CaptureResult.forced``), and `check_generality` proves by a second
capture with a longer sequence and a larger batch whether the graph still depends on
``T`` or ``N``.

Leaves (recorded as one ``call_module`` node each): what a framework adapter names a leaf
(`sj_realspike.frameworks`: spiking neurons and other stateful modules, SpikingJelly's
``layer.*`` wrappers), `Amplitude` and the fold-made synapses, and ``torch.nn`` layers.
The frameworks' step containers and plain ``nn.Sequential``/user modules are traced
through, so the synapses inside them are visible to the fold. A leaf neuron that returns
a tuple (snnTorch's ``(spk, mem)``) is recorded with one ``getitem`` node per item, so the
spikes are one node that amplitudes can follow. A custom autograd Function (a
hand-written surrogate spike) is one node calling its ``apply``, so the graph keeps its
backward. A submodule whose ``forward`` cannot be traced even with real values (C++
code, unsupported Python) becomes an opaque leaf, listed in ``CaptureResult.opaque``
with the reason.
Reading a neuron's state (``self.sn.v``) in ``forward`` would freeze it into a
constant; it is recorded in ``CaptureResult.state_reads`` instead, and the passes
that need a faithful graph refuse it naming the module.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.fx._symbolic_trace as _fx_trace
import torch.utils._pytree as pytree
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .amplitude import Amplitude
from .errors import UnsupportedPatternError
from .frameworks import adapters, is_container, is_leaf, is_spiking_module, spike_index, state_of
from .frameworks import reset as reset_state
from .state import restore, snapshot
from .synapses import DiagonalSynapse, UnsharedConv2d

__all__ = ["CONCRETE", "OPAQUE_KEY", "CaptureResult", "ConcreteTracer", "capture", "check_generality"]

# This package's own modules that appear in converted and deploy models.
_OWN_LEAVES = (Amplitude, DiagonalSynapse, UnsharedConv2d)

CONCRETE = "concrete"  # node.meta key: the value the example input gave this node
OPAQUE_KEY = "sj_realspike_opaque"  # gm.meta key: {module path: why it was kept whole}


@dataclass
class CaptureResult:
    """A captured graph and what the example input decided in it.

    Attributes:
        gm: the graph module; every tensor-valued node has ``meta['tensor_meta']``.
        forced: ``(node name, value)`` for each place Python needed a real value
            (a branch, a loop bound, a length): the graph holds the example's answer.
        opaque: ``(module path, reason)`` for submodules kept whole because their
            forward could not be traced.
        state_reads: ``(module path, attribute)`` for neuron/memory state read in
            ``forward``; the graph holds the example's value as a constant there.
        calls: how many times each leaf module was called (a time loop calls a
            single-step neuron ``T`` times).
        samples: the first input of the first call of each module ``record`` selected.
        value_forced: the subset of ``forced`` computed from tensor *values*, not shapes
            (``if x.sum() > 0``): the graph holds the example's branch for every input.
    """

    gm: fx.GraphModule
    forced: list[tuple[str, Any]] = field(default_factory=list)
    opaque: list[tuple[str, str]] = field(default_factory=list)
    state_reads: list[tuple[str, str]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    value_forced: list[tuple[str, Any]] = field(default_factory=list)


def _concrete(a: Any) -> Any:
    """``a`` with each proxy replaced by its value (fx's own ``ParameterProxy`` for a parameter too)."""
    return fx.node.map_aggregate(
        a, lambda v: v.node.meta[CONCRETE] if isinstance(v, fx.Proxy) and CONCRETE in v.node.meta else v)


def _record_value(node: fx.Node, value: Any) -> None:
    """``node``'s value on the example, and the tensor metadata of its tensors (shape propagation's key)."""
    node.meta[CONCRETE] = value
    if isinstance(value, torch.Tensor):
        node.meta["tensor_meta"] = _extract_tensor_metadata(value)
    elif isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        node.meta["tensor_meta"] = tuple(_extract_tensor_metadata(v) for v in value)
    elif isinstance(value, tuple) and value and _tensors_only(value):
        # Nested items, e.g. Norse's (z, LIFFeedForwardState(v, i)): metadata in the same structure.
        node.meta["tensor_meta"] = tuple(pytree.tree_map(_extract_tensor_metadata, v) for v in value)


class ConcreteProxy(fx.Proxy):
    """An fx proxy that also knows its value on the example input."""

    @property
    def concrete(self) -> Any:
        return self.node.meta[CONCRETE]

    def __getattr__(self, k: str) -> ConcreteAttribute:
        return ConcreteAttribute(self, k)

    def _force(self, value: Any, *, by_shape: bool = False) -> Any:
        """Hand Python the example's value; note it, and whether it came from tensor values, not shapes."""
        self.tracer.forced.append((self.node.name, value))
        if not by_shape and self.node.name not in self.tracer.shape_nodes:
            self.tracer.value_forced.append((self.node.name, value))
        return value

    def __len__(self) -> int:
        return self._force(len(self.concrete), by_shape=True)

    def __index__(self) -> int:
        return self._force(operator.index(self.concrete))

    def __int__(self) -> int:
        return self._force(int(self.concrete))

    def __float__(self) -> float:
        return self._force(float(self.concrete))

    def __setitem__(self, key: Any, value: Any) -> None:
        # ``out[t] = v`` (Norse's ConvNet fills its voltages step by step): a node of its own, and
        # the example's tensor is written too, so later reads see the value.
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class ConcreteAttribute(fx.proxy.Attribute, ConcreteProxy):
    """``proxy.attr``: a method to call, or (lazily) a ``getattr`` node with its value."""


class ConcreteTracer(fx.Tracer):
    """An fx tracer whose proxies carry real values from one run of the example input.

    Args:
        inputs: the example value of each ``forward`` argument, by parameter name.
        leaf: extra leaf predicate (``module -> bool``), on top of the defaults above.
        after: ``{module path: path of a module called on its output}``: every call of the
            first is followed by a call of the second, whose result the model sees
            (how amplitudes are spliced in after each call of their neuron).
        record: modules whose first input to keep in ``samples``.
    """

    def __init__(self, inputs: dict[str, Any], leaf: Callable[[nn.Module], bool] | None = None,
                 after: dict[str, str] | None = None, record: Callable[[nn.Module], bool] | None = None) -> None:
        super().__init__(param_shapes_constant=True)
        self.inputs = inputs
        self.extra_leaf = leaf
        self.after = after or {}
        self.record = record
        self.samples: dict[str, torch.Tensor] = {}
        self.shape_nodes: set[str] = set()
        self.value_forced: list[tuple[str, Any]] = []
        self.forced: list[tuple[str, Any]] = []
        self.opaque: list[tuple[str, str]] = []
        self.state_reads: list[tuple[str, str]] = []
        self.calls: dict[str, int] = {}
        self._opaque_paths: set[str] = set()

    # ---------------------------------------------------------------- proxies
    def proxy(self, node: fx.Node) -> ConcreteProxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> ConcreteProxy:
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind == "output":
            return p
        # create_node has recorded a get_attr node's value already
        value = p.node.meta[CONCRETE] if kind == "get_attr" else self._evaluate(p.node, kind, target, args, kwargs)
        if _is_shape_query(kind, target, args) or (
                kind in ("call_function", "call_method") and p.node.all_input_nodes
                and all(n.name in self.shape_nodes for n in p.node.all_input_nodes)):
            self.shape_nodes.add(p.node.name)  # computed from shapes only: the same for every input of this shape
        _record_value(p.node, value)
        return p

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "get_attr":
            # create_arg makes these without a proxy (a buffer used in forward, a tensor constant): their
            # value is the attribute's, as for the parameters create_proxy records.
            _record_value(node, self._evaluate(node, kind, target, args, kwargs))
        return node

    def _evaluate(self, node: fx.Node, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            if target not in self.inputs and args:
                # An argument left at its default (Norse's ``state=None``): fx records a placeholder
                # for it whose one arg is the default, which is what forward() sees.
                return args[0]
            if target not in self.inputs:
                raise UnsupportedPatternError(
                    target, "forward() has an argument the example input does not give",
                    "Pass a value for every argument of forward() (a dict of example inputs)")
            return self.inputs[target]
        if kind == "get_attr":
            # fx's patched Module.__getattr__ answers a parameter or buffer with a proxy (for a parameter,
            # by creating this very get_attr node again: a RecursionError); the value is the tensor itself.
            obj: Any = self.root
            with _unpatched_modules():
                for part in target.split("."):
                    obj = getattr(obj, part)
            return obj
        cargs, ckwargs = _concrete(args), _concrete(kwargs)
        try:
            if kind == "call_function":
                return target(*cargs, **ckwargs)
            if kind == "call_method":
                return getattr(cargs[0], target)(*cargs[1:], **ckwargs)
            if kind == "call_module":
                self.calls[target] = self.calls.get(target, 0) + 1
                module = self.root.get_submodule(target)
                if self.record is not None and target not in self.samples and self.record(module) and cargs \
                        and isinstance(cargs[0], torch.Tensor):
                    self.samples[target] = cargs[0]
                with _unpatched_modules():
                        return module(*cargs, **ckwargs)
        except UnsupportedPatternError:
            raise
        except Exception as e:
            raise UnsupportedPatternError(
                node.name, f"running the example input through the model failed here "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})",
                "Pass an example input shaped like a training batch (see input_layout)") from e
        raise AssertionError(f"unknown node kind {kind}")

    def to_bool(self, obj: fx.Proxy) -> bool:
        return obj._force(bool(obj.concrete))

    def iter(self, obj: fx.Proxy) -> Iterator[fx.Proxy]:
        n = obj._force(len(obj.concrete), by_shape=True)
        return iter([obj[i] for i in range(n)])

    def keys(self, obj: fx.Proxy) -> Any:
        return obj._force(obj.concrete.keys(), by_shape=True)

    # ----------------------------------------------------------------- leaves
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._opaque_paths:
            return True
        if is_container(m):
            return False
        if self.extra_leaf is not None and self.extra_leaf(m):
            return True
        if isinstance(m, _OWN_LEAVES) or is_leaf(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            path = self.path_of_module(m)
        except NameError:
            if is_leaf(m) or next(m.parameters(), None) is not None or next(m.buffers(), None) is not None:
                raise  # a neuron or weights the model does not hold: the enclosing module is kept whole
            # A module made inside forward, without weights (SpikeDHS makes layer.SeqToANNContainer(Nearest(size))
            # on every call): what its forward computes is the calling forward's own code, traced as such.
            return forward(*args, **kwargs)
        if self.is_leaf_module(m, path):
            out = super().call_module(m, forward, args, kwargs)
            value = out.concrete if isinstance(out, ConcreteProxy) else None
            if isinstance(value, tuple) and is_spiking_module(m):
                # (spk, state...): one node per item; the amplitude follows the spikes' item.
                items = [out[i] for i in range(len(value))]
                index = spike_index(m, value)
                if path in self.after and index is not None:
                    items[index] = self.create_proxy("call_module", self.after[path], (items[index],), {})
                return tuple(items)
            if path in self.after:
                out = self.create_proxy("call_module", self.after[path], (out,), {})
            return out
        mark = list(self.graph.nodes)[-1] if len(self.graph.nodes) else None
        state = snapshot(m)
        calls = dict(self.calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except UnsupportedPatternError:
            raise
        except Exception as e:  # an untraceable forward: keep the module whole
            _erase_after(self.graph, mark)
            restore(state)
            self.calls = calls
            inside = [k for k, (p, _) in self.module_stack.items() if p == path or p.startswith(path + ".")]
            for key in inside[::-1]:
                self.module_stack.pop(key)
            self._opaque_paths.add(path)
            self.opaque.append((path, f"its forward cannot be traced ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else 'no message'})"))
            return super().call_module(m, forward, args, kwargs)

    # ------------------------------------------------------------- constants
    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter):
            owner = self._state_owner(a)
            if owner is not None:
                self.state_reads.append(owner)
        return super().create_arg(a)

    def _state_owner(self, t: torch.Tensor) -> tuple[str, str] | None:
        if t.numel() == 0:  # an empty state holds no value (snnTorch's init_leaky() after a reset)
            return None
        for path, m in self.root.named_modules():
            for key, value in state_of(m).items():
                if value is t:
                    return path, key
        return None


# Tensor factories that take sizes: ``torch.zeros(T, N, 10)`` with ``T, N`` from ``x.shape``. Sizes are
# not tensors, so torch's argument parser rejects proxies there instead of dispatching to them.
_FACTORIES = ("zeros", "ones", "empty", "full", "rand", "randn")


def _has_proxy(value: Any) -> bool:
    found: list[fx.Proxy] = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, fx.Proxy) else v)
    return bool(found)


@functools.cache
def _function_apply(cls: type[torch.autograd.Function]) -> Callable[..., Any]:
    """``cls.apply`` as a plain function fx can name in generated code (``<module>.<Function>_apply``)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return cls.apply(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"{cls.__name__}_apply"
    call.__module__ = cls.__module__
    return call


@contextlib.contextmanager
def _traced_factories(tracer: ConcreteTracer) -> Iterator[None]:
    """While tracing, a factory call with a proxy among its arguments becomes a graph node."""
    originals = {name: getattr(torch, name) for name in _FACTORIES}

    def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
        def factory(*args: Any, **kwargs: Any) -> Any:
            if _has_proxy((args, kwargs)):
                return tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)
        return factory

    apply = torch.autograd.Function.__dict__["apply"]

    def traced_apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        # A custom autograd Function (a hand-written surrogate spike) is one node calling its
        # ``apply``: fx would otherwise run ``forward`` on proxies and record its ops, and the
        # graph would lose the Function's backward (no surrogate gradient through the spikes).
        if _has_proxy((args, kwargs)):
            return tracer.create_proxy("call_function", _function_apply(cls), args, kwargs)
        return apply.__get__(None, cls)(*args, **kwargs)

    for name, fn in originals.items():
        setattr(torch, name, traced(fn))
    torch.autograd.Function.apply = classmethod(traced_apply)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        torch.autograd.Function.apply = apply


@contextlib.contextmanager
def _unpatched_modules() -> Iterator[None]:
    """Plain ``nn.Module`` calls while tracing: fx patches ``__call__``/``__getattr__`` to record them."""
    patched_call, patched_getattr = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = _fx_trace._orig_module_call, _fx_trace._orig_module_getattr
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = patched_call, patched_getattr


_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad", "is_sparse"}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "is_floating_point", "is_contiguous", "get_device"}


def _tensors_only(value: Any) -> bool:
    """Whether every leaf of ``value`` (tuples, lists, named tuples, dicts) is a tensor."""
    leaves = pytree.tree_leaves(value)
    return bool(leaves) and all(isinstance(v, torch.Tensor) for v in leaves)


def _is_shape_query(kind: str, target: Any, args: tuple) -> bool:
    if kind == "call_function" and target is getattr:
        return len(args) > 1 and args[1] in _SHAPE_ATTRS
    return kind == "call_method" and target in _SHAPE_METHODS


def _erase_after(graph: fx.Graph, mark: fx.Node | None) -> None:
    nodes = list(graph.nodes)
    start = 0 if mark is None else nodes.index(mark) + 1
    for node in reversed(nodes[start:]):
        graph.erase_node(node)


def capture(model: nn.Module, example_input: Any, *, leaf: Callable[[nn.Module], bool] | None = None,
            after: dict[str, str] | None = None,
            record: Callable[[nn.Module], bool] | None = None) -> CaptureResult:
    """Trace ``model`` on ``example_input`` (no copy is made; modes and the attributes forward writes are restored).

    Runs in eval mode without gradients (BatchNorm statistics do not move), from reset
    neuron state, and leaves every neuron reset. Dead shape queries and comparisons
    that only served Python control flow are removed from the graph.

    Args:
        model: the network.
        example_input: the value of ``forward``'s first argument, or a dict of values
            by argument name.
        leaf: extra leaf predicate (modules to keep whole).
        after: modules spliced in after every call of a module (see `ConcreteTracer`).
        record: modules whose first input to keep (``CaptureResult.samples``).

    Returns:
        A `CaptureResult`.

    Raises:
        UnsupportedPatternError: the example input does not run through the model (names the node).
    """
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # A forward that works in place on its input (x.unsqueeze_(0)) must not change the caller's tensor.
    example_input = fx.node.map_aggregate(example_input, lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
    if isinstance(example_input, dict):
        inputs = dict(example_input)
    else:
        if not params:
            raise UnsupportedPatternError(type(model).__name__, "forward() takes no positional argument",
                                          "Capture needs a model whose forward takes the input tensor")
        inputs = {params[0].name: example_input}
    concrete_args = {p.name: p.default for p in params if p.name not in inputs
                     and p.default is not inspect.Parameter.empty}
    tracer = ConcreteTracer(inputs, leaf, after, record)
    # modes, and attributes forward writes (Norse RegularizationCell's self.state): traced, they hold proxies
    saved = snapshot(model)
    model.eval()
    reset_state(model)
    try:
        with torch.no_grad(), _traced_factories(tracer):
            graph = tracer.trace(model, concrete_args=concrete_args or None)
        _drop_dead_queries(graph)
        # Before the restore: fx parks the tensors forward creates (Norse's torch.as_tensor(alpha)) on
        # the root as `_tensor_constant<i>`; they belong to the graph (copied into gm), not to the
        # user's model, and left there they would renumber the next capture's (another fingerprint).
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except UnsupportedPatternError:
        raise
    except Exception as e:
        raise UnsupportedPatternError(
            type(model).__name__,
            f"the model could not be captured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            "Report this network: its forward uses a construct even real-valued tracing cannot follow") from e
    finally:
        restore(saved)
        reset_state(model)
    for node in gm.graph.nodes:
        node.meta.pop(CONCRETE, None)
    for adapter in adapters():  # neurons that take their state as an argument read the one given
        adapter.thread_state(gm)
    gm.meta[OPAQUE_KEY] = dict(tracer.opaque)
    return CaptureResult(gm, tracer.forced, tracer.opaque, tracer.state_reads, tracer.calls, tracer.samples,
                         tracer.value_forced)


def _drop_dead_queries(graph: fx.Graph) -> None:
    """Remove unused nodes that compute no tensor (shape reads, comparisons for Python branches),
    and unused items of a leaf's tuple output (a neuron's membrane nobody reads)."""
    for node in reversed(list(graph.nodes)):
        if node.op in ("call_function", "call_method") and not node.users and node.target is not operator.setitem and (
                not isinstance(node.meta.get(CONCRETE), torch.Tensor) or (
                node.target is operator.getitem and isinstance(node.args[0], fx.Node)
                and node.args[0].op == "call_module")):
            graph.erase_node(node)


def check_generality(model: nn.Module, example_input: torch.Tensor, batch_dims: tuple[int, ...],
                     result: CaptureResult, after: dict[str, str] | None = None) -> dict[int, int]:
    """The input dims the captured graph is specialized to: ``{dim: size}`` (empty: general).

    Captures again with larger ``batch_dims`` (e.g. T and N) and compares the graphs node
    by node; a graph that changed (a loop unrolled once more, a branch taken differently,
    a baked size) depends on those sizes. First every dim at once, grown by different
    amounts (1, 2, …, so dims of equal size in the example differ in the probe): an
    unchanged graph clears them all in one capture, the common case. Otherwise each dim
    is grown by one alone, to tell which.
    """
    dims = [d for d in batch_dims if d < example_input.dim()]
    reference = _signature(result.gm.graph)
    if len(dims) > 1 and _same_graph(model, _grown(example_input, {d: i + 1 for i, d in enumerate(dims)}),
                                     reference, after):
        return {}
    return {d: example_input.shape[d] for d in dims
            if not _same_graph(model, _grown(example_input, {d: 1}), reference, after)}


def _grown(x: torch.Tensor, extra: dict[int, int]) -> torch.Tensor:
    """``x`` with ``extra[d]`` more entries along each dim ``d`` (copies of its first entry there)."""
    for dim, k in extra.items():
        x = torch.cat([x, *[x.narrow(dim, 0, 1)] * k], dim=dim)
    return x


def _same_graph(model: nn.Module, x: torch.Tensor, reference: list[tuple[str, str, str]],
                after: dict[str, str] | None) -> bool:
    """Whether ``model`` captured on ``x`` gives the graph whose signature is ``reference``."""
    try:
        other = capture(model, x, after=after)
    except UnsupportedPatternError:
        return False
    return _signature(other.gm.graph) == reference


def _signature(graph: fx.Graph) -> list[tuple[str, str, str]]:
    def arg(a: Any) -> str:
        return fx.node.map_arg(a, lambda n: n.name).__repr__()

    return [(n.op, str(n.target), arg((n.args, n.kwargs))) for n in graph.nodes]
