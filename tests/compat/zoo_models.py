"""Every model in ``spikingjelly.activation_based.model``: one `Case` per factory (and per model class).

Each module's factories are built with the smallest configuration the factory allows
(T=2, N=2, small images, ``num_classes=10``). A factory that fixes its depth or width (the
torchvision-style ResNets beyond 34 layers, the 384-dim transformers) is built through its
class with the factory's block type and structural arguments but one block per stage or a
narrow width; ``config`` says exactly what was built. Neurons are the paper's default where
the factory has one (MS-ResNets, transformers, MA-SNN: LIF variants), ``neuron.LIFNode``
(tau=2) where it takes a class, multi-step everywhere except OTTT (single-step by design).

`uncovered_modules` checks the installed package against the cases, so a module added to
SpikingJelly shows up instead of going unnoticed.
"""

from __future__ import annotations

import pkgutil
from types import SimpleNamespace

import numpy as np
import spikingjelly.activation_based.model as zoo
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import (masnn, maxformer, ms_resnet, parametric_lif_net, qkformer, sew_resnet,
                                                  snas_net, spike_dhs, spike_driven_transformer, spikformer,
                                                  spiking_resnet, spiking_vgg, spiking_vggws_ottt)

from cases import N, T, Case, image

LIF = {"spiking_neuron": neuron.LIFNode, "tau": 2.0}


def _multi_step(net):
    functional.set_step_mode(net, "m")
    return net


def _rgb(size: int = 32):
    return image(T, N, 3, size, size)


def _torchvision_cases(module, prefix: str, family: str, extra: dict) -> list[Case]:
    """spiking_resnet / sew_resnet: 18 and 34 as the factory builds them, the deeper and wider ones
    through the class with the factory's block, groups and width, one block per stage."""
    cls = getattr(module, "SpikingResNet" if prefix == "spiking" else "SEWResNet")
    cases = []
    for depth in ("18", "34"):
        factory = getattr(module, f"{prefix}_resnet{depth}")
        cases.append(Case(
            f"{prefix}_resnet{depth}", module.__name__.rsplit(".", 1)[1], family,
            lambda f=factory: (_multi_step(f(num_classes=10, **LIF, **extra)), _rgb()),
            f"factory{', cnf=ADD' if extra else ''}, 32x32"))
    deep = {"resnet50": {}, "resnet101": {}, "resnet152": {}, "resnext50_32x4d": {"groups": 32, "width_per_group": 4},
            "resnext101_32x8d": {"groups": 32, "width_per_group": 8}, "wide_resnet50_2": {"width_per_group": 128},
            "wide_resnet101_2": {"width_per_group": 128}}
    for arch, structure in deep.items():
        args = ", ".join(f"{k}={v}" for k, v in {**structure, **extra}.items())
        cases.append(Case(
            f"{prefix}_{arch}", module.__name__.rsplit(".", 1)[1], family,
            lambda s=structure: (_multi_step(cls(module.Bottleneck, [1, 1, 1, 1], num_classes=10, **s, **LIF,
                                                 **extra)), _rgb()),
            f"{cls.__name__}(Bottleneck, [1, 1, 1, 1]{', ' + args if args else ''}), 32x32"))
    return cases


def _vgg_cases() -> list[Case]:
    cases = []
    for depth in ("11", "13", "16", "19"):
        for bn in ("", "_bn"):
            factory = getattr(spiking_vgg, f"spiking_vgg{depth}{bn}")
            cases.append(Case(f"spiking_vgg{depth}{bn}", "spiking_vgg", "others",
                              lambda f=factory: (_multi_step(f(num_classes=10, **LIF)), _rgb()), "factory, 32x32"))
    return cases


def _ottt_cases() -> list[Case]:
    names = ["ottt_spiking_vggws"] + [f"ottt_spiking_vgg{d}{ws}" for d in ("11", "13", "16", "19")
                                      for ws in ("", "_ws")]
    cases = [Case(name, "spiking_vggws_ottt", "others",
                  lambda f=getattr(spiking_vggws_ottt, name): (f(num_classes=10), _rgb()),
                  "factory (OTTTLIFNode, single-step: one call per time step), 32x32", neuron="OTTTLIF",
                  single_step=True)
             for name in names]
    cases.append(Case("ottt_spiking_vggws (LIFNode)", "spiking_vggws_ottt", "others",
                      lambda: (spiking_vggws_ottt.ottt_spiking_vggws(num_classes=10, **LIF), _rgb()),
                      "factory with spiking_neuron=LIFNode, single-step, 32x32", single_step=True))
    return cases


