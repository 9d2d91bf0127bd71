"""SpikingJelly (``spikingjelly.activation_based``): the first framework adapter.

Neurons are ``BaseNode``/``SimpleBaseNode`` subclasses; the spiking modules of
``neuron`` that are not (PSN family, GatedLIF, DSR, …) are recognised and skipped with
the reason. Capture keeps every ``StepModule``/``MemoryModule`` (neurons, ``layer.*``
wrappers) whole and traces through SpikingJelly's step containers. State is each
``MemoryModule``'s ``_memories`` (plus the recorded ``v_seq``/``spike_seq``); reset is
``functional.reset_net``. A neuron call returns its spikes; multi-step (``'m'``) neurons
take ``[T, N, …]``. Ternary counterparts: ``TernaryIFNode``, ``TernaryLIFNode`` and
`TernaryParametricLIFNode` (defined here: SpikingJelly has no ternary PLIF). Export
lowers IF/LIF/PLIF and their ternary twins (and subclasses that only set defaults) to
`sj_realspike.lowered.LoweredNeuron` (`lower_neuron`); NIR export and import
(`import_nir`) use SpikingJelly's own ``nir_exchange`` conventions.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer, neuron, surrogate

from ..lowered import LoweredBinaryNeuron, LoweredNeuron, LoweredTernaryNeuron
from .base import FrameworkAdapter, Refusal, defined_beyond, register

__all__ = ["SpikingJellyAdapter", "TernaryParametricLIFNode", "lower_neuron", "unsupported_neuron_reason"]


class TernaryParametricLIFNode(neuron.BaseNode):
    """Ternary spikes with ParametricLIF dynamics (learnable ``1/τ = sigmoid(w)``).

    SpikingJelly ships ternary IF and LIF neurons but no ternary PLIF; this one
    charges exactly like ``ParametricLIFNode`` and fires/resets like
    ``TernaryLIFNode``: +1 at ``h ≥ θ``, −1 at ``h ≤ −θ``, both polarities reset.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        surrogate_function: surrogate.SurrogateFunctionBase = surrogate.Sigmoid(),
        detach_reset: bool = False,
        step_mode: str = "s",
        store_v_seq: bool = False,
    ) -> None:
        # Validate exactly as SpikingJelly's ternary neurons do (same messages).
        neuron.TernaryIFNode(v_threshold, v_reset, surrogate_function, detach_reset)
        if not isinstance(init_tau, float) or init_tau <= 1.0:
            raise ValueError("init_tau must be a float greater than 1.0.")
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset,
                         step_mode=step_mode, store_v_seq=store_v_seq)
        self.decay_input = decay_input
        self.w = nn.Parameter(torch.as_tensor(-torch.log(torch.tensor(init_tau - 1.0)).item()))

    def extra_repr(self) -> str:
        with torch.no_grad():
            tau = 1.0 / self.w.sigmoid()
        return super().extra_repr() + f", tau={tau}"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x, v = inputs[0], states[0]
        q = self.w.sigmoid()
        rest = 0.0 if self.v_reset is None else self.v_reset
        h = v + (x - (v - rest)) * q if self.decay_input else v - (v - rest) * q + x
        positive = self.surrogate_function(h - self.v_threshold)
        negative = self.surrogate_function(-h - self.v_threshold)
        spike = positive - negative
        reset_event = spike if self.v_reset is None else positive + negative
        v = functional.voltage_reset(h, reset_event, self.v_threshold, self.v_reset, self.detach_reset)
        return (spike,), (v, *states[1:])


def _classes(*names: str) -> tuple[type, ...]:
    """The classes of ``neuron`` with these names that this SpikingJelly release has."""
    return tuple(c for c in (getattr(neuron, name, None) for name in names) if isinstance(c, type))


