"""One torchlib registry per opset and process for ``torch.onnx.export(dynamo=True)``.

The exporter rebuilds its registry of torchlib ops on every call, parsing the source of
~500 onnxscript functions: about 1.2 s, a third of exporting a small network, paid again by
every export of a session (the demo's seven variants, a study's sweep, a test suite). The
registry is the same every time, so `cached_torchlib_registry` builds it once per opset and
hands each export its own copy with fresh lists (an export that registers custom ops cannot
change the next one's). It reaches into torch's private exporter module; where that has
moved (another torch release), it changes nothing and exports build their own registry.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["cached_torchlib_registry"]

_BUILT: dict[Any, Any] = {}  # opset -> the registry torchlib built for it
_LOCK = threading.RLock()  # the class attribute is patched for the duration of one export


@contextmanager
def cached_torchlib_registry() -> Iterator[None]:
    """While active, ``ONNXRegistry.from_torchlib`` returns a copy of a registry built once per opset."""
    try:
        from torch.onnx._internal.exporter import _registration

        registry_class = _registration.ONNXRegistry
        original = registry_class.__dict__["from_torchlib"]
        build = original.__func__
        default_opset = _registration._constants.TORCHLIB_OPSET
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(cls: type, opset_version: int = default_opset) -> Any:
        if opset_version not in _BUILT:
            _BUILT[opset_version] = build(cls, opset_version=opset_version)
        registry = copy.copy(_BUILT[opset_version])
        registry.functions = {op: list(decomps) for op, decomps in _BUILT[opset_version].functions.items()}
        return registry

    with _LOCK:
        registry_class.from_torchlib = classmethod(from_torchlib)
        try:
            yield
        finally:
            registry_class.from_torchlib = original
