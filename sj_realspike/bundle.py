"""Checkpoint bundles: one file with a JSON manifest and a state_dict.

A bundle never pickles code. Loading rebuilds the network by calling the factory the
manifest names, re-applies the same passes (`convert_model`, and `fold` for deploy
bundles) and loads the weights. Because that call runs code, what a bundle may name is
limited, and everything is checked before anything is imported or built:

1. the archive: compressed entries (``torch.save`` writes none) inflate to at most
   `MAX_INFLATED` bytes in all, and the pickle is bounded;
2. the weights: ``torch.load(weights_only=True, mmap=True)``, so no pickled code runs and
   tensor data stays on disk until it is copied into the model;
3. the manifest: a JSON object of bounded size and depth, every field checked (`_SCHEMA`);
4. trust: the factory must be defined in an installed framework's model zoo
   (SpikingJelly's ``spikingjelly.activation_based.model``, Norse's ``norse.torch.models``;
   each adapter's ``model_zoo``) and kwargs may name only classes from the frameworks'
   neuron, surrogate, layer and model modules (``kwarg_classes``: SpikingJelly's, Norse's
   modules, snnTorch's neurons), unless the user trusts more modules
   (``trust=["mypkg.models"]``, CLI ``--trust mypkg.models``);
5. size: the network the kwargs build (counted first with every sized tensor on the meta
   device) must fit the tensor data the bundle holds, and the tensor data the rebuilt model;
   an untrusted network that cannot be counted that way is not built.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from spikingjelly.activation_based import functional

from .atomic import atomic_write
from .config import SpikeConfig
from .convert import convert_model
from .errors import RealSpikeError
from .frameworks import adapters, framework_of, reset
from .fold import fold
from .report import compiled_original, record_of

__all__ = ["BundleError", "save_bundle", "load_bundle", "read_manifest", "validate_manifest", "build_model",
           "resolve_kwargs"]

FORMAT = "sj-realspike-bundle"
FORMAT_VERSION = 1
_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*|\.[A-Za-z_]\w*)$")
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


MiB = 1 << 20
MAX_MANIFEST_CHARS = 1 * MiB
MAX_JSON_DEPTH = 8
MAX_JSON_VALUES = 10_000
MAX_EXAMPLE_ELEMENTS = 1 << 28  # 1 GiB of float32, as the CLI allows for --example-shape
MAX_INFLATED = 1 * MiB  # compressed entries may inflate to this much in all (torch.save writes none)
MAX_PICKLE_BYTES = 4 * MiB  # a 1 MiB manifest and ~10,000 tensor records; bounds the unpickled objects
# The network built from the kwargs may hold this much more than the bundle's tensor data
# (fold drops unused modules and fuses BatchNorm), and the tensor data this much more
# than the rebuilt model's parameters and buffers.
BUILD_SLACK = (4.0, 256 * MiB)
DATA_SLACK = (1.5, 1 * MiB)
# Submodules the counting build may register: SpikingJelly's largest zoo networks hold about a thousand.
# Modules cost time and memory to build even on the meta device (a block count in the kwargs is one integer).
MAX_BUILD_MODULES = 50_000


class BundleError(RealSpikeError, ValueError):
    """A bundle that cannot be written or read back (missing, corrupt, inconsistent, untrusted)."""


# ------------------------------------------------------------------------------ manifest schema
Check = Callable[[Any], "str | None"]  # what is wrong with a field's value, or None


def _one_of(*choices: str) -> Check:
    return lambda v: None if isinstance(v, str) and v in choices else f"must be one of {list(choices)}"


def _format(v: Any) -> str | None:
    return None if v == FORMAT else f"must be {FORMAT!r} (is this an sj-realspike bundle?)"


def _format_version(v: Any) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        return "must be a positive integer"
    if v > FORMAT_VERSION:
        return f"is {v}, newer than this sj-realspike reads ({FORMAT_VERSION}): upgrade sj-realspike"
    return None


def _reference(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string like 'pkg.module:function'"
    if len(v) > 512 or not _REFERENCE.match(v):
        return "is not an importable reference (expected 'pkg.module:function')"
    return None


def _json_object(v: Any) -> str | None:
    """A JSON object whose nesting and number of values are bounded."""
    if not isinstance(v, dict):
        return "must be a JSON object"
    count, stack = 0, [(v, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_JSON_DEPTH:
            return f"nests deeper than {MAX_JSON_DEPTH} levels"
        if count > MAX_JSON_VALUES:
            return f"holds more than {MAX_JSON_VALUES} values"
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                return "must have string keys only"
            stack.extend((c, depth + 1) for c in value.values())
        elif isinstance(value, list):
            stack.extend((c, depth + 1) for c in value)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            return f"must hold JSON values only, not {type(value).__name__}"
    return None


def _config(v: Any) -> str | None:
    problem = _json_object(v)
    if problem:
        return problem
    shapes = {"global": dict, "types": dict, "regex": list, "names": dict, "description": str,
              "tie_summed": bool}
    wrong = [k for k, t in shapes.items() if k in v and not isinstance(v[k], t)]
    return (f"must have {', '.join(f'{k!r} as {shapes[k].__name__}' for k in wrong)} (a SpikeConfig.to_dict())"
            if wrong else None)


def _example_shape(v: Any) -> str | None:
    if (not isinstance(v, list) or not 1 <= len(v) <= 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)):
        return "must be a list of 1 to 8 positive integers"
    if math.prod(v) > MAX_EXAMPLE_ELEMENTS:
        return f"has {math.prod(v):,} elements, more than the {MAX_EXAMPLE_ELEMENTS:,} allowed"
    return None


def _versions(v: Any) -> str | None:
    ok = isinstance(v, dict) and len(v) <= 16 and all(isinstance(x, str) for kv in v.items() for x in kv)
    return None if ok else "must be a JSON object of version strings"


#: field → (check, required)
_SCHEMA: dict[str, tuple[Check, bool]] = {
    "format": (_format, True),
    "format_version": (_format_version, True),
    "stage": (_one_of("converted", "deploy"), True),
    "factory": (_reference, True),
    "kwargs": (_json_object, True),
    "step_mode": (_one_of("m", "s"), True),
    "example_shape": (_example_shape, True),
    "spike": (_one_of("real", "ternary"), True),
    "granularity": (_one_of("layer", "channel", "element"), True),
    "config": (_config, True),
    "versions": (_versions, False),
}


def validate_manifest(manifest: Any, fields: Iterable[str] | None = None) -> None:
    """Check a parsed manifest against `_SCHEMA` (all fields, or only ``fields``).

    Raises:
        BundleError: naming the first field that is missing, unknown or wrong, and how.
    """
    if not isinstance(manifest, dict):
        raise BundleError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    names = list(_SCHEMA) if fields is None else list(fields)
    if fields is None:
        unknown = sorted(set(manifest) - set(_SCHEMA))
        if unknown:
            raise BundleError(f"manifest has unknown field(s) {unknown}")
        missing = [k for k in names if _SCHEMA[k][1] and k not in manifest]
        if missing:
            raise BundleError(f"manifest lacks {missing}")
    for key in names:
        if key in manifest:
            problem = _SCHEMA[key][0](manifest[key])
            if problem:
                raise BundleError(f"manifest field '{key}' {problem}, got {_show(manifest[key])}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else text


# ------------------------------------------------------------------------------------- trust
def _roots(trust: Iterable[str]) -> tuple[str, ...]:
    if isinstance(trust, str):
        raise BundleError(f"trust must be a list of module names, e.g. trust=[{trust!r}]")
    names = tuple(trust)
    bad = [t for t in names if not isinstance(t, str) or not _MODULE_NAME.match(t)]
    if bad:
        raise BundleError(f"trust: {bad[0]!r} is not a module name (expected e.g. 'mypkg.models')")
    return names


def _within(module: str, roots: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``roots`` or a submodule (by name components: 'nets' ≠ 'netsx')."""
    return any(module == r or module.startswith(r + ".") for r in roots)


