"""Amplitudes into the synapses inside a neuron: recurrent weights that read the neuron's own spikes.

An ``RLeaky`` adds ``recurrent(spk)`` to its membrane; with real spikes that is
``recurrent(a ⊙ s)`` (the converted neuron scales in ``fire``). Like any synapse
downstream, the recurrent weights absorb the amplitude: a ``Linear``'s columns, a
conv's input channels (channel or layer amplitudes only: a shared kernel cannot take an
element-wise one), a one-to-one weight ``V`` element-wise. Which synapses a neuron holds
is its framework adapter's answer (`FrameworkAdapter.internal_synapses`).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from .amplitude import Amplitude
from .frameworks import neuron_adapter
from .ops import OpKind, classify
from .weights import is_spatially_uniform, scale_input_channels, scale_linear_columns

__all__ = ["fold_internal_synapses", "internal_synapse_problem"]


def _internal(module: nn.Module) -> dict[str, nn.Module]:
    adapter = neuron_adapter(module)
    return adapter.internal_synapses(module) if adapter is not None else {}


def internal_synapse_problem(module: nn.Module, scale: torch.Tensor) -> str | None:
    """Why the neuron's own synapses cannot absorb an amplitude shaped like ``scale`` (``None``: they can)."""
    for name, syn in _internal(module).items():
        if isinstance(syn, (nn.Conv1d, nn.Conv2d)) and not is_spatially_uniform(scale):
            return (f"its recurrent {type(syn).__name__} '{name}' shares one kernel over positions, so it cannot "
                    "absorb an element-wise amplitude; use channel or layer granularity")
        if not isinstance(syn, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not hasattr(syn, "V"):
            return f"its recurrent synapse '{name}' ({type(syn).__name__}) is not a Linear, conv or one-to-one weight"
    return None


def fold_internal_synapses(gm: fx.GraphModule) -> list[str]:
    """Scale the synapses inside each neuron that carries an amplitude node (in place); returns their paths.

    Each neuron module is scaled once, however often it is called. Weights are scaled in
    float64 and rounded once, like every fold.
    """
    modules = dict(gm.named_modules())
    done: dict[str, Amplitude] = {}
    for node in gm.graph.nodes:
        if classify(node, modules) is not OpKind.AMPLITUDE:
            continue
        spikes = node.args[0]
        call = spikes.args[0] if spikes.op == "call_function" else spikes
        if call.op == "call_module" and call.target not in done and _internal(modules[call.target]):
            done[call.target] = modules[node.target]
    scaled = []
    for path, amp in done.items():
        scale = amp.full(amp.a.detach().double())
        for name, syn in _internal(modules[path]).items():
            _scale(syn, scale)
            scaled.append(f"{path}.{name}")
    return scaled


@torch.no_grad()
def _scale(syn: nn.Module, scale: torch.Tensor) -> None:
    """``syn(a ⊙ s) = syn'(s)``: fold ``scale`` (broadcasting over one sample's features) into ``syn``."""
    if isinstance(syn, nn.Linear):
        w = scale_linear_columns(syn.weight.detach().double(), scale.expand(syn.in_features).reshape(-1))
        syn.weight.copy_(w.to(syn.weight.dtype))
    elif isinstance(syn, (nn.Conv1d, nn.Conv2d)):
        w = scale_input_channels(syn.weight.detach().double(), scale, syn.groups)
        syn.weight.copy_(w.to(syn.weight.dtype))
    else:  # one-to-one: x · V
        v = syn.V
        folded = (torch.as_tensor(v).double() * scale).to(v.dtype if isinstance(v, torch.Tensor) else torch.float32)
        if "V" in syn._parameters:
            del syn._parameters["V"]
        syn.V = folded
