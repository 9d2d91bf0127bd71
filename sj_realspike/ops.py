"""What each fx node does, as far as scaled spikes are concerned."""

from __future__ import annotations

import enum
import numbers
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .amplitude import Amplitude
from .frameworks import defined_beyond, identity_types, layer_wrappers
from .neurons import is_neuron

__all__ = ["CONV_TYPES", "OpKind", "classify", "computed_weight", "describe", "permutation", "reduction", "scalar_factor"]


class OpKind(enum.Enum):
    AMPLITUDE = "amplitude"
    NEURON = "neuron"  # a membrane: scaled spikes arriving here need a synapse of weight a
    CONV = "conv"
    LINEAR = "linear"
    RESHAPE = "reshape"  # flatten / view / reshape / (un)squeeze: linear, moves features around
    AVGPOOL = "avgpool"  # linear, channel-preserving: average pooling, upsampling
    MAXPOOL = "maxpool"  # commutes with non-negative per-channel scaling only
    IDENTITY = "identity"  # dropout (identity at inference), nn.Identity
    SCALAR = "scalar"  # multiply / divide by a Python number, negate
    ADD = "add"
    PERMUTE = "permute"  # permute / transpose: moves dims
    MEAN = "mean"  # mean / sum over some dims: linear
    SPLIT = "split"  # chunk / split: a tuple of slices, read by getitem
    GETITEM = "getitem"  # indexing / slicing, or one slice of a split
    MATMUL = "matmul"  # product of two tensors (attention), bilinear
    HADAMARD = "hadamard"  # element-wise product of two tensors (SEW AND, QKFormer's attn * k)
    CAT = "cat"  # concatenation of tensors along a dim
    STACK = "stack"  # tensors stacked along a new dim (per-step outputs joined over time: Norse's Lift)
    SHAPE = "shape"  # reads a shape, not values
    OUTPUT = "output"
    OTHER = "other"


_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.unflatten, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze"}
_PERMUTE_FUNCS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}
_PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}
_MEAN_FUNCS = {torch.mean, torch.sum}
_MEAN_METHODS = {"mean", "sum"}
_SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split}
_SPLIT_METHODS = {"chunk", "split", "tensor_split"}
_MATMUL_FUNCS = {operator.matmul, torch.matmul, torch.bmm}
_IDENTITY_METHODS = {"contiguous", "clone"}
_AVGPOOL_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.interpolate}
_MAXPOOL_FUNCS = {F.max_pool1d, F.max_pool2d}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCS = {operator.truediv, operator.itruediv, torch.div}
_NEG_FUNCS = {operator.neg, torch.neg, torch.negative}
_NEG_METHODS = {"neg", "negative"}

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_SYNAPSE_BASES = (*CONV_TYPES, nn.Linear)


def computed_weight(m: nn.Module) -> str | None:
    """Why conv/linear ``m`` may not apply its ``weight`` parameter as it is (``None``: it does).

    torch's convs (transposed too) and Linear, the frameworks' step-mode wrappers of them and subclasses that define
    only a constructor apply ``weight``; a subclass with its own ``forward`` or weight method
    (SpikingJelly's ``WSConv2d`` standardizes its weight in forward) or a module with forward pre-hooks
    (``torch.nn.utils.weight_norm``, ``prune``: they rewrite ``weight`` before each call) or
    parametrizations computes what it applies, so scaling ``weight`` would not scale it. (Hooks after
    the call, such as monitors, see the output only.)
    """
    if m._forward_pre_hooks or getattr(m, "parametrizations", None):
        return "computes the weight it applies (forward pre-hooks or parametrizations: weight_norm, prune)"
    base = next((b for b in _SYNAPSE_BASES if isinstance(m, b)), None)
    if base is None:
        return None
    if own := defined_beyond(type(m), base, layer_wrappers()):
        return f"computes the weight it applies in its own {', '.join(own)} (not {base.__name__}'s)"
    return None


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> OpKind:
    """The role of ``node`` when one of its inputs carries scaled spikes."""
    if node.op == "output":
        return OpKind.OUTPUT
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, Amplitude):
            return OpKind.AMPLITUDE
        if is_neuron(m):
            return OpKind.NEURON
        if isinstance(m, CONV_TYPES) and computed_weight(m) is None:
            return OpKind.CONV
        if isinstance(m, nn.Linear) and computed_weight(m) is None:
            return OpKind.LINEAR
        if isinstance(m, nn.Flatten):
            return OpKind.RESHAPE
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Upsample)):
            return OpKind.AVGPOOL
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return OpKind.MAXPOOL if not m.return_indices else OpKind.OTHER
        if isinstance(m, _DROPOUT) or isinstance(m, identity_types()):
            return OpKind.IDENTITY
        return OpKind.OTHER
    if node.op in ("call_function", "call_method"):
        # Functions are matched by identity, methods by name; the first row that applies wins.
        t = node.target
        for kind, functions, methods, applies in _CALLS:
            if (t in methods if node.op == "call_method" else t in functions) and (applies is None or applies(node)):
                return kind
    return OpKind.OTHER


