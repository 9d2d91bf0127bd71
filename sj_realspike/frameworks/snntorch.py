"""snnTorch: neurons ``Leaky``, ``Synaptic``, ``RLeaky``, ``Alpha``, ``Lapicque`` and `TernaryLeaky`.

snnTorch's neurons are single-step: one call is one time step, the time loop is the
user's (``for step in range(T): spk, mem = lif(fc(x[step]), mem)``), so a network takes
``[N, …]`` per call and ``[T, N, …]`` at export and verify, like a single-step
SpikingJelly network. What this adapter knows about them, measured on snntorch 1.0:

* **Calls.** With ``init_hidden=True`` a neuron keeps its state in buffers and returns its
  spikes (or ``(spk, mem)`` with ``output=True``); otherwise it takes the state as
  arguments and returns ``(spk, mem)`` (``Synaptic``: ``(spk, syn, mem)``; ``Alpha``:
  ``(spk, syn_exc, syn_inh, mem)``). The spikes are item 0 (`spike_index`).
* **Capture.** ``forward`` branches on ``self.mem.shape == input_.shape``: every
  ``SpikingNeuron`` is a leaf.
* **State** is the neuron's non-persistent buffers (``mem``, ``syn``, ``spk``, …): reset here
  is each neuron's own ``reset_mem`` (a subclass's too: ``DeltaLeaky``'s is ``None``), with
  the zeros it makes given size 0, which snnTorch's own ``forward`` re-creates as zeros of the
  input's shape. (``snntorch.utils.reset`` resets only direct children, and ``reset_hidden`` a
  class-level instance list that copies of a model are not in.)
* **Amplitudes** scale the spikes in ``fire``, exactly where snnTorch applies
  ``graded_spikes_factor``: what the neuron returns and what an ``RLeaky`` feeds back to
  its ``recurrent`` weights are both ``a ⊙ s``. The recurrent weights are synapses: fold
  scales them like the next layer's. A net trained in plain snnTorch with
  ``graded_spikes_factor`` (learnable or not) has that factor moved into the amplitude at
  conversion (`intrinsic_amplitude`), so fold puts it into the next synapse and the deploy
  neuron sends binary spikes.
* **Dynamics** for the export lowering, snnTorch's own: ``reset = H(mem_{t−1} − θ)``
  (the subtract/zero reset of a step comes from the previous membrane, one step late),
  ``mem_t = clamp(β, 0, 1)·mem_{t−1} + x_t − reset·θ``, ``spk_t = H(mem_t − θ)`` with
  ``H(u) = [u > 0]``; the lowering repeats snnTorch's operations in snnTorch's order, so
  it is bit-identical.
* **Refused** (the report names the neuron and why): ``inhibition=True`` (fires only the
  largest membrane, through another path), ``reset_delay=False`` (the reset divides the
  spikes by ``graded_spikes_factor``, which an amplitude would change), and the other
  spiking modules (``RSynaptic``, ``SLSTM``, ``SConv2dLSTM``, ``LeakyParallel``,
  ``StateLeaky``, …).
* **NIR** (`SnnTorchAdapter.nir_node`, snnTorch's own ``export_nir`` conventions, read back
  by its ``import_from_nir``): ``Leaky(reset_mechanism="zero")`` → ``LIF``,
  ``Synaptic(reset_mechanism="zero", reset_delay=False)`` → ``CubaLIF``, spike for spike; the
  other resets (``"subtract"``, the default), ``RLeaky``, ``Lapicque``, ``Alpha`` and
  `TernaryLeaky` are refused with the reason.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from typing import Any

import snntorch
import torch
import torch.fx as fx
import torch.nn as nn
from snntorch import SpikingNeuron

from ..lowered import LoweredRecurrence
from ..spiking import AMPLITUDE_ATTR, AmplitudeNeuron
from .base import FrameworkAdapter, Refusal, register

__all__ = ["LoweredSnnTorchNeuron", "SnnTorchAdapter", "SnnTorchAmplitudeNeuron", "SnnTorchFire", "SnnTorchTernaryFire",
           "TernaryLeaky"]


class TernaryLeaky(snntorch.Leaky):
    """A ternary ``Leaky``: +1 where ``mem > θ``, −1 where ``mem < −θ``, else 0; both polarities reset.

    The same first-order leaky membrane as ``snntorch.Leaky`` (``β`` clamped to [0, 1], the
    reset one step late as in snnTorch), like SpikingJelly's ``TernaryLIFNode`` beside
    ``LIFNode``: a negative spike subtracts ``−θ`` (adds ``θ``) under ``"subtract"`` and
    zeroes the membrane under ``"zero"``. Spikes are scaled by ``graded_spikes_factor``
    like ``Leaky``'s. Takes ``Leaky``'s arguments; ``inhibition`` and ``reset_delay=False``
    are refused.
    """

    def __init__(self, beta: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(beta, *args, **kwargs)
        if self.inhibition:
            raise ValueError("TernaryLeaky does not support inhibition")
        if not self.reset_delay:
            raise ValueError("TernaryLeaky needs reset_delay=True (snnTorch's default)")

    def fire(self, mem: torch.Tensor) -> torch.Tensor:
        if self.state_quant:
            mem = self.state_quant(mem)
        spk = self.spike_grad(mem - self.threshold) - self.spike_grad(-mem - self.threshold)
        return spk * self.graded_spikes_factor

    def mem_reset(self, mem: torch.Tensor) -> torch.Tensor:
        # signed: +1 after a positive spike, −1 after a negative one ("subtract" then adds θ)
        return (self.spike_grad(mem - self.threshold) - self.spike_grad(-mem - self.threshold)).clone().detach()

    def _base_zero(self, input_: torch.Tensor) -> torch.Tensor:
        self.mem = (1 - self.reset.abs()) * self.mem
        return self._base_state_function(input_)


class SnnTorchAmplitudeNeuron(AmplitudeNeuron):
    """``RealSpike<snnTorch neuron>``: the amplitude scales the spikes in ``fire``.

    That is where snnTorch applies ``graded_spikes_factor``, so the returned spikes and
    those an ``RLeaky`` feeds back to its recurrent weights are both ``a ⊙ s``, in every
    call style; ``forward`` is the neuron's own.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super(AmplitudeNeuron, self).forward(*args, **kwargs)

    def fire(self, mem: torch.Tensor) -> torch.Tensor:
        return getattr(self, AMPLITUDE_ATTR)(super().fire(mem))