def _plif_net_cases() -> list[Case]:
    nets = {"MNISTNet": (1, 28), "FashionMNISTNet": (1, 28), "NMNISTNet": (2, 34), "CIFAR10Net": (3, 32),
            "CIFAR10DVSNet": (2, 128), "DVSGestureNet": (2, 128)}
    return [Case(name, "parametric_lif_net", "others",
                 lambda c=getattr(parametric_lif_net, name), ch=ch, s=s: (
                     _multi_step(c(channels=8, **LIF)), image(T, N, ch, s, s)),
                 f"channels=8, {ch}x{s}x{s}")
            for name, (ch, s) in nets.items()]


def _snas(celltype: str):
    # con_mat[row, col]: the op from node row to node col (0 zero, 1 skip, 2 LIF-conv1x1-BN, 3 LIF-conv3x3-BN,
    # 4 avg pool); every op kind once.
    con_mat = np.array([[0, 3, 2, 1], [0, 0, 3, 4], [0, 0, 0, 3], [2, 3, 0, 0]] if celltype == "backward" else
                       [[0, 3, 2, 1], [0, 0, 3, 4], [0, 0, 0, 3], [0, 0, 0, 0]])
    args = SimpleNamespace(timestep=T, second_avgpooling=2, dataset="cifar100", celltype=celltype, threshold=1.0,
                           tau=2.0)
    return snas_net.SNASNet(args, con_mat), image(N, 3, 32, 32)


def _spike_dhs():
    args = SimpleNamespace(fea_step=3, fea_num_layers=8, fea_block_multiplier=3, fea_filter_multiplier=48)
    return _multi_step(spike_dhs.SpikeDHS(init_channels=3, args=args)), image(N, 3, 32, 32)


