"""Norse (``norse.torch``): neurons that return ``(spikes, state)`` and keep no state themselves.

Norse neurons are functions of ``(input, state)``: every call returns ``(z, state)`` and
the caller carries the state (``SequentialState`` does it for its layers, users do it in
their time loops; ``None`` is a fresh state). So reset is a no-op, the spikes of a call are
item 0, and deep copies need nothing special. ``*Cell`` modules take one step ``[N, …]``,
the modules without the suffix (``LIF``) loop over the whole sequence ``[T, N, …]``.

Supported neurons: ``LIFCell``, ``LIF`` and ``LIFBoxCell`` (amplitudes, fold, ternary
twins, export lowering, NIR). ``LI``, ``LICell``, ``LIBoxCell`` and ``LILinearCell`` are
read-outs (they integrate but never fire): leaves, not neurons, exported through their own
forward. Norse's other spiking neurons (LSNN, AdEx, Izhikevich, refractory and recurrent
LIF cells, …) are recognised and skipped with the reason. ``Lift`` and ``SequentialState``
are traced through, so the synapses they hold are visible to the fold.

Nothing here imports Norse before the user has: a model can only hold Norse modules once
``norse.torch`` is loaded, so recognition asks ``sys.modules``, and the ternary classes are
built on first use (module ``__getattr__`` builds them for unpickling too).
"""

from __future__ import annotations

import inspect
import math
import operator
import sys
from collections import OrderedDict
from functools import cache
from types import SimpleNamespace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import UnsupportedPatternError
from ..lowered import LoweredRecurrence
from ..spiking import AMPLITUDE_ATTR, AmplitudeNeuron
from .base import FrameworkAdapter, Refusal, register

__all__ = ["LoweredNorseNeuron", "LoweredNorseReadout", "NorseAdapter", "NorseAmplitudeNeuron", "NorseSpikes", "NorseTernarySpikes",
           "TernaryLIF", "TernaryLIFBoxCell", "TernaryLIFCell"]

_SNN_MODULE = "norse.torch.module.snn"  # loaded whenever any Norse neuron class is
_TERNARY_NAMES = ("TernaryLIFCell", "TernaryLIF", "TernaryLIFBoxCell")
_ONNX_REMEDY = "export_onnx supports this model as it is"


def _loaded() -> bool:
    return _SNN_MODULE in sys.modules


