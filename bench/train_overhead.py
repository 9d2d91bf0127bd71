"""Training overhead of converted models vs the original SpikingJelly or snnTorch network.

Measures, side by side in one run, one forward+backward step of ``sew_resnet18``
(T=4, N=8, 32x32, CPU, multi-step; ``--framework snntorch``: a tutorial-6 style conv net
of snnTorch ``Leaky`` neurons, ``init_hidden=True``, stepped over T by a user time loop)
for the original net and converted variants:

* time: median over interleaved repeats (variants alternate, so machine noise hits all);
* autograd memory: bytes of the tensors autograd keeps for backward (deduplicated by
  storage), the activation memory that decides how large a batch fits. Deterministic.

Targets (issue 2): ≤ 1.05x time and memory for layer/channel, ≤ 1.15x for element.
The ternary rows compare against the binary original, so they include the cost of
SpikingJelly's ternary neuron itself; the "ternary, no amplitude" row isolates it.
A "naive Mul" row shows what a plain ``a * s`` costs in memory (it keeps a float copy
of the spikes for the gradient of ``a``); the shipped Amplitude keeps an int8 copy.

Usage: python bench/train_overhead.py [--framework spikingjelly|snntorch] [--repeats 9] [--T 4] [--N 8] [--size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import sew_resnet

import sj_realspike as rs
from sj_realspike.frameworks import reset


class NaiveAmplitude(nn.Module):
    """Reference only: the plain ``s * a`` a first implementation would write."""

    def __init__(self, amp: rs.Amplitude) -> None:
        super().__init__()
        self.a = amp.a

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s * self.a


def replace_amplitudes(model: nn.Module, make) -> nn.Module:
    """Reference variants: each Amplitude (a converted neuron's ``spike_amplitude``) replaced by ``make(amplitude)``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, rs.Amplitude):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, make(m))
    return model


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward (each storage counted once).

    Only tensors still alive when backward starts count: snnTorch computes its reset signal
    through the surrogate and detaches it, so that graph and what it saved are freed at once.
    """
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor):
        saved.append(weakref.ref(t))
        return t

    reset(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward(model, x)
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    y.sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[T, N, classes]``: a multi-step net's output, or a single-step net's stepped over ``x``'s first dim."""
    if getattr(model, "single_step", False):
        return torch.stack([model(xt)[0] for xt in x])  # snnTorch output=True layer: (spk, mem)
    return model(x)


def step_time(model: nn.Module, x: torch.Tensor) -> float:
    reset(model)
    t0 = time.perf_counter()
    forward(model, x).mean(0).logsumexp(-1).mean().backward()
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed


def snntorch_conv_net(size: int) -> nn.Module:
    """Tutorial 6's layout at CIFAR width: (conv → max pool → Leaky) ×3, Linear → Leaky(output=True)."""
    import snntorch as snn
    from snntorch import surrogate

    grad = surrogate.fast_sigmoid(slope=25)

    def lif(**kwargs) -> nn.Module:
        return snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, **kwargs)

    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.MaxPool2d(2), lif(),
        nn.Conv2d(64, 128, 3, padding=1), nn.MaxPool2d(2), lif(),
        nn.Conv2d(128, 256, 3, padding=1), nn.MaxPool2d(2), lif(),
        nn.Flatten(), nn.Linear(256 * (size // 8) ** 2, 10), lif(output=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--N", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--framework", choices=("spikingjelly", "snntorch"), default="spikingjelly")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x = torch.rand(args.T, args.N, 3, args.size, args.size)
    if args.framework == "snntorch":
        net, title = snntorch_conv_net(args.size), "snnTorch conv net (Leaky)"
        example = x[0]  # one step: the time loop is the caller's
    else:
        net, title = sew_resnet.sew_resnet18(spiking_neuron=neuron.LIFNode, cnf="ADD", num_classes=10), "sew_resnet18"
        functional.set_step_mode(net, "m")
        example = x

    def convert(**kwargs) -> nn.Module:
        model = rs.convert_model(net, example, **kwargs)
        model.single_step = args.framework == "snntorch"
        return model

    net.single_step = args.framework == "snntorch"
    variants: dict[str, nn.Module] = {"original": net}
    for g in ("layer", "channel", "element"):
        variants[f"real {g}"] = convert(granularity=g)
    variants["ternary layer"] = convert(spike="ternary", granularity="layer")
    variants["ternary, no amplitude (reference)"] = replace_amplitudes(
        convert(spike="ternary", granularity="layer"), lambda m: nn.Identity())
    variants["naive Mul, channel (reference)"] = replace_amplitudes(convert(granularity="channel"), NaiveAmplitude)

    memory = {name: saved_bytes(m, x) for name, m in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, m in variants.items():  # warm-up
        step_time(m, x)
    for _ in range(args.repeats):
        for name, m in variants.items():
            times[name].append(step_time(m, x))

    base_t, base_m = statistics.median(times["original"]), memory["original"]
    print(f"{title} fwd+bwd, T={args.T} N={args.N} {args.size}x{args.size}, CPU {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'variant':32s} {'step ms':>9s} {'time x':>7s} {'autograd MiB':>13s} {'memory x':>9s}")
    for name in variants:
        t = statistics.median(times[name])
        print(f"{name:32s} {t * 1e3:9.1f} {t / base_t:7.3f} {memory[name] / 2**20:13.1f} {memory[name] / base_m:9.3f}")


if __name__ == "__main__":
    main()