_SUPPORTED = (snntorch.Leaky, snntorch.Synaptic, snntorch.RLeaky, snntorch.Alpha, snntorch.Lapicque)
_SUPPORTED_NAMES = "Leaky, Synaptic, RLeaky, Alpha, Lapicque, TernaryLeaky"
# Lowered for export: snnTorch's update repeated op for op (Alpha is not, yet).
_LOWERED = (snntorch.Leaky, TernaryLeaky, snntorch.Synaptic, snntorch.RLeaky, snntorch.Lapicque)
_ONNX_REMEDY = "export_onnx supports this model as it is"


def _heaviside_probe() -> torch.Tensor:
    tiny = torch.finfo(torch.float32).tiny
    return torch.tensor([-2.0, -1.0, -tiny, -0.0, 0.0, tiny, 0.5, 1.0, 3.0, float("inf"), float("-inf")])


def _surrogate_is_heaviside(m: nn.Module) -> bool:
    """Whether ``m.spike_grad``'s forward is snnTorch's step ``[u > 0]`` (every built-in surrogate's)."""
    u = _heaviside_probe()
    try:
        with torch.no_grad():
            out = m.spike_grad(u.clone())
    except Exception:  # a surrogate that cannot run on a probe is not one we can lower
        return False
    return isinstance(out, torch.Tensor) and out.shape == u.shape and torch.equal(out.float(), (u > 0).float())


