"""Where the spikes are in an exported ONNX graph, and whether anything scales them.

``torch.onnx.export(dynamo=True)`` records on every node the module path and class
of each enclosing module (``pkg.torch.onnx.name_scopes`` / ``.class_hierarchy``).
A *spike tensor* is a float value produced inside a neuron module and read outside
it: the neuron's output. From each one, `static_violations` walks the graph forward
until the spikes reach a synapse (``Conv``, ``MatMul``, ``Gemm``, or an op of a
`DiagonalSynapse`/`UnsharedConv2d` module, lowered or not), a neuron's membrane or
the graph output; any op on the way that scales values by the weights alone
(``Mul``/``Div`` by a constant, ``BatchNormalization``) is a violation: a spike
amplitude that was not folded. A product of two spike tensors (SEW ``AND``) is still
a spike and passes, as does a factor of −1, 0 or 1 (``Neg``, a mask: no magnitude).
Where the spikes are normalized by their own statistics (``LayerNorm``, ``GroupNorm``,
RMSNorm's ``x / rms(x)``) or multiplied by a gate computed from the data, they are no
longer spikes, and the walk ends there; their shape (``Shape``) is no value at all.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx

from .frameworks import neuron_types, synapse_types, ternary_types
from .lowered import LoweredDiagonalSynapse, LoweredNeuron, LoweredTernaryNeuron, LoweredUnsharedConv2d
from .synapses import DiagonalSynapse, UnsharedConv2d
from .weightless import weightless

__all__ = ["SpikeTensor", "Violation", "spike_tensors", "static_violations"]

_SCOPES, _CLASSES = "pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"
# Where spikes arrive: fold-made synapses, and the frameworks' own synaptic filters (SpikingJelly's
# SynapseFilter: its decay multiplies what it integrates, not an amplitude; amplitudes never pass it).
_FOLD_SYNAPSES = (DiagonalSynapse, UnsharedConv2d, LoweredDiagonalSynapse, LoweredUnsharedConv2d)


@cache
def _neuron_classes() -> tuple[type, ...]:
    return (*neuron_types(), LoweredNeuron)


@cache
def _ternary_classes() -> tuple[type, ...]:
    return (*ternary_types(), LoweredTernaryNeuron)


@cache
def _synapse_classes() -> tuple[type, ...]:
    return (*_FOLD_SYNAPSES, *synapse_types())


_SYNAPSE_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul",
                "Gemm", "Einsum"}
# Ops that multiply their first input by their others: by constants only, an amplitude. (``Neg`` is a factor −1,
# a sign and no magnitude; ``Reciprocal`` is 1/x, no factor at all.)
_SCALING_OPS = {"Mul", "Div", "BatchNormalization"}
# Normalizations by the statistics of their own input: the factor 1/σ(x) is computed from the data (a constant
# amplitude a > 0 before a LayerNorm even cancels out), so their outputs are normalized activations, not spikes.
_DATA_NORMS = {"InstanceNormalization", "LayerNormalization", "GroupNormalization", "LpNormalization",
               "MeanVarianceNormalization"}
_SHAPE_OPS = {"Shape", "Size"}  # read their input's shape, never its values
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_STATE_OUT = "state_out."  # a stream graph's next membranes (sj_realspike.stream.STATE_OUT)


@dataclass(frozen=True)
class SpikeTensor:
    """A neuron's output inside the graph."""

    neuron: str  # module path, e.g. "layer1.0.sn1"
    value: str  # ONNX value name
    kind: str  # "binary" ({0, 1}) or "ternary" ({-1, 0, 1})
    module_class: str


@dataclass(frozen=True)
class Violation:
    """An op that scales a neuron's spikes before they reach a synapse."""

    neuron: str
    node: str
    op_type: str
    scope: str  # module path of the op ("" at top level)
    module_class: str

    def __str__(self) -> str:
        where = f"in '{self.scope}' ({self.module_class})" if self.scope else "at top level"
        return (f"{self.op_type} node '{self.node}' {where} scales the spikes of '{self.neuron}' "
                f"before any synapse: an amplitude that was not folded")


@dataclass(frozen=True)
class _Scope:
    neuron: tuple[str, str] | None  # innermost neuron module (path, class)
    synapse: bool  # inside a fold-made synapse module
    path: str  # innermost module path
    cls: str


