"""One network of the compatibility matrix's second and third tables: how to build it and feed it.

The first table (`matrix.MODELS` × neurons × spike × granularity × step mode) builds its
nets from a factory and a neuron class; the other two run each network once (real spikes,
channel granularity) as its authors configure it, so each `Case` brings its own builder,
input and a line saying what exactly was built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

T, N = 2, 2

# Neuron fractions are summed per family in the summary line of docs/compatibility.md.
FAMILIES = ("transformers", "MS-ResNets", "SeqToANNContainer/SEW", "neuron types", "others", "snnTorch",
            "Norse")


@dataclass(frozen=True)
class Case:
    """A network, its input and where it comes from.

    Attributes:
        name: the row's name (a zoo factory or class, a `wild.WILD` key, an example script's class).
        source: the zoo module or the example script / idiom the network reproduces.
        family: one of `FAMILIES`.
        build: returns ``(net, x)``: the network, unconverted, and its input in the network's own
            layout (``[T, N, ...]`` for multi-step nets, the image for nets that repeat it inside
            ``forward``); for ``single_step`` nets ``x`` is the sequence ``[T, N, ...]`` the user
            loops over.
        config: what `build` constructs (constructor arguments), shown in the table.
        neuron: the neuron class(es) the network uses.
        single_step: one call of the network is one time step (the user loops over T outside).
        backward: run a training step's backward pass; ``False`` only where the network's own
            training loop must set something up first (said in ``config``).
    """

    name: str
    source: str
    family: str
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    config: str = ""
    neuron: str = "LIF"
    single_step: bool = False
    backward: bool = True


def dyadic(x: torch.Tensor) -> torch.Tensor:
    """``x`` on multiples of 1/4 in [0, 4]: with a dyadic net every fp32 op on it is exact."""
    return (x.float() * 4).round().clamp(0, 16) / 4


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    """A dyadic random input of ``shape`` (multiples of 1/4 in [0, 2])."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, shape, generator=g).float() / 4