class SnnTorchAdapter(FrameworkAdapter):
    """snnTorch's ``SpikingNeuron`` family: recognition, state, amplitudes, ternary ``Leaky``, lowering."""

    name = "snntorch"
    package = "snntorch"
    kwarg_classes = ("snntorch._neurons", "snntorch._layers")  # named as snntorch.Leaky; no model zoo

    # ------------------------------------------------------------ recognition
    def neuron_types(self) -> tuple[type, ...]:
        return (*_SUPPORTED, SnnTorchFire)

    def ternary_types(self) -> tuple[type, ...]:
        return (TernaryLeaky, SnnTorchTernaryFire)

    def synapse_types(self) -> tuple[type, ...]:
        # A lowered neuron's own ops integrate what reaches its membrane: spikes added into it (a shortcut)
        # or fed back by RLeaky's one-to-one recurrence (V·s, a synapse: fold scales V), then decayed by β.
        # Those products are its dynamics, not amplitudes; its spikes leave through `SnnTorchFire`.
        return (LoweredSnnTorchNeuron,)

    def owns(self, m: nn.Module) -> bool:
        return isinstance(m, (SpikingNeuron, LoweredSnnTorchNeuron))

    def is_spiking(self, m: nn.Module) -> bool:
        return isinstance(m, SpikingNeuron)

    def is_neuron(self, m: nn.Module) -> bool:
        return isinstance(m, _SUPPORTED)

    def not_neuron_reason(self, m: nn.Module) -> str:
        return (f"{type(m).__name__} emits spikes but sj_realspike supports the snnTorch neurons "
                f"{_SUPPORTED_NAMES} only, so its spikes stay binary")

    def conversion_problem(self, m: nn.Module) -> str | None:
        if m.inhibition:
            return ("inhibition=True fires only the largest membrane through fire_inhibition, which does not "
                    "apply spike factors; set inhibition=False")
        if not getattr(m, "reset_delay", True):
            return ("reset_delay=False resets by spk / graded_spikes_factor, which a spike amplitude would change; "
                    "use reset_delay=True (snnTorch's default)")
        return None

    # ------------------------------------------------------------------ capture
    def is_leaf(self, m: nn.Module) -> bool:
        # forward branches on `self.mem.shape == input_.shape` and keeps state in buffers.
        return isinstance(m, (SpikingNeuron, LoweredSnnTorchNeuron))

    # ------------------------------------------------------------------- state
    def reset(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, SpikingNeuron):
                self._reset_neuron(m)
            elif isinstance(m, LoweredSnnTorchNeuron):
                m.reset()

    def _reset_neuron(self, m: SpikingNeuron) -> None:
        """snnTorch's own reset of ``m`` (``reset_mem``), with the zero tensors it makes emptied.

        ``reset_mem`` is what subclasses override (``DeltaLeaky`` expects ``None``, not a
        tensor, and breaks on an empty one). A zero state of the last batch's shape becomes
        size 0, the state snnTorch's ``_init_mem`` starts from: its ``forward`` makes zeros of
        the input's shape from either, and an empty state holds no value (passing it is not a
        state read, and no batch size is baked into a captured graph).
        """
        if callable(getattr(m, "reset_mem", None)):
            m.reset_mem()
        for key, value in self.state(m).items():
            if not value.any():
                setattr(m, key, torch.zeros(0, device=value.device))

    def state(self, m: nn.Module) -> dict[str, Any]:
        if not isinstance(m, SpikingNeuron):
            return {}
        return {key: m._buffers[key] for key in sorted(m._non_persistent_buffers_set)
                if isinstance(m._buffers.get(key), torch.Tensor)}

    def settings(self, m: nn.Module) -> dict[str, Any]:
        # threshold, beta, graded_spikes_factor and the reset mechanism are buffers (in the state_dict)
        return {k: getattr(m, k) for k in ("reset_delay", "inhibition", "state_quant", "output") if hasattr(m, k)}

    # -------------------------------------------------------------------- calls
    def spike_index(self, m: nn.Module, out: Any) -> int | None:
        return 0 if isinstance(out, tuple) else None

    # ----------------------------------------------------------------- amplitude
    def amplitude_mixin(self, m: nn.Module) -> type:
        return SnnTorchAmplitudeNeuron

    def intrinsic_amplitude(self, m: nn.Module) -> torch.Tensor | None:
        g = getattr(m, "graded_spikes_factor", None)
        if not isinstance(g, torch.Tensor):
            return None
        if isinstance(g, nn.Parameter) or g.numel() != 1 or float(g) != 1.0:
            return g.detach()
        return None

    def clear_intrinsic_amplitude(self, m: nn.Module) -> None:
        g = m.graded_spikes_factor
        one = torch.ones((), dtype=g.dtype, device=g.device)
        if "graded_spikes_factor" in m._parameters:
            del m._parameters["graded_spikes_factor"]
        m.register_buffer("graded_spikes_factor", one)

    def internal_synapses(self, m: nn.Module) -> dict[str, nn.Module]:
        return {"recurrent": m.recurrent} if isinstance(m, snntorch.RLeaky) else {}

    def spike_arguments(self, m: nn.Module) -> tuple[int, ...]:
        return (1,) if isinstance(m, snntorch.RLeaky) else ()  # forward(input_, spk, mem)

    # ------------------------------------------------------------------- ternary
    def is_ternary(self, m: nn.Module) -> bool:
        return isinstance(m, TernaryLeaky)

    def ternary_problem(self, m: nn.Module) -> str | None:
        if self.is_ternary(m):
            return None
        if type(m) is not snntorch.Leaky:
            return f"{type(m).__name__} has no ternary counterpart (Leaky has: TernaryLeaky)"
        return self.conversion_problem(m)

    def to_ternary(self, m: nn.Module) -> nn.Module:
        """A `TernaryLeaky` with ``m``'s ``β``, threshold, surrogate, reset, style and spike factor (copied)."""
        if self.is_ternary(m):
            return m
        problem = self.ternary_problem(m)
        if problem is not None:
            raise ValueError(problem)
        new = TernaryLeaky(
            beta=m.beta.detach().clone(), threshold=m.threshold.detach().clone(), spike_grad=m.spike_grad,
            surrogate_disable=m.surrogate_disable, init_hidden=m.init_hidden, inhibition=False,
            learn_beta=isinstance(m.beta, nn.Parameter), learn_threshold=isinstance(m.threshold, nn.Parameter),
            reset_mechanism=m.reset_mechanism, state_quant=m.state_quant, output=m.output,
            graded_spikes_factor=m.graded_spikes_factor.detach().clone(),
            learn_graded_spikes_factor=isinstance(m.graded_spikes_factor, nn.Parameter), reset_delay=m.reset_delay)
        if m.surrogate_disable:
            new.spike_grad = m.spike_grad
        new.to(m.beta.device)
        new.train(m.training)
        return new

    # -------------------------------------------------------------------- export
    def lowering_problem(self, m: nn.Module) -> str | None:
        if type(m) not in _LOWERED:
            return (f"{type(m).__name__} has no export lowering (lowered: "
                    f"{', '.join(c.__name__ for c in _LOWERED)})")
        if m.inhibition or not getattr(m, "reset_delay", True):
            return "inhibition=True or reset_delay=False is not lowered"
        if m.state_quant:
            return "it quantizes its state (state_quant), which is not lowered"
        if not _surrogate_is_heaviside(m):
            return f"its spike_grad's forward ({type(m.spike_grad).__name__}) is not snnTorch's step [u > 0]"
        return None

    def lower(self, m: nn.Module, time_steps: int | None) -> nn.Module:
        problem = self.lowering_problem(m)
        if problem is not None:
            raise ValueError(problem)
        if time_steps is None:
            raise ValueError("snnTorch neurons are single-step: lower them with the number of time steps")
        return LoweredSnnTorchNeuron(m, time_steps)

    def lowering_remedy(self, m: nn.Module) -> str:
        return (f"Use {', '.join(c.__name__ for c in _LOWERED)} neurons, or keep this layer out of the exported "
                "network")

    def lower_step(self, m: nn.Module) -> nn.Module | None:
        return LoweredSnnTorchNeuron(m, None) if self.lowering_problem(m) is None else None

    def rewrite_lowered(self, gm: fx.GraphModule) -> None:
        """Call each lowered neuron's `fire` on its membrane as its own node, scoped as the neuron.

        The lowered neuron returns its state; its spikes are ``fire(mem)``, a node whose module
        stack names the neuron's path with the class `SnnTorchFire`, so ONNX purity finds the
        spikes there and nowhere else. The neuron's users get what they read before: the spikes,
        or the state items of its ``(spk, …)`` tuple.
        """
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            low = modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(low, LoweredSnnTorchNeuron):
                continue
            users = list(node.users)
            last = len(low._zeros(torch.zeros(1))) - 1
            with gm.graph.inserting_after(node):
                mem = gm.graph.call_function(operator.getitem, (node, last))
            with gm.graph.inserting_after(mem):
                spk = gm.graph.call_module(f"{node.target}.fire", (mem,))
            stack = OrderedDict(node.meta.get("nn_module_stack") or {node.target: (node.target, type(low))})
            key = next(reversed(stack))
            spk.meta["nn_module_stack"] = OrderedDict([*list(stack.items())[:-1], (key, (stack[key][0], type(low.fire)))])
            if low.returns_spikes_only:
                for user in users:
                    user.replace_input_with(node, spk)
                continue
            for user in users:
                if not (user.op == "call_function" and user.target is operator.getitem):
                    raise Refusal(f"'{node.target}' returns a tuple that is used whole ({user.name}), not item by item",
                                  "Unpack the neuron's (spk, mem) output")
                index = user.args[1]
                if index == 0:
                    user.replace_all_uses_with(spk)
                    gm.graph.erase_node(user)
                else:
                    user.args = (node, low.output_items.index(index) if index in low.output_items else index)

    # ----------------------------------------------------------------------- NIR
    def nir_node(self, m: nn.Module, nir: Any, features: tuple[int, ...], dt: float) -> Any:
        """``Leaky`` → ``nir.LIF``, ``Synaptic`` → ``nir.CubaLIF``, in snnTorch's own NIR conventions.

        snnTorch's exporter and importer (``snntorch.export_nir``/``import_nir``) read one
        step as forward Euler with ``dt``: ``τ = dt/(1 − β)``, ``r = τ/dt``, ``v_leak = 0``
        gives ``mem = β·mem + x``; ``Synaptic`` adds ``τ_syn = dt/(1 − α)``, ``w_in = τ_syn/dt``
        (``syn = α·syn + x``, ``mem = β·mem + syn``). NIR neurons reset to ``v_reset`` right
        after a spike, which is what snnTorch computes, spike for spike, only for
        ``reset_mechanism="zero"`` on ``Leaky`` (either ``reset_delay``: zeroing last step's
        membrane before the decay is zeroing it after the spike) and on ``Synaptic`` with
        ``reset_delay=False``; every other reset is refused. snnTorch's importer hard-codes
        ``dt = 1e-4`` (`sj_realspike.NIR_DT`); ``β`` read back from ``τ`` in float64 rounds to
        the same float32.
        """
        import numpy as np

        name = type(m).__name__
        refusal = _nir_refusal(m, self.is_ternary(m))
        if refusal is not None:
            raise refusal

        def full(value: torch.Tensor) -> np.ndarray:
            return np.broadcast_to(value.detach().double().cpu().numpy(), features).copy()

        def tau(decay: torch.Tensor, what: str) -> np.ndarray:
            d = full(decay.clamp(0, 1))  # snnTorch clamps its decays to [0, 1] in forward
            if np.any(d == 1.0):
                raise Refusal(f"{what} = 1 (no leak) makes NIR's time constant dt/(1 - {what}) infinite",
                              f"Keep {what} < 1 on this {name}, or use ONNX ({_ONNX_REMEDY})")
            return dt / (1.0 - d)

        zeros = np.zeros(features)
        tau_mem = tau(m.beta, "beta")
        common = dict(r=tau_mem / dt, v_leak=zeros, v_threshold=full(m.threshold), v_reset=zeros.copy())
        if isinstance(m, snntorch.Synaptic):
            tau_syn = tau(m.alpha, "alpha")
            return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, w_in=tau_syn / dt, **common)
        return nir.LIF(tau=tau_mem, **common)

    def to_double(self, m: nn.Module) -> None:
        if isinstance(m, SpikingNeuron) and not isinstance(m.spike_grad, _SpikesInInputDtype):
            m.spike_grad = _SpikesInInputDtype(m.spike_grad)

    def make_dyadic(self, m: nn.Module) -> None:
        with torch.no_grad():
            if isinstance(m, snntorch.Lapicque):  # mem = x·R·(1/(R·C))·Δt + (1 − Δt/(R·C))·mem = x/2 + mem/2
                for key, value in (("R", 1.0), ("C", 1.0), ("time_step", 0.5)):  # float: Δt may be an int tensor
                    setattr(m, key, torch.tensor(value, device=m.threshold.device))
            elif isinstance(m, snntorch.Alpha):  # needs α > β; its τ_α = log α / (log β − log α) + 1 is not dyadic
                m.alpha.fill_(0.5)
                m.beta.fill_(0.25)
            elif isinstance(m, SpikingNeuron):
                for key in ("beta", "alpha"):
                    value = getattr(m, key, None)
                    if isinstance(value, torch.Tensor):
                        value.fill_(0.5)