@cache
def _norse() -> SimpleNamespace:
    """Norse's classes and step functions (imports Norse; call only when it is installed)."""
    from norse.torch.functional import lif as lif_f
    from norse.torch.functional import lif_box as box_f
    from norse.torch.functional.reset import reset_subtract, reset_value
    from norse.torch.functional.threshold import threshold
    from norse.torch.module import snn
    from norse.torch.functional.leaky_integrator import LIState
    from norse.torch.functional.leaky_integrator_box import LIBoxState
    from norse.torch.module.leaky_integrator import LI, LICell, LILinearCell
    from norse.torch.module.leaky_integrator_box import LIBoxCell
    from norse.torch.module.lif import LIF, LIFCell, LIFRecurrent, LIFRecurrentCell
    from norse.torch.module.lif_box import LIFBoxCell

    def ternary_lif_step(input_tensor, state, p, dt=0.001):
        """`lif_feed_forward_step` firing +1 above ``v_th`` and −1 below ``−v_th``; both reset."""
        i_new = state.i + input_tensor
        dv = dt * p.tau_mem_inv * ((p.v_leak - state.v) + i_new)
        v_decayed = state.v + dv
        di = -dt * p.tau_syn_inv * i_new
        i_decayed = i_new + di
        positive = threshold(v_decayed - p.v_th, p.method, p.alpha)
        negative = threshold(-v_decayed - p.v_th, p.method, p.alpha)
        fired = positive + negative
        v_new = (1 - fired) * v_decayed + fired * p.v_reset
        return positive - negative, lif_f.LIFFeedForwardState(v=v_new, i=i_decayed)

    def ternary_box_step(input_tensor, state, p, dt=0.001):
        """`lif_box_feed_forward_step` firing +1 above ``v_th`` and −1 below ``−v_th``; both reset."""
        dv = dt * p.tau_mem_inv * (input_tensor + p.v_leak - state.v)
        v_decayed = state.v + dv
        positive = threshold(v_decayed - p.v_th, p.method, p.alpha)
        negative = threshold(-v_decayed - p.v_th, p.method, p.alpha)
        z = positive - negative
        if p.reset_method is reset_subtract:
            v_new = v_decayed - z * p.v_th
        else:
            fired = positive + negative
            v_new = (1 - fired) * v_decayed + fired * p.v_reset
        return z, box_f.LIFBoxFeedForwardState(v=v_new)

    def ternary(cls: type, step: Any, name: str) -> type:
        def __init__(self, p=None, **kwargs):
            cls.__init__(self, *(() if p is None else (p,)), **kwargs)
            self.activation, self.activation_sparse = step, None

        doc = (f"Norse's ``{cls.__name__}`` with ternary spikes: +1 at ``v > v_th``, −1 at ``v < −v_th``, "
               "both reset (sj_realspike).")
        return type(name, (cls,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                   "__doc__": doc})

    ternaries = (ternary(LIFCell, ternary_lif_step, "TernaryLIFCell"), ternary(LIF, ternary_lif_step, "TernaryLIF"),
                 ternary(LIFBoxCell, ternary_box_step, "TernaryLIFBoxCell"))
    spiking = (snn.SNNCell, snn.SNN, snn.SNNRecurrentCell, snn.SNNRecurrent)
    readouts = (LI, LICell, LIBoxCell, LILinearCell)
    return SimpleNamespace(
        LIF=LIF, LIFCell=LIFCell, LIFBoxCell=LIFBoxCell, SNN=snn.SNN, readouts=readouts,
        stateful=spiking + (LILinearCell,), spiking=spiking,
        neurons=(LIFCell, LIF, LIFBoxCell, LIFRecurrentCell, LIFRecurrent), recurrent=(LIFRecurrentCell, LIFRecurrent),
        sequences=(snn.SNN, snn.SNNRecurrent),
        ternary=ternaries, ternary_of=dict(zip((LIFCell, LIF, LIFBoxCell), ternaries)),
        steps={lif_f.lif_feed_forward_step, box_f.lif_box_feed_forward_step, lif_f.lif_step, ternary_lif_step,
               ternary_box_step},
        reset_value=reset_value, reset_subtract=reset_subtract,
        LIFFeedForwardState=lif_f.LIFFeedForwardState, LIFBoxFeedForwardState=box_f.LIFBoxFeedForwardState,
        LIFState=lif_f.LIFState,
        LIState=LIState, LIBoxState=LIBoxState, LILinearCell=LILinearCell, LIBoxCell=LIBoxCell,
    )