def _split(reference: str) -> tuple[str, str]:
    """``"pkg.mod:attr.path"`` or ``"pkg.mod.attr"`` → module name and attribute path."""
    if ":" in reference:
        module, _, attr = reference.partition(":")
    else:
        module, _, attr = reference.rpartition(".")
    return module, attr


def _untrusted(what: str, reference: str, module: str, allowed: str) -> BundleError:
    return BundleError(f"{what} '{reference}' is not in {allowed} nor in a trusted module, and loading it "
                       f"would run its code: pass trust=['{module}'] / --trust {module} if you trust it")


def _check_reference(what: str, reference: str, roots: tuple[str, ...], allowed: str,
                     packages: tuple[str, ...] = ()) -> None:
    """Refuse, by name alone (nothing imported yet), a reference outside ``roots`` (or one of ``packages``
    itself) or into private names."""
    module, attr = _split(reference)
    if not (_within(module, roots) or module in packages):
        raise _untrusted(what, reference, module, allowed)
    private = next((p for p in attr.split(".") if p.startswith("_")), None)
    if private:
        raise BundleError(f"{what} '{reference}' names the private attribute '{private}'; name a public "
                          f"function or class")


def _import(what: str, reference: str, roots: tuple[str, ...], allowed: str,
            packages: tuple[str, ...] = ()) -> Any:
    """The object ``reference`` names, after `_check_reference`; it must be defined inside ``roots``."""
    _check_reference(what, reference, roots, allowed, packages)
    module_name, attr_path = _split(reference)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BundleError(f"cannot import module '{module_name}' for {what} '{reference}': {e}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise BundleError(f"module '{module_name}' has no attribute '{attr_path}' (from {what} '{reference}')")
        obj = getattr(obj, part)
        if isinstance(obj, ModuleType):  # an imported module: its attributes are not the zoo's own
            raise BundleError(f"{what} '{reference}' goes through module '{obj.__name__}'; name the object "
                              f"in its own module ('{obj.__name__}:...')")
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str):
        raise BundleError(f"{what} '{reference}' is a {type(obj).__name__}, not a function or class")
    if not _within(home, roots):
        raise BundleError(f"{what} '{reference}' is defined in module '{home}', not in {allowed} nor in a "
                          f"trusted module: pass trust=['{home}'] / --trust {home} if you trust it")
    return obj


