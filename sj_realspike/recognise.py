"""Which modules are spiking neurons, and whether they really emit binary (or ternary) spikes.

A spike amplitude can only be folded into the next synapse if the neuron's output
is exactly ``{0, 1}`` (or ``{-1, 0, 1}`` for a ternary neuron): ``a ⊙ s`` then
equals a rescaled synapse applied to ``s``. Many modules that fire do not emit such
spikes: SpikingJelly's ``ILIFNode`` emits spike counts, ``OTTTLIFNode`` returns
``[spike, trace]`` in training mode, a neuron whose surrogate runs with
``spiking=False`` or an ``LIAFNode`` emits analog values, ``DSRIFNode`` emits
``v_threshold``-weighted spikes. The class alone cannot say which (LIAF is
analog in single-step mode but binary in multi-step mode, a user subclass may
return its membrane), so `spike_output_problem` runs the module on the input it
received in a real forward pass and looks at what comes out.

`is_spiking_module` names the candidates, asking each framework adapter
(`sj_realspike.frameworks`). Where a neuron returns its state with its spikes
(snnTorch's ``(spk, mem)``), the adapter says which item the spikes are; a factor the
neuron multiplies its spikes by itself (snnTorch's ``graded_spikes_factor``) is left
out of the check, since convert moves it into the amplitude.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn as nn

from .amplitude import Amplitude
from .frameworks import is_spiking_module, neuron_adapter
from .frameworks import reset as reset_state
from .neurons import is_ternary
from .spiking import attach_amplitude
from .state import detached_state_memo

__all__ = ["amplitude_problem", "is_spiking_module", "spike_output_problem"]

_SHOWN_VALUES = 8  # more distinct values than this: analog output, not (graded) spikes


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
        (<mode>, <error>)"``; a ``forward`` that requires more arguments than the input
        (``forward(x, mem)``) is named as such, without running it.
    """
    name = type(m).__name__
    if (unbound := _unbound_call(m, sample)) is not None:
        return (f"{name}: its forward cannot be called with its input alone ({unbound}), and the check has "
                "only that input, so whether it emits spikes cannot be checked")
    ternary = is_ternary(m) if ternary is None else ternary
    problems: dict[str, tuple[str, str] | None] = {}
    for mode in ("training", "eval"):
        try:
            out = _run_copy(m, sample, training=mode == "training")
        except Exception as e:  # any failure of user code is a reason, never a crash
            message = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            return f"{name}: running it on its input failed ({mode} mode, {type(e).__name__}: {message})"
        problems[mode] = _output_problem(out, sample, ternary, _spike_shape(m, sample))
    train, eval_ = problems["training"], problems["eval"]
    if train is None and eval_ is None:
        return None
    if train == eval_:
        return f"{name} {train[0]}{train[1]}"
    mode, (what, expected) = ("training", train) if train is not None else ("eval", eval_)
    return f"{name} {what} in {mode} mode{expected}"


def amplitude_problem(m: nn.Module, amplitude: Amplitude, sample: torch.Tensor) -> str | None:
    """Why ``m`` would not scale its spikes by ``amplitude`` once converted (``None``: it does, or no spike tells).

    The framework applies the amplitude where its neurons make their spikes (snnTorch's
    ``fire``); a subclass whose own ``forward`` makes them elsewhere (snnTorch's
    ``DeltaLeaky``) would keep emitting binary spikes while fold scales the synapse after it.
    A copy carrying the amplitude at 2 must emit twice the spikes of a plain copy, on
    ``sample`` or 8× it (the first on which ``m`` fires).
    """
    trial = copy.deepcopy(m, detached_state_memo(m))
    doubled = copy.deepcopy(amplitude)
    with torch.no_grad():
        doubled.a.fill_(2.0)
    attach_amplitude(trial, doubled)
    for x in (sample, sample * 8):
        spikes = _run_copy(m, x, training=False)
        if not isinstance(spikes, torch.Tensor) or not spikes.any():
            continue
        scaled = _run_copy(trial, x, training=False)
        if isinstance(scaled, torch.Tensor) and torch.equal(scaled, spikes * 2):
            return None
        return (f"{type(m).__name__}'s forward does not apply the amplitude where {neuron_adapter(m).name} neurons "
                "make their spikes (a subclass that makes them itself), so its spikes would stay binary")
    return None


def _unbound_call(m: nn.Module, sample: torch.Tensor) -> str | None:
    """Why ``m(sample)`` does not match ``m``'s ``forward`` signature (``None``: it does, or there is none to read).

    A neuron whose ``forward`` requires its state (``forward(x, mem)``, called ``m(x, mem)``
    by the user's network) fails here because of the check's call, not of the user's input:
    the reason says so instead of reporting the ``TypeError`` of running it.
    """
    try:
        inspect.signature(m.forward).bind(sample)
    except TypeError as e:
        return str(e)
    except ValueError:  # no signature to read (a builtin): running it tells
        return None
    return None


def _run_copy(m: nn.Module, sample: torch.Tensor, *, training: bool) -> Any:
    """``m``'s spikes on ``sample``, computed by a reset deep copy in the given mode.

    Where the adapter says the spikes are one item of what the call returns, that item;
    the neuron's own spike factor (``graded_spikes_factor``) is set to 1 on the copy.
    """
    twin = copy.deepcopy(m, detached_state_memo(m))
    adapter = neuron_adapter(twin)
    if adapter is not None and adapter.intrinsic_amplitude(twin) is not None:
        adapter.clear_intrinsic_amplitude(twin)
    reset_state(twin)
    twin.train(training)
    with torch.no_grad():
        out = twin(sample.detach().clone())  # some neurons (ILC) write into their input
    index = adapter.spike_index(twin, out) if adapter is not None else None
    return out if index is None else out[index]


def _spike_shape(m: nn.Module, sample: torch.Tensor) -> tuple[int, ...]:
    adapter = neuron_adapter(m)
    return tuple(sample.shape) if adapter is None else tuple(adapter.spike_shape(m, tuple(sample.shape)))


def _output_problem(out: Any, sample: torch.Tensor, ternary: bool,
                    shape: tuple[int, ...] | None = None) -> tuple[str, str] | None:
    """What is wrong with one output, as (what it emits, ", not what was expected").

    ``None``: one tensor of spikes shaped like ``sample``.
    """
    if isinstance(out, (tuple, list)):
        parts = ", ".join(_describe(o) for o in out)
        return f"returns a {type(out).__name__} of {len(out)} values [{parts}]", ", not one spike tensor"
    if not isinstance(out, torch.Tensor):
        return f"returns {_describe(out)}", ", not a spike tensor"
    if tuple(out.shape) != (tuple(sample.shape) if shape is None else shape):
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
