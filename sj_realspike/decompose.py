"""`lean_decompositions`: the exporter's second trace, skipped where it would change nothing.

``torch.onnx.export(dynamo=True)`` traces the model with ``torch.export`` and then traces
the whole program again (``ExportedProgram.run_decompositions``) to decompose the ops that
torchlib has no ONNX function for. With a dynamic batch that second trace is half of an
export (sew_resnet18: 5.1 of 10.2 s), most of it symbolic-shape bookkeeping, while the
deploy graphs of this package hold a handful of such nodes at most: the lowered neurons'
``.to(dtype)`` and ``1 − s``, the network's global ``AdaptiveAvgPool2d(1)``.

While `lean_decompositions` is active, the exporter's decomposition step first reads the
program. When every node is an op torchlib translates as it is (and that torch would not
decompose), an assertion the exporter drops next, or one of the few ops in `_RENAMES`,
whose decomposition is a single op, the program is kept and those nodes are renamed in
place to exactly what torch's decomposition makes of them. Anything else (another op to
decompose, a mutating op, a control-flow subgraph) runs torch's own decomposition, as
without it. The ONNX graph is the same either way; what is left of reshape chains the
full decomposition would have merged, `sj_realspike.compact` merges.

It reaches into torch's private exporter modules; where those have moved (another torch
release), it changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx

__all__ = ["lean_decompositions"]

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()  # the module attribute is patched for the duration of one export
_aten = torch.ops.aten
# Removed by the exporter right after decomposing (torch.onnx's _fx_passes.remove_assertion_nodes).
_ASSERTIONS = frozenset({_aten.sym_constrain_range_for_size.default, _aten._assert_async.default,
                         _aten._assert_async.msg, _aten._assert_scalar.default,
                         _aten._assert_tensor_metadata.default})

Rename = tuple[Any, tuple[Any, ...], dict[str, Any]]  # (target, args, kwargs)


def _to_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Rename | None:
    """``x.to(dtype)`` → ``_to_copy(x, dtype=dtype)`` (its CompositeImplicit kernel), default flags only."""
    x, dtype, *flags = args
    flags += [kwargs.get(k) for k in ("non_blocking", "copy", "memory_format") if k in kwargs]
    if any(f not in (None, False) for f in flags):
        return None
    return _aten._to_copy.default, (x,), {"dtype": dtype}


def _rsub(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Rename | None:
    """``other − x`` (``rsub(x, other)``) → ``sub(other, x)``, as torch's reference decomposition, α = 1 only."""
    x, other = args[:2]
    alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
    if alpha != 1 or set(kwargs) - {"alpha"}:
        return None
    return _aten.sub.Tensor, (other, x), {}


def _global_avg_pool(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Rename | None:
    """``adaptive_avg_pool2d(x, 1)`` → ``x.mean((-1, -2), keepdim=True)``, as its CompositeImplicit kernel."""
    if kwargs or len(args) != 2 or list(args[1]) != [1, 1]:
        return None
    return _aten.mean.dim, (args[0], [-1, -2], True), {}


# Ops torchlib lacks whose decomposition is one op: renamed in place instead of a retrace.
_RENAMES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Rename | None]] = {
    _aten.to.dtype: _to_dtype,
    _aten.rsub.Scalar: _rsub,
    _aten.rsub.Tensor: _rsub,
    _aten.adaptive_avg_pool2d.default: _global_avg_pool,
}


def _renames(graph: fx.Graph, implemented: set[Any], decompositions: dict[Any, Any]) -> dict[fx.Node, Rename] | None:
    """The renames that make ``graph`` what torch's decomposition would, or ``None`` (it must run).

    ``implemented``: the ops torchlib translates; ``decompositions``: those the exporter
    would decompose all the same (its ONNX-friendly table).
    """
    renames: dict[fx.Node, Rename] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        target = node.target
        if node.op != "call_function":  # get_attr of a control-flow subgraph, ...
            return _needed(node, f"a {node.op} node")
        if target in _ASSERTIONS:
            continue
        schema = getattr(target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return _needed(node, "a mutating op")
        if target in implemented and target not in decompositions:
            continue
        rename = _RENAMES.get(target)
        renamed = rename(node.args, dict(node.kwargs)) if rename is not None else None
        if renamed is None:
            return _needed(node, "an op torchlib does not translate as it is")
        renames[node] = renamed
    return renames


def _needed(node: fx.Node, why: str) -> None:
    logger.debug("decomposing the exported program: %s is %s (%s)", node.name, why, node.target)
    return None


@contextmanager
def lean_decompositions() -> Iterator[None]:
    """While active, exports decompose their program only when renaming a few nodes cannot do it."""
    try:
        from torch.onnx._internal.exporter import _decomp, _fx_passes

        original = _fx_passes.decompose_with_registry
        implemented_overloads = _decomp.get_onnx_implemented_overloads
        friendly_table = _decomp.create_onnx_friendly_decomposition_table
    except (ImportError, AttributeError):
        yield
        return

    def decompose_with_registry(exported_program: torch.export.ExportedProgram, registry: Any) -> Any:
        implemented = set(implemented_overloads(registry))
        renames = _renames(exported_program.graph, implemented, friendly_table(implemented))
        if renames is None:
            return original(exported_program, registry)
        for node, (target, args, kwargs) in renames.items():
            node.target, node.args, node.kwargs = target, args, kwargs
        exported_program.graph_module.recompile()
        return exported_program

    with _LOCK:
        _fx_passes.decompose_with_registry = decompose_with_registry
        try:
            yield
        finally:
            _fx_passes.decompose_with_registry = original
