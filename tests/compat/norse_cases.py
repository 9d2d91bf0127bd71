"""Norse's conv and MLP examples, for the compatibility matrix's Norse table.

Written the way Norse's own code writes them: the models Norse ships
(``norse.torch.models.conv.ConvNet`` and ``ConvNet4``, the MNIST task's ``LIFConvNet`` with its
constant-current encoder), the MNIST tutorial's network (a ``LIFRecurrentCell`` layer, a
``Linear`` read-out into ``LICell``, decoded by the maximum voltage over time), and the
quick-start's ``SequentialState`` idioms: lifted layers with ``LIF`` on the whole sequence,
and ``Linear``/``LIFCell`` layers stepped by the caller with ``model(x[t], state)``. Norse's
default parameters (``dt · tau_mem_inv = 0.1``), T=2, N=2; inputs are scaled so that the
deep layers fire within two steps (verify needs every neuron to fire).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cases import Case, N, T, image

try:
    import norse.torch as snn
    from norse.task.mnist import LIFConvNet
    from norse.torch.models.conv import ConvNet, ConvNet4
except ModuleNotFoundError:  # the table is empty without Norse
    snn = None

FAMILY = "Norse"


class TutorialSNN(nn.Module):
    """The MNIST tutorial's network: ``LIFRecurrentCell`` → ``Linear`` → ``LICell``, the time loop in ``forward``."""

    def __init__(self, input_features: int = 28 * 28, hidden_features: int = 100, output_features: int = 10) -> None:
        super().__init__()
        self.l1 = snn.LIFRecurrentCell(input_features, hidden_features,
                                       p=snn.LIFParameters(alpha=100, v_th=torch.tensor(0.5)))
        self.input_features = input_features
        self.fc_out = nn.Linear(hidden_features, output_features, bias=False)
        self.out = snn.LICell()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_length, batch_size = x.shape[0], x.shape[1]
        s1 = so = None
        voltages = []
        for ts in range(seq_length):
            z = x[ts].view(batch_size, -1)
            z, s1 = self.l1(z, s1)
            z = self.fc_out(z)
            vo, so = self.out(z, so)
            voltages += [vo]
        return torch.stack(voltages)


class FeedForwardTutorialSNN(TutorialSNN):
    """The tutorial's network with its hidden layer as ``Linear`` + ``LIFCell`` (the feed-forward variant)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = snn.SequentialState(nn.Linear(28 * 28, 100), snn.LIFCell(snn.LIFParameters(v_th=torch.tensor(0.5))))


class DecodedModel(nn.Module):
    """The tutorial's ``Model(encoder, snn, decoder)`` without the encoder: the maximum voltage over time.

    The tutorial's decoder then takes a log-softmax, part of its loss: left out, since
    onnxruntime's ``exp``/``log`` differ from torch's in the last bit (verify compares bits).
    """

    def __init__(self, snn_module: nn.Module) -> None:
        super().__init__()
        self.snn = snn_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        voltages = self.snn(x)
        m, _ = torch.max(voltages, 0)
        return m


def _lifted_conv() -> nn.Module:
    """``Lift``'s docstring idiom: lifted convs, ``LIF`` layers and a lifted classifier, an ``LI`` read-out."""
    return snn.SequentialState(
        snn.Lift(nn.Conv2d(1, 16, 5, 1)), snn.LIF(),
        snn.Lift(nn.MaxPool2d(2)),
        snn.Lift(nn.Conv2d(16, 32, 5, 1)), snn.LIF(),
        snn.Lift(nn.MaxPool2d(2)),
        snn.Lift(nn.Flatten()),
        snn.Lift(nn.Linear(32 * 4 * 4, 100)), snn.LIF(),
        snn.Lift(nn.Linear(100, 10)), snn.LI(),
    )


def _lifted_mlp() -> nn.Module:
    """The quick-start's "Norse in time": lifted ``Linear`` layers around ``LIF``, on ``[T, N, 10]``."""
    return snn.SequentialState(snn.Lift(nn.Linear(10, 5)), snn.LIF(), snn.Lift(nn.Linear(5, 1)))


def _stepped_mlp() -> nn.Module:
    """The quick-start's "neural networks with state": one step per call, ``out, state = model(x, state)``."""
    return snn.SequentialState(nn.Linear(10, 5), snn.LIFCell(), nn.Linear(5, 1))


