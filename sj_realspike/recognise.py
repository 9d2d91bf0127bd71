"""Which modules are spiking neurons, and whether they really emit binary (or ternary) spikes.

A spike amplitude can only be folded into the next synapse if the neuron's output
is exactly ``{0, 1}`` (or ``{-1, 0, 1}`` for a ternary neuron): ``a ⊙ s`` then
equals a rescaled synapse applied to ``s``. Many SpikingJelly modules that fire
do not emit such spikes: ``ILIFNode`` emits spike counts, ``OTTTLIFNode`` returns
``[spike, trace]`` in training mode, a neuron whose surrogate runs with
``spiking=False`` or an ``LIAFNode`` emits analog values, ``DSRIFNode`` emits
``v_threshold``-weighted spikes. The class alone cannot say which (LIAF is
analog in single-step mode but binary in multi-step mode, a user subclass may
return its membrane), so `spike_output_problem` runs the module on the input it
received in a real forward pass and looks at what comes out.

`is_spiking_module` names the candidates: every SpikingJelly neuron
(``BaseNode``/``SimpleBaseNode`` subclasses) and the spiking modules of
``spikingjelly.activation_based.neuron`` that are not ``BaseNode`` (the PSN
family, ``GatedLIFNode``, ...). Classes are looked up by name, so a SpikingJelly
release without one of them still imports this module.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron

from .neurons import is_ternary

__all__ = ["is_spiking_module", "spike_output_problem"]


def _classes(*names: str) -> tuple[type, ...]:
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

_SHOWN_VALUES = 8  # more distinct values than this: analog output, not (graded) spikes


def is_spiking_module(m: nn.Module) -> bool:
    """Whether ``m`` is a SpikingJelly module that fires (a candidate for a spike amplitude).

    True for ``BaseNode``/``SimpleBaseNode`` subclasses and for the spiking modules of
    ``spikingjelly.activation_based.neuron`` that are not ``BaseNode`` (PSN, MaskedPSN,
    SlidingPSN, GatedLIFNode, ActivationAwareIFNode, the ILC and noisy neurons, DSR,
    few-spike and SpikeZIP neurons, FlexSN). Firing does not mean binary output: check
    each candidate with `spike_output_problem`.
    """
    return isinstance(m, _SPIKING)


def spike_output_problem(m: nn.Module, sample: torch.Tensor, *, ternary: bool | None = None) -> str | None:
    """Why ``m``'s output on ``sample`` is not binary (or ternary) spikes, or ``None`` if it is.

    Runs a deep copy of ``m``, from reset state and without gradients, once in training
    mode and once in eval mode (a neuron may differ between them: ``OTTTLIFNode`` returns
    ``[spike, trace]`` only in training). The user's module, its state, parameters and
    mode are untouched, and ``sample`` is not modified. Every output must be one tensor
    of ``sample``'s shape with values in ``{0, 1}``, or ``{-1, 0, 1}`` for a ternary neuron.
    A neuron that stays silent on ``sample`` passes: pass an input that makes it fire.

    Args:
        m: the neuron module (e.g. one for which `is_spiking_module` holds).
        sample: the tensor ``m`` received in a real forward pass (its step mode's layout).
        ternary: whether ``m`` emits ternary spikes; ``None`` decides from its class
            (``TernaryIFNode``, ``TernaryLIFNode``, ``TernaryParametricLIFNode``).

    Returns:
        ``None``, or one line naming the class and what it emits instead, e.g.
        ``"ILIFNode emits values {0, 1, 2, 3} (spike counts), not binary spikes"``.
        An exception while running it becomes ``"<class>: running it on its input failed
        (<mode>, <error>)"``.
    """
    name = type(m).__name__
    ternary = is_ternary(m) if ternary is None else ternary
    problems: dict[str, tuple[str, str] | None] = {}
    for mode in ("training", "eval"):
        try:
            out = _run_copy(m, sample, training=mode == "training")
        except Exception as e:  # any failure of user code is a reason, never a crash
            message = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            return f"{name}: running it on its input failed ({mode} mode, {type(e).__name__}: {message})"
        problems[mode] = _output_problem(out, sample, ternary)
    train, eval_ = problems["training"], problems["eval"]
    if train is None and eval_ is None:
        return None
    if train == eval_:
        return f"{name} {train[0]}{train[1]}"
    mode, (what, expected) = ("training", train) if train is not None else ("eval", eval_)
    return f"{name} {what} in {mode} mode{expected}"


def _run_copy(m: nn.Module, sample: torch.Tensor, *, training: bool) -> Any:
    """``m``'s output on ``sample``, computed by a reset deep copy in the given mode."""
    twin = copy.deepcopy(m, _detached_state(m))
    functional.reset_net(twin)
    twin.train(training)
    with torch.no_grad():
        return twin(sample.detach().clone())  # some neurons (ILC) write into their input


def _detached_state(m: nn.Module) -> dict[int, Any]:
    """A deepcopy memo replacing state tensors that have a history by detached copies.

    After a forward pass with gradients a neuron's ``v`` is a non-leaf tensor, which
    ``copy.deepcopy`` refuses; the copy is reset before use, so its value never matters.
    """
    memo: dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor) and not value.is_leaf:
            memo[id(value)] = value.detach()
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for sub in m.modules():
        for value in [*getattr(sub, "_memories", {}).values(), *vars(sub).values()]:
            visit(value)
    return memo


def _output_problem(out: Any, sample: torch.Tensor, ternary: bool) -> tuple[str, str] | None:
    """What is wrong with one output, as (what it emits, ", not what was expected").

    ``None``: one tensor of spikes shaped like ``sample``.
    """
    if isinstance(out, (tuple, list)):
        parts = ", ".join(_describe(o) for o in out)
        return f"returns a {type(out).__name__} of {len(out)} values [{parts}]", ", not one spike tensor"
    if not isinstance(out, torch.Tensor):
        return f"returns {_describe(out)}", ", not a spike tensor"
    if out.shape != sample.shape:
        return f"returns shape {list(out.shape)} for input shape {list(sample.shape)}", ""
    if out.is_complex():
        return f"outputs complex values ({out.dtype})", ", not spikes"
    values = torch.unique(out.detach()).to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        return "emits non-finite values (nan or inf)", ", not spikes"
    allowed = {-1.0, 0.0, 1.0} if ternary else {0.0, 1.0}
    present = values.tolist()
    if set(present) <= allowed:
        return None
    kind = "ternary" if ternary else "binary"
    if len(present) > _SHOWN_VALUES:
        return (f"outputs real values ({len(present)} distinct, in [{present[0]:.3g}, {present[-1]:.3g}]: "
                f"a membrane potential or an analog activation?)", ", not spikes")
    shown = "{" + ", ".join(f"{v:g}" for v in present) + "}"
    if not ternary and set(present) <= {-1.0, 0.0, 1.0}:
        hint = "signed spikes"
    elif all(v == round(v) for v in present) and (1.0 in present or -1.0 in present):
        hint = "signed spike counts" if present[0] < 0 else "spike counts"
    else:
        hint = "graded spikes: each spike carries a weight"
    return f"emits values {shown} ({hint})", f", not {kind} spikes"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    return type(value).__name__
