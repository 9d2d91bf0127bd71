"""Networks written the way other people write SNNs: papers' repositories and SpikingJelly's examples.

Each class reproduces one construct that the first capture/convert design could not reach (issue 13),
in the idiom its source uses, at toy size (T=2, N=2, a few channels, 8x8 or 16x16 inputs):

- rank-dependent ``forward`` (``if x.ndim == 4: repeat T times``) and membrane shortcuts: `MSResNet`;
  a hand-written neuron (a Python time loop around a custom autograd spike function): `MSResNetMemUpdate`
- ``layer.SeqToANNContainer(nn.Conv2d, nn.BatchNorm2d)`` blocks, SEW connections, ``x.unsqueeze_(0)``: `SEWResNet`
- hand-written ``flatten(0, 1)`` → conv/linear → ``reshape(T, B, ...)``, BatchNorm1d through transposes,
  spike·spike matmul from three neurons: `Spikformer`; from one 3C-channel neuron via reshape/chunk:
  `FusedQKVAttention`; spike⊙spike token attention with ``functional.seq_to_ann_forward``: `QKFormer`
- time loops over single-step modules in user code: `TimeLoopMLP`, `TimeLoopSequence`, `DQSN` (returns
  ``self.fc[-1].v``)
- inputs that are not ``[T, N, ...]``: `CSNN` (``[N, C, H, W]`` expanded T times inside), `SpeechCommands`
  (``[N, C, T, F]``, the neuron runs on ``x.transpose(0, 2)``), `SpeechPermute` (``[N, C, T, F]`` permuted)
- neurons that do not emit binary spikes: `NeuronSwapNet` with ILIF / LIAF / ``spiking=False``,
  `ChargeOnlyReadout` (a NonSpikingLIF-style subclass mid-network), `OTTTNet` (``[spike, trace]`` in training)
- non-``BaseNode`` neurons: `NeuronSwapNet` with PSN, MaskedPSN, SlidingPSN, GatedLIF
- a ``SynapseFilter`` between a neuron and a Linear: `StatefulSynapseNet`

`WILD` maps a name to a `WildCase`: how to build the (primed, spiking) network and its input, and what a
correct convert should do with each neuron. Nets are primed like the project's other test nets: random
BatchNorm affine and running statistics from one training pass, so their neurons fire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

T_DEFAULT, N_DEFAULT = 2, 2
ATTENTION_SCALE = 1.0  # the papers' 0.125 is for 32+ channels per head; at 4 the attention LIF stays silent


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * scale


def _lif(**kw) -> neuron.LIFNode:
    """A multi-step LIF as the transformer repositories configure it (``MultiStepLIFNode(tau=2.,
    detach_reset=True)`` before SpikingJelly 0.0.0.0.14)."""
    return neuron.LIFNode(**{"tau": 2.0, "detach_reset": True, "step_mode": "m", **kw})


# --------------------------------------------------------------------------------------- (1) MS-ResNet
class MSBlock(nn.Module):
    """MS-ResNet basic block: LIF → conv → BN → LIF → conv → BN, plus the shortcut on the *membrane* input."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.lif1 = _lif(v_threshold=0.5, decay_input=False)
        self.conv1 = layer.Conv2d(cin, cout, 3, stride, 1, bias=False, step_mode="m")
        self.bn1 = layer.BatchNorm2d(cout, step_mode="m")
        self.lif2 = _lif(v_threshold=0.5, decay_input=False)
        self.conv2 = layer.Conv2d(cout, cout, 3, 1, 1, bias=False, step_mode="m")
        self.bn2 = layer.BatchNorm2d(cout, step_mode="m")
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(layer.Conv2d(cin, cout, 1, stride, bias=False, step_mode="m"),
                                          layer.BatchNorm2d(cout, step_mode="m"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.bn1(self.conv1(self.lif1(x)))
        out = self.bn2(self.conv2(self.lif2(out)))
        return out + identity


class MSResNet(nn.Module):
    """MS-ResNet (SpikingJelly zoo style): accepts ``[N, 3, 16, 16]`` images or ``[T, N, 3, 16, 16]`` sequences.

    ``forward`` branches on the input's rank; the head LIF reads the last block's membrane sum.
    """

    def __init__(self, T: int = T_DEFAULT, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.T = T
        self.stem = nn.Sequential(layer.Conv2d(3, channels, 3, 1, 1, bias=False, step_mode="m"),
                                  layer.BatchNorm2d(channels, step_mode="m"))
        self.layers = nn.Sequential(MSBlock(channels, channels), MSBlock(channels, 2 * channels, stride=2))
        self.head_lif = _lif(v_threshold=0.5, decay_input=False)
        self.avgpool = layer.AdaptiveAvgPool2d((1, 1), step_mode="m")
        self.head = layer.Linear(2 * channels, num_classes, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        elif len(x.shape) != 5:
            raise ValueError(f"expected [N, C, H, W] or [T, N, C, H, W], got {tuple(x.shape)}")
        x = self.layers(self.stem(x))
        x = self.avgpool(self.head_lif(x)).flatten(2)
        return self.head(x).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 3, 16, 16, scale=2.0)


class MSResNetSeq(MSResNet):
    """`MSResNet` fed a ``[T, N, 3, 16, 16]`` sequence (the other branch of its ``forward``)."""

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 3, 16, 16, scale=2.0)


class _SpikeAct(torch.autograd.Function):
    """Heaviside forward, rectangular surrogate backward (MS-ResNet's original ``ActFun``)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v)
        return v.gt(0.5).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (v,) = ctx.saved_tensors
        return grad * ((v - 0.5).abs() < 0.5).float()


class MemUpdate(nn.Module):
    """MS-ResNet's original neuron: a Python loop over T, state decayed by 0.25, output written in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spike = torch.zeros_like(x[0])
        output = torch.zeros_like(x)
        mem_old = 0
        for i in range(x.shape[0]):
            mem = mem_old * 0.25 * (1 - spike.detach()) + x[i] if i >= 1 else x[i]
            spike = _SpikeAct.apply(mem)
            mem_old = mem.clone()
            output[i] = spike
        return output


class MSResNetMemUpdate(nn.Module):
    """MS-ResNet as its paper's repository writes it, ported with import-only edits: the neuron is
    ``MemUpdate`` (not a SpikingJelly module), convs/BNs are ``SeqToANNContainer``s, input ``[T, N, 3, 8, 8]``."""

    def __init__(self, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = layer.SeqToANNContainer(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.residual = nn.Sequential(
            MemUpdate(), layer.SeqToANNContainer(nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                                 nn.BatchNorm2d(channels)),
            MemUpdate(), layer.SeqToANNContainer(nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                                 nn.BatchNorm2d(channels)))
        self.head_act = MemUpdate()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.residual(x) + x
        x = self.head_act(x).mean(dim=(3, 4))
        return self.fc(x).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 3, 8, 8, scale=2.0)


# ---------------------------------------------------------------------------------------- (2) SEW-ResNet
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def sew_function(x: torch.Tensor, y: torch.Tensor, cnf: str) -> torch.Tensor:
    """SEW's spike-element-wise connection between the shortcut ``x`` and the residual ``y``."""
    if cnf == "ADD":
        return x + y
    if cnf == "AND":
        return x * y
    if cnf == "IAND":
        return x * (1.0 - y)
    raise NotImplementedError(cnf)


class SEWBasicBlock(nn.Module):
    """Official SEW-ResNet block: ``SeqToANNContainer(conv, BN)`` then a multi-step IF, twice; the
    downsample branch has its own neuron, so both inputs of the connection are spikes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cnf: str = "ADD") -> None:
        super().__init__()
        self.conv1 = layer.SeqToANNContainer(_conv3x3(inplanes, planes, stride), nn.BatchNorm2d(planes))
        self.sn1 = neuron.IFNode(detach_reset=True, step_mode="m")
        self.conv2 = layer.SeqToANNContainer(_conv3x3(planes, planes), nn.BatchNorm2d(planes))
        self.sn2 = neuron.IFNode(detach_reset=True, step_mode="m")
        self.downsample = downsample
        if downsample is not None:
            self.downsample_sn = neuron.IFNode(detach_reset=True, step_mode="m")
        self.cnf = cnf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.sn1(self.conv1(x))
        out = self.sn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample_sn(self.downsample(x))
        return sew_function(identity, out, self.cnf)


class SEWResNet(nn.Module):
    """Official SEW-ResNet style on ``[N, 3, 16, 16]``: a 2-D stem, ``x.unsqueeze_(0)`` and ``repeat``
    to T steps, ``SeqToANNContainer`` pooling, ``torch.flatten(x, 2)``, the classifier on the time mean.
    ``stateful=False`` resets every neuron at the start of ``forward`` (``functional.reset_net(self)``),
    as some SEW ports do."""

    def __init__(self, T: int = T_DEFAULT, cnf: str = "ADD", channels: int = 4, num_classes: int = 3,
                 stateful: bool = True) -> None:
        super().__init__()
        self.T = T
        self.stateful = stateful
        self.conv1 = nn.Conv2d(3, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.sn1 = neuron.IFNode(detach_reset=True, step_mode="m")
        self.maxpool = layer.SeqToANNContainer(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layer1 = nn.Sequential(SEWBasicBlock(channels, channels, cnf=cnf))
        down = layer.SeqToANNContainer(_conv1x1(channels, 2 * channels, 2), nn.BatchNorm2d(2 * channels))
        self.layer2 = nn.Sequential(SEWBasicBlock(channels, 2 * channels, 2, down, cnf=cnf))
        self.avgpool = layer.SeqToANNContainer(nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stateful:
            functional.reset_net(self)
        x = self.bn1(self.conv1(x))
        x.unsqueeze_(0)
        x = x.repeat(self.T, 1, 1, 1, 1)
        x = self.maxpool(self.sn1(x))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 2)
        return self.fc(x.mean(dim=0))

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 3, 16, 16, scale=2.0)


# ----------------------------------------------------------------------------- (3), (4) spiking transformers
class SPS(nn.Module):
    """Spikformer's spiking patch splitting, hand-written around ``flatten(0, 1)``/``reshape(T, B, ...)``:
    ``[T, B, C, H, W]`` → tokens ``[T, B, N, D]`` (``flatten(-2).transpose(-1, -2)``)."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 8) -> None:
        super().__init__()
        self.proj_conv = nn.Conv2d(in_channels, embed_dims // 2, 3, 1, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(embed_dims // 2)
        self.proj_lif = _lif()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.proj_conv1 = nn.Conv2d(embed_dims // 2, embed_dims, 3, 1, 1, bias=False)
        self.proj_bn1 = nn.BatchNorm2d(embed_dims)
        self.proj_lif1 = _lif()
        self.maxpool1 = nn.MaxPool2d(3, 2, 1)
        self.rpe_conv = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dims)
        self.rpe_lif = _lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        x = self.proj_bn(self.proj_conv(x.flatten(0, 1)))
        x = self.proj_lif(x.reshape(T, B, -1, H, W).contiguous()).flatten(0, 1)
        x = self.maxpool(x)
        x = self.proj_bn1(self.proj_conv1(x))
        x = self.proj_lif1(x.reshape(T, B, -1, H // 2, W // 2).contiguous()).flatten(0, 1)
        x = self.maxpool1(x)
        x_feat = x.reshape(T, B, -1, H // 4, W // 4).contiguous()
        x = self.rpe_bn(self.rpe_conv(x))
        x = self.rpe_lif(x.reshape(T, B, -1, H // 4, W // 4).contiguous())
        x = x + x_feat
        return x.flatten(-2).transpose(-1, -2)


class SSA(nn.Module):
    """Spikformer's spiking self-attention on ``[T, B, N, C]``: q, k, v from three Linear+BN+LIF branches
    (BatchNorm1d through ``transpose(-1, -2)``), ``(q @ kᵀ) * scale @ v`` over heads, an attention LIF,
    then heads transposed back before the projection Linear."""

    def __init__(self, dim: int, num_heads: int = 2, scale: float = 0.125) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale
        for name in ("q", "k", "v", "proj"):
            setattr(self, f"{name}_linear", nn.Linear(dim, dim))
            setattr(self, f"{name}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{name}_lif", _lif())
        self.attn_lif = _lif(v_threshold=0.5)

    def _branch(self, name: str, x: torch.Tensor, T: int, B: int) -> torch.Tensor:
        _, N, C = x.shape
        out = getattr(self, f"{name}_linear")(x)
        out = getattr(self, f"{name}_bn")(out.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, C).contiguous()
        return getattr(self, f"{name}_lif")(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        x_for_qkv = x.flatten(0, 1)
        heads = (T, B, N, self.num_heads, C // self.num_heads)
        q = self._branch("q", x_for_qkv, T, B).reshape(heads).permute(0, 1, 3, 2, 4).contiguous()
        k = self._branch("k", x_for_qkv, T, B).reshape(heads).permute(0, 1, 3, 2, 4).contiguous()
        v = self._branch("v", x_for_qkv, T, B).reshape(heads).permute(0, 1, 3, 2, 4).contiguous()
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = attn @ v
        x = x.transpose(2, 3).reshape(T, B, N, C).contiguous()
        x = self.attn_lif(x).flatten(0, 1)
        return self._branch("proj", x, T, B)


class SpikformerMLP(nn.Module):
    """Spikformer's MLP: ``flatten(0, 1)`` → Linear → BatchNorm1d (transposed) → ``reshape(T, B, N, C)``
    → LIF, twice."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1_linear, self.fc1_bn, self.fc1_lif = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), _lif()
        self.fc2_linear, self.fc2_bn, self.fc2_lif = nn.Linear(hidden, dim), nn.BatchNorm1d(dim), _lif()
        self.c_hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        x = self.fc1_linear(x.flatten(0, 1))
        x = self.fc1_bn(x.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, self.c_hidden).contiguous()
        x = self.fc1_lif(x)
        x = self.fc2_linear(x.flatten(0, 1))
        x = self.fc2_bn(x.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, C).contiguous()
        return self.fc2_lif(x)


class Spikformer(nn.Module):
    """Spikformer (CIFAR variant) on ``[N, 3, 16, 16]``: repeated T times unconditionally, SPS, one
    SSA+MLP block with SEW-style residual adds of spikes, token mean, head Linear, time mean."""

    def __init__(self, T: int = T_DEFAULT, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.T = T
        self.patch_embed = SPS(3, dim)
        self.attn = SSA(dim, num_heads=2, scale=ATTENTION_SCALE)
        self.mlp = SpikformerMLP(dim, 2 * dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        x = self.patch_embed(x)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.head(x.mean(2)).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 3, 16, 16, scale=2.0)


class FusedQKVSSA(nn.Module):
    """Token-last spiking self-attention (SpikingJelly's improved SSA): one Conv1d+BN+LIF of 3C channels,
    ``reshape(T, B, 3·heads, C/heads, N)`` and ``chunk(3, dim=2)`` into q, k, v; ``(v @ kᵀ) @ q``."""

    def __init__(self, dim: int, num_heads: int = 2, scale: float = 0.125) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale
        self.qkv_conv_bn = layer.SeqToANNContainer(nn.Conv1d(dim, 3 * dim, 1, bias=False), nn.BatchNorm1d(3 * dim))
        self.qkv_lif = _lif()
        self.attn_lif = _lif(v_threshold=0.5)
        self.proj_conv_bn = layer.SeqToANNContainer(nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim))
        self.proj_lif = _lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, N = x.shape
        qkv = self.qkv_lif(self.qkv_conv_bn(x)).reshape(T, B, 3 * self.num_heads, C // self.num_heads, N)
        q, k, v = qkv.chunk(3, dim=2)
        x = (v @ k.transpose(-2, -1)) @ q * self.scale
        x = self.attn_lif(x).reshape(T, B, C, N)
        return self.proj_lif(self.proj_conv_bn(x))


class FusedQKVAttention(nn.Module):
    """A conv stem, `FusedQKVSSA` with a residual add, token mean, multi-step Linear head; input ``[T, N, 3, 8, 8]``."""

    def __init__(self, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = layer.SeqToANNContainer(nn.Conv2d(3, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim))
        self.stem_lif = _lif()
        self.attn = FusedQKVSSA(dim, scale=ATTENTION_SCALE)
        self.head = layer.Linear(dim, num_classes, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_lif(self.stem(x)).flatten(3)
        x = x + self.attn(x)
        return self.head(x.mean(-1)).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 3, 8, 8, scale=2.0)


class TokenQKAttention(nn.Module):
    """QKFormer's token Q-K attention on ``[T, B, C, H, W]``: q summed over each head's channels
    fires an attention LIF whose spikes gate k element-wise (``torch.mul``), then a Conv1d projection."""

    def __init__(self, dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_conv, self.q_bn, self.q_lif = nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), _lif()
        self.k_conv, self.k_bn, self.k_lif = nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), _lif()
        self.attn_lif = _lif(v_threshold=0.5)
        self.proj_conv, self.proj_bn, self.proj_lif = nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim), _lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        x = x.flatten(3)
        T, B, C, N = x.shape
        x_for_qkv = x.flatten(0, 1)
        q = self.q_lif(self.q_bn(self.q_conv(x_for_qkv)).reshape(T, B, C, N))
        q = q.reshape(T, B, self.num_heads, C // self.num_heads, N)
        k = self.k_lif(self.k_bn(self.k_conv(x_for_qkv)).reshape(T, B, C, N))
        k = k.reshape(T, B, self.num_heads, C // self.num_heads, N)
        q = torch.sum(q, dim=3, keepdim=True)
        attn = self.attn_lif(q)
        x = torch.mul(attn, k).flatten(2, 3)
        x = self.proj_bn(self.proj_conv(x.flatten(0, 1))).reshape(T, B, C, H, W)
        return self.proj_lif(x)


class QKFormer(nn.Module):
    """QKFormer-style stage on ``[T, N, 3, 8, 8]``: patch embedding through ``functional.seq_to_ann_forward``,
    token Q-K attention with a residual add, global average pooling, head Linear on the time mean."""

    def __init__(self, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(3, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.embed_lif = _lif()
        self.attn = TokenQKAttention(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_lif(functional.seq_to_ann_forward(x, self.embed))
        x = x + self.attn(x)
        return self.head(x.flatten(3).mean(3).mean(0))

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 3, 8, 8, scale=2.0)


# ------------------------------------------------------------------------------------ (5) user time loops
class TimeLoopMLP(nn.Module):
    """lif_fc_mnist style, with the time loop inside ``forward``: single-step modules called ``T`` times
    on the same ``[N, 1, 8, 8]`` input, firing rates accumulated from ``0.``."""

    def __init__(self, T: int = T_DEFAULT, hidden: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.T = T
        self.fc = nn.Sequential(layer.Flatten(), layer.Linear(64, hidden), neuron.LIFNode(tau=2.0),
                                layer.Linear(hidden, num_classes), neuron.LIFNode(tau=2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_fr = 0.0
        for t in range(self.T):
            out = self.fc(x)
            out_fr = out_fr + out
        return out_fr / self.T

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 1, 8, 8, scale=2.0)


class TimeLoopSequence(nn.Module):
    """A single-step conv net looped over the time steps of a ``[T, N, 2, 8, 8]`` input in user code
    (``for t in range(x.shape[0])``), outputs stacked and averaged."""

    def __init__(self, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(layer.Conv2d(2, channels, 3, 1, 1, bias=False), layer.BatchNorm2d(channels),
                                  neuron.IFNode(), layer.AvgPool2d(2))
        self.fc = nn.Sequential(layer.Flatten(), layer.Linear(channels * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for t in range(x.shape[0]):
            outs.append(self.fc(self.conv(x[t])))
        return torch.stack(outs).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 2, 8, 8, scale=2.0)


class NonSpikingLIFNode(neuron.SimpleLIFNode):
    """spiking_dqn_state's read-out neuron: charges and returns its membrane, never fires."""

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.neuronal_charge(x)
        return self.v


class DQSN(nn.Module):
    """spiking_dqn_state's deep Q spiking network: ``T`` calls of ``self.fc`` on the same ``[N, 4]`` state,
    the Q values read from the last neuron's membrane ``self.fc[-1].v``."""

    def __init__(self, T: int = T_DEFAULT, input_size: int = 4, hidden_size: int = 8, output_size: int = 2) -> None:
        super().__init__()
        self.fc = nn.Sequential(layer.Linear(input_size, hidden_size), neuron.IFNode(),
                                layer.Linear(hidden_size, output_size), NonSpikingLIFNode(tau=2.0, decay_input=True))
        self.T = T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for t in range(self.T):
            self.fc(x)
        return self.fc[-1].v

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 4, scale=4.0)


# -------------------------------------------------------------------------------------- (6) input layouts
class CSNN(nn.Module):
    """conv_fashion_mnist's CSNN: multi-step layers set by ``functional.set_step_mode``, an ``[N, 1, 8, 8]``
    image expanded to T steps inside ``forward``, the firing rate of the last IF layer as output."""

    def __init__(self, T: int = T_DEFAULT, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.T = T
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2, 2),
            layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2, 2),
            layer.Flatten(), layer.Linear(channels * 2 * 2, channels * 4, bias=False),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.Linear(channels * 4, num_classes, bias=False), neuron.IFNode(surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_seq = x.unsqueeze(0).expand(self.T, -1, -1, -1, -1)
        return self.conv_fc(x_seq).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 1, 8, 8, scale=2.0)


class LIFWrapper(nn.Module):
    """speech_commands' wrapper: the neuron runs on ``x.transpose(0, 2)`` (time is dim 2 of the conv output);
    ``flatten=True`` permutes to ``[N, T, C, F]`` and merges the features."""

    def __init__(self, module: nn.Module, flatten: bool = False) -> None:
        super().__init__()
        self.module = module
        self.flatten = flatten

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        y_seq = self.module(x_seq.transpose(0, 2))
        if self.flatten:
            y_seq = y_seq.permute(2, 0, 1, 3)
            shape = y_seq.shape[:2]
            return y_seq.reshape(shape + (-1,))
        return y_seq.transpose(0, 2)


class SpeechCommands(nn.Module):
    """speech_commands' Net on ``[N, C, T, F]`` spectrograms: 2-D convs over (time, frequency), LIFs on the
    transposed tensor, a Linear on ``[N, T, C·F]``, the mean over time (dim 1)."""

    def __init__(self, in_channels: int = 2, channels: int = 4, freq: int = 8, num_classes: int = 3) -> None:
        super().__init__()

        def lif() -> neuron.LIFNode:
            return neuron.LIFNode(tau=10.0 / 7, surrogate_function=surrogate.Sigmoid(alpha=10.0), step_mode="m")

        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=(3, 3), padding=(1, 1), bias=False), LIFWrapper(lif()),
            nn.Conv2d(channels, channels, kernel_size=(3, 3), padding=(1, 2), dilation=(1, 2), bias=False),
            LIFWrapper(lif(), flatten=True))
        self.fc = nn.Linear(channels * freq, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x)).mean(dim=1)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 2, T, 8, scale=4.0)


class SpeechPermute(nn.Module):
    """``[N, C, T, F]`` features permuted to ``[T, N, C, F]`` inside ``forward``, then multi-step Linear/LIF layers."""

    def __init__(self, in_channels: int = 2, freq: int = 8, hidden: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.fc1 = layer.Linear(in_channels * freq, hidden, step_mode="m")
        self.lif1 = neuron.LIFNode(tau=2.0, step_mode="m")
        self.fc2 = layer.Linear(hidden, num_classes, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1, 3).flatten(2)
        return self.fc2(self.lif1(self.fc1(x))).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 2, T, 8, scale=4.0)


# ------------------------------------------------------------------- (7), (8) other neurons in a conv net
class NeuronSwapNet(nn.Module):
    """One small multi-step conv net on ``[T, N, 2, 8, 8]`` with a neuron of the caller's choice at ``sn1``
    (``neuron_factory(channels)``), and a plain LIF at ``sn2`` feeding the classifier."""

    def __init__(self, neuron_factory: Callable[[int], nn.Module], channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = layer.SeqToANNContainer(nn.Conv2d(2, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.sn1 = neuron_factory(channels)
        self.conv2 = layer.SeqToANNContainer(nn.Conv2d(channels, channels, 3, 2, 1, bias=False),
                                             nn.BatchNorm2d(channels))
        self.sn2 = neuron.LIFNode(tau=2.0, step_mode="m")
        self.fc = layer.Linear(channels * 16, num_classes, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sn2(self.conv2(self.sn1(self.conv1(x))))
        return self.fc(x.flatten(2)).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 2, 8, 8, scale=2.0)


class ChargeOnlyLIF(neuron.LIFNode):
    """A NonSpikingLIF as public repositories write it for a BaseNode: ``forward`` only charges and returns v."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v if isinstance(self.v, torch.Tensor) else torch.full_like(x, self.v)
        self.v = v + (x - v) / self.tau
        return self.v


class ChargeOnlyReadout(nn.Module):
    """Linear → IF → Linear → `ChargeOnlyLIF` → Linear → IF → Linear, single-step, on ``[N, 8]``:
    the charge-only neuron sits mid-network, so its real-valued output reaches a synapse."""

    def __init__(self, features: int = 8, hidden: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(layer.Linear(features, hidden), neuron.IFNode(), layer.Linear(hidden, hidden),
                                 ChargeOnlyLIF(tau=2.0), layer.Linear(hidden, hidden), neuron.IFNode(),
                                 layer.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 8, scale=4.0)


class OTTTNet(nn.Module):
    """OTTT style (spiking_vggws_ottt): single-step layers in ``layer.OTTTSequential``, ``OTTTLIFNode``s that
    return ``[spike, trace]`` in training mode; one call is one time step of an ``[N, 2, 8, 8]`` input (OTTT
    trains online, the user loops over T outside)."""

    def __init__(self, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.features = layer.OTTTSequential(
            layer.Conv2d(2, channels, 3, 1, 1), neuron.OTTTLIFNode(), layer.AvgPool2d(2),
            layer.Conv2d(channels, channels, 3, 1, 1), neuron.OTTTLIFNode())
        self.classifier = layer.OTTTSequential(layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(),
                                               layer.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(N, 2, 8, 8, scale=4.0)


# -------------------------------------------------------------------------------- (9) rsnn SynapseFilter
class StatefulSynapseNet(nn.Module):
    """rsnn_sequential_fmnist's StatefulSynapseNet: IF → learnable ``SynapseFilter`` → Linear, on ``[T, N, 8]``."""

    def __init__(self, features: int = 8, hidden: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Sequential(layer.Linear(features, hidden), neuron.IFNode(surrogate_function=surrogate.ATan()),
                                layer.SynapseFilter(tau=2.0, learnable=True), layer.Linear(hidden, num_classes),
                                neuron.IFNode(surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).mean(0)

    @staticmethod
    def make_input(T: int = T_DEFAULT, N: int = N_DEFAULT) -> torch.Tensor:
        return _rand(T, N, 8, scale=4.0)


# ------------------------------------------------------------------------------------------- registry
SYNAPSE_GAIN = 6.0  # default init leaves a Linear's neuron silent at these widths


def prime(net: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Make ``net`` spike: conv/linear weights scaled by `SYNAPSE_GAIN`, random BatchNorm affine (weight in
    [1, 2), bias in [0, 1)), running statistics equal to those of one training pass on ``x``; state reset,
    training mode. Returns ``net``."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in net.modules():  # synapses without a BatchNorm after them drive their neurons too
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.weight.mul_(SYNAPSE_GAIN)
        for bn in norms:
            bn.weight.copy_(1.0 + torch.rand(bn.weight.shape, generator=g))
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one pass sets the batch statistics
        net.train()
        net(x.clone())
        for bn in norms:
            bn.momentum = 0.1
    functional.reset_net(net)
    return net


@dataclass(frozen=True)
class WildCase:
    """One network of the registry.

    Attributes:
        factory: builds the network, untrained and unprimed (call `build` for a spiking one).
        make_input: ``(T, N) -> example input`` in the network's own layout.
        notes: what the network exercises and what a correct capture/convert/fold does with it.
        expect: for every spiking module path (`sj_realspike.recognise.is_spiking_module`): ``None`` if
            convert should give it an amplitude that folds exactly, else why it should be skipped or refused.
        not_spikes: the paths whose output is not binary/ternary spikes (`spike_output_problem` says why).
    """

    factory: Callable[[], nn.Module]
    make_input: Callable[..., torch.Tensor]
    notes: str
    expect: dict[str, str | None] = field(default_factory=dict)
    not_spikes: frozenset[str] = frozenset()

    def build(self, T: int = T_DEFAULT, N: int = N_DEFAULT, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
        """A primed network (deterministic for ``seed``) and its example input."""
        torch.manual_seed(seed)
        net = self.factory()
        x = self.make_input(T, N)
        return prime(net, x, seed), x


_OUTPUT = "its spikes reach the network output through a mean only: no synapse absorbs an amplitude"
_NOT_SPIKES = "not binary spikes (spike_output_problem gives the reason)"


def _swap(factory: Callable[[int], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: NeuronSwapNet(factory)


WILD: dict[str, WildCase] = {
    "ms_resnet": WildCase(
        MSResNet, MSResNet.make_input,
        "rank-dependent forward (x.ndim == 4 → repeat T) on an [N, C, H, W] image; membrane shortcuts: "
        "lif1 of each block reads the sum of a BN output and the shortcut. Every LIF feeds a conv or "
        "the pooled head Linear.",
        {"layers.0.lif1": None, "layers.0.lif2": None, "layers.1.lif1": None, "layers.1.lif2": None,
         "head_lif": None}),
    "ms_resnet_seq": WildCase(
        MSResNetSeq, MSResNetSeq.make_input,
        "the same MSResNet fed [T, N, C, H, W]: the other branch of the rank test.",
        {"layers.0.lif1": None, "layers.0.lif2": None, "layers.1.lif1": None, "layers.1.lif2": None,
         "head_lif": None}),
    "ms_resnet_mem_update": WildCase(
        MSResNetMemUpdate, MSResNetMemUpdate.make_input,
        "MS-ResNet's own neuron (MemUpdate: a Python loop over T around a custom autograd Function, output "
        "written with output[i] = spike). No SpikingJelly neuron: convert has nothing to convert and should "
        "say '0 of 0 neurons'; capture must not fail on the custom Function (opaque leaf or traced).",
        {}),
    "sew_resnet_add": WildCase(
        lambda: SEWResNet(cnf="ADD"), SEWResNet.make_input,
        "official SEW-ResNet code: SeqToANNContainer(nn.Conv2d, nn.BatchNorm2d) synapses, ADD connections "
        "(spikes summed, then into the next SeqToANNContainer conv or the pooled fc), x.unsqueeze_(0) on the "
        "stem output. Every IF folds through the containers (the old convert skipped them all: 'hollow').",
        {"sn1": None, "layer1.0.sn1": None, "layer1.0.sn2": None, "layer2.0.sn1": None, "layer2.0.sn2": None,
         "layer2.0.downsample_sn": None}),
    "sew_resnet_iand": WildCase(
        lambda: SEWResNet(cnf="IAND"), SEWResNet.make_input,
        "SEW with IAND connections: identity * (1 - out). A scaled spike inside (1 - y) or a product cannot "
        "fold: the neurons feeding an IAND are refused/skipped; the others convert.",
        {"sn1": "feeds an IAND connection (x * (1 - y)) as the shortcut x", "layer1.0.sn1": None,
         "layer1.0.sn2": "feeds an IAND connection as y", "layer2.0.sn1": None,
         "layer2.0.sn2": "feeds an IAND connection as y",
         "layer2.0.downsample_sn": "feeds an IAND connection as the shortcut x"}),
    "sew_resnet_reset_in_forward": WildCase(
        lambda: SEWResNet(cnf="ADD", stateful=False), SEWResNet.make_input,
        "SEW-ResNet whose forward starts with functional.reset_net(self): two calls without a reset in "
        "between give the same output. A captured graph must keep that reset (or say it dropped it).",
        {"sn1": None, "layer1.0.sn1": None, "layer1.0.sn2": None, "layer2.0.sn1": None, "layer2.0.sn2": None,
         "layer2.0.downsample_sn": None}),
    "spikformer": WildCase(
        Spikformer, Spikformer.make_input,
        "Spikformer: unconditional repeat of an [N, C, H, W] image, hand-written flatten(0, 1) → nn.Conv2d/"
        "nn.Linear → reshape(T, B, ...) round trips, BatchNorm1d through transpose(-1, -2), tokens "
        "flatten(-2).transpose(-1, -2); SSA with q, k, v from three LIFs and spike·spike matmuls "
        "(q @ kᵀ contracts the head channels, attn @ v contracts the tokens), heads transposed back before "
        "proj_linear. q_lif/k_lif/v_lif fold only at granularities whose scale on the contracted index "
        "factors out (layer; channel only if α_j·β_j is constant per head); SEW-style residual adds of spikes.",
        {"patch_embed.proj_lif": None, "patch_embed.proj_lif1": None, "patch_embed.rpe_lif": None,
         "attn.q_lif": None, "attn.k_lif": None, "attn.v_lif": None, "attn.attn_lif": None,
         "attn.proj_lif": None, "mlp.fc1_lif": None, "mlp.fc2_lif": None}),
    "fused_qkv_attention": WildCase(
        FusedQKVAttention, FusedQKVAttention.make_input,
        "token-last SSA: q, k, v are three slices of one 3C-channel LIF (reshape + chunk(3, dim=2)), "
        "(v @ kᵀ) @ q; needs per-slice granularity for qkv_lif. SeqToANNContainer(nn.Conv1d, nn.BatchNorm1d).",
        {"stem_lif": None, "attn.qkv_lif": None, "attn.attn_lif": None, "attn.proj_lif": None}),
    "qkformer": WildCase(
        QKFormer, QKFormer.make_input,
        "QKFormer token attention: functional.seq_to_ann_forward for the embedding, q summed over each "
        "head's channels into attn_lif, attn ⊙ k (torch.mul of two spike tensors), flatten(0, 1) → Conv1d "
        "→ reshape(T, B, C, H, W). attn_lif's and k_lif's scales multiply: foldable only where their "
        "product is constant over the channel index the projection contracts (layer granularity).",
        {"embed_lif": None, "attn.q_lif": None, "attn.k_lif": None, "attn.attn_lif": None, "attn.proj_lif": None}),
    "time_loop_mlp": WildCase(
        TimeLoopMLP, TimeLoopMLP.make_input,
        "user time loop over single-step modules, out_fr = out_fr + self.fc(x): each neuron module is called "
        "T times and must get one amplitude shared by every call (count 2 neurons, not 2·T). fc.2 feeds "
        "fc.3; fc.4's spikes are the output (rate).",
        {"fc.2": None, "fc.4": _OUTPUT}),
    "time_loop_sequence": WildCase(
        TimeLoopSequence, TimeLoopSequence.make_input,
        "for t in range(x.shape[0]) over a [T, N, ...] input: the loop bound comes from the input's shape "
        "(T is baked into a captured graph; another T needs another capture).",
        {"conv.2": None}),
    "dqsn": WildCase(
        DQSN, DQSN.make_input,
        "spiking_dqn_state's DQSN: a time loop whose result is discarded, the output read from neuron state "
        "(self.fc[-1].v). Tracing freezes that read into a constant unless it is caught: capture must list "
        "it in state_reads (or capture it faithfully), never return the example's value for every input. "
        "fc.3 (NonSpikingLIFNode, a SimpleLIFNode subclass) never fires: its output is its membrane.",
        {"fc.1": None, "fc.3": _NOT_SPIKES}, frozenset({"fc.3"})),
    "csnn": WildCase(
        CSNN, CSNN.make_input,
        "conv_fashion_mnist's CSNN: an [N, C, H, W] input expanded to T steps inside forward "
        "(x.unsqueeze(0).expand(T, ...)); the output is the firing rate of the last IF layer.",
        {"conv_fc.2": None, "conv_fc.6": None, "conv_fc.10": None, "conv_fc.12": _OUTPUT}),
    "speech_commands": WildCase(
        SpeechCommands, SpeechCommands.make_input,
        "speech_commands' Net: [N, C, T, F] input; 2-D convs mix time and frequency; each LIF runs on "
        "x.transpose(0, 2) ([T, C, N, F]: SpikingJelly's 'batch' dim is the conv channel), the last one's "
        "output permuted to [N, T, C·F] into nn.Linear, mean over dim 1. Input layout N,C,T,F.",
        {"conv.1.module": None, "conv.3.module": None}),
    "speech_permute": WildCase(
        SpeechPermute, SpeechPermute.make_input,
        "[N, C, T, F] permuted to [T, N, C, F] and flattened inside forward, then multi-step Linear/LIF.",
        {"lif1": None}),
    "ilif": WildCase(
        _swap(lambda c: neuron.ILIFNode(step_mode="m")), NeuronSwapNet.make_input,
        "ILIFNode emits spike counts {0, 1, 2, 3, 4}: sn1 must be skipped with that reason; sn2 converts.",
        {"sn1": _NOT_SPIKES, "sn2": None}, frozenset({"sn1"})),
    "liaf_multi_step": WildCase(
        _swap(lambda c: neuron.LIAFNode(act=nn.ReLU(), threshold_related=False, step_mode="m")),
        NeuronSwapNet.make_input,
        "LIAFNode in multi-step mode: SpikingJelly 2.0 runs LIFNode's multi-step kernel and ignores LIAF's "
        "analog output, so it emits binary spikes (single-step LIAF is analog). Decided by its real output.",
        {"sn1": None, "sn2": None}),
    "analog_surrogate": WildCase(
        _swap(lambda c: neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False), step_mode="m")),
        NeuronSwapNet.make_input,
        "a LIF whose surrogate runs with spiking=False emits sigmoid values, not spikes: skip sn1.",
        {"sn1": _NOT_SPIKES, "sn2": None}, frozenset({"sn1"})),
    "charge_only_readout": WildCase(
        ChargeOnlyReadout, ChargeOnlyReadout.make_input,
        "a NonSpikingLIF-style LIFNode subclass whose forward only charges and returns v, mid-network: it is a "
        "BaseNode, but its output is a membrane potential: skip net.3 (the old convert gave it an amplitude).",
        {"net.1": None, "net.3": _NOT_SPIKES, "net.5": None}, frozenset({"net.3"})),
    "ottt": WildCase(
        OTTTNet, OTTTNet.make_input,
        "OTTTLIFNode returns [spike, trace] in training mode (OTTTSequential routes the trace): not one spike "
        "tensor, skip both neurons with that reason. One call is one time step.",
        {"features.1": _NOT_SPIKES, "features.4": _NOT_SPIKES}, frozenset({"features.1", "features.4"})),
    "psn": WildCase(
        _swap(lambda c: neuron.PSN(T=T_DEFAULT)), NeuronSwapNet.make_input,
        "PSN (not a BaseNode): binary spikes from a T×T mixing of its inputs; must be recognised and "
        "converted (the old convert did not see it). Fixed T.",
        {"sn1": None, "sn2": None}),
    "masked_psn": WildCase(
        _swap(lambda c: neuron.MaskedPSN(k=2, T=T_DEFAULT, step_mode="m")), NeuronSwapNet.make_input,
        "MaskedPSN (a MemoryModule, not a BaseNode), multi-step: binary spikes, convert it.",
        {"sn1": None, "sn2": None}),
    "sliding_psn": WildCase(
        _swap(lambda c: neuron.SlidingPSN(k=2, step_mode="m")), NeuronSwapNet.make_input,
        "SlidingPSN (a MemoryModule, not a BaseNode), multi-step: binary spikes, convert it.",
        {"sn1": None, "sn2": None}),
    "gated_lif": WildCase(
        _swap(lambda c: neuron.GatedLIFNode(T=T_DEFAULT, inplane=c)), NeuronSwapNet.make_input,
        "GatedLIFNode (not a BaseNode, per-channel gates, multi-step only, fixed T): binary spikes, convert it.",
        {"sn1": None, "sn2": None}),
    "stateful_synapse": WildCase(
        StatefulSynapseNet, StatefulSynapseNet.make_input,
        "rsnn_sequential_fmnist's StatefulSynapseNet: IF → SynapseFilter (a linear, stateful low-pass filter) "
        "→ Linear. fc.1's amplitude can fold through the filter (linear in its input) into fc.3, or fc.1 is "
        "skipped with that reason; verify must not flag the filter's real-valued output as a purity violation "
        "when no amplitude reaches it. fc.4 is the output.",
        {"fc.1": None, "fc.4": _OUTPUT}),
}
