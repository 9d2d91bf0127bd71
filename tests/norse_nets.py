"""Small Norse networks, written the way Norse's docs, tasks and tutorials write them.

Three styles cover Norse's user code:

* module style: ``SequentialState(Lift(Conv2d), LIF(), ...)`` on the whole sequence
  ``[T, N, ...]``, returning ``(output, states)``;
* cell style with the time loop in ``forward`` (Norse's ``ConvNet``, the MNIST tutorial's
  ``LIFRecurrentCell`` network):
  ``z, s1 = self.lif1(z, s1)`` for every step, states starting at ``None``;
* single-step: ``SequentialState(Linear, LIFCell(), ...)`` called once per step by the user,
  ``out, state = model(x[t], state)``.

Neuron parameters make the neurons fire within ``T = 2`` steps on inputs of size ~1
(Norse's defaults integrate ``dt · tau_mem_inv = 0.1`` of the current per step).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from norse.torch import (LI, LIF, LIBoxCell, LIBoxParameters, LICell, LIFBoxCell, LIFBoxParameters, LIFCell,
                         LIFParameters, LIFRecurrentCell, LIParameters, Lift, SequentialState)
from norse.torch.models.conv import ConvNet

T, N = 2, 2

# dt · tau_mem_inv = 0.5 (dt = 1 ms): a current of 0.5 fires in one step.
FAST = LIFParameters(tau_syn_inv=torch.as_tensor(250.0), tau_mem_inv=torch.as_tensor(500.0),
                     v_th=torch.as_tensor(0.25))
FAST_BOX = LIFBoxParameters(tau_mem_inv=torch.as_tensor(500.0), v_th=torch.as_tensor(0.25))
READOUT = LIParameters(tau_syn_inv=torch.as_tensor(250.0), tau_mem_inv=torch.as_tensor(500.0))


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    """A dyadic random input (multiples of 1/4 in [0, 2])."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, shape, generator=g).float() / 4


def seq_conv() -> SequentialState:
    """Module style: lifted convs and LIF layers on ``[T, N, 1, 8, 8]``, an LI read-out."""
    return SequentialState(
        Lift(nn.Conv2d(1, 4, 3, padding=1)), LIF(FAST),
        Lift(nn.AvgPool2d(2)),
        Lift(nn.Conv2d(4, 8, 3, padding=1, bias=False)), LIF(FAST),
        Lift(nn.Flatten()),
        Lift(nn.Linear(8 * 4 * 4, 16)), LIF(FAST),
        Lift(nn.Linear(16, 10)), LI(READOUT),
    )


def seq_mlp() -> SequentialState:
    """Module style MLP on ``[T, N, 12]``."""
    return SequentialState(
        Lift(nn.Linear(12, 16)), LIF(FAST),
        Lift(nn.Linear(16, 16)), LIF(FAST),
        Lift(nn.Linear(16, 4)), LI(READOUT),
    )


class TutorialMLP(nn.Module):
    """The MNIST tutorial's network with a feed-forward LIF layer: the time loop in ``forward``.

    Input ``[T, N, 1, 4, 4]`` (a tiny image sequence), output the read-out voltages ``[T, N, 4]``.
    """

    def __init__(self, hidden: int = 16, p: LIFParameters = FAST) -> None:
        super().__init__()
        self.fc_in = nn.Linear(16, hidden)
        self.lif = LIFCell(p)
        self.fc_hidden = nn.Linear(hidden, hidden)
        self.lif2 = LIFCell(p)
        self.fc_out = nn.Linear(hidden, 4, bias=False)
        self.out = LICell(READOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_length, batch_size = x.shape[0], x.shape[1]
        s1 = s2 = so = None
        voltages = []
        for ts in range(seq_length):
            z = x[ts].view(batch_size, -1)
            z, s1 = self.lif(self.fc_in(z), s1)
            z, s2 = self.lif2(self.fc_hidden(z), s2)
            vo, so = self.out(self.fc_out(z), so)
            voltages += [vo]
        return torch.stack(voltages)


class MaxDecoder(nn.Module):
    """The tutorial's decoder: the largest read-out voltage over time, then log-softmax."""

    def forward(self, voltages: torch.Tensor) -> torch.Tensor:
        m, _ = torch.max(voltages, 0)
        return torch.nn.functional.log_softmax(m, dim=1)


class TutorialModel(nn.Module):
    """``Model(snn, decoder)`` as the tutorial composes it."""

    def __init__(self) -> None:
        super().__init__()
        self.snn = TutorialMLP()
        self.decoder = MaxDecoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.snn(x))


class BoxNet(nn.Module):
    """Cell style with the current-free neurons: conv → LIFBoxCell → conv → LIFBoxCell → linear → LIBoxCell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.lif1 = LIFBoxCell(FAST_BOX)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.lif2 = LIFBoxCell(FAST_BOX)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.out = LIBoxCell(LIBoxParameters(tau_mem_inv=torch.as_tensor(500.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = s2 = so = None
        outs = []
        for t in range(x.shape[0]):
            z, s1 = self.lif1(self.conv1(x[t]), s1)
            z, s2 = self.lif2(self.conv2(z), s2)
            v, so = self.out(self.fc(z.flatten(1)), so)
            outs.append(v)
        return torch.stack(outs)


class RecurrentMLP(nn.Module):
    """The MNIST tutorial's layout: a ``LIFRecurrentCell`` layer (input and recurrent weights inside), then
    ``Linear`` into an ``LICell`` read-out; the time loop in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = LIFRecurrentCell(12, 16, p=FAST)
        self.fc_out = nn.Linear(16, 4, bias=False)
        self.out = LICell(READOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = so = None
        voltages = []
        for ts in range(x.shape[0]):
            z, s1 = self.l1(x[ts], s1)
            vo, so = self.out(self.fc_out(z), so)
            voltages += [vo]
        return torch.stack(voltages)


def step_mlp() -> SequentialState:
    """Single-step: one call is one time step, the user carries the state (``model(x[t], state)``)."""
    return SequentialState(nn.Linear(12, 16), LIFCell(FAST), nn.Linear(16, 16), LIFCell(FAST),
                           nn.Linear(16, 4), LICell(READOUT))


def norse_convnet() -> ConvNet:
    """Norse's own ``norse.torch.models.conv.ConvNet`` on 16×16 images (its smallest input)."""
    return ConvNet(num_channels=1, feature_size=16)


def run_steps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A single-step Norse model over the sequence ``x``, carrying its state as Norse users do."""
    state, outs = None, []
    for xt in x:
        out, state = model(xt, state)
        outs.append(out)
    return torch.stack(outs)


NETS = {  # name: (builder, input shape, single-step)
    "seq_conv": (seq_conv, (T, N, 1, 8, 8), False),
    "seq_mlp": (seq_mlp, (T, N, 12), False),
    "tutorial_mlp": (TutorialMLP, (T, N, 1, 4, 4), False),
    "box_net": (BoxNet, (T, N, 1, 8, 8), False),
    "step_mlp": (step_mlp, (T, N, 12), True),
    "recurrent_mlp": (RecurrentMLP, (T, N, 12), False),
}