def __getattr__(name: str) -> Any:
    """The ternary classes, built on first access (they subclass Norse's, so need Norse)."""
    if name in _TERNARY_NAMES:
        cls = next(c for c in _norse().ternary if c.__name__ == name)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NorseAmplitudeNeuron(AmplitudeNeuron):
    """``RealSpike<Norse neuron>``: ``(a ⊙ z, state)``; the state (and recurrence) keep the binary ``z``.

    ``forward`` keeps Norse's signature (``SequentialState`` and ``Lift`` read it to decide
    whether to pass a state).
    """

    def forward(self, input_tensor: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        z, state = super(AmplitudeNeuron, self).forward(input_tensor, state)
        return getattr(self, AMPLITUDE_ATTR)(z), state


class NorseSpikes(nn.Module):
    """The op that fires: ``[h − θ > 0]`` on the membrane ``h``, Norse's Heaviside (every surrogate's forward).

    `NorseAdapter.rewrite_lowered` calls it as a node of its own, scoped as the neuron, so
    that in ONNX only the spikes carry the neuron's scope: the membrane the neuron also
    returns is state, not spikes.
    """

    def __init__(self, v_th: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("v_th", v_th.detach().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.v_th > 0).to(h.dtype)


class NorseTernarySpikes(NorseSpikes):
    """``[h − θ > 0] − [−h − θ > 0]``: +1 above ``θ``, −1 below ``−θ``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.v_th > 0).to(h.dtype) - (-h - self.v_th > 0).to(h.dtype)


class LoweredNorseNeuron(LoweredRecurrence):
    """A Norse LIF / LIF-box neuron for export: Norse's own step, op for op, without autograd Functions.

    Each step computes exactly what ``lif_feed_forward_step`` (or the box step) computes,
    in the same operation order and dtype — ``dt · tau_mem_inv`` is the same float32
    product Norse forms — so the exported graph equals the Norse deploy model bit for
    bit, NaN and ±Inf included.

    ``forward(x, state=None)`` returns ``(h, state)``: the membrane each step fires on
    (before its reset) and the state after the last step, like the original's call; the
    spikes are ``fire(h)`` (`NorseSpikes`, called as its own node by
    `NorseAdapter.rewrite_lowered`). The reset compares ``h`` itself (``h > θ`` is ``h − θ > 0``
    for every float), so the spike tensor leaves the neuron only towards its synapses.
    A ``*Cell`` takes one step ``[N, …]``; ``LIF`` (``sequence``) and a cell lowered for a
    single-step model run on the time-flattened batch ``[T·N, …]`` (``time_steps=T``) loop
    over time.

    ``LIFRecurrentCell``/``LIFRecurrent`` (``lif_step``) hold their input and recurrent
    weights: ``i + W_in·x + W_rec·z`` with the previous step's spikes ``z``, which the state
    carries (binary: an amplitude scales only what the neuron returns).

    Args:
        m: the deploy neuron (``LIFCell``, ``LIF``, ``LIFBoxCell``, ``LIFRecurrentCell``,
            ``LIFRecurrent`` or a ternary twin).
        time_steps: ``None``, or ``T`` when the input is ``[T·N, …]`` (see above).
    """

    def __init__(self, m: nn.Module, time_steps: int | None = None) -> None:
        super().__init__()
        ns = _norse()
        p = m.p
        self.box = isinstance(m, ns.LIFBoxCell)
        self.recurrent = isinstance(m, ns.recurrent)
        self.sequence = isinstance(m, ns.sequences)
        self.ternary = isinstance(m, ns.ternary)
        self.time_steps = None if self.sequence else time_steps
        self.subtract = self.box and p.reset_method is ns.reset_subtract

        def constant(value: Any) -> torch.Tensor:
            return torch.as_tensor(value).detach().clone()

        with torch.no_grad():
            self.register_buffer("mem", constant(m.dt * p.tau_mem_inv))  # Norse's dt * p.tau_mem_inv
            if not self.box:
                self.register_buffer("syn", constant(-m.dt * p.tau_syn_inv))  # Norse's -dt * p.tau_syn_inv
            for key in ("v_leak", "v_th", "v_reset"):
                self.register_buffer(key, constant(getattr(p, key)))
            if self.recurrent:
                self.register_buffer("input_weights", constant(m.input_weights))
                self.register_buffer("recurrent_weights", constant(m.recurrent_weights))
        self.fire = (NorseTernarySpikes if self.ternary else NorseSpikes)(self.v_th)

    def step(self, x: torch.Tensor, v: torch.Tensor, i: torch.Tensor | None,
             z: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """One step: ``(h, v, i, z)``, the membrane it fires on and the next state, in Norse's operation order."""
        if self.box:
            h = v + self.mem * (x + self.v_leak - v)
            i_decayed = None
        else:
            if self.recurrent:  # lif_step: i + W_in·x + W_rec·z
                i_new = i + nn.functional.linear(x, self.input_weights) + nn.functional.linear(z, self.recurrent_weights)
            else:
                i_new = i + x
            h = v + self.mem * ((self.v_leak - v) + i_new)
            i_decayed = i_new + self.syn * i_new
        positive = (h > self.v_th).to(h.dtype)  # the spikes' values
        if self.recurrent:
            return h, (1 - positive) * h + positive * self.v_reset, i_decayed, positive
        if not self.ternary:
            if self.subtract:  # reset_subtract
                return h, (1 - positive) * h + positive * (h - self.v_th), i_decayed, None
            return h, (1 - positive) * h + positive * self.v_reset, i_decayed, None
        negative = (-h > self.v_th).to(h.dtype)
        if self.subtract:
            return h, h - (positive - negative) * self.v_th, i_decayed, None
        fired = positive + negative
        return h, (1 - fired) * h + fired * self.v_reset, i_decayed, None

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        xs = x if self.sequence else x.reshape(self.time_steps, -1, *x.shape[1:]) if self.time_steps else x[None]
        if state is None:  # Norse's initial state: v = v_leak, i = 0 (broadcast: the same values), z = 0
            v, i = self.v_leak, torch.zeros((), dtype=torch.float32, device=x.device)
            z = xs.new_zeros((*xs.shape[1:-1], self.recurrent_weights.shape[0])) if self.recurrent else None
        else:
            v, i, z = state.v, getattr(state, "i", None), getattr(state, "z", None)
        hs = []
        for t in range(xs.shape[0]):
            h, v, i, z = self.step(xs[t], v, i, z)
            hs.append(h)
        h = torch.stack(hs) if self.sequence else torch.cat(hs) if self.time_steps else hs[0]
        ns = _norse()
        if self.recurrent:
            return h, ns.LIFState(z=z, v=v, i=i)
        return h, ns.LIFBoxFeedForwardState(v=v) if self.box else ns.LIFFeedForwardState(v=v, i=i)

    def extra_repr(self) -> str:
        kind = "lif-box" if self.box else "lif"
        return (f"{kind}{', ternary' if self.ternary else ''}, sequence={self.sequence}, "
                f"time_steps={self.time_steps}")


class LoweredNorseReadout(LoweredRecurrence):
    """Norse's leaky integrators (``LICell``, ``LIBoxCell``, ``LILinearCell``, ``LI``) for export, op for op.

    Read-outs keep state, so a single-step model exported on the time-flattened batch
    ``[T·N, …]`` needs them to run the recurrence over ``T`` like its lowered neurons
    (``time_steps=T``); otherwise one call is one step (cells) or the whole sequence (``LI``).
    Returns ``(v, state)`` as Norse does, in Norse's operation order.
    """

    def __init__(self, m: nn.Module, time_steps: int | None = None) -> None:
        super().__init__()
        ns = _norse()
        p = m.p
        self.box = isinstance(m, ns.LIBoxCell)
        self.sequence = isinstance(m, ns.SNN)
        self.time_steps = None if self.sequence else time_steps
        self.linear = isinstance(m, ns.LILinearCell)

        def constant(value: Any) -> torch.Tensor:
            return torch.as_tensor(value).detach().clone()

        with torch.no_grad():
            self.register_buffer("mem", constant(m.dt * p.tau_mem_inv))
            if not self.box:
                self.register_buffer("syn", constant(-m.dt * p.tau_syn_inv))
            self.register_buffer("v_leak", constant(p.v_leak))
            if self.linear:
                self.register_buffer("weight", m.input_weights.detach().clone())

    def step(self, x: torch.Tensor, v: torch.Tensor, i: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self.box:
            return v + self.mem * ((self.v_leak - v) + x), None
        i_jump = i + (nn.functional.linear(x, self.weight) if self.linear else x)
        v_new = v + self.mem * ((self.v_leak - v) + i_jump)
        return v_new, i_jump + self.syn * i_jump

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None:  # v = v_leak, i = 0, as Norse starts
            v, i = self.v_leak, torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            v, i = state.v, getattr(state, "i", None)
        if self.sequence or self.time_steps is not None:
            xs = x if self.sequence else x.reshape(self.time_steps, -1, *x.shape[1:])
            vs = []
            for t in range(xs.shape[0]):
                v, i = self.step(xs[t], v, i)
                vs.append(v)
            out = torch.stack(vs)
            out = out if self.sequence else out.reshape(-1, *out.shape[2:])
        else:
            v, i = self.step(x, v, i)
            out = v
        ns = _norse()
        return out, ns.LIBoxState(v=v) if self.box else ns.LIState(v=v, i=i)


def state_part(state: Any, path: tuple[int, ...]) -> Any:
    """``state[path[0]][path[1]]…``, or ``None`` when ``state`` is (a fresh state: Norse's first call)."""
    for index in path:
        if state is None:
            return None
        state = state[index]
    return state


def _node_paths(tree: Any, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], fx.Node]]:
    """``(index path, node)`` for every graph node in nested tuples/lists of an output's arguments."""
    if isinstance(tree, fx.Node):
        return [(path, tree)]
    if isinstance(tree, (tuple, list)):
        return [found for i, item in enumerate(tree) for found in _node_paths(item, path + (i,))]
    return []


def _takes_state(model: nn.Module) -> bool:
    """Whether ``model`` is called as Norse's ``model(x, state=None)`` (a second argument defaulting to ``None``)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is None


class NorseAdapter(FrameworkAdapter):
    """Norse's neurons, read-outs, ``(spikes, state)`` calls and conventions."""

    name = "norse"
    package = "norse"
    model_zoo = ("norse.torch.models.conv", "norse.torch.models.vgg", "norse.torch.models.mobilenet")
    kwarg_classes = ("norse.torch.module",)

    # ------------------------------------------------------------ recognition
    def neuron_types(self) -> tuple[type, ...]:
        return (*self._types("neurons"), NorseSpikes)

    def ternary_types(self) -> tuple[type, ...]:
        return (*self._types("ternary"), NorseTernarySpikes)

    def _types(self, key: str) -> tuple[type, ...]:
        """Norse classes by group, importing Norse if it is installed (purity resolves scopes by class)."""
        try:
            return tuple(getattr(_norse(), key))
        except ImportError:
            return ()

    def owns(self, m: nn.Module) -> bool:
        return isinstance(m, (LoweredNorseNeuron, LoweredNorseReadout, NorseSpikes)) or (_loaded() and isinstance(m, _norse().stateful))

    def is_spiking(self, m: nn.Module) -> bool:
        return _loaded() and isinstance(m, _norse().spiking) and not isinstance(m, _norse().readouts)

    def is_neuron(self, m: nn.Module) -> bool:
        return _loaded() and isinstance(m, _norse().neurons)

    def not_neuron_reason(self, m: nn.Module) -> str:
        return (f"{type(m).__name__} is a Norse neuron sj_realspike does not support (LIFCell, LIF, LIFBoxCell, "
                "LIFRecurrentCell and LIFRecurrent are), so its spikes stay binary")

    def conversion_problem(self, m: nn.Module) -> str | None:
        if getattr(m.p, "method", None) == "adjoint":
            return "it uses the adjoint method, whose threshold Norse 1.1 cannot evaluate"
        return None

    # ------------------------------------------------------------------ capture
    def is_leaf(self, m: nn.Module) -> bool:
        return self.owns(m)

    # -------------------------------------------------------------------- calls
    def settings(self, m: nn.Module) -> dict[str, Any]:
        # Norse keeps its time constants, threshold and reset in the parameter tuple ``p`` (not in the state_dict)
        return {k: getattr(m, k) for k in ("p", "dt") if hasattr(m, k)}

    def spike_index(self, m: nn.Module, out: Any) -> int | None:
        return 0  # (z, state)

    def batch_dims(self, m: nn.Module) -> int:
        return 2 if self.step_mode(m) == "m" else 1

    def spike_shape(self, m: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if isinstance(m, _norse().recurrent):  # W_in inside: [..., input_size] -> [..., hidden_size]
            return (*input_shape[:-1], int(m.hidden_size))
        return input_shape

    def amplitude_mixin(self, m: nn.Module) -> type:
        return NorseAmplitudeNeuron

    def step_mode(self, m: nn.Module) -> str:
        return "m" if isinstance(m, _norse().sequences) else "s"

    # ------------------------------------------------------------- model calls
    def thread_state(self, gm: Any) -> None:
        """Point each neuron call that starts fresh at its part of the graph's state argument.

        A model called as ``out, state = model(x, state)`` (``SequentialState``, or a
        user's step function) returns each neuron's new state at some position of
        ``state``; the call that produced it gets the same position of the ``state`` it is
        given (`state_part`: ``None`` on a first call, so a fresh state, as in Norse).
        """
        graph = gm.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        given = next((p for p in placeholders[1:] if not p.users and p.args == (None,)), None)
        output = next(n for n in graph.nodes if n.op == "output")
        result = output.args[0]
        if given is None or not (isinstance(result, (tuple, list)) and len(result) == 2):
            return
        modules = dict(gm.named_modules())
        threaded = False
        for path, leaf in _node_paths(result[1]):
            call = leaf.args[0] if leaf.op == "call_function" and leaf.target is operator.getitem \
                and leaf.args[1:] == (1,) and isinstance(leaf.args[0], fx.Node) else None
            if call is None or call.op != "call_module" or not self.owns(modules[call.target]) \
                    or len(call.args) != 2 or call.args[1] is not None or call.kwargs:
                continue
            with graph.inserting_before(call):
                part = graph.call_function(state_part, (given, path))
            call.args = (call.args[0], part)
            threaded = True
        if threaded:
            graph.lint()
            gm.recompile()

    def step_call(self, model: nn.Module, x: torch.Tensor, carry: Any) -> tuple[Any, Any]:
        if not _takes_state(model):
            return model(x), None
        out = model(x, carry)
        return (out[0], out[1]) if isinstance(out, tuple) and len(out) == 2 else (out, None)

    def step_output(self, model: nn.Module, out: Any) -> Any:
        return out[0] if _takes_state(model) and isinstance(out, (tuple, list)) and len(out) == 2 else out

    # ------------------------------------------------------------------- ternary
    def is_ternary(self, m: nn.Module) -> bool:
        return _loaded() and isinstance(m, _norse().ternary)

    def ternary_problem(self, m: nn.Module) -> str | None:
        if self.is_ternary(m):
            return None
        ns = _norse()
        if type(m) not in ns.ternary_of:
            return f"{type(m).__name__} has no ternary counterpart (LIFCell, LIF and LIFBoxCell have)"
        p = m.p
        th = torch.as_tensor(p.v_th)
        for key in ("v_leak", "v_reset"):
            value = torch.as_tensor(getattr(p, key))
            if not bool(torch.all((-th < value) & (value < th))):
                return (f"{key}={value.tolist()} lies outside (-v_th, v_th) with v_th={th.tolist()}, which a "
                        "ternary neuron needs (it fires -1 below -v_th)")
        return None

    def to_ternary(self, m: nn.Module) -> nn.Module:
        """The ternary twin of a ``LIFCell``/``LIF``/``LIFBoxCell``: same parameters, ``dt`` and mode."""
        if self.is_ternary(m):
            return m
        problem = self.ternary_problem(m)
        if problem is not None:
            raise ValueError(problem)
        cls = _norse().ternary_of[type(m)]
        kwargs = {"dt": m.dt}
        if hasattr(m, "record_states"):
            kwargs["record_states"] = m.record_states
        new = cls(m.p, **kwargs)
        new.train(m.training)
        return new

    # -------------------------------------------------------------------- export
    def lowering_problem(self, m: nn.Module) -> str | None:
        if not self.is_neuron(m):
            return f"{type(m).__name__} has no export lowering"
        if m.activation not in _norse().steps:
            return f"{type(m).__name__} integrates with {getattr(m.activation, '__name__', m.activation)}, " \
                   "not Norse's LIF step"
        if getattr(m, "record_states", False):
            return "it records its states over time (record_states=True)"
        return None

    def lower(self, m: nn.Module, time_steps: int | None) -> nn.Module:
        problem = self.lowering_problem(m)
        if problem is not None:
            raise ValueError(problem)
        return LoweredNorseNeuron(m, time_steps)

    def rewrite_lowered(self, gm: Any) -> None:
        """Fire each lowered neuron's membrane in a node of its own, scoped as the neuron; lower the read-outs.

        A lowered call returns ``(h, state)``; its spikes become ``fire(h)``, a node whose
        module stack names the neuron's path with the class `NorseSpikes`, so ONNX purity
        finds the spikes there and nowhere else. The call's users read ``(spikes, state)``
        as they read ``(z, state)`` before. Read-outs become `LoweredNorseReadout`s, over
        ``T`` steps where the neurons run on a time-flattened batch.
        """
        graph = gm.graph
        modules = dict(gm.named_modules())
        steps = next((m.time_steps for m in modules.values() if isinstance(m, LoweredNorseNeuron)
                      and m.time_steps is not None), None)
        if _loaded():
            for path, m in modules.items():
                if isinstance(m, _norse().readouts):  # read-outs keep state: lowered alike
                    parent, _, name = path.rpartition(".")
                    setattr(gm.get_submodule(parent) if parent else gm, name, LoweredNorseReadout(m, steps))
                elif steps is not None and isinstance(m, _norse().stateful):
                    # The time-flattened batch would run it once, from a fresh state, for all T steps.
                    raise UnsupportedPatternError(
                        path, f"{type(m).__name__} keeps state but has no export lowering, and this single-step "
                              "model is exported on the time-flattened sequence [T*N, ...], where it would run "
                              "from a fresh state at every step",
                        "Loop over time inside forward (each call then gets its state) or use LIFCell/LIFBoxCell")
        for node in list(graph.nodes):
            low = modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(low, LoweredNorseNeuron):
                continue
            users = list(node.users)
            with graph.inserting_after(node):
                h = graph.call_function(operator.getitem, (node, 0))
            with graph.inserting_after(h):
                spikes = graph.call_module(f"{node.target}.fire", (h,))
            with graph.inserting_after(spikes):
                state = graph.call_function(operator.getitem, (node, 1))
            with graph.inserting_after(state):
                joined = graph.call_function(tuple, ([spikes, state],))
            stack = OrderedDict(node.meta.get("nn_module_stack") or {node.target: (node.target, type(low))})
            key = next(reversed(stack))
            spikes.meta["nn_module_stack"] = OrderedDict([*list(stack.items())[:-1],
                                                          (key, (stack[key][0], type(low.fire)))])
            for user in users:
                user.replace_input_with(node, joined)
        graph.lint()
        gm.recompile()

    def lower_step(self, m: nn.Module) -> nn.Module | None:
        # Norse's state is explicit: one lowered call per step, with the same state arguments.
        return LoweredNorseNeuron(m) if self.lowering_problem(m) is None else None

    def make_dyadic(self, m: nn.Module) -> None:
        """Dyadic integration constants (``dt = 2⁻¹⁰``, ``dt · tau_mem_inv = dt · tau_syn_inv = 1/2``) and weights.

        The weights a Norse module holds itself (``LILinearCell``, ``LIFRecurrentCell``) are
        rounded to a power-of-two grid near their init scale, like conv/linear weights.
        """
        with torch.no_grad():
            for key in ("input_weights", "recurrent_weights"):
                w = getattr(m, key, None)
                if isinstance(w, torch.Tensor) and w.dim() == 2:
                    step = 2.0 ** round(math.log2(1.0 / math.sqrt(w.shape[1])))
                    w.copy_((w / step).round().clamp(-2, 2) * step)
        if not hasattr(m, "p") or not hasattr(m, "dt") or not hasattr(m.p, "tau_mem_inv"):
            return
        m.dt = 2.0 ** -10
        changes = {"tau_mem_inv": torch.as_tensor(512.0)}
        if hasattr(m.p, "tau_syn_inv"):
            changes["tau_syn_inv"] = torch.as_tensor(512.0)
        m.p = m.p._replace(**changes)

    # ----------------------------------------------------------------------- NIR
    def nir_node(self, m: nn.Module, nir: Any, features: tuple[int, ...], dt: float) -> Any:
        """``LIFBoxCell`` → ``nir.LIF``, ``LIFCell``/``LIF`` → ``nir.CubaLIF``, with NIR's time constants.

        NIR's ``τ`` is in seconds and importers step it with the graph's ``dt``; Norse
        integrates ``dt_norse · tau_inv`` of the drive per step, so ``τ = dt / (dt_norse ·
        tau_inv)`` gives the importer's Euler step Norse's exact factor (``τ = 1 / tau_inv``
        when both time steps agree). Refused: ternary neurons and subtractive reset.
        """
        import numpy as np

        if _loaded() and isinstance(m, _norse().readouts):
            return self._nir_readout(m, nir, features, dt)
        if self.is_ternary(m):
            raise Refusal("it emits ternary spikes {-1, 0, 1}; NIR neurons emit {0, 1}",
                          f"Train binary spikes (spike='real') for neuromorphic targets, or use ONNX ({_ONNX_REMEDY})")
        if not self.is_neuron(m):
            raise Refusal(f"{type(m).__name__} has no NIR neuron model in sj_realspike (LIFCell, LIF and "
                          "LIFBoxCell have)", f"Use ONNX ({_ONNX_REMEDY})")
        if isinstance(m, _norse().recurrent):
            raise Refusal("its input and recurrent weights live inside the neuron, which NIR's CubaLIF does not "
                          "hold", f"Use LIFCell after a Linear layer, or ONNX ({_ONNX_REMEDY})")
        p = m.p
        if getattr(p, "reset_method", None) is _norse().reset_subtract:
            raise Refusal("it resets by subtraction; NIR neurons reset to v_reset", f"Use ONNX ({_ONNX_REMEDY})")

        def full(value: Any) -> np.ndarray:
            return np.broadcast_to(torch.as_tensor(value).detach().double().cpu().numpy(), features).copy()

        def tau(inv: Any) -> np.ndarray:
            return dt / (m.dt * full(inv))

        common = dict(v_leak=full(p.v_leak), v_threshold=full(p.v_th), v_reset=full(p.v_reset), r=full(1.0))
        if self.is_box(m):
            return nir.LIF(tau=tau(p.tau_mem_inv), **common)
        return nir.CubaLIF(tau_syn=tau(p.tau_syn_inv), tau_mem=tau(p.tau_mem_inv), w_in=full(1.0), **common)

    def _nir_readout(self, m: nn.Module, nir: Any, features: tuple[int, ...], dt: float) -> Any:
        """``LICell`` → ``nir.CubaLI``, ``LIBoxCell`` → ``nir.LI`` (time constants as for the neurons)."""
        import numpy as np

        ns = _norse()
        if isinstance(m, ns.LILinearCell) or isinstance(m, ns.SNN):
            raise Refusal(f"{type(m).__name__} has no NIR mapping in sj_realspike (LICell and LIBoxCell have)",
                          f"Use Linear + LICell, or ONNX ({_ONNX_REMEDY})")
        p = m.p

        def full(value: Any) -> np.ndarray:
            return np.broadcast_to(torch.as_tensor(value).detach().double().cpu().numpy(), features).copy()

        if isinstance(m, ns.LIBoxCell):
            return nir.LI(tau=dt / (m.dt * full(p.tau_mem_inv)), r=full(1.0), v_leak=full(p.v_leak))
        return nir.CubaLI(tau_syn=dt / (m.dt * full(p.tau_syn_inv)), tau_mem=dt / (m.dt * full(p.tau_mem_inv)),
                          r=full(1.0), v_leak=full(p.v_leak), w_in=full(1.0))

    def is_box(self, m: nn.Module) -> bool:
        return isinstance(m, _norse().LIFBoxCell)


ADAPTER = register(NorseAdapter())