@cache
def _resolve(qualname: str) -> type | None:
    """The class ``qualname`` names among the modules already imported (``None``: no such class).

    Never imports and never calls a module's ``__getattr__``: the names come from the ONNX file
    under check, and importing a module runs its code. The classes of a model in memory are
    imported already.
    """
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:i]))
        for name in parts[i:] if obj is not None else ():
            obj = vars(obj).get(name) if hasattr(obj, "__dict__") else None
        if isinstance(obj, type):
            return obj
    return None


_MAX_SCOPE_CHARS = 1 << 16  # far more than any module path list; a longer value is not the exporter's


def _scope(node: onnx.NodeProto) -> _Scope:
    props = {p.key: p.value for p in node.metadata_props if len(p.value) <= _MAX_SCOPE_CHARS}
    try:
        paths = ast.literal_eval(props.get(_SCOPES, "[]"))
        classes = ast.literal_eval(props.get(_CLASSES, "[]"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        paths, classes = [], []
    # Both lists end with the op itself; the entries before it are the enclosing modules.
    modules = [(p, c) for p, c in zip(paths[:-1], classes[:-1], strict=False) if p]  # "" is the exporter's root wrapper
    neuron_scope, synapse = None, False
    for path, cls in modules:
        resolved = _resolve(cls)
        if resolved is not None and issubclass(resolved, _neuron_classes()):
            neuron_scope = (path, cls)
        if resolved is not None and issubclass(resolved, _synapse_classes()):
            synapse = True
    path, cls = modules[-1] if modules else ("", "")
    return _Scope(neuron_scope, synapse, path, cls)


def _constant_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every initializer and ``Constant`` output, read from the tensor itself."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.attribute:
            continue
        a = node.attribute[0]
        if a.type == onnx.AttributeProto.TENSOR:
            elem = a.t.data_type
        elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
            elem = a.sparse_tensor.values.data_type
        elif a.name in ("value_float", "value_floats"):
            elem = onnx.TensorProto.FLOAT
        else:  # value_int(s), value_string(s)
            elem = onnx.TensorProto.INT64 if a.name.startswith("value_int") else onnx.TensorProto.STRING
        types.update((out, elem) for out in node.output)
    return types


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, by shape inference on a weightless copy stripped of ``value_info``.

    The stored ``value_info`` is ignored (it changes nothing the model computes, and an
    edited one must not hide a value's type); constants are typed by their own tensors.
    """
    bare = weightless(model)
    del bare.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(bare)
    infos = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    types = {v.name: v.type.tensor_type.elem_type for v in infos}
    types.update(_constant_types(model))
    return types


def _float_values(model: onnx.ModelProto) -> set[str]:
    """Float-typed values (`_value_types`)."""
    return {name for name, elem in _value_types(model).items() if elem in _FLOAT_TYPES}


def _scopes(model: onnx.ModelProto) -> list[_Scope]:
    """Each node's scope; a node without one (made by a graph rewrite) takes its first input's."""
    nodes = list(model.graph.node)
    if not any(_SCOPES in {p.key for p in n.metadata_props} for n in nodes):
        raise ValueError("the ONNX graph records no module scopes: export it with torch.onnx.export(dynamo=True) "
                         "(sj_realspike.export_onnx does) to find its neurons")
    by_value: dict[str, _Scope] = {}
    scopes = []
    for n in nodes:
        if any(p.key == _SCOPES for p in n.metadata_props):
            scope = _scope(n)
        else:
            scope = next((by_value[v] for v in n.input if v in by_value), _Scope(None, False, "", ""))
        scopes.append(scope)
        by_value.update((out, scope) for out in n.output)
    return scopes


def spike_tensors(model: onnx.ModelProto) -> list[SpikeTensor]:
    """Every neuron output in ``model`` (float values crossing a neuron module's boundary).

    A stream graph's next membranes (outputs ``state_out.<neuron>``) leave their neuron
    only to be fed back: they are state, not spikes. So do a neuron's membrane, current
    and recorded traces where the module returns them next to its spikes (Norse's
    ``(z, state)``, snnTorch's ``(spk, mem)``, ``record_states=True``): where a neuron
    hands on values computed from threshold comparisons alone (`_analog_values`: its
    spikes) and others that carry the input's magnitude, only the former are spikes.
    A neuron with no threshold output (graded or integer spikes) keeps all of them.

    Raises:
        ValueError: the graph carries no module scopes (not from ``torch.onnx.export(dynamo=True)``).
    """
    nodes = list(model.graph.node)
    scopes = _scopes(model)
    types = _value_types(model)
    floats = {name for name, elem in types.items() if elem in _FLOAT_TYPES}
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    readers: dict[str, list[int | None]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    for out in model.graph.output:
        if not out.name.startswith(_STATE_OUT):
            readers.setdefault(out.name, []).append(None)
    found = []
    for value, i in producer.items():
        owner = scopes[i].neuron
        if owner is None or value not in floats:
            continue
        if any(j is None or scopes[j].neuron != owner for j in readers.get(value, [])):
            resolved = _resolve(owner[1])
            kind = "ternary" if resolved is not None and issubclass(resolved, _ternary_classes()) else "binary"
            found.append(SpikeTensor(owner[0], value, kind, owner[1]))
    return _without_state(found, _analog_values(model, types))


def _without_state(found: list[SpikeTensor], analog: set[str]) -> list[SpikeTensor]:
    """``found`` less the analog outputs of each neuron that also has a threshold output (its state)."""
    thresholded = {s.neuron for s in found if s.value not in analog}
    return [s for s in found if s.neuron not in thresholded or s.value not in analog]


def _analog_values(model: onnx.ModelProto, types: dict[str, int]) -> set[str]:
    """Values that carry the magnitude of the graph's inputs (membranes, currents, their traces).

    The inputs are analog, and so is every output of an op that reads an analog value,
    except a boolean (a threshold comparison keeps only its outcome: ``[h > θ]`` cast to
    float, and what stacks, reshapes or scales it, is a function of comparisons and
    weights alone) and a shape. Nodes are in topological order: one pass.
    """
    analog = {v.name for v in model.graph.input} - {t.name for t in model.graph.initializer}  # IR < 4 lists weights
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS or not any(v in analog for v in node.input):
            continue
        analog.update(out for out in node.output if types.get(out) != onnx.TensorProto.BOOL)
    return analog


def static_violations(model: onnx.ModelProto, spikes: list[SpikeTensor] | None = None) -> list[Violation]:
    """Ops that scale spikes between a neuron and the synapse or membrane that consumes them (empty: pure).

    Scaling on the way to the graph output only (a firing rate divided by ``T``) is the
    model's read-out, not an unfolded amplitude, and is not reported.

    Args:
        model: an exported model.
        spikes: its spike tensors (default: `spike_tensors(model)`).
    """
    spikes = spike_tensors(model) if spikes is None else spikes
    nodes = list(model.graph.node)
    scopes = _scopes(model)
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    units = _unit_constants(model)
    logic = _spike_logic(model, {s.value for s in spikes}, units)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    constants = {t.name for t in model.graph.initializer} | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    static = _static_values(model)
    violations: list[Violation] = []
    for s in spikes:
        i = producer.get(s.value)
        start = None
        if i is not None and nodes[i].op_type in _SCALING_OPS and (set(nodes[i].input) & constants) - units:
            # The neuron's output itself is scaled by a constant: an amplitude attributed to the neuron module.
            start = Violation(s.neuron, nodes[i].name, nodes[i].op_type, scopes[i].path, scopes[i].cls)
        # A scaling op is a violation only if its result goes on into a synapse or a membrane:
        # the model's own read-out arithmetic on its way to the output (a rate `/ T`, an output neuron's
        # graded spikes) is not an amplitude.
        frontier: list[tuple[str, Violation | None]] = [(s.value, start)]
        seen: set[tuple[int, Violation | None]] = set()
        while frontier:
            value, pending = frontier.pop()
            for i in readers.get(value, []):
                if (i, pending) in seen:
                    continue
                seen.add((i, pending))
                node, scope = nodes[i], scopes[i]
                if node.op_type in _SHAPE_OPS:
                    continue  # it reads the shape, not the spikes: arithmetic on it (PixelUnshuffle's H / 2) is none
                if scope.neuron is not None or scope.synapse or node.op_type in _SYNAPSE_OPS:
                    if pending is not None and pending not in violations:
                        violations.append(pending)  # scaled spikes arrived at a membrane or a synapse
                    continue
                if pending is None and not set(node.output) <= logic:
                    if _ends_spikes(node, value, static):
                        continue  # normalized or gated: an activation, no longer spikes (a scaled one walks on)
                    if _scales_by_weights(node, value, static, units):
                        pending = Violation(s.neuron, node.name, node.op_type, scope.path, scope.cls)
                frontier.extend((out, pending) for out in node.output)
    return violations


def _scales_by_weights(node: onnx.NodeProto, value: str, static: set[str], units: set[str]) -> bool:
    """Whether ``node`` multiplies ``value`` by a factor of the weights alone that has a magnitude: an amplitude.

    ``Mul`` by constants that are all −1, 0 or 1 (a sign, a mask, ``b[:1] · 0``) keeps
    ``|s| ≤ 1`` and is none; ``Div`` scales its dividend only (``c / x`` is no factor of
    ``x``), ``BatchNormalization`` its first input.
    """
    if node.op_type == "Mul":
        factors = [v for v in node.input if v and v != value]
        return all(v in static for v in factors) and not all(v in units for v in factors)
    return node.op_type in _SCALING_OPS and node.input[0] == value \
        and all(v in static for v in node.input[1:] if v)


def _ends_spikes(node: onnx.NodeProto, value: str, static: set[str]) -> bool:
    """Whether ``node`` turns the spikes in ``value`` into an activation that is no longer spikes.

    A normalization by their own statistics (``LayerNorm``: ``(s − μ(s)) / σ(s) · γ + β``),
    a product or quotient with a factor computed from the data (a gate ``s · σ(f(s))``,
    RMSNorm's ``s / rms(s)``), a reciprocal: none is a constant factor, and a weight after
    one (the norm's ``γ``) scales the activation, not spikes. An amplitude applied before
    one still walks on through it (see `static_violations`).
    """
    if node.op_type in _DATA_NORMS or node.op_type == "Reciprocal":
        return True
    if node.op_type == "Mul":
        return any(v not in static for v in node.input if v and v != value)
    return node.op_type == "Div" and (node.input[0] != value or node.input[1] not in static)


def _unit_constants(model: onnx.ModelProto) -> set[str]:
    """Float constants read by a ``Mul`` whose every element is −1, 0 or 1: factors without a magnitude."""
    multiplied = {v for n in model.graph.node if n.op_type == "Mul" for v in n.input}
    tensors = {t.name: t for t in model.graph.initializer if t.name in multiplied}
    tensors.update((out, n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant" and n.attribute
                   and n.attribute[0].type == onnx.AttributeProto.TENSOR for out in n.output if out in multiplied)
    return {name for name, t in tensors.items()
            if t.data_type in _FLOAT_TYPES and _is_unit(onnx.numpy_helper.to_array(t))}


def _static_values(model: onnx.ModelProto) -> set[str]:
    """Values the input data cannot change: weights and constants, shapes, and what is computed from them
    only (an amplitude expanded to the spikes' shape is one; a gate computed from the spikes is not)."""
    static = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # topological order: one pass
        if node.op_type in ("Constant", "Shape", "Size") or all(v in static for v in node.input if v):
            static.update(node.output)
    return static


_STRUCTURAL_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Concat", "Gather",
                   "Expand", "Tile", "Identity", "MaxPool", "Max", "Min", "Mul", "Neg"}


def _spike_logic(model: onnx.ModelProto, spike_values: set[str], units: set[str]) -> set[str]:
    """Values that are still spikes: moved (reshape, slice, max-pool…) or combined by logic.

    ``a · b`` of two spike values is AND, ``1 − a`` is NOT (SEW ``IAND``), ``−a`` and ``a``
    times a constant of −1, 0 and 1 (``units``: a sign, a mask, ``a[:1] · 0``) stay in {−1, 0, 1}:
    the results are spikes again, so a ``Mul`` producing one is not an amplitude. Every
    other initializer and ``Constant`` output is a non-spike operand (a float constant
    among an op's data inputs makes its result a non-spike, e.g. ``Mul(s, 0.75)``), but
    the exact scalar 1 of ``1 − s``; integer constants (shapes, indices, axes) are not
    data. Nodes are in topological order (an ONNX requirement), so one pass suffices.
    """
    floats = _float_values(model)
    constant_types = _constant_types(model)
    ones = {t.name for t in model.graph.initializer if _is_one(onnx.numpy_helper.to_array(t))}
    logic = set(spike_values)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR \
                and _is_one(onnx.numpy_helper.to_array(node.attribute[0].t)):
            ones.update(node.output)
        float_inputs = [v for v in node.input if v in floats]
        if not float_inputs:
            continue
        variables = [v for v in float_inputs if v not in constant_types]
        constants = [v for v in float_inputs if v in constant_types]
        if not variables or not all(v in logic for v in variables):
            continue
        if node.op_type == "Sub" and len(node.input) == 2 and node.input[0] in ones and node.input[1] in logic:
            logic.update(node.output)
        elif node.op_type in _STRUCTURAL_OPS and all(c in units and node.op_type == "Mul" for c in constants):
            logic.update(node.output)
    return logic


def _is_unit(array: np.ndarray) -> bool:
    return bool(np.all((array == 0) | (np.abs(array) == 1)))


def _is_one(array) -> bool:
    return array.size == 1 and float(array.reshape(-1)[0]) == 1.0