def _looks_like_reference(text: str) -> bool:
    """``"a:b"`` always; ``"a.b.c"`` when ``a`` is an importable top-level name (found, not imported)."""
    if not _REFERENCE.match(text):
        return False
    if ":" in text:
        return True
    try:
        return importlib.util.find_spec(text.split(".")[0]) is not None
    except (ImportError, ValueError):  # e.g. a module in sys.modules without a spec
        return True


def _check_kwargs(kwargs: dict[str, Any], roots: tuple[str, ...]) -> dict[str, str]:
    """The top-level kwargs that are references, each checked by name; nested references are refused."""
    references = {}
    for key, value in kwargs.items():
        if isinstance(value, str):
            if _looks_like_reference(value):
                _check_reference(f"kwargs['{key}'] =", value, roots, _KWARG_ALLOWED, _reexporting())
                references[key] = value
            continue
        stack = [(value, f"['{key}']")]
        while stack:
            item, where = stack.pop()
            if isinstance(item, str) and _looks_like_reference(item):
                raise BundleError(f"kwargs{where} = '{item}' looks like a reference; only top-level kwargs "
                                  f"values may name classes")
            if isinstance(item, dict):
                stack.extend((v, f"{where}['{k}']") for k, v in item.items())
            elif isinstance(item, list):
                stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return references


def _model_zoos() -> tuple[str, ...]:
    """Where factories may come from without ``trust``: the installed frameworks' model zoos."""
    return tuple(z for a in adapters() for z in a.model_zoo)


def _kwarg_classes() -> tuple[str, ...]:
    """Where classes named in kwargs (neurons, surrogates, layers, zoo blocks) may be defined without ``trust``."""
    return tuple(m for a in adapters() for m in a.kwarg_classes)


def _reexporting() -> tuple[str, ...]:
    """Framework packages that re-export their neuron classes (``snntorch.Leaky``): a kwargs reference
    may name a class through the package itself (not its other submodules); the class must still be
    defined in `_kwarg_classes`."""
    return tuple(a.package for a in adapters() if a.kwarg_classes)


_ZOO_ALLOWED = "SpikingJelly's model zoo (spikingjelly.activation_based.model) or Norse's (norse.torch.models)"
_KWARG_ALLOWED = "the frameworks' neuron, surrogate, layer and model modules"


