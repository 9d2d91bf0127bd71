"""Small SpikingJelly networks covering every pattern the fold must handle."""

from __future__ import annotations

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.model import sew_resnet, spiking_resnet, spiking_vgg

NEURONS = {
    "IF": lambda: neuron.IFNode(),
    "LIF": lambda: neuron.LIFNode(tau=2.0),
    "PLIF": lambda: neuron.ParametricLIFNode(init_tau=2.0),
    "LIF-soft": lambda: neuron.LIFNode(tau=2.0, v_reset=None, decay_input=False),
}


def _block(cin: int, cout: int, sn, **conv) -> list[nn.Module]:
    return [layer.Conv2d(cin, cout, 3, bias=False, **{"padding": 1, **conv}), layer.BatchNorm2d(cout), sn()]


class PoolNet(nn.Module):
    """conv→max-pool, grouped conv→avg-pool, dilated conv, strided conv, flatten→linear→neuron→linear."""

    def __init__(self, sn) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, 8, sn), layer.MaxPool2d(2),
            *_block(8, 8, sn, groups=2), layer.AvgPool2d(2),
            *_block(8, 8, sn, padding=2, dilation=2),
            *_block(8, 16, sn, stride=2),
        )
        self.flatten = layer.Flatten()
        self.fc1 = layer.Linear(16 * 2 * 2, 32)
        self.sn_fc = sn()
        self.fc2 = layer.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.sn_fc(self.fc1(self.flatten(self.features(x)))))


class ShortcutNet(nn.Module):
    """Spiking-ResNet style: identity shortcut into a membrane, one neuron feeding two convs,
    a 1x1 downsample, adaptive average pooling and torch.flatten before the classifier."""

    def __init__(self, sn) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_block(3, 8, sn))
        self.conv1, self.bn1, self.sn1 = _block(8, 8, sn)
        self.conv2, self.bn2 = layer.Conv2d(8, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8)
        self.sn2 = sn()
        self.conv3, self.bn3 = layer.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), layer.BatchNorm2d(16)
        self.down = nn.Sequential(layer.Conv2d(8, 16, 1, stride=2, bias=False), layer.BatchNorm2d(16))
        self.sn3 = sn()
        self.pool = layer.AdaptiveAvgPool2d(1)
        self.fc = layer.Linear(16, 10)

    def forward(self, x):
        s0 = self.stem(x)
        s2 = self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(s0))))) + s0)
        s3 = self.sn3(self.bn3(self.conv3(s2)) + self.down(s2))
        y = self.pool(s3)
        y = torch.flatten(y, 2 if self.pool.step_mode == "m" else 1)
        return self.fc(y)


class SumNet(nn.Module):
    """SEW style: spike trains summed (a growing residual stream) feeding convs, a scalar factor,
    and element-wise amplitudes through average pooling into a linear layer."""

    def __init__(self, sn) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_block(3, 8, sn))
        self.b1 = nn.Sequential(*_block(8, 8, sn))
        self.b2 = nn.Sequential(*_block(8, 8, sn))
        self.pool = layer.AvgPool2d(2)
        self.flatten = layer.Flatten()
        self.fc = layer.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        s = self.stem(x)
        s = s + self.b1(s)
        s = (s + self.b2(s)) * 0.5
        return self.fc(self.flatten(self.pool(s)))


class GateNet(nn.Module):
    """SEW 'AND' / 'IAND' connections: spikes multiplied, which no fold can absorb."""

    def __init__(self, sn, connect: str = "AND") -> None:
        super().__init__()
        self.connect = connect
        self.stem = nn.Sequential(*_block(3, 8, sn))
        self.branch = nn.Sequential(*_block(8, 8, sn))
        self.head = nn.Sequential(*_block(8, 8, sn))
        self.flatten = layer.Flatten()
        self.fc = layer.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        s = self.stem(x)
        b = self.branch(s)
        s = s * b if self.connect == "AND" else (1.0 - s) * b
        return self.fc(self.flatten(self.head(s)))


class MlpNet(nn.Module):
    """Linear → BatchNorm1d → neuron chains (Linear+BN fusion, feature-wise amplitudes)."""

    def __init__(self, sn) -> None:
        super().__init__()
        self.flatten = layer.Flatten()
        self.fc1, self.bn1, self.sn1 = layer.Linear(3 * 16 * 16, 32), layer.BatchNorm1d(32), sn()
        self.fc2, self.bn2, self.sn2 = layer.Linear(32, 32, bias=False), layer.BatchNorm1d(32), sn()
        self.fc3 = layer.Linear(32, 10)

    def forward(self, x):
        x = self.sn1(self.bn1(self.fc1(self.flatten(x))))
        return self.fc3(self.sn2(self.bn2(self.fc2(x))))


CUSTOM = {"pool": PoolNet, "shortcut": ShortcutNet, "sum": SumNet, "mlp": MlpNet}


def custom(name: str, neuron_name: str = "IF", step_mode: str = "m") -> nn.Module:
    net = CUSTOM[name](NEURONS[neuron_name])
    functional.set_step_mode(net, step_mode)
    return net


def zoo(name: str, neuron_name: str = "IF", step_mode: str = "m") -> nn.Module:
    kwargs = {"IF": {}, "LIF": {"tau": 2.0}, "PLIF": {"init_tau": 2.0}}[neuron_name]
    cls = {"IF": neuron.IFNode, "LIF": neuron.LIFNode, "PLIF": neuron.ParametricLIFNode}[neuron_name]
    if name == "spiking_resnet18":
        net = spiking_resnet.spiking_resnet18(spiking_neuron=cls, num_classes=10, **kwargs)
    elif name == "sew_resnet18":
        net = sew_resnet.sew_resnet18(spiking_neuron=cls, cnf="ADD", num_classes=10, **kwargs)
    elif name == "spiking_vgg11_bn":
        net = spiking_vgg.spiking_vgg11_bn(spiking_neuron=cls, num_classes=10, **kwargs)
        # SpikingJelly's features, pools and head as built, with the head 256 wide instead of 4096: its
        # 25088 x 4096 Linear alone (103M weights, float64 while folding) took the suite to 5 GB resident.
        head = net.classifier
        head[0], head[3], head[6] = layer.Linear(512 * 7 * 7, 256), layer.Linear(256, 256), layer.Linear(256, 10)
    else:
        raise KeyError(name)
    functional.set_step_mode(net, step_mode)
    return net


def example(step_mode: str, size: int = 16, T: int = 2, N: int = 2, seed: int = 0) -> torch.Tensor:
    from sj_realspike.testing import dyadic_input

    shape = (T, N, 3, size, size) if step_mode == "m" else (N, 3, size, size)
    return dyadic_input(shape, seed)