def _box() -> nn.Module:
    """Current-free cells: ``Linear`` → ``LIFBoxCell`` twice, an ``LIBoxCell`` read-out, stepped by the caller."""
    return snn.SequentialState(nn.Linear(10, 32), snn.LIFBoxCell(), nn.Linear(32, 32), snn.LIFBoxCell(),
                               nn.Linear(32, 4), snn.LIBoxCell())


def _lsnn() -> nn.Module:
    """An ``LSNNRecurrentCell`` layer (adaptive threshold), which sj_realspike does not convert."""
    return snn.SequentialState(nn.Linear(10, 16), snn.LIFCell(), nn.Linear(16, 16), snn.LSNNRecurrentCell(16, 16),
                               nn.Linear(16, 2))


def _cases() -> list[Case]:
    if snn is None:
        return []
    mnist = (T, N, 1, 28, 28)
    return [
        Case("convnet", "norse.torch.models.conv.ConvNet", FAMILY, lambda: (ConvNet(), image(*mnist) * 4),
             "Norse's own: 20C5-MP2-(10·)50C5-MP2-500FC, LIFCell each, relu into LILinearCell(500, 10); cell loop "
             "in forward, voltages[ts] = v", "LIFCell"),
        Case("convnet4", "norse.torch.models.conv.ConvNet4", FAMILY, lambda: (ConvNet4(), image(*mnist) * 4),
             "Norse's own: 32C5-MP2-(10·)64C5-MP2-1024FC, LIFCell(v_th=0.7), relu into LILinearCell(1024, 10)",
             "LIFCell"),
        Case("mnist_task", "norse.task.mnist.LIFConvNet", FAMILY,
             lambda: (LIFConvNet(28 * 28, seq_length=T, input_scale=16.0), image(N, 1, 28, 28)),
             "the MNIST task's model: ConstantCurrentLIFEncoder over seq_length steps, ConvNet4, max over time, "
             "log-softmax; [N, 1, 28, 28] images", "LIFCell"),
        Case("tutorial_recurrent", "Norse MNIST tutorial", FAMILY,
             lambda: (DecodedModel(TutorialSNN()), image(*mnist) * 4),
             "LIFRecurrentCell(784, 100) → Linear(100, 10) → LICell, decoded by the max voltage over time",
             "LIFRecurrentCell"),
        Case("tutorial_feedforward", "Norse MNIST tutorial (feed-forward)", FAMILY,
             lambda: (DecodedModel(FeedForwardTutorialSNN()), image(*mnist) * 4),
             "the tutorial's network with SequentialState(Linear(784, 100), LIFCell) as its hidden layer",
             "LIFCell"),
        Case("lifted_conv", "norse.torch.Lift docstring", FAMILY, lambda: (_lifted_conv(), image(*mnist) * 4),
             "SequentialState(Lift(Conv2d), LIF(), Lift(MaxPool2d), ..., Lift(Linear), LI()) on [T, N, 1, 28, 28]",
             "LIF"),
        Case("lifted_mlp", "Norse quick-start (in time)", FAMILY, lambda: (_lifted_mlp(), image(T, N, 10) * 4),
             "SequentialState(Lift(Linear(10, 5)), LIF(), Lift(Linear(5, 1)))", "LIF"),
        Case("stepped_mlp", "Norse quick-start (with state)", FAMILY, lambda: (_stepped_mlp(), image(T, N, 10) * 4),
             "SequentialState(Linear(10, 5), LIFCell(), Linear(5, 1)); the caller steps it: out, s = model(x[t], s)",
             "LIFCell", single_step=True),
        Case("box_cells", "LIFBoxCell / LIBoxCell", FAMILY, lambda: (_box(), image(T, N, 10) * 4),
             "SequentialState(Linear, LIFBoxCell, Linear, LIFBoxCell, Linear, LIBoxCell), stepped by the caller",
             "LIFBoxCell", single_step=True),
        Case("lsnn", "LSNNRecurrentCell", FAMILY, lambda: (_lsnn(), image(T, N, 10) * 16),
             "Linear → LIFCell → Linear → LSNNRecurrentCell(16, 16) → Linear, stepped by the caller",
             "LSNNRecurrentCell", single_step=True),
    ]


NORSE_CASES = _cases()