MODEL_CASES: list[Case] = [
    *_torchvision_cases(spiking_resnet, "spiking", "others", {}),
    *_torchvision_cases(sew_resnet, "sew", "SeqToANNContainer/SEW", {"cnf": "ADD"}),
    *[Case(f"SEWResNet ({cnf})", "sew_resnet", "SeqToANNContainer/SEW",
           lambda cnf=cnf: (_multi_step(sew_resnet.SEWResNet(sew_resnet.BasicBlock, [1, 1, 1, 1], num_classes=10,
                                                             cnf=cnf, **LIF)), _rgb()),
           f"SEWResNet(BasicBlock, [1, 1, 1, 1], cnf='{cnf}'), 32x32") for cnf in ("AND", "IAND")],
    *_vgg_cases(),
    *_ottt_cases(),
    *_plif_net_cases(),
    Case("ms_resnet18", "ms_resnet", "MS-ResNets",
         lambda: (ms_resnet.ms_resnet18(T=T, num_classes=10, base_channels=8, stem_kernel_size=3, stem_stride=1),
                  _rgb(16)),
         "factory, base_channels=8, stem 3x3 stride 1, 16x16", neuron="LIF (paper default)"),
    Case("ms_resnet34", "ms_resnet", "MS-ResNets",
         lambda: (ms_resnet.ms_resnet34(T=T, num_classes=10, base_channels=8, stem_kernel_size=3, stem_stride=1),
                  _rgb(16)),
         "factory, base_channels=8, stem 3x3 stride 1, 16x16", neuron="LIF (paper default)"),
    Case("max_resnet18", "ms_resnet", "MS-ResNets",
         lambda: (ms_resnet.max_resnet18(T=T, num_classes=10), _rgb(16)),
         "factory (stage channels 128/256/512 fixed), 16x16", neuron="LIF (paper default)"),
    Case("att_ms_resnet18", "masnn", "MS-ResNets",
         lambda: (masnn.att_ms_resnet18(T=T, num_classes=10, base_channels=8, stem_kernel_size=3, stem_stride=1,
                                        reduction_c=2), _rgb(16)),
         "factory, base_channels=8, stem 3x3 stride 1, reduction_c=2, 16x16", neuron="LIF (paper default)"),
    Case("masnn_dvs128_gesture", "masnn", "others",
         lambda: (masnn.masnn_dvs128_gesture(T=5, num_classes=10, input_size=(16, 16)), image(5, N, 2, 16, 16)),
         "factory (channels 64/128/128 fixed; T=5, its temporal attention's reduction_t), input_size=(16, 16)",
         neuron="LIF (paper default)"),
    Case("MASNN", "masnn", "others",
         lambda: (masnn.MASNN(T=T, num_classes=10, input_size=(8, 8), channels=(8, 8), pools=(1, 2), fc_hidden=16,
                              reduction_t=1, reduction_c=2), image(T, N, 2, 8, 8)),
         "channels=(8, 8), pools=(1, 2), fc_hidden=16, reduction_t=1, reduction_c=2, 8x8",
         neuron="LIF (paper default)"),
    Case("maxformer_cifar", "maxformer", "transformers",
         lambda: (maxformer.maxformer_cifar(T=T, num_classes=10), _rgb(16)),
         "factory (embed_dims=384, depths (1, 1, 2) fixed), 16x16", neuron="LIF (paper default)"),
    Case("maxformer_10_384", "maxformer", "transformers",
         lambda: (maxformer.MaxFormer(T=T, num_classes=10, embed_dims=16, depths=(1, 1, 1)), _rgb(32)),
         "MaxFormer(embed_dims=16, depths=(1, 1, 1)) (the factory's 384 dims and (1, 2, 7) narrowed), 32x32",
         neuron="LIF (paper default)"),
    Case("MaxFormer (cifar)", "maxformer", "transformers",
         lambda: (maxformer.MaxFormer(T=T, num_classes=10, embed_dims=16, depths=(1, 1, 1), cifar=True), _rgb(16)),
         "MaxFormer(embed_dims=16, depths=(1, 1, 1), cifar=True), 16x16", neuron="LIF (paper default)"),
    Case("qkformer_10_384", "qkformer", "transformers",
         lambda: (qkformer.QKFormer(T=T, num_classes=10, embed_dims=16, num_heads=(1, 2, 2), depths=(1, 1, 1)),
                  _rgb(32)),
         "QKFormer(embed_dims=16, num_heads=(1, 2, 2), depths=(1, 1, 1)) (the factory's 384 dims narrowed), 32x32",
         neuron="LIF (paper default)"),
    Case("QKFormer (channel QKA)", "qkformer", "transformers",
         lambda: (qkformer.QKFormer(T=T, num_classes=10, embed_dims=16, num_heads=(1, 2, 2), depths=(1, 1, 1),
                                    qka_type="channel"), _rgb(32)),
         "QKFormer(embed_dims=16, num_heads=(1, 2, 2), depths=(1, 1, 1), qka_type='channel'), 32x32",
         neuron="LIF (paper default)"),
    Case("sdt_8_384", "spike_driven_transformer", "transformers",
         lambda: (spike_driven_transformer.SpikeDrivenTransformer(T=T, num_classes=10, embed_dims=16, num_heads=2,
                                                                  depths=1), _rgb(32)),
         "SpikeDrivenTransformer(embed_dims=16, num_heads=2, depths=1) (the factory's 384 x 8 narrowed), 32x32",
         neuron="LIF (paper default)"),
    Case("spikformer_cifar10", "spikformer", "transformers",
         lambda: (spikformer.Spikformer(T=T, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10,
                                        embed_dims=16, num_heads=2, depths=1), _rgb(32)),
         "Spikformer(32x32, patch_size=4, embed_dims=16, num_heads=2, depths=1) (the factory's 384 x 4 narrowed)",
         neuron="LIF (paper default)"),
    Case("spikformer_ti", "spikformer", "transformers",
         lambda: (spikformer.Spikformer(T=T, img_size_h=32, img_size_w=32, patch_size=16, num_classes=10,
                                        embed_dims=16, num_heads=2, depths=1), _rgb(32)),
         "Spikformer(32x32, patch_size=16, embed_dims=16, num_heads=2, depths=1) (the factory's 256 x 4 narrowed)",
         neuron="LIF (paper default)"),
    Case("spikformer_s", "spikformer", "transformers",
         lambda: (spikformer.Spikformer(T=T, img_size_h=32, img_size_w=32, patch_size=16, num_classes=10,
                                        embed_dims=24, num_heads=3, depths=2), _rgb(32)),
         "Spikformer(32x32, patch_size=16, embed_dims=24, num_heads=3, depths=2) (the factory's 384 x 6 narrowed)",
         neuron="LIF (paper default)"),
    Case("SNASNet (forward cell)", "snas_net", "others", lambda: _snas("forward"),
         "dataset='cifar100' (128/256 channels fixed), timestep=2, every op kind in con_mat; [N, 3, 32, 32], "
         "time loop inside forward", neuron="LIF (model's own)"),
    Case("SNASNet (backward cell)", "snas_net", "others", lambda: _snas("backward"),
         "as the forward cell, with backward connections (state carried in module attributes across steps)",
         neuron="LIF (model's own)"),
    Case("SpikeDHS", "spike_dhs", "others", _spike_dhs,
         "the searched architecture (channels 144/288/576 fixed, 6 time steps fixed), set to multi-step; "
         "[N, 3, 32, 32] expanded inside forward; returns (logits, aux)", neuron="LIF (DSpike surrogate)"),
]

def uncovered_modules() -> list[str]:
    """Modules of the installed ``spikingjelly.activation_based.model`` without a case here."""
    covered = {c.source for c in MODEL_CASES}
    return sorted(m.name for m in pkgutil.iter_modules(zoo.__path__) if m.name not in covered)
