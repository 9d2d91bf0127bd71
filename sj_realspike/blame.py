"""`blame_export_failure`: which module of a lowered graph made ``torch.onnx.export`` fail.

The exporter's errors name no module: a data-dependent branch deep inside a neuron kept
with its framework's own forward (e.g. SpikingJelly's `MaskedPSN` tests ``lambda_ >= 1``
on a buffer) surfaces as ``GuardOnDataDependentSymNode`` with a line number in the
framework's source. After a failed export, each module of the graph that is neither a
standard ``torch.nn`` layer nor one of this package's lowered modules is captured on its
own with ``torch.onnx.export`` on the input it received in one run of the graph; the first
one that does not export is the culprit, reported with its node name and the cause (a
branch the capture cannot take, or an op such as a framework's custom kernel that has no
ONNX function). An op of the graph itself that torch's exporter cannot translate (``No ONNX
function found for aten.cummax``) is found by its name among the graph's function and method
calls.
"""

from __future__ import annotations

import re
import warnings

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import UnsupportedPatternError
from .decompose import lean_decompositions
from .torchlib_cache import cached_torchlib_registry


def _suspects(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """Modules called by the graph whose forward is neither torch's nor this package's."""
    modules = dict(gm.named_modules())
    found: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        home = type(m).__module__
        if not (home.startswith("torch.") or home.startswith("sj_realspike.")):
            found.setdefault(node.target, m)
    return found


def _inputs_seen(gm: fx.GraphModule, suspects: dict[str, nn.Module], x: torch.Tensor) -> dict[str, tuple]:
    """The positional inputs each suspect received in one no-grad run of the graph."""
    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args))
             for name, m in suspects.items()]
    try:
        with torch.no_grad():
            gm(x)
    except Exception:  # the graph itself fails in eager mode: the inputs seen so far still tell
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen


def _first_line(e: BaseException) -> str:
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip().split("\n")[0]
    return f"{type(root).__name__}: {text}"


def _untranslated_op(gm: fx.GraphModule, error: BaseException) -> UnsupportedPatternError | None:
    """The error naming the graph's call of an aten op the exporter has no ONNX function for, or ``None``."""
    found = re.search(r"No ONNX function found for <OpOverload\(op='aten\.(\w+)'", _first_line(error))
    if found is None:
        return None
    op = found.group(1)
    for node in gm.graph.nodes:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
        if node.op in ("call_function", "call_method") and isinstance(name, str) and name.strip("_") == op.strip("_"):
            return UnsupportedPatternError(
                node.name, f"torch.onnx has no ONNX translation of {name} (aten.{op}), which the deploy model "
                "computes here", "Replace it with ops ONNX has, or compute it outside the exported network")
    return None


def blame_export_failure(gm: fx.GraphModule, x: torch.Tensor | None, reset,
                         error: BaseException | None = None) -> UnsupportedPatternError | None:
    """The error naming the node or module that does not export to ONNX, or ``None``.

    Args:
        gm: the lowered graph whose export failed.
        x: the input the export was traced with (``None``: a graph of several inputs, whose modules
            are not probed one by one).
        reset: called with a module to reset its state (so capture starts from reset state).
        error: the exporter's error, when it may name an aten op of the graph itself.
    """
    if error is not None and (untranslated := _untranslated_op(gm, error)) is not None:
        return untranslated
    suspects = _suspects(gm)
    if not suspects or x is None:
        return None
    reset(gm)
    seen = _inputs_seen(gm, suspects, x)
    for name, args in seen.items():
        m = suspects[name]
        reset(m)
        try:
            with torch.no_grad(), warnings.catch_warnings(), cached_torchlib_registry(), lean_decompositions():
                warnings.simplefilter("ignore")
                torch.onnx.export(m, args, dynamo=True, optimize=False, verbose=False)
        except Exception as e:
            return UnsupportedPatternError(
                name, f"{type(m).__name__} has no export lowering, and its own forward cannot be exported "
                f"to ONNX ({_first_line(e)})",
                "Deploy this neuron type outside ONNX, or replace it with one that has a lowering "
                "(IF/LIF/PLIF and their ternary twins)")
        finally:
            reset(m)
    return None