# Neurons with a membrane, firing through a surrogate: IF, LIF, PLIF, QIF, EIF, Izhikevich,
# KLIF, CLIF, ILIF, OTTT/SLTT, LIAF, the ternary neurons, and every user subclass.
_NODE_BASES = _classes("BaseNode", "SimpleBaseNode")
# Spiking modules that are not BaseNode. Weighted-spike (DSR, FewSpike, STBIF) and noisy
# neurons are listed too: they fire, so convert must see them and say why they are skipped.
# Left out on purpose: NonSpikingBaseNode and NoisyNonSpikingBaseNode (read-out integrators
# that never fire), encoders (they spike the data, no synapse feeds them) and rnn's spiking
# cells (whole recurrent layers returning (h, c)).
_OTHER_SPIKING = _classes(
    "PSN", "MaskedPSN", "SlidingPSN",  # parallel spiking neurons
    "GatedLIFNode",
    "ActivationAwareIFNode",
    "ILCBaseNode",  # IF/LIF/CUBA-LIF with an inter-layer connection
    "NoisyBaseNode",  # noisy spiking neurons (NoisyCUBALIFNode, NoisyILC*)
    "DSRIFNode", "DSRLIFNode",  # differentiable spike representation: spikes times v_threshold
    "FewSpikeNode",  # few-spike coding (FewSpikeNode, HGNode, OutlierAwareThresholdNode)
    "STBIFNode",  # SpikeZIP signed threshold-balanced IF
    "FlexSN",  # user-defined neuron dynamics
)
_SPIKING = _NODE_BASES + _OTHER_SPIKING

# Containers whose forward only reshapes [T, N] around the layers they hold: traced through.
_CONTAINERS = tuple(c for c in (
    getattr(layer, "SeqToANNContainer", None), getattr(layer, "MultiStepContainer", None),
    getattr(layer, "StepModeContainer", None), getattr(layer, "TLastSeqToANNContainer", None),
    getattr(layer, "TLastMultiStepContainer", None)) if c is not None)

_TERNARY_OF: dict[type, type] = {
    neuron.IFNode: neuron.TernaryIFNode,
    neuron.LIFNode: neuron.TernaryLIFNode,
    neuron.ParametricLIFNode: TernaryParametricLIFNode,
}
_TERNARY_TYPES = tuple(_TERNARY_OF.values())
# Recorded sequences that a forward may read like state (store_v_seq).
_SEQUENCES = ("v_seq", "spike_seq", "h_seq")
_NIR_NEURONS = (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode)
# Neurons with an export lowering (and their subclasses that define only a constructor: `dynamics_class`).
_LOWERED_BINARY = (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode)
_LOWERED_TERNARY = (neuron.TernaryIFNode, neuron.TernaryLIFNode, TernaryParametricLIFNode)
_LOWERABLE = _LOWERED_BINARY + _LOWERED_TERNARY
_ONNX_REMEDY = "export_onnx supports this model as it is"


def dynamics_class(m: nn.Module) -> type:
    """The SpikingJelly neuron class whose equations ``m`` runs: its own class, or the IF/LIF/PLIF (or
    ternary) class a subclass derives from when it defines nothing but its constructor.

    A subclass that overrides anything else (a charge, a reset, a forward) may change the dynamics,
    so it stays its own class: no ternary twin, lowering or NIR node is assumed for it.
    """
    cls = type(m)
    if cls in _LOWERABLE:
        return cls
    for base in _LOWERABLE:  # SpikingResformer's `class LIF(LIFNode)` only sets constructor defaults
        if issubclass(cls, base) and not defined_beyond(cls, base):
            return base
    return cls


def _overrides_note(m: nn.Module) -> str:
    """``"; it overrides neuronal_charge of LIFNode"``: why a subclass of a supported neuron is not taken as it."""
    cls = type(m)
    for base in _LOWERABLE:
        if issubclass(cls, base):
            return (f"; it overrides {', '.join(defined_beyond(cls, base))} of {base.__name__}, which may change "
                    "its dynamics")
    return ""


