"""Is an ONNX file exactly what `export_onnx` writes for a model? Graph digests and their first difference.

`verify` compares outputs on one input and checks spike purity statically; neither can
prove a file unchanged: a weight off by one ulp stays within any tolerance, a trigger that
fires only on inputs far from the verification input never shows, and the purity walk trusts
the module scopes recorded in node metadata. `export_onnx` is deterministic, so the file's
graph must equal, node for node and bit for bit, what exporting the model again gives.

The *digest* hashes what the graph computes and how purity reads it: opsets, inputs and
outputs, every node (op, domain, inputs, outputs, attributes and the module scopes purity
reads) in order, every initializer's name, type, shape and bytes, and the ``sj_realspike.*``
metadata. Node names, doc strings and the exporter's other per-node metadata (stack traces
with file paths) are left out: they do not change what the file computes. Each export
remembers its digest under the model's fingerprint, so verifying a file this process wrote
costs one hash; any other file is exported again to compare.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["first_difference", "graph_digest", "remember_export", "was_exported"]

SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")  # what purity reads
_METADATA_PREFIX = "sj_realspike."

_exported: defaultdict[str, set[str]] = defaultdict(set)  # model fingerprint → digests of its exports


def graph_digest(proto: onnx.ModelProto) -> str:
    """A sha256 of what ``proto`` computes and how its spikes are found (see the module docstring)."""
    h = hashlib.sha256(b"sj_realspike.graph/1")
    for part in _parts(proto):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def remember_export(fingerprint: str, proto: onnx.ModelProto) -> None:
    """Record that `export_onnx` wrote ``proto`` for the deploy model of ``fingerprint``."""
    _exported[fingerprint].add(graph_digest(proto))


def was_exported(fingerprint: str, proto: onnx.ModelProto) -> bool:
    """Whether this process exported exactly ``proto`` for the deploy model of ``fingerprint``."""
    return fingerprint in _exported and graph_digest(proto) in _exported[fingerprint]


def first_difference(proto: onnx.ModelProto, reference: onnx.ModelProto) -> str | None:
    """The first way ``proto`` differs from ``reference`` in what `graph_digest` hashes (``None``: none)."""
    a, b = proto.graph, reference.graph
    if _opsets(proto) != _opsets(reference):
        return f"its opsets are {_opsets(proto)}, not {_opsets(reference)}"
    for what, mine, theirs in (("inputs", a.input, b.input), ("outputs", a.output, b.output)):
        if [v.SerializeToString() for v in mine] != [v.SerializeToString() for v in theirs]:
            return f"its graph {what} are {[v.name for v in mine]}, not {[v.name for v in theirs]} as exported"
    ours, exported = _metadata(proto), _metadata(reference)
    for key in sorted(ours.keys() | exported.keys()):
        if ours.get(key) != exported.get(key):
            return f"its metadata {key} is {ours.get(key)!r}, not {exported.get(key)!r}"
    for i, (n, m) in enumerate(zip(a.node, b.node)):
        if _node_bytes(n) != _node_bytes(m):
            return (f"node {i} ({n.op_type} '{n.name}', outputs {list(n.output)}) differs from the exported node "
                    f"({m.op_type}, outputs {list(m.output)})")
    if len(a.node) != len(b.node):
        return f"it has {len(a.node)} nodes, the export {len(b.node)}"
    names = [t.name for t in a.initializer]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        return f"initializer '{twice}' appears {names.count(twice)} times (a runtime may take any copy)"
    mine_init, theirs_init = _initializers(a), _initializers(b)
    for name in sorted(mine_init.keys() | theirs_init.keys()):
        if name not in theirs_init or name not in mine_init:
            return f"initializer '{name}' is {'not in the export' if name not in theirs_init else 'missing'}"
        x, y = mine_init[name], theirs_init[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"initializer '{name}' is {x.dtype}{list(x.shape)}, the export's {y.dtype}{list(y.shape)}"
        if x.tobytes() != y.tobytes():
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64)) if x.dtype.kind == "f" else None
            shown = f" (max abs diff {np.max(diff):.3g})" if diff is not None and diff.size else ""  # NaN shows
            return f"initializer '{name}' holds other values than the export's{shown}"
    return None


# --------------------------------------------------------------------------- what is hashed
def _parts(proto: onnx.ModelProto):
    """The byte strings the digest hashes, in order."""
    g = proto.graph
    yield repr(_opsets(proto)).encode()
    yield repr(sorted(_metadata(proto).items())).encode()
    for v in (*g.input, *g.output):
        yield v.SerializeToString()
    for n in g.node:
        yield _node_bytes(n)
    for t in g.initializer:  # in file order, duplicates too: which copy a runtime takes is its own choice
        array = numpy_helper.to_array(t)
        yield f"{t.name}|{array.dtype}|{array.shape}".encode()
        yield array.tobytes()


def _opsets(proto: onnx.ModelProto) -> list[tuple[str, int]]:
    return sorted((o.domain, o.version) for o in proto.opset_import)


def _metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith(_METADATA_PREFIX)}


def _node_bytes(node: onnx.NodeProto) -> bytes:
    """A node without its name, doc string and the exporter's other metadata (stack traces, fx names)."""
    bare = onnx.NodeProto()
    bare.op_type, bare.domain = node.op_type, node.domain
    bare.input.extend(node.input)
    bare.output.extend(node.output)
    bare.attribute.extend(node.attribute)
    for p in node.metadata_props:
        if p.key in SCOPE_KEYS:
            bare.metadata_props.add(key=p.key, value=p.value)
    return bare.SerializeToString()


def _initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}