class _SpikesInInputDtype:
    """An snnTorch surrogate whose spikes take the membrane's dtype (`SnnTorchAdapter.to_double`).

    snnTorch's surrogate forwards return ``(u > 0).float()``: float32 spikes, which a float64
    copy's next layer refuses to multiply with its float64 weights. The spikes are 0 and 1
    (times ``graded_spikes_factor`` later), so the cast is exact.
    """

    def __init__(self, spike_grad: Any) -> None:
        self.spike_grad = spike_grad

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.spike_grad(u).to(u.dtype)


def _nir_refusal(m: nn.Module, ternary: bool) -> Refusal | None:
    """Why deploy neuron ``m`` has no exact NIR node (``None``: `SnnTorchAdapter.nir_node` maps it).

    NIR's ``LIF``/``CubaLIF`` fire ``{0, 1}`` at ``v > v_threshold`` and set ``v = v_reset``
    right after a spike. snnTorch's delayed reset (``reset_delay=True``) of ``Synaptic``,
    ``RLeaky`` and ``Lapicque`` zeroes or lowers the whole update of the step after the spike,
    input included, so their spike trains differ from NIR's (``Leaky``'s zeroes only the old
    membrane, before it decays, which is NIR's reset).
    """
    name = type(m).__name__
    onnx = f"use ONNX ({_ONNX_REMEDY})"
    if ternary:
        return Refusal("it emits ternary spikes {-1, 0, 1}; NIR neurons emit {0, 1}",
                       f"Train binary spikes (spike='real') for neuromorphic targets, or {onnx}")
    if isinstance(m, snntorch.Alpha):
        return Refusal("Alpha's excitatory and inhibitory synaptic currents have no NIR neuron model",
                       f"Use Leaky, or {onnx}")
    if isinstance(m, snntorch.RLeaky):
        return Refusal("its recurrent weights live inside the neuron and it resets one step late, which "
                       "sj_realspike does not express in NIR", f"Use Leaky after a Linear layer, or {onnx}")
    if not isinstance(m, (snntorch.Leaky, snntorch.Synaptic)):  # Lapicque, and what is not a neuron
        return Refusal(f"{name} has no NIR neuron model in sj_realspike (Leaky and Synaptic have)",
                       f"Use Leaky, or {onnx}")
    if m.reset_mechanism == "subtract":
        return Refusal("it resets by subtracting the threshold (reset_mechanism='subtract', snnTorch's default); "
                       "NIR neurons reset to v_reset", f"Train with reset_mechanism='zero' for NIR targets, or {onnx}")
    if m.reset_mechanism != "zero":
        return Refusal(f"it never resets (reset_mechanism={m.reset_mechanism!r}); NIR neurons reset to v_reset "
                       "after every spike", f"Train with reset_mechanism='zero' for NIR targets, or {onnx}")
    if isinstance(m, snntorch.Synaptic) and m.reset_delay:
        return Refusal("its reset_mechanism='zero' with reset_delay=True zeroes the whole membrane update of the "
                       "step after a spike, input included; NIR's CubaLIF resets right after the spike and "
                       "integrates that input",
                       f"Use Synaptic(reset_mechanism='zero', reset_delay=False) or Leaky(reset_mechanism='zero'), "
                       f"or {onnx}")
    if m.inhibition:
        return Refusal("inhibition=True fires only the largest membrane; NIR neurons fire independently",
                       f"Set inhibition=False, or {onnx}")
    if m.state_quant:
        return Refusal("it quantizes its state (state_quant), which NIR neurons do not", f"Drop state_quant, or {onnx}")
    if not _surrogate_is_heaviside(m):
        return Refusal(f"its spike_grad's forward ({type(m.spike_grad).__name__}) is not the step [v > threshold] "
                       "that NIR neurons fire with", f"Use one of snnTorch's surrogates, or {onnx}")
    if bool((m.threshold.detach() < 0).any()):
        return Refusal("its threshold is negative: it fires at rest (v = 0), where snnTorch's reset right after the "
                       "spike (reset_delay=False, what its NIR importer builds) no longer zeroes the membrane",
                       f"Use thresholds >= 0, or {onnx}")
    g = m.graded_spikes_factor.detach()
    if g.numel() != 1 or float(g) != 1.0:
        return Refusal(f"its spikes are scaled by graded_spikes_factor={_short(g)}, which fold did not move into a "
                       "synapse (the spikes reach the network output, or the neuron was not converted); NIR "
                       "neurons emit {0, 1}",
                       f"Let a Linear/conv layer read its spikes (fold scales its weights), or {onnx}")
    return None


