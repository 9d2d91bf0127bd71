"""Real-/ternary-spike neurons: the user's own neuron, carrying its learnable amplitude.

`convert_model` returns a copy of the user's network in which each converted neuron
is the same neuron object type *plus* an `Amplitude`: its class becomes a subclass of
its own class (``RealSpikeLIFNode(LIFNode)``) whose ``forward`` scales the spikes by
``spike_amplitude``. Everything else is the user's: hyper-parameters, surrogate,
backend and kernels, step mode, state (``.v`` reads keep working), ``isinstance``
checks, the forward of every enclosing module, other ``T`` and batch sizes,
``torch.compile`` and DDP. A neuron called several times (a time loop in user code)
applies the same amplitude at every call.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn

from .amplitude import Amplitude
from .frameworks import neuron_adapter

__all__ = ["AMPLITUDE_ATTR", "AmplitudeNeuron", "amplitude_of", "attach_amplitude", "base_class", "detach_amplitude"]

AMPLITUDE_ATTR = "spike_amplitude"


class AmplitudeNeuron:
    """Mixin placed before a neuron class: ``forward`` returns ``a ⊙ spikes``.

    A framework whose neurons return more than their spikes, or feed them back inside,
    gives a subclass of this mixin (`FrameworkAdapter.amplitude_mixin`).
    """

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(self, AMPLITUDE_ATTR)(super().forward(*args, **kwargs))


_SUBCLASSES: dict[type, type] = {}


def _subclass(cls: type, mixin: type) -> type:
    """``RealSpike<cls>``: one per neuron class, registered in this module so it pickles by name."""
    if cls not in _SUBCLASSES:
        name = f"RealSpike{cls.__name__}"
        sub = type(name, (mixin, cls), {"__module__": __name__, "__qualname__": name, "_base_class": cls,
                                        "__doc__": f"{cls.__name__} whose spikes are scaled by a "
                                                   f"learnable amplitude (sj_realspike)."})
        _SUBCLASSES[cls] = sub
        setattr(sys.modules[__name__], name, sub)
    return _SUBCLASSES[cls]


def attach_amplitude(neuron: nn.Module, amplitude: Amplitude) -> nn.Module:
    """Give ``neuron`` (in place) the amplitude ``amplitude``; returns ``neuron``."""
    if isinstance(neuron, AmplitudeNeuron):
        raise ValueError(f"{type(neuron).__name__} already carries an amplitude")
    adapter = neuron_adapter(neuron)
    mixin = adapter.amplitude_mixin(neuron) if adapter is not None else AmplitudeNeuron
    neuron.add_module(AMPLITUDE_ATTR, amplitude)
    neuron.__class__ = _subclass(type(neuron), mixin)
    return neuron


def detach_amplitude(neuron: nn.Module) -> Amplitude:
    """Undo `attach_amplitude` in place: ``neuron`` is its plain class again; returns the amplitude."""
    amplitude = getattr(neuron, AMPLITUDE_ATTR)
    delattr(neuron, AMPLITUDE_ATTR)
    neuron.__class__ = base_class(neuron)
    return amplitude


def base_class(neuron: nn.Module) -> type:
    """The neuron's own class (without the amplitude mixin)."""
    cls = type(neuron)
    return cls._base_class if issubclass(cls, AmplitudeNeuron) else cls


def amplitude_of(neuron: nn.Module) -> Amplitude | None:
    """The amplitude a converted neuron carries, or ``None``."""
    return getattr(neuron, AMPLITUDE_ATTR) if isinstance(neuron, AmplitudeNeuron) else None