def resolve_kwargs(kwargs: dict[str, Any], *, trust: Iterable[str] = ()) -> dict[str, Any]:
    """Factory kwargs with string values that name a class replaced by that class.

    ``"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode"`` becomes the class;
    plain strings such as ``"cnf": "ADD"`` or ``"data/x.npy"`` stay strings. A string is a
    reference if it contains ``:`` or its first dotted component is an importable module;
    references may name only classes defined in SpikingJelly's neuron, surrogate, layer
    and model modules or in ``trust``ed modules, and only as top-level values.

    Raises:
        BundleError: a reference outside those modules (checked before importing it), to
            something that is not a class, or that does not import.
    """
    trusted = _roots(trust)
    references = _check_kwargs(kwargs, (*_kwarg_classes(), *trusted))
    resolved = dict(kwargs)
    for key, reference in references.items():
        obj = _import(f"kwargs['{key}'] =", reference, (*_kwarg_classes(), *trusted), _KWARG_ALLOWED,
                      _reexporting())
        if not isinstance(obj, type):
            raise BundleError(f"kwargs['{key}'] = '{reference}' is a {type(obj).__name__}, not a class: kwargs "
                              f"may name only classes (neurons, surrogates, layers)")
        resolved[key] = obj
    return resolved


def _resolve(manifest: dict[str, Any], trust: Iterable[str], trust_factory: bool
             ) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The factory and its resolved kwargs; every reference is checked by name before any import."""
    validate_manifest(manifest, ("factory", "kwargs"))
    reference, kwargs = manifest["factory"], manifest.get("kwargs", {})
    trusted = _roots(trust) + ((_split(reference)[0],) if trust_factory else ())
    _check_reference("factory", reference, (*_model_zoos(), *trusted), _ZOO_ALLOWED)
    _check_kwargs(kwargs, (*_kwarg_classes(), *trusted))
    factory = _import("factory", reference, (*_model_zoos(), *trusted), _ZOO_ALLOWED)
    if not (inspect.isfunction(factory) or isinstance(factory, type)):
        raise BundleError(f"factory '{reference}' is a {type(factory).__name__}, not a function or class")
    return factory, resolve_kwargs(kwargs, trust=trusted)


def _call(reference: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        net = factory(**kwargs)
    except Exception as e:  # the factory's own code: any error means these kwargs do not build it
        raise BundleError(_factory_failure(reference, factory, kwargs, e)) from None
    if not isinstance(net, nn.Module):
        raise BundleError(f"factory '{reference}' returned {type(net).__name__}, not an nn.Module")
    return net


def _factory_failure(reference: str, factory: Callable[..., Any], kwargs: dict[str, Any], e: Exception) -> str:
    """What went wrong when ``factory(**kwargs)`` raised ``e``, with the usual fix for SpikingJelly's zoo."""
    hint = ""
    if "spiking_neuron" in _parameters(factory) and kwargs.get("spiking_neuron") is None:
        hint = ("; SpikingJelly zoo models need --kwargs "
                "'{\"spiking_neuron\": \"spikingjelly.activation_based.neuron.LIFNode\"}'")
    return f"factory '{reference}' failed on its kwargs: {type(e).__name__}: {_first_line(e)}{hint}"


def _parameters(factory: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def build_model(manifest: dict[str, Any], checkpoint: str | Path | None = None, *, trust: Iterable[str] = (),
                trust_factory: bool = False) -> nn.Module:
    """The user's network from the manifest's factory, kwargs and step mode (not converted).

    Args:
        manifest: at least ``factory``, ``kwargs`` and ``step_mode``.
        checkpoint: a state_dict file (weights only) to load into the network.
        trust: modules (and their submodules) whose functions and classes may be called
            besides SpikingJelly's zoo.
        trust_factory: also trust the factory's module (the user named it, e.g. on the
            ``convert`` command line, rather than a file).

    Raises:
        BundleError: an untrusted reference, a factory failing on its kwargs, a checkpoint
            that does not fit.
    """
    factory, kwargs = _resolve(manifest, trust, trust_factory)
    net = _call(manifest["factory"], factory, kwargs)
    functional.set_step_mode(net, manifest.get("step_mode", "m"))
    if checkpoint is not None:
        state, _ = _torch_load(checkpoint, "checkpoint")
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise BundleError(f"checkpoint {checkpoint} does not fit {manifest['factory']}: "
                              f"{_first_line(e)}") from None
    return net


# --------------------------------------------------------------------------------- save/load
def manifest_for(model: nn.Module, factory: str | None = None, kwargs: dict[str, Any] | None = None,
                 step_mode: str | None = None) -> dict[str, Any]:
    """The manifest of a converted or folded model, from what its passes recorded.

    A truthy ``pretrained`` kwarg is recorded as ``False``: the weights are in the bundle,
    and loading must not download (and unpickle) others.
    """
    meta = record_of(model)
    if "conversion" not in meta:
        raise BundleError("only models produced by sj_realspike.convert_model (and fold) can be bundled")
    source = meta.get("source", {})
    factory = factory or source.get("factory")
    if factory is None:
        raise BundleError("this model does not record its factory: pass factory='pkg.module:function' "
                          "(and kwargs=...) to save_bundle")
    kwargs = dict(kwargs if kwargs is not None else source.get("kwargs", {}))
    if kwargs.get("pretrained"):
        kwargs["pretrained"] = False
    steps = {getattr(m, "step_mode", None) for m in model.modules()} - {None}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": meta["stage"],
        "factory": factory,
        "kwargs": kwargs,
        "step_mode": step_mode or source.get("step_mode") or ("m" if "m" in steps else "s"),
        "example_shape": list(meta["example_shape"]),
        "spike": meta["spike"],
        "granularity": meta["granularity"],
        "config": meta["config"],
        "versions": {name: _version(name) for name in ("sj-realspike", "torch", *_framework_packages(model))},
    }


