"""snnTorch's tutorial networks, for the compatibility matrix's snnTorch table.

Written the way snnTorch's tutorials write them (the layer sizes of the tutorials, T=2, N=2):
tutorial 5's fully connected net (state in locals, the time loop in ``forward`` over a
static input), tutorial 6's convolutional net (``nn.Sequential`` of ``init_hidden=True``
neurons, stepped by the caller's ``forward_pass`` loop), a recurrent ``RLeaky`` net (linear
and convolutional recurrence), ``Synaptic`` and ``Lapicque`` variants, a net trained with a
learnable per-channel ``graded_spikes_factor``, and the neurons sj_realspike refuses to
export (``Alpha``) or to convert (``SLSTM``), so their reasons are on record.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cases import Case, N, T

try:
    import snntorch as snn
    from snntorch import surrogate
except ModuleNotFoundError:  # the table is empty without snnTorch
    snn = None

FAMILY = "snnTorch"


def _grad():
    return surrogate.fast_sigmoid(slope=25)  # tutorial 6's surrogate


class Tutorial5(nn.Module):
    """Tutorial 5: 784 → 1000 → 10 Leaky, ``mem = lif.init_leaky()``, the same input every step."""

    def __init__(self, num_steps: int = T, beta: float = 0.95) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = nn.Linear(784, 1000)
        self.lif1 = snn.Leaky(beta=beta)
        self.fc2 = nn.Linear(1000, 10)
        self.lif2 = snn.Leaky(beta=beta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


class SynapticNet(nn.Module):
    """Tutorial 5's layout with ``Synaptic`` neurons: ``syn, mem = lif.init_synaptic()``, input ``[T, N, 784]``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 100)
        self.lif1 = snn.Synaptic(alpha=0.9, beta=0.8)
        self.fc2 = nn.Linear(100, 10)
        self.lif2 = snn.Synaptic(alpha=0.9, beta=0.8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        syn1, mem1 = self.lif1.init_synaptic()
        syn2, mem2 = self.lif2.init_synaptic()
        spk2_rec, mem2_rec = [], []
        for step in range(x.size(0)):
            spk1, syn1, mem1 = self.lif1(self.fc1(x[step]), syn1, mem1)
            spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


class RecurrentNet(nn.Module):
    """A recurrent net: ``RLeaky(linear_features=…)`` with ``spk, mem = rlif.init_rleaky()``, input ``[T, N, F]``."""

    def __init__(self, features: int = 100, hidden: int = 128, outputs: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.rlif1 = snn.RLeaky(beta=0.9, linear_features=hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.lif2 = snn.Leaky(beta=0.9)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spk1, mem1 = self.rlif1.init_rleaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(x.size(0)):
            spk1, mem1 = self.rlif1(self.fc1(x[step]), spk1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


def _tutorial6(neuron=None) -> nn.Module:
    """Tutorial 6's CSNN: 12C5-MP2-64C5-MP2-1024FC10, every neuron ``init_hidden=True``, the last ``output=True``."""
    def lif(**kwargs):
        return (neuron or snn.Leaky)(beta=0.5, spike_grad=_grad(), init_hidden=True, **kwargs)

    return nn.Sequential(nn.Conv2d(1, 12, 5), nn.MaxPool2d(2), lif(),
                         nn.Conv2d(12, 64, 5), nn.MaxPool2d(2), lif(),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 10), lif(output=True))


def _graded() -> nn.Module:
    """Tutorial 6's CSNN trained with ``learn_graded_spikes_factor`` per channel (values as after training)."""
    net = _tutorial6()
    for index, channels in ((2, 12), (5, 64)):
        g = torch.linspace(0.5, 2.0, channels).reshape(channels, 1, 1)
        net[index].graded_spikes_factor = nn.Parameter(g)
    return net


def _conv_rleaky() -> nn.Module:
    """A convolutional recurrent layer: ``RLeaky(conv2d_channels=12, kernel_size=3)`` in tutorial 6's net."""
    return nn.Sequential(nn.Conv2d(1, 12, 5), nn.MaxPool2d(2),
                         snn.RLeaky(beta=0.5, conv2d_channels=12, kernel_size=3, init_hidden=True),
                         nn.Conv2d(12, 64, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, init_hidden=True),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 10), snn.Leaky(beta=0.5, init_hidden=True, output=True))


def _lapicque() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), snn.Lapicque(beta=0.9, init_hidden=True),
                         nn.Linear(100, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))


def _alpha() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), snn.Alpha(alpha=0.9, beta=0.8, init_hidden=True),
                         nn.Linear(100, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))


def _slstm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), snn.SLSTM(100, 100, init_hidden=True),
                         nn.Linear(100, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))


def _mnist(*shape: int) -> torch.Tensor:
    return torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(0)).float() / 4


def _cases() -> list[Case]:
    if snn is None:
        return []
    images = (T, N, 1, 28, 28)
    return [
        Case("tutorial5_fc", "snnTorch tutorial 5", FAMILY, lambda: (Tutorial5(), _mnist(N, 784)),
             "784-1000-10 Leaky(beta=0.95), state in locals, static input repeated over num_steps in forward",
             "Leaky"),
        Case("tutorial6_csnn", "snnTorch tutorial 6", FAMILY, lambda: (_tutorial6(), _mnist(*images)),
             "12C5-MP2-64C5-MP2-1024FC10, Leaky(init_hidden=True), output=True last; the caller loops over T",
             "Leaky", single_step=True),
        Case("tutorial6_graded", "tutorial 6 + learn_graded_spikes_factor", FAMILY,
             lambda: (_graded(), _mnist(*images)),
             "tutorial 6's CSNN with a learned per-channel graded_spikes_factor (0.5 … 2.0)", "Leaky",
             single_step=True),
        Case("tutorial6_synaptic", "tutorial 6 with Synaptic", FAMILY,
             lambda: (_tutorial6(lambda **kw: snn.Synaptic(alpha=0.9, **kw)), _mnist(*images)),
             "tutorial 6's CSNN, Synaptic(alpha=0.9, beta=0.5) neurons", "Synaptic", single_step=True),
        Case("synaptic_fc", "tutorial 5 with Synaptic", FAMILY, lambda: (SynapticNet(), _mnist(T, N, 784)),
             "784-100-10 Synaptic, (syn, mem) in locals, time loop over x's first dim", "Synaptic"),
        Case("rleaky_fc", "RLeaky (recurrent linear)", FAMILY, lambda: (RecurrentNet(), _mnist(T, N, 100)),
             "100-128-10, RLeaky(linear_features=128) with (spk, mem) in locals, then Leaky", "RLeaky"),
        Case("rleaky_conv", "RLeaky (recurrent conv)", FAMILY, lambda: (_conv_rleaky(), _mnist(*images)),
             "tutorial 6's CSNN with RLeaky(conv2d_channels=12, kernel_size=3) first", "RLeaky", single_step=True),
        Case("lapicque_fc", "Lapicque", FAMILY, lambda: (_lapicque(), _mnist(*images)),
             "784-100-10, Lapicque(beta=0.9, init_hidden=True)", "Lapicque", single_step=True),
        Case("alpha_fc", "Alpha", FAMILY, lambda: (_alpha(), _mnist(*images)),
             "784-100-10, Alpha(alpha=0.9, beta=0.8, init_hidden=True)", "Alpha", single_step=True),
        Case("slstm_fc", "SLSTM", FAMILY, lambda: (_slstm(), _mnist(*images)),
             "784-100-10, SLSTM(100, 100, init_hidden=True) then Leaky", "SLSTM", single_step=True),
    ]


SNNTORCH_CASES = _cases()
