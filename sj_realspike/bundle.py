"""Checkpoint bundles: one file with a JSON manifest and a state_dict, safe to load.

A bundle never pickles code. Loading imports the model factory named in the
manifest, rebuilds the network, re-applies the same passes (`convert_model`, and
`fold` for deploy bundles) and loads the weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional

from .atomic import atomic_write
from .config import SpikeConfig
from .convert import convert_model
from .errors import RealSpikeError
from .fold import fold
from .report import META_KEY

__all__ = ["BundleError", "save_bundle", "load_bundle", "read_manifest", "build_model", "resolve_kwargs",
           "import_object"]

FORMAT = "sj-realspike-bundle"
FORMAT_VERSION = 1
_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*|\.[A-Za-z_]\w*)$")


class BundleError(RealSpikeError, ValueError):
    """A bundle that cannot be written or read back (missing, corrupt, inconsistent)."""


def import_object(reference: str) -> Any:
    """The object named by ``"pkg.module:attr"`` or ``"pkg.module.attr"``.

    Raises:
        BundleError: the module or attribute does not exist.
    """
    if ":" in reference:
        module_name, _, attr_path = reference.partition(":")
    else:
        module_name, _, attr_path = reference.rpartition(".")
    if not module_name or not attr_path:
        raise BundleError(f"'{reference}' is not an importable reference (expected pkg.module:name)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BundleError(f"cannot import module '{module_name}' for '{reference}': {e}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise BundleError(f"module '{module_name}' has no attribute '{attr_path}' (from '{reference}')")
        obj = getattr(obj, part)
    return obj


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Factory kwargs with string values that name an importable object replaced by that object.

    ``"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode"`` becomes the class;
    plain strings such as ``"cnf": "ADD"`` stay strings. A ``module:attr`` string is always
    a reference and must import.
    """
    resolved = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and _REFERENCE.match(value):
            try:
                value = import_object(value)
            except BundleError:
                if ":" in value:
                    raise
        resolved[key] = value
    return resolved


def build_model(manifest: dict[str, Any], checkpoint: str | Path | None = None) -> nn.Module:
    """The user's network from the manifest's factory, kwargs and step mode (not converted)."""
    factory = import_object(manifest["factory"])
    if not callable(factory):
        raise BundleError(f"factory '{manifest['factory']}' is not callable")
    try:
        net = factory(**resolve_kwargs(manifest.get("kwargs", {})))
    except TypeError as e:
        raise BundleError(f"factory '{manifest['factory']}' rejected its kwargs: {e}") from None
    if not isinstance(net, nn.Module):
        raise BundleError(f"factory '{manifest['factory']}' returned {type(net).__name__}, not an nn.Module")
    functional.set_step_mode(net, manifest.get("step_mode", "m"))
    if checkpoint is not None:
        state = _load(checkpoint, "checkpoint")
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise BundleError(f"checkpoint {checkpoint} does not fit {manifest['factory']}: "
                              f"{str(e).splitlines()[0]}") from None
    return net


def manifest_for(model: nn.Module, factory: str | None = None, kwargs: dict[str, Any] | None = None,
                 step_mode: str | None = None) -> dict[str, Any]:
    """The manifest of a converted or folded model, from what its passes recorded."""
    meta = model.meta.get(META_KEY, {}) if isinstance(model, fx.GraphModule) else {}
    if "conversion" not in meta:
        raise BundleError("only models produced by sj_realspike.convert_model (and fold) can be bundled")
    source = meta.get("source", {})
    factory = factory or source.get("factory")
    if factory is None:
        raise BundleError("this model does not record its factory: pass factory='pkg.module:function' "
                          "(and kwargs=...) to save_bundle")
    steps = {getattr(m, "step_mode", None) for m in model.modules()} - {None}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": meta["stage"],
        "factory": factory,
        "kwargs": kwargs if kwargs is not None else source.get("kwargs", {}),
        "step_mode": step_mode or source.get("step_mode") or ("m" if "m" in steps else "s"),
        "example_shape": list(meta["example_shape"]),
        "spike": meta["spike"],
        "granularity": meta["granularity"],
        "config": meta["config"],
        "versions": {name: _version(name) for name in ("sj-realspike", "torch", "spikingjelly")},
    }


def save_bundle(model: nn.Module, path: str | Path, *, factory: str | None = None,
                kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (converted or folded) and its manifest to one file, atomically.

    Args:
        model: from `convert_model` / `fold` / `load_bundle`, possibly trained since.
        path: destination file.
        factory: ``"pkg.module:function"`` that builds the unconverted network; needed
            only if the model was not loaded from a bundle.
        kwargs: JSON-serialisable keyword arguments of ``factory`` (importable objects
            as ``"pkg.module.Name"`` strings).

    Raises:
        BundleError: the model is not converted, or its factory is unknown.
    """
    manifest = manifest_for(model, factory, kwargs)
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True)
    except TypeError as e:
        raise BundleError(f"manifest is not JSON-serialisable ({e}); give kwargs as JSON values") from None
    payload = {"manifest": text, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_manifest(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest and state_dict of a bundle, validated (weights-only unpickling)."""
    payload = _load(path, "bundle")
    if not isinstance(payload, dict) or "manifest" not in payload or "state_dict" not in payload:
        raise BundleError(f"{path} is not an sj-realspike bundle (no manifest/state_dict)")
    try:
        manifest = json.loads(payload["manifest"])
    except (TypeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: manifest is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not an sj-realspike bundle (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format {manifest['format_version']}; this sj-realspike "
                          f"reads up to {FORMAT_VERSION}: upgrade sj-realspike")
    missing = {"stage", "factory", "example_shape", "spike", "granularity", "config"} - set(manifest)
    if missing:
        raise BundleError(f"{path}: manifest lacks {sorted(missing)}")
    return manifest, payload["state_dict"]


def load_bundle(path: str | Path) -> fx.GraphModule:
    """Rebuild a converted (or deploy) model from a bundle and load its weights.

    Raises:
        BundleError: missing, corrupt or truncated file, unknown factory, or weights
            that do not fit the rebuilt model.
    """
    manifest, state = read_manifest(path)
    model = build_model(manifest)
    example = torch.zeros(manifest["example_shape"])
    model = convert_model(model, example, spike=manifest["spike"], granularity=manifest["granularity"],
                          config=SpikeConfig.from_dict(manifest["config"], source=str(path)), inplace=True)
    if manifest["stage"] == "deploy":
        model = fold(model, inplace=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BundleError(f"{path}: weights do not fit the model rebuilt from its manifest: "
                          f"{str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}") from None
    functional.reset_net(model)
    record_source(model, manifest["factory"], manifest.get("kwargs", {}), manifest.get("step_mode", "m"))
    return model


def record_source(model: fx.GraphModule, factory: str, kwargs: dict[str, Any], step_mode: str) -> None:
    """Remember how to rebuild ``model`` so `save_bundle` needs no factory argument."""
    model.meta[META_KEY]["source"] = {"factory": factory, "kwargs": kwargs, "step_mode": step_mode}


def _load(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{what} {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/unsafe files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"{what} {p} is corrupt, truncated or not a weights-only torch file ({first})") from None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