def _framework_packages(model: nn.Module) -> tuple[str, ...]:
    """The package of the framework whose neurons ``model`` holds (none for a model without neurons)."""
    adapter = framework_of(model)
    return (adapter.package,) if adapter is not None else ()


def save_bundle(model: nn.Module, path: str | Path, *, factory: str | None = None,
                kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (converted or folded) and its manifest to one file, atomically.

    Args:
        model: from `convert_model` / `fold` / `load_bundle`, possibly trained since.
        path: destination file.
        factory: ``"pkg.module:function"`` that builds the unconverted network; needed
            only if the model was not loaded from a bundle.
        kwargs: JSON-serialisable keyword arguments of ``factory`` (classes as
            ``"pkg.module.Name"`` strings).

    Raises:
        BundleError: the model is not converted, its factory is unknown, or the manifest
            would not pass the checks `load_bundle` makes.
    """
    model = compiled_original(model)
    manifest = manifest_for(model, factory, kwargs)
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise BundleError(f"manifest is not JSON-serialisable ({e}); give kwargs as JSON values") from None
    try:
        validate_manifest(json.loads(text))
    except BundleError as e:
        raise BundleError(f"cannot write bundle {path}: {e}") from None
    payload = {"manifest": text, "state_dict": {k: _compact(v) for k, v in model.state_dict().items()}}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: entries are named archive/..., not after the temp file
            torch.save(payload, fh)

    return atomic_write(path, write)


def read_manifest(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The validated manifest and the state_dict of a bundle (nothing imported, no code run).

    Raises:
        BundleError: missing, corrupt, truncated or inflating file, or an invalid manifest.
    """
    manifest, state, _ = _read(path)
    return manifest, state


def load_bundle(path: str | Path, *, trust: Iterable[str] = ()) -> nn.Module:
    """Rebuild a converted (or deploy) model from a bundle and load its weights.

    Args:
        path: a file written by `save_bundle`.
        trust: modules (and their submodules) whose functions and classes the manifest may
            call besides SpikingJelly's (e.g. ``["mypkg.models"]`` for a factory
            ``"mypkg.models:net"``). Loading calls the factory (twice: first with its
            sized tensors on the meta device, to check the network fits the weights the
            file holds; a network that cannot be counted so is built only from a trusted
            factory module): trust only code you would run yourself.

    Raises:
        BundleError: missing, corrupt, truncated or inflating file, invalid manifest,
            untrusted factory or kwargs, a factory failing on its kwargs, a network too
            large for the file or, untrusted, uncountable, or weights that do not fit the
            rebuilt model.
        ConfigError: the manifest's config holds a rule `SpikeConfig` refuses.
    """
    manifest, state, data_bytes = _read(path)
    config = SpikeConfig.from_dict(manifest["config"], source=str(path))  # before anything is built
    try:
        factory, kwargs = _resolve(manifest, trust, trust_factory=False)
        if kwargs.get("pretrained") and "pretrained" in _parameters(factory):
            raise BundleError("kwargs 'pretrained' is true: loading would download other weights (unpickled "
                              "without weights_only); a bundle carries its own, so set it to false")
        trusted = _within(_split(manifest["factory"])[0], _roots(trust))
        _check_build_size(manifest["factory"], factory, kwargs, data_bytes, trusted)
        net = _call(manifest["factory"], factory, kwargs)
    except BundleError as e:
        raise BundleError(f"bundle {path}: {e}") from None
    functional.set_step_mode(net, manifest["step_mode"])
    example = torch.zeros(manifest["example_shape"])
    model = convert_model(net, example, spike=manifest["spike"], granularity=manifest["granularity"],
                          config=config, inplace=True)
    if manifest["stage"] == "deploy":
        model = fold(model, inplace=True)
    needed = _weight_bytes(model)
    if data_bytes > DATA_SLACK[0] * needed + DATA_SLACK[1]:
        raise BundleError(f"bundle {path}: holds {data_bytes:,} bytes of tensor data, more than the {needed:,} "
                          f"bytes of parameters and buffers the manifest's model needs")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise BundleError(f"bundle {path}: weights do not fit the model rebuilt from its manifest: "
                          f"{lines[1].strip() if len(lines) > 1 else e}") from None
    reset(model)
    record_source(model, manifest["factory"], manifest["kwargs"], manifest["step_mode"])
    return model


def record_source(model: nn.Module, factory: str, kwargs: dict[str, Any], step_mode: str) -> None:
    """Remember how to rebuild ``model`` so `save_bundle` needs no factory argument."""
    record_of(model)["source"] = {"factory": factory, "kwargs": kwargs, "step_mode": step_mode}


# ----------------------------------------------------------------------------------- helpers
def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """Manifest, state_dict and bytes of tensor data of a bundle, all validated."""
    payload, data_bytes = _torch_load(path, "bundle")
    if not isinstance(payload, dict) or "manifest" not in payload or "state_dict" not in payload:
        raise BundleError(f"{path} is not an sj-realspike bundle (no manifest/state_dict)")
    text, state = payload["manifest"], payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BundleError(f"bundle {path}: state_dict is not a mapping of names to tensors")
    if not isinstance(text, str) or len(text) > MAX_MANIFEST_CHARS:
        raise BundleError(f"bundle {path}: manifest must be a JSON string of at most {MAX_MANIFEST_CHARS:,} "
                          f"characters")
    try:
        manifest = json.loads(text)
    except RecursionError:
        raise BundleError(f"bundle {path}: manifest is nested too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, or an integer with too many digits
        raise BundleError(f"bundle {path}: manifest is not valid JSON ({_first_line(e)})") from None
    try:
        validate_manifest(manifest)
    except BundleError as e:
        raise BundleError(f"bundle {path}: {e}") from None
    return manifest, state, data_bytes


def _check_archive(p: Path, what: str) -> int:
    """Bytes of tensor data (``*/data/*`` entries) in a torch zip, refusing entries that would inflate.

    torch.save stores every entry uncompressed, so any compressed entry is foreign.
    """
    try:
        with zipfile.ZipFile(p) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BundleError(f"{what} {p} is corrupt, truncated or not a weights-only torch file "
                          f"(not a zip archive: {_first_line(e)})") from None
    compressed = [e for e in entries if e.compress_type != zipfile.ZIP_STORED]
    inflated = sum(e.file_size for e in compressed)
    if inflated > MAX_INFLATED:
        big = max(compressed, key=lambda e: e.file_size)
        raise BundleError(f"{what} {p}: entry '{big.filename}' inflates from {big.compress_size:,} to "
                          f"{big.file_size:,} bytes ({inflated:,} in all compressed entries); torch.save never "
                          f"compresses, so more than {MAX_INFLATED:,} inflated bytes are refused")
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED and entry.file_size != entry.compress_size:
            raise BundleError(f"{what} {p} is corrupt: entry '{entry.filename}' claims {entry.file_size:,} bytes "
                              f"but stores {entry.compress_size:,}")
        if entry.filename.endswith("data.pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise BundleError(f"{what} {p}: entry '{entry.filename}' is {entry.file_size:,} bytes, more than the "
                              f"{MAX_PICKLE_BYTES:,} a manifest and state_dict names need")
    # torch.save names tensor storages "<archive>/data/<key>"
    return sum(e.file_size for e in entries if e.filename.split("/")[-2:-1] == ["data"])


def _torch_load(path: str | Path, what: str) -> tuple[Any, int]:
    """``torch.load`` weights only, the zip checked first; tensor data memory-mapped, not read.

    Returns the loaded object and the bytes of tensor data in the file.
    """
    p = Path(path)
    if not p.exists():
        raise BundleError(f"{what} {p} does not exist")
    if not p.is_file():  # a FIFO or device would block or never end
        raise BundleError(f"{what} {p} is not a regular file")
    is_zip = zipfile.is_zipfile(p)
    # bundles are always zips; a checkpoint may be in torch's legacy format (nothing compressed)
    data = _check_archive(p, what) if is_zip or what == "bundle" else 0
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=is_zip), data
    except Exception as e:  # torch raises many types for truncated/corrupt/unsafe files
        raise BundleError(f"{what} {p} is corrupt, truncated or not a weights-only torch file "
                          f"({_first_line(e)})") from None


# Constructors that take a size: on the meta device they allocate nothing, whatever size the kwargs ask for.
# Tensors made from values (``torch.tensor``, ``as_tensor``, ``scalar_tensor``, ``asarray``) are left real:
# their data is in memory already, and checks such as ``torch.isfinite(torch.tensor(v))`` read it.
_SIZED_CONSTRUCTORS = frozenset({
    torch.empty, torch.empty_strided, torch.empty_permuted, torch.zeros, torch.ones, torch.full, torch.rand,
    torch.randn, torch.randint, torch.randperm, torch.arange, torch.range, torch.linspace, torch.logspace,
    torch.eye, torch.tril_indices, torch.triu_indices, torch.bartlett_window, torch.blackman_window,
    torch.hamming_window, torch.hann_window, torch.kaiser_window})


class _SizedOnMeta(TorchFunctionMode):
    """Every tensor made from a size goes to the meta device, even one asked for on another device.

    Unlike ``with torch.device("meta")``, tensors made from values stay real, so a module that
    validates its arguments with ``.item()`` (SpikingJelly's ``HalfThresholdIFNode``) still builds
    and its parameters can be counted.
    """

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _SIZED_CONSTRUCTORS:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _check_build_size(reference: str, factory: Callable[..., Any], kwargs: dict[str, Any], data_bytes: int,
                      trusted: bool) -> None:
    """Refuse kwargs that build a network far larger than the weights the bundle holds.

    The network is built with its sized tensors on the meta device (no memory) and counted.
    A factory that does not build that way cannot be counted; building it for real could
    allocate whatever the kwargs ask for, so it is refused unless the user trusts the
    factory's module (then its real build still must match the weights).
    """
    try:
        with _SizedOnMeta(), _module_budget(MAX_BUILD_MODULES):
            net = factory(**kwargs)
    except _TooManyModules:
        raise BundleError(f"the manifest's kwargs make '{reference}' build more than {MAX_BUILD_MODULES:,} modules "
                          "(the largest zoo networks hold about a thousand), so it is not built") from None
    except Exception as e:  # the factory's own code, or a value read from a meta tensor
        if trusted:
            return
        module = _split(reference)[0]
        raise BundleError(f"counting its size on the meta device before building it, "
                          f"{_factory_failure(reference, factory, kwargs, e)}; a network whose size cannot be "
                          f"counted could allocate any amount of memory, so it is not built: pass "
                          f"trust=['{module}'] / --trust {module} to build it anyway") from None
    needed = _weight_bytes(net) if isinstance(net, nn.Module) else 0
    if needed > BUILD_SLACK[0] * data_bytes + BUILD_SLACK[1]:
        raise BundleError(f"the manifest's kwargs make '{reference}' build {needed:,} bytes of parameters and "
                          f"buffers, but the bundle holds only {data_bytes:,} bytes of tensor data")


class _TooManyModules(Exception):
    """The counting build registered more submodules than `MAX_BUILD_MODULES`."""


@contextmanager
def _module_budget(limit: int) -> Iterator[None]:
    """Raise `_TooManyModules` inside a build once it has registered more than ``limit`` submodules."""
    count = 0

    def registered(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyModules

    handle = nn.modules.module.register_module_module_registration_hook(registered)
    try:
        yield
    finally:
        handle.remove()


def _weight_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor whose storage holds only its own elements (torch.save writes whole storages)."""
    t = t.detach().cpu()
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