class SpikingJellyAdapter(FrameworkAdapter):
    """SpikingJelly's ``activation_based`` neurons, containers, state and conventions."""

    name = "spikingjelly"
    package = "spikingjelly"
    model_zoo = ("spikingjelly.activation_based.model",)
    kwarg_classes = ("spikingjelly.activation_based.neuron", "spikingjelly.activation_based.surrogate",
                     "spikingjelly.activation_based.layer", "spikingjelly.activation_based.model")

    # ------------------------------------------------------------ recognition
    def neuron_types(self) -> tuple[type, ...]:
        return _NODE_BASES

    def ternary_types(self) -> tuple[type, ...]:
        return _TERNARY_TYPES

    def identity_types(self) -> tuple[type, ...]:
        return (layer.Dropout, layer.Dropout2d)

    def synapse_types(self) -> tuple[type, ...]:
        # SynapseFilter's decay multiplies what it integrates, not an amplitude; amplitudes never pass it.
        return (layer.SynapseFilter,)

    def layer_wrappers(self) -> tuple[type, ...]:
        # Not WSConv2d/WSLinear: they standardize their weight in forward.
        return (layer.Conv1d, layer.Conv2d, layer.Conv3d, layer.ConvTranspose1d, layer.ConvTranspose2d,
                layer.ConvTranspose3d, layer.Linear)

    def owns(self, m: nn.Module) -> bool:
        # Every stateful module (user subclasses too) and SpikingJelly's own step modules; not
        # sj_realspike's step modules (amplitudes, fold-made synapses), which any framework may hold.
        return isinstance(m, (base.MemoryModule, *_SPIKING)) or (
            isinstance(m, base.StepModule) and type(m).__module__.startswith("spikingjelly"))

    def is_spiking(self, m: nn.Module) -> bool:
        return isinstance(m, _SPIKING)

    def is_neuron(self, m: nn.Module) -> bool:
        return isinstance(m, _NODE_BASES)

    def not_neuron_reason(self, m: nn.Module) -> str:
        return (f"{type(m).__name__} emits spikes but is not a SpikingJelly BaseNode; amplitudes, fold and "
                "export support BaseNode neurons only, so its spikes stay binary")

    def conversion_problem(self, m: nn.Module) -> str | None:
        if getattr(getattr(m, "surrogate_function", None), "spiking", True) is False:
            return "its surrogate runs with spiking=False, so it emits analog values, not spikes"
        return None

    # ------------------------------------------------------------------ capture
    def is_leaf(self, m: nn.Module) -> bool:
        # Step modules (neurons, stateful modules, layer.* wrappers) branch on the step mode
        # and reshape by runtime shape; kept whole they stay the user's own modules.
        return isinstance(m, (base.StepModule, base.MemoryModule))

    def is_container(self, m: nn.Module) -> bool:
        return isinstance(m, _CONTAINERS)

    # ------------------------------------------------------------------- state
    def reset(self, model: nn.Module) -> None:
        functional.reset_net(model)

    def invalidate(self, model: nn.Module) -> None:
        # reset_net caches the modules it resets per network.
        functional.invalidate_reset_cache(model)

    def state(self, m: nn.Module) -> dict[str, Any]:
        found = dict(getattr(m, "_memories", {})) if isinstance(m, base.MemoryModule) else {}
        for key in _SEQUENCES:
            value = getattr(m, key, None)
            if isinstance(value, torch.Tensor):
                found[key] = value
        return found

    # -------------------------------------------------------------------- calls
    def batch_dims(self, m: nn.Module) -> int:
        return 2 if self.step_mode(m) == "m" else 1

    def step_mode(self, m: nn.Module) -> str:
        return getattr(m, "step_mode", "s")

    def multi_step_remedy(self) -> str | None:
        return "functional.set_step_mode(net, 'm')"

    # ------------------------------------------------------------------- ternary
    def is_ternary(self, m: nn.Module) -> bool:
        return isinstance(m, _TERNARY_TYPES)

    def ternary_problem(self, m: nn.Module) -> str | None:
        if self.is_ternary(m):
            return None
        if dynamics_class(m) not in _TERNARY_OF:
            return (f"{type(m).__name__} has no ternary counterpart (IFNode, LIFNode, ParametricLIFNode have"
                    f"{_overrides_note(m)})")
        v_th, v_reset = m.v_threshold, m.v_reset
        if v_reset is not None and not -v_th < v_reset < v_th:
            return f"v_reset={v_reset} lies outside (-v_threshold, v_threshold), which a ternary neuron needs"
        return None

    def to_ternary(self, m: nn.Module) -> nn.Module:
        """A ternary neuron with ``m``'s hyper-parameters, surrogate, step mode and precision.

        The surrogate function object is shared (not copied) so users keep their own
        surrogate instance and its settings; PLIF's learned ``w`` is copied.
        """
        if self.is_ternary(m):
            return m
        cls = _TERNARY_OF.get(dynamics_class(m))
        if cls is None:
            raise ValueError(f"{type(m).__name__} has no ternary counterpart "
                             f"(supported: {', '.join(t.__name__ for t in _TERNARY_OF)})")
        common = dict(
            v_threshold=float(m.v_threshold),
            v_reset=None if m.v_reset is None else float(m.v_reset),
            surrogate_function=m.surrogate_function,
            detach_reset=m.detach_reset,
            step_mode=m.step_mode,
            store_v_seq=m.store_v_seq,
        )
        if isinstance(m, neuron.ParametricLIFNode):
            new = cls(init_tau=2.0, decay_input=m.decay_input, **common)
            with torch.no_grad():
                new.w.copy_(m.w)
            new.w.requires_grad_(m.w.requires_grad)
        elif isinstance(m, neuron.LIFNode):
            new = cls(tau=float(m.tau), decay_input=m.decay_input, **common)
        else:
            new = cls(**common)
        new._neuron_precision = copy.copy(getattr(m, "_neuron_precision", None))
        new.train(m.training)
        return new

    # -------------------------------------------------------------------- export
    def lowering_problem(self, m: nn.Module) -> str | None:
        return unsupported_neuron_reason(m)

    def lowering_remedy(self, m: nn.Module) -> str:
        return ("Switch the network to multi-step before convert_model (functional.set_step_mode(net, 'm')); "
                "multi-step neurons without a lowering are exported through SpikingJelly's own forward")

    def lower(self, m: nn.Module, time_steps: int | None) -> nn.Module:
        return lower_neuron(m, time_steps=time_steps)

    def make_dyadic(self, m: nn.Module) -> None:
        if isinstance(m, (neuron.ParametricLIFNode, TernaryParametricLIFNode)):
            with torch.no_grad():
                m.w.zero_()  # sigmoid(0) = 0.5 exactly: tau = 2
        elif isinstance(m, (neuron.LIFNode, neuron.TernaryLIFNode)):
            m.tau = 2.0

    # ----------------------------------------------------------------------- NIR
    def nir_node(self, m: nn.Module, nir: Any, features: tuple[int, ...], dt: float) -> Any:
        if self.is_ternary(m):
            raise Refusal("it emits ternary spikes {-1, 0, 1}; NIR neurons emit {0, 1}",
                          f"Train binary spikes (spike='real') for neuromorphic targets, or use ONNX ({_ONNX_REMEDY})")
        if dynamics_class(m) not in _NIR_NEURONS:
            raise Refusal("it has no NIR neuron model (supported: IFNode, LIFNode, ParametricLIFNode)",
                          f"Use IF/LIF/PLIF neurons, or ONNX ({_ONNX_REMEDY})")
        if m.v_reset is None:
            raise Refusal("it uses soft reset (v_reset=None, subtract θ on a spike); NIR neurons reset "
                          "hard to v_reset", f"Use hard reset (v_reset=0.0), or ONNX ({_ONNX_REMEDY})")
        if not isinstance(m.v_threshold, (int, float)):
            raise Refusal("it has a tensor threshold", "Use a scalar v_threshold")

        def full(value: float) -> np.ndarray:
            return np.full(features, float(value))

        threshold, reset = full(m.v_threshold), full(m.v_reset)
        if isinstance(m, neuron.IFNode):
            # dv/dt = r·I with r = 1/dt: one Euler step adds the input, as SpikingJelly's IF does
            return nir.IF(r=full(1.0 / dt), v_threshold=threshold, v_reset=reset)
        tau = float(m.tau) if isinstance(m, neuron.LIFNode) else 1.0 / float(m.w.detach().sigmoid())
        # τ_nir dv/dt = (v_leak − v) + r·I, Euler step dt with τ_nir = τ·dt:
        # v += (v_reset − v + r·x)/τ; r = 1 is decay_input=True, r = τ is decay_input=False
        return nir.LIF(tau=full(tau * dt), r=full(1.0 if m.decay_input else tau),
                       v_leak=reset.copy(), v_threshold=threshold, v_reset=reset)

    def nir_import(self, graph: Any, nodes: dict[type, Any], dt: float, step_mode: str,
                   dtype: torch.dtype) -> nn.Module:
        """SpikingJelly's own importer (the node mapper behind its ``import_from_nir``), with ``nodes`` added.

        Returns:
            nirtorch's ``GraphModule``, called as ``y, state = model(x, state=None)``.
        """
        import nirtorch
        # The node mapper behind SpikingJelly's public import_from_nir (spikingjelly>=2,<3).
        from spikingjelly.activation_based.nir_exchange.from_nir import _NodeMapper

        gm = nirtorch.nir_to_torch(graph, {**_NodeMapper(dt=dt).map_dict, **nodes}, dtype=dtype)
        functional.set_step_mode(gm, step_mode)
        return gm