def _short(t: torch.Tensor) -> str:
    return f"{float(t):g}" if t.numel() == 1 else f"a tensor of shape {tuple(t.shape)}"


def _step(x: torch.Tensor) -> torch.Tensor:
    """snnTorch's spike function forward: ``[u > 0]`` as a float tensor."""
    return (x > 0).to(x.dtype)


class SnnTorchFire(nn.Module):
    """The spikes of a lowered snnTorch neuron from its membrane: ``H(mem − θ)·g`` (ternary: ``(H(mem − θ) − H(−mem − θ))·g``).

    The only part of `LoweredSnnTorchNeuron` whose ONNX scope is a neuron's: its outputs
    are what verify checks for spike purity; the membrane (returned too, or carried to
    the next step) is state computed outside it.
    """

    def __init__(self, threshold: torch.Tensor, graded: torch.Tensor | None, ternary: bool) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold)
        self.register_buffer("graded", graded)
        self.ternary = ternary

    def forward(self, mem: torch.Tensor) -> torch.Tensor:
        spk = _step(mem - self.threshold)
        if self.ternary:
            spk = spk - _step(-mem - self.threshold)
        return spk if self.graded is None else spk * self.graded


class SnnTorchTernaryFire(SnnTorchFire):
    """`SnnTorchFire` of a `TernaryLeaky` (its own class: ONNX purity reads the spike kind from it)."""


