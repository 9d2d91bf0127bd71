"""snnTorch networks written the way snnTorch's tutorials write them, at test size.

Two styles: ``nn.Sequential`` with ``init_hidden=True`` neurons, stepped by the caller
(``forward_pass``, as tutorial 6 does after ``utils.reset(net)``), and a class whose
``forward`` keeps each neuron's state in locals (``mem = lif.init_leaky()``) and loops
over the time steps itself (tutorials 5 and 7), returning the recorded spikes and
membranes of the last layer.
"""

from __future__ import annotations

import snntorch as snn
import torch
import torch.nn as nn
from snntorch import surrogate

T, N = 2, 2


def conv_tutorial6(beta: float = 0.5) -> nn.Module:
    """Tutorial 6's convolutional net (conv → max pool → Leaky, twice, then a Linear read-out), tiny."""
    spike_grad = surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Conv2d(4, 6, 3), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Flatten(), nn.Linear(6, 3),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True))


def image(seed: int = 0) -> torch.Tensor:
    """A ``[T, N, 1, 10, 10]`` input sequence for `conv_tutorial6`."""
    return torch.rand(T, N, 1, 10, 10, generator=torch.Generator().manual_seed(seed)) * 4


class FullyConnected(nn.Module):
    """Tutorial 5's fully connected net: two Leaky layers, state in locals, the time loop in ``forward``."""

    def __init__(self, neuron: str = "leaky", beta: float = 0.5, features: int = 8, hidden: int = 6,
                 outputs: int = 3, **kwargs) -> None:
        super().__init__()
        self.neuron = neuron
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        if neuron == "synaptic":
            self.lif1, self.lif2 = (snn.Synaptic(alpha=0.5, beta=beta, **kwargs) for _ in range(2))
        else:
            self.lif1, self.lif2 = (snn.Leaky(beta=beta, **kwargs) for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spk2_rec, mem2_rec = [], []
        if self.neuron == "synaptic":
            syn1, mem1 = self.lif1.init_synaptic()
            syn2, mem2 = self.lif2.init_synaptic()
        else:
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        for step in range(x.shape[0]):
            cur1 = self.fc1(x[step])
            if self.neuron == "synaptic":
                spk1, syn1, mem1 = self.lif1(cur1, syn1, mem1)
                spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            else:
                spk1, mem1 = self.lif1(cur1, mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


class Recurrent(nn.Module):
    """A recurrent net as in the RLeaky tutorial: ``RLeaky(linear_features=…)`` with ``(spk, mem)`` in locals."""

    def __init__(self, beta: float = 0.5, features: int = 8, hidden: int = 6, outputs: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.rlif1 = snn.RLeaky(beta=beta, linear_features=hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.lif2 = snn.Leaky(beta=beta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spk1, mem1 = self.rlif1.init_rleaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(x.shape[0]):
            spk1, mem1 = self.rlif1(self.fc1(x[step]), spk1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


def sequential(neuron: str, features: int = 8, hidden: int = 6, outputs: int = 3, threshold: float = 0.5,
               **kwargs) -> nn.Module:
    """Linear → neuron → Linear → neuron → Linear → Leaky(output=True), every neuron ``init_hidden=True``.

    Thresholds of 0.5 make the tiny layers fire on `vectors`.
    """
    kwargs["threshold"] = threshold
    def make(width: int) -> nn.Module:
        if neuron == "leaky":
            return snn.Leaky(beta=0.5, init_hidden=True, **kwargs)
        if neuron == "synaptic":
            return snn.Synaptic(alpha=0.5, beta=0.5, init_hidden=True, **kwargs)
        if neuron == "rleaky":
            return snn.RLeaky(beta=0.5, linear_features=width, init_hidden=True, **kwargs)
        if neuron == "lapicque":
            return snn.Lapicque(beta=0.5, init_hidden=True, **kwargs)
        if neuron == "alpha":
            return snn.Alpha(alpha=0.5, beta=0.25, init_hidden=True, **kwargs)
        raise ValueError(neuron)

    return nn.Sequential(nn.Linear(features, hidden), make(hidden), nn.Linear(hidden, hidden), make(hidden),
                         nn.Linear(hidden, outputs),
                         snn.Leaky(beta=0.5, init_hidden=True, output=True, threshold=threshold))


def vectors(seed: int = 0, features: int = 8) -> torch.Tensor:
    """A ``[T, N, features]`` input sequence."""
    return torch.rand(T, N, features, generator=torch.Generator().manual_seed(seed)) * 4


class KeywordState(nn.Module):
    """``mem=`` passed by keyword to a Leaky with per-neuron ``beta`` and ``threshold`` tensors; the second
    Leaky called without its state, which it then keeps itself (snnTorch allows both)."""

    def __init__(self, features: int = 8, hidden: int = 6, outputs: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.lif1 = snn.Leaky(beta=torch.full((hidden,), 0.5), threshold=torch.linspace(0.25, 1.0, hidden),
                              learn_beta=True)
        self.fc2 = nn.Linear(hidden, outputs)
        self.lif2 = snn.Leaky(beta=0.5, threshold=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1 = self.lif1.init_leaky()
        out = []
        for step in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[step]), mem=mem1)
            spk2, _ = self.lif2(self.fc2(spk1))
            out.append(spk2)
        return torch.stack(out)
