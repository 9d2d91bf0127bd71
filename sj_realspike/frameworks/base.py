"""The framework adapter protocol and registry: what the passes ask of an SNN framework.

The capture, flow, fold, weight math, runtime and verify code is framework-free. Everything
that depends on whose neurons a network uses — which modules are neurons, which modules
capture keeps whole, how state is reset and copied, where the spikes are in what a neuron
call returns, the ternary counterpart, the export lowering and the NIR node — is asked of
a `FrameworkAdapter`. Each framework is one module of this package defining one adapter
and registering it (`register`) when it is imported; `adapters` imports the built-in ones
whose framework is installed, so a missing optional framework (snnTorch, Norse) is simply
not offered.

A module belongs to at most one adapter (`adapter_for`); `framework_of` names the single
framework of a network's neurons and refuses a network that mixes them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..errors import UnsupportedPatternError

__all__ = [
    "BUILTIN",
    "FrameworkAdapter",
    "Refusal",
    "adapter_for",
    "adapters",
    "framework_of",
    "frameworks_in",
    "register",
]

# Built-in adapter modules (``sj_realspike.frameworks.<name>``), tried in this order; one whose
# framework (or adapter module) is not installed is skipped.
BUILTIN = ("spikingjelly", "snntorch", "norse")


class FrameworkAdapter:
    """What one SNN framework's neurons need from the passes; subclass once per framework.

    The defaults describe a framework that has no neurons of its own: every predicate is
    false, state is empty, a call's output is its spikes. An adapter overrides what its
    framework has. ``m`` is always a module for which `owns` is true unless said otherwise.

    Attributes:
        name: the framework's name as users know it (``"spikingjelly"``, ``"snntorch"``).
        package: the top-level Python package whose version bundles and reports record.
        model_zoo: modules (with their submodules) of the framework's own model factories, which
            a bundle may name as its factory without ``trust`` (installed code, not the file's).
        kwarg_classes: modules whose classes (neurons, surrogates, layers) a bundle's factory
            kwargs may name without ``trust``.
    """

    name: str = ""
    package: str = ""
    model_zoo: tuple[str, ...] = ()
    kwarg_classes: tuple[str, ...] = ()

    # ------------------------------------------------------------ recognition
    def neuron_types(self) -> tuple[type, ...]:
        """Neuron classes, and the classes of their export forms (ONNX purity reads classes from scopes)."""
        return ()

    def ternary_types(self) -> tuple[type, ...]:
        """Classes of neurons emitting ternary spikes, and of their export forms."""
        return ()

    def identity_types(self) -> tuple[type, ...]:
        """The framework's modules that are the identity at inference (its dropout layers)."""
        return ()

    def synapse_types(self) -> tuple[type, ...]:
        """The framework's modules where spikes arrive and are integrated, other than conv/linear (filters)."""
        return ()

    def layer_wrappers(self) -> tuple[type, ...]:
        """The framework's subclasses of torch's convs (transposed too) and Linear whose ``forward`` only
        adds its step modes around torch's (their weight is applied as it is, so fold may scale it)."""
        return ()

    def owns(self, m: nn.Module) -> bool:
        """Whether ``m`` is one of this framework's stateful or spiking modules (mixing is judged on these)."""
        return False

    def is_spiking(self, m: nn.Module) -> bool:
        """Whether ``m`` fires: a candidate for an amplitude, listed in the report even when skipped."""
        return False

    def is_neuron(self, m: nn.Module) -> bool:
        """Whether ``m`` is a neuron amplitudes, fold and export support (a subset of `is_spiking`)."""
        return False

    def not_neuron_reason(self, m: nn.Module) -> str:
        """Why a module for which `is_spiking` holds but `is_neuron` does not is skipped."""
        return f"{type(m).__name__} is not a neuron sj_realspike supports for {self.name}"

    def conversion_problem(self, m: nn.Module) -> str | None:
        """Why this neuron cannot carry an amplitude with its settings (``None``: it can)."""
        return None

    # ------------------------------------------------------------------ capture
    def is_leaf(self, m: nn.Module) -> bool:
        """Whether capture records ``m`` as one ``call_module`` node (its forward is not traced)."""
        return False

    def is_container(self, m: nn.Module) -> bool:
        """Whether capture traces through ``m`` although `is_leaf` holds for it (time/step containers)."""
        return False

    # ------------------------------------------------------------------- state
    def reset(self, model: nn.Module) -> None:
        """Reset the state of every module of this framework inside ``model`` (in place)."""

    def invalidate(self, model: nn.Module) -> None:
        """Drop what the framework cached about ``model``'s modules (neurons were swapped)."""

    def state(self, m: nn.Module) -> dict[str, Any]:
        """``m``'s own state by attribute name (membranes, traces): copied detached, snapshotted, watched."""
        return {}

    def settings(self, m: nn.Module) -> dict[str, Any]:
        """Neuron ``m``'s settings that decide what it computes and are not in its ``state_dict``
        (beyond SpikingJelly's ``v_threshold``/``v_reset``/``tau``/``decay_input``, which
        `model_fingerprint` reads by name): the fingerprint hashes them, so a deploy model with
        other time constants or another reset is told apart."""
        return {}

    def set_state(self, m: nn.Module, state: dict[str, Any]) -> None:
        """Put back what `state` returned."""
        for key, value in state.items():
            setattr(m, key, value)

    # -------------------------------------------------------------------- calls
    def spike_index(self, m: nn.Module, out: Any) -> int | None:
        """Where the spikes are in ``out``, what one call of ``m`` returned: ``None`` (``out`` itself) or an item."""
        return None

    def spike_shape(self, m: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of ``m``'s spikes for an input of ``input_shape``: the same, unless the neuron holds its
        input weights (Norse's ``LIFRecurrentCell``)."""
        return input_shape

    def batch_dims(self, m: nn.Module) -> int:
        """How many leading dims of ``m``'s input are batch/time (2: ``[T, N, …]``, 1: ``[N, …]``)."""
        return 1

    def step_mode(self, m: nn.Module) -> str:
        """``'m'``: one call takes the whole sequence; ``'s'``: one call is one time step."""
        return "s"

    def multi_step_remedy(self) -> str | None:
        """The call that makes a network of this framework multi-step (one call takes ``[T, N, …]``),
        named by refusals whose remedy that is (done before ``convert_model``); ``None``: it has none."""
        return None

    # ------------------------------------------------------------- model calls
    def thread_state(self, gm: Any) -> None:
        """Make the neurons of a captured graph (``fx.GraphModule``) read the state its call is given; in place.

        For frameworks whose models take their state back as an argument (Norse:
        ``out, state = model(x, state)``, ``None`` for a fresh one). Capture runs the model
        with that argument at its default, so without this every neuron call in the graph
        would start from a fresh state, whatever the caller passes.
        """

    def step_call(self, model: nn.Module, x: torch.Tensor, carry: Any) -> tuple[Any, Any]:
        """One time step of a single-step model: ``(its output, what the next step needs)``.

        ``carry`` is what the previous step returned (``None`` at the first). Default:
        ``model(x)``, whose neurons keep their own state.
        """
        return model(x), None

    def step_output(self, model: nn.Module, out: Any) -> Any:
        """The output in what one call of a single-step model returned (its state left out).

        ``out`` is real values or the arguments of a graph's output node.
        """
        return out

    # ----------------------------------------------------------------- amplitude
    def amplitude_mixin(self, m: nn.Module) -> type:
        """The mixin placed before ``m``'s class to make ``RealSpike<Cls>`` (see `sj_realspike.spiking`)."""
        from ..spiking import AmplitudeNeuron

        return AmplitudeNeuron

    def intrinsic_amplitude(self, m: nn.Module) -> torch.Tensor | None:
        """A factor the neuron itself multiplies its spikes by (snnTorch's ``graded_spikes_factor``), or ``None``.

        Convert moves it into the neuron's amplitude (`clear_intrinsic_amplitude`), so the
        deploy neuron emits binary spikes and the factor folds into the next synapse.
        """
        return None

    def clear_intrinsic_amplitude(self, m: nn.Module) -> None:
        """Make the neuron emit plain spikes (its intrinsic factor 1, not learnable); in place."""

    def internal_synapses(self, m: nn.Module) -> dict[str, nn.Module]:
        """Synapses inside the neuron that read its own spikes (recurrent weights), by attribute path.

        Fold scales them by the neuron's amplitude like any synapse downstream; a state
        argument through which a call passes back spikes to them is named by `spike_arguments`.
        """
        return {}

    def spike_arguments(self, m: nn.Module) -> tuple[int, ...]:
        """Positions of ``forward`` arguments that take back the neuron's own spikes (read by `internal_synapses`)."""
        return ()

    # ------------------------------------------------------------------- ternary
    def is_ternary(self, m: nn.Module) -> bool:
        """Whether ``m`` emits ternary spikes {−1, 0, +1}."""
        return False

    def ternary_problem(self, m: nn.Module) -> str | None:
        """Why ``m`` cannot become ternary (``None``: `to_ternary` takes it)."""
        return f"{type(m).__name__} has no ternary counterpart"

    def to_ternary(self, m: nn.Module) -> nn.Module:
        """A ternary neuron with ``m``'s hyper-parameters (``m`` itself if it is ternary already)."""
        raise ValueError(self.ternary_problem(m) or f"{type(m).__name__} cannot be made ternary")

    # -------------------------------------------------------------------- export
    def lowering_problem(self, m: nn.Module) -> str | None:
        """Why ``m`` has no export lowering (``None``: `lower` takes it)."""
        return f"{type(m).__name__} has no export lowering"

    def lower(self, m: nn.Module, time_steps: int | None) -> nn.Module:
        """A stateless module computing ``m``'s whole spike train from its whole input sequence.

        Args:
            m: the deploy neuron.
            time_steps: ``None``: inputs are ``[T, N, …]``; an int ``T``: inputs are ``[T·N, …]``
                (a single-step model run on the time-flattened batch).
        """
        raise ValueError(self.lowering_problem(m))

    def lowering_remedy(self, m: nn.Module) -> str:
        """What to do about a neuron without a lowering where export needs one (single-step models)."""
        return "Use a neuron type that has an export lowering"

    def rewrite_lowered(self, gm: Any) -> None:
        """A last in-place rewrite of the lowered deploy graph (``fx.GraphModule``) for this framework's modules.

        Called once after every neuron is lowered. For example, snnTorch's lowered neurons are
        split so that only the op computing the spikes carries the neuron's ONNX scope (its
        membrane, which the neuron also returns, is state, not spikes).
        """

    def lower_step(self, m: nn.Module) -> nn.Module | None:
        """Export form of one call of single-step neuron ``m`` in a model whose ``forward`` loops over time.

        The module keeps its state between calls like the neuron (reset by `reset`) and takes
        the state arguments the neuron takes. ``None``: export the neuron's own ``forward``.
        """
        return None

    def make_dyadic(self, m: nn.Module) -> None:
        """Put ``m``'s own constants on the dyadic grid, in place (`sj_realspike.testing.make_dyadic`).

        Decays become 1/2 (or τ = 2), so that every fp32 op of the neuron is exact.
        """

    def to_double(self, m: nn.Module) -> None:
        """Make ``m``, already cast with ``.double()``, compute in float64 throughout, in place.

        `sj_realspike.testing.assert_exact_in_fp32` runs a float64 copy of the model; a
        framework whose spike function returns float32 whatever its input (snnTorch's
        surrogates: ``(u > 0).float()``) makes its spikes take the membrane's dtype here.
        """

    # ----------------------------------------------------------------------- NIR
    def nir_node(self, m: nn.Module, nir: Any, features: tuple[int, ...], dt: float) -> Any:
        """The NIR node of deploy neuron ``m`` (``nir`` is the imported ``nir`` package).

        Args:
            m: the deploy neuron.
            nir: the ``nir`` module.
            features: the shape of one sample of the neuron's input (no batch/time dims).
            dt: the time step in seconds.

        Raises:
            Refusal: ``m`` has no NIR equivalent (the exporter names the node).
        """
        raise Refusal(f"{type(m).__name__} has no NIR neuron model in sj_realspike", "Export ONNX instead")

    def nir_import(self, graph: Any, nodes: dict[type, Any], dt: float, step_mode: str,
                   dtype: torch.dtype) -> nn.Module:
        """A model of this framework computing NIR graph ``graph`` (`sj_realspike.import_nir`).

        Args:
            graph: the ``nir.NIRGraph``.
            nodes: how to build the NIR nodes that `sj_realspike.export_nir` writes and a framework's
                importer may lack (``nir.Scale`` → `sj_realspike.synapses.DiagonalSynapse`): NIR node class →
                a function from the node to a module; they take precedence over the framework's own.
            dt: the time step in seconds the graph was exported with.
            step_mode: ``'m'`` (the model takes ``[T, N, …]``) or ``'s'`` (one step ``[N, …]`` per call).
            dtype: the model's parameter dtype.

        Raises:
            Refusal: sj_realspike has no NIR importer for this framework.
        """
        raise Refusal(f"sj_realspike has no NIR importer for {self.name}",
                      "Read the graph with the framework's own NIR importer")


class Refusal(ValueError):
    """An adapter cannot express a module: ``reason`` and what to do instead (``remedy``)."""

    def __init__(self, reason: str, remedy: str = "") -> None:
        super().__init__(reason)
        self.reason, self.remedy = reason, remedy


# What a subclass may define and still behave as its base: construction (its defaults), not computation.
_CONSTRUCTION = frozenset({"__init__", "__module__", "__qualname__", "__doc__", "__annotations__", "__dict__",
                           "__weakref__", "extra_repr", "__firstlineno__", "__static_attributes__"})


def defined_beyond(cls: type, base: type, skip: tuple[type, ...] = ()) -> list[str]:
    """What the classes from ``cls`` up to ``base`` (exclusive; not those in ``skip``) define beyond a
    constructor, sorted: empty when ``cls`` computes what ``base`` does (a subclass setting defaults)."""
    mro = cls.__mro__
    return sorted({k for c in mro[:mro.index(base)] if c not in skip for k in vars(c)} - _CONSTRUCTION)


_REGISTRY: list[FrameworkAdapter] = []
_LOADED = False


def register(adapter: FrameworkAdapter) -> FrameworkAdapter:
    """Add ``adapter`` to the registry (once per name; a later one of the same name replaces it)."""
    for i, known in enumerate(_REGISTRY):
        if known.name == adapter.name:
            _REGISTRY[i] = adapter
            return adapter
    _REGISTRY.append(adapter)
    return adapter


def adapters() -> list[FrameworkAdapter]:
    """Every registered adapter, built-in ones first in `BUILTIN` order (whichever was imported
    first), then the others as registered; the first call imports the built-in ones whose
    framework is installed."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for name in BUILTIN:
            try:
                importlib.import_module(f"{__package__}.{name}")
            except ModuleNotFoundError as e:
                # The framework is not installed (or this release has no adapter for it): not offered.
                if (e.name or "").split(".")[0] != name and e.name != f"{__package__}.{name}":
                    raise
    rank = {name: i for i, name in enumerate(BUILTIN)}
    return sorted(_REGISTRY, key=lambda a: rank.get(a.name, len(BUILTIN)))


def adapter_for(m: nn.Module) -> FrameworkAdapter | None:
    """The adapter owning module ``m``, or ``None`` (a plain torch module)."""
    for adapter in adapters():
        if adapter.owns(m):
            return adapter
    return None


def frameworks_in(modules: Iterable[tuple[str, nn.Module]]) -> Iterator[tuple[FrameworkAdapter, str]]:
    """``(adapter, first module path)`` for each framework whose spiking modules appear in ``modules``."""
    seen: set[str] = set()
    for path, m in modules:
        for adapter in adapters():
            if adapter.name not in seen and adapter.is_spiking(m):
                seen.add(adapter.name)
                yield adapter, path or type(m).__name__


def framework_of(model: nn.Module) -> FrameworkAdapter | None:
    """The one framework whose neurons ``model`` uses (``None``: no spiking neurons at all).

    Raises:
        UnsupportedPatternError: neurons of two frameworks are mixed in one network.
    """
    found = list(frameworks_in(model.named_modules()))
    if len(found) > 1:
        (first, at_first), (second, at_second) = found[:2]
        raise UnsupportedPatternError(
            at_second, f"the network mixes neurons of {first.name} ('{at_first}') and {second.name} "
                       f"('{at_second}'); their state, step conventions and export lowerings differ",
            "Build the network with the neurons of one framework")
    return found[0][0] if found else None