def _static_select(node: fx.Node) -> bool:
    """A getitem, or a ``select`` with integer ``dim`` and ``index`` (positional or by keyword)."""
    if node.target is operator.getitem:
        return True
    picked = (list(node.args[1:]) + [node.kwargs.get("dim"), node.kwargs.get("index")])[:2]
    return all(isinstance(v, int) for v in picked)


def _two_tensors(node: fx.Node) -> bool:
    return len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)


def _is_shape_attr(node: fx.Node) -> bool:
    return node.target is not getattr or node.args[1] in ("shape", "ndim", "dtype", "device")


# (kind, functions, method names, extra condition): how call_function / call_method nodes classify.
_CALLS: tuple[tuple[OpKind, frozenset, frozenset, Callable[[fx.Node], bool] | None], ...] = tuple(
    (kind, frozenset(functions), frozenset(methods), applies) for kind, functions, methods, applies in (
        (OpKind.RESHAPE, _RESHAPE_FUNCS, _RESHAPE_METHODS, None),
        (OpKind.AVGPOOL, _AVGPOOL_FUNCS, (), None),
        (OpKind.MAXPOOL, _MAXPOOL_FUNCS, (), lambda n: not n.kwargs.get("return_indices", False)),
        (OpKind.ADD, _ADD_FUNCS, ("add",), lambda n: "alpha" not in n.kwargs),
        (OpKind.SCALAR, _MUL_FUNCS | _DIV_FUNCS | _NEG_FUNCS, {"mul", "div"} | _NEG_METHODS,
         lambda n: scalar_factor(n) is not None),
        (OpKind.HADAMARD, _MUL_FUNCS, ("mul",), _two_tensors),
        (OpKind.SHAPE, (getattr,), ("size", "dim"), _is_shape_attr),
        (OpKind.IDENTITY, (F.dropout, F.dropout2d), _IDENTITY_METHODS, lambda n: n.op == "call_function" or len(n.args) == 1),
        (OpKind.PERMUTE, _PERMUTE_FUNCS, _PERMUTE_METHODS, None),
        (OpKind.MEAN, _MEAN_FUNCS, _MEAN_METHODS, lambda n: _reduced_dims(n) is not None),
        (OpKind.SPLIT, _SPLIT_FUNCS, _SPLIT_METHODS, None),
        (OpKind.GETITEM, (operator.getitem, torch.select), ("select",), _static_select),
        (OpKind.CAT, (torch.cat, torch.concat, torch.concatenate), (), None),
        (OpKind.STACK, (torch.stack,), (), None),
        (OpKind.MATMUL, _MATMUL_FUNCS, ("matmul",), None),
    ))


def _reduced_dims(node: fx.Node) -> tuple[int, ...] | None:
    """The dims ``mean``/``sum`` reduce (``None``: all of them, or a dtype/other argument we don't model)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        return (dims,)
    if isinstance(dims, (tuple, list)) and dims and all(isinstance(d, int) for d in dims):
        return tuple(dims)
    return None


def reduction(node: fx.Node) -> tuple[tuple[int, ...], bool]:
    """``(dims, keepdim)`` of a `OpKind.MEAN` node (dims may be negative)."""
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return _reduced_dims(node), bool(keepdim)


def permutation(node: fx.Node, rank: int) -> list[int] | None:
    """Output dim ``i`` reads input dim ``perm[i]`` for a `OpKind.PERMUTE` node (``None``: not static)."""
    args = list(node.args[1:])
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        dims = dims or node.kwargs.get("dims")
        if not dims or not all(isinstance(d, int) for d in dims) or len(dims) != rank:
            return None
        return [d % rank for d in dims]
    a, b = (args + [node.kwargs.get("dim0"), node.kwargs.get("dim1")])[:2] if len(args) < 2 else args[:2]
    if not (isinstance(a, int) and isinstance(b, int)):
        return None
    perm = list(range(rank))
    perm[a % rank], perm[b % rank] = perm[b % rank], perm[a % rank]
    return perm


def scalar_factor(node: fx.Node) -> float | None:
    """For ``x * c``, ``c * x`` or ``x / c`` with a Python number ``c``: the factor on ``x``; −1 for ``−x``."""
    if node.target in _NEG_FUNCS or node.target in _NEG_METHODS:
        return -1.0 if len(node.args) == 1 and not node.kwargs else None
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    is_div = node.target in _DIV_FUNCS or node.target == "div"
    if isinstance(b, numbers.Real) and isinstance(a, fx.Node):
        return 1.0 / float(b) if is_div else float(b)
    if isinstance(a, numbers.Real) and isinstance(b, fx.Node) and not is_div:
        return float(a)
    return None


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short human description such as ``'layer1.0.conv1' (Conv2d)`` or ``'mul' (mul)``."""
    if node.op == "call_module":
        return f"'{node.name}' ({type(modules[node.target]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"'{node.name}' ({target})"