def unsupported_neuron_reason(m: nn.Module) -> str | None:
    """Why neuron ``m`` has no export lowering (``None`` if `lower_neuron` takes it)."""
    if dynamics_class(m) not in _LOWERABLE:
        return (f"{type(m).__name__} has no compact lowering (lowered: "
                f"{', '.join(c.__name__ for c in _LOWERABLE)}{_overrides_note(m)})")
    if getattr(m.surrogate_function, "spiking", True) is False:
        return "its surrogate runs with spiking=False, so it emits analog values"
    if getattr(m, "_neuron_precision", None) is not None:
        return "it runs with a custom neuron precision (Triton kernels)"
    return None


def lower_neuron(m: nn.Module, time_steps: int | None = None) -> LoweredNeuron:
    """The export-friendly equivalent of a SpikingJelly IF/LIF/PLIF neuron or its ternary twin.

    SpikingJelly's charge equations are `LoweredNeuron`'s: the lowering reads ``θ``,
    ``v_reset``, ``decay_input`` and the decay (LIF's ``τ``, PLIF's ``sigmoid(w)``).

    Args:
        m: an ``IFNode``, ``LIFNode``, ``ParametricLIFNode``, ``TernaryIFNode``,
            ``TernaryLIFNode`` or `TernaryParametricLIFNode` (or a subclass defining only a constructor; others
            may change the dynamics).
        time_steps: see `LoweredNeuron`.

    Raises:
        ValueError: ``m`` cannot be lowered (the message says why).
    """
    reason = unsupported_neuron_reason(m)
    if reason is not None:
        raise ValueError(reason)
    cls = LoweredTernaryNeuron if isinstance(m, _LOWERED_TERNARY) else LoweredBinaryNeuron
    common = {"v_threshold": float(m.v_threshold), "v_reset": m.v_reset, "time_steps": time_steps}
    if isinstance(m, (neuron.ParametricLIFNode, TernaryParametricLIFNode)):
        with torch.no_grad():
            q = m.w.detach().sigmoid()  # the value SpikingJelly multiplies by, in the same dtype
        return cls(charge="plif", decay=q, decay_input=m.decay_input, **common)
    if isinstance(m, (neuron.LIFNode, neuron.TernaryLIFNode)):
        return cls(charge="lif", decay=float(m.tau), decay_input=m.decay_input, **common)
    return cls(charge="if", **common)


ADAPTER = register(SpikingJellyAdapter())