class LoweredSnnTorchNeuron(LoweredRecurrence):
    """An snnTorch neuron's update as plain tensor ops, repeated in snnTorch's order.

    Returns the neuron's state after each step: ``(mem,)``, ``(syn, mem)`` (Synaptic) or
    ``(spk, mem)`` (RLeaky). Called with the whole sequence (``time_steps`` set: ``[T·N, …]``,
    the time-flattened batch of a single-step model) it returns the state sequences from
    zero state; called once per step (``time_steps=None``: the model's own time loop), it
    takes the state arguments the neuron takes (or keeps the state itself, for
    ``init_hidden``) and returns the next state. Its `fire` module makes the spikes from the
    membrane; `SnnTorchAdapter.rewrite_lowered` calls it as a node of its own and gives the
    deploy graph back the neuron's output structure (``spk``, ``(spk, mem)``, ``(spk, syn,
    mem)``), so that in ONNX only the spikes carry the neuron's scope.

    Per step (``r`` the reset from the previous membrane, ``θ`` the threshold, ``H(u) = [u > 0]``)::

        r = H(mem − θ)                                   (ternary: H(mem − θ) − H(−mem − θ))
        Leaky:     mem = clamp(β)·mem + x − r·θ                              ("subtract")
        RLeaky:    mem = clamp(β)·mem + x + recurrent(spk) − r·θ
        Synaptic:  syn = clamp(α)·syn + x;  mem = clamp(β)·mem + syn − r·θ
        Lapicque:  mem = x·R·(1/(R·C))·Δt + (1 − Δt/(R·C))·mem − r·θ
        spk = `SnnTorchFire`(mem)

    ``"zero"`` and ``"none"`` resets follow snnTorch's ``_base_zero``/``_base_int``.
    """

    def __init__(self, m: nn.Module, time_steps: int | None) -> None:
        super().__init__()
        self.kind = {snntorch.Synaptic: "synaptic", snntorch.RLeaky: "rleaky",
                     snntorch.Lapicque: "lapicque"}.get(type(m), "leaky")
        self.ternary = isinstance(m, TernaryLeaky)
        self.mechanism = m.reset_mechanism
        self.time_steps = time_steps
        self.returns_spikes_only = bool(m.init_hidden) and not m.output
        # the item of the neuron's own output that each state item is: (spk, mem) / (spk, syn, mem)
        self.output_items = {"synaptic": (1, 2), "rleaky": (None, 1)}.get(self.kind, (1,))
        threshold = m.threshold.detach().clone()
        self.register_buffer("threshold", threshold)
        if self.kind != "lapicque":
            self.register_buffer("beta", m.beta.detach().clamp(0, 1).clone())
        if self.kind == "synaptic":
            self.register_buffer("alpha", m.alpha.detach().clamp(0, 1).clone())
        if self.kind == "rleaky":
            self.recurrent = copy.deepcopy(m.recurrent)
        if self.kind == "lapicque":
            self.lapicque = tuple(v.detach().clone() if isinstance(v, torch.Tensor) else v
                                  for v in (m.R, m.C, m.time_step))
        g = m.graded_spikes_factor.detach()
        graded = None if g.numel() == 1 and float(g) == 1.0 else g.clone()
        self.fire = (SnnTorchTernaryFire if self.ternary else SnnTorchFire)(threshold.clone(), graded, self.ternary)
        self._state: tuple[torch.Tensor, ...] | None = None
        for key in ADAPTER.state(m):
            # The deploy graph reads the neuron's reset state where forward passes init_leaky()'s
            # empty tensors: the same names, empty here too (a state of another shape starts from zeros).
            self.register_buffer(key, torch.zeros(0, device=threshold.device), persistent=False)

    def reset(self) -> None:
        """Forget the state a per-step call kept (``init_hidden`` style)."""
        self._state = None

    # --------------------------------------------------------------- one step
    def _reset_signal(self, mem: torch.Tensor) -> torch.Tensor:
        # snnTorch's H(mem − θ) as [mem > θ]: the same in IEEE arithmetic (a − b > 0 exactly when a > b,
        # NaN and ±Inf included), written differently from `fire`'s so that ONNX never merges the
        # reset with the previous step's spikes (a per-call graph computes both from one membrane).
        r = (mem > self.threshold).to(mem.dtype)
        return r - (mem < -self.threshold).to(mem.dtype) if self.ternary else r

    def _charge(self, x: torch.Tensor, mem: torch.Tensor, syn: torch.Tensor | None,
                spk: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "synaptic":
            syn = self.alpha * syn + x
            return self.beta * mem + syn, syn
        if self.kind == "lapicque":
            r, c, dt = self.lapicque
            return x * r * (1 / (r * c)) * dt + (1 - dt / (r * c)) * mem, None
        if self.kind == "rleaky":
            return self.beta * mem + x + self.recurrent(spk), None
        return self.beta * mem + x, None

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The state after one step: ``(mem,)``; ``(syn, mem)`` (Synaptic); ``(spk, mem)`` (RLeaky, spk of this step)."""
        syn = prev_spk = None
        if self.kind == "synaptic":
            syn, mem = state
        elif self.kind == "rleaky":
            prev_spk, mem = state
        else:
            (mem,) = state
        reset = self._reset_signal(mem)
        if self.mechanism == "zero" and self.kind == "leaky":
            mem = (1 - (reset.abs() if self.ternary else reset)) * mem
        base, syn = self._charge(x, mem, syn, prev_spk)
        if self.mechanism == "subtract":
            mem = base - reset * self.threshold
        elif self.mechanism == "zero" and self.kind == "synaptic":
            mem = base - base * reset  # Synaptic._base_zero: mem −= (β·mem + syn)·r, syn −= 0·r
        elif self.mechanism == "zero" and self.kind in ("rleaky", "lapicque"):
            mem = base - reset * base
        else:
            mem = base
        if self.kind == "synaptic":
            return syn, mem
        if self.kind == "rleaky":
            return self.fire(mem), mem
        return (mem,)

    def _zeros(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zero = torch.zeros_like(x)
        return (zero, zero) if self.kind in ("synaptic", "rleaky") else (zero,)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *state: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.time_steps is None:  # one call per step, as the model's own loop calls the neuron
            # the neuron's own argument names: Leaky(input_, mem), Synaptic(input_, syn, mem), RLeaky(input_, spk, mem)
            names = {"synaptic": ("syn", "mem"), "rleaky": ("spk", "mem")}.get(self.kind, ("mem",))
            state = state + tuple(named[k] for k in names[len(state):] if k in named)
            given = tuple(s for s in state if s is not None)
            if given:  # snnTorch: a state of another shape (init_leaky()'s empty one) starts from zeros
                current = tuple(s if s.shape == x.shape else torch.zeros_like(x) for s in given)
            else:
                current = self._state if self._state is not None else self._zeros(x)
            self._state = self.step(x, current)
            return self._state
        xs = x.reshape(self.time_steps, -1, *x.shape[1:])
        current = self._zeros(xs[0])
        states = []
        for t in range(self.time_steps):
            current = self.step(xs[t], current)
            states.append(current)
        return tuple(torch.cat([s[i] for s in states], 0) for i in range(len(current)))

    def extra_repr(self) -> str:
        return f"{self.kind}, reset={self.mechanism}, time_steps={self.time_steps}"


ADAPTER = register(SnnTorchAdapter())
