"""Proving a fold exact on your own model: dyadic models, where every fp32 operation is exact.

Spiking thresholds turn rounding noise into chaos, so tolerance tests on random
weights prove little. Here weights, BatchNorm parameters (eps=0, running_var a
power of 4), amplitudes and inputs sit on coarse power-of-two grids: sums of their
products need far fewer than 24 mantissa bits, so fp32 computes them exactly, in
any order. A mathematically exact transform must then reproduce the outputs bit
for bit (max abs diff 0), and any real mistake shows at once.

`make_dyadic` also calibrates firing (BN statistics from a train-mode pass on the
input, rounded to the grid) so the comparison is not vacuous on silent networks.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .frameworks import adapter_for, reset, run_steps, spikes_of
from .layout import stack_steps
from .neurons import is_neuron
from .ops import CONV_TYPES
from .report import conversion_report
from .spiking import amplitude_of

__all__ = ["make_dyadic", "dyadic_input", "randomize_amplitudes", "assert_exact_in_fp32", "run",
           "spike_values", "firing_rate"]


def _grid(t: torch.Tensor, step: float, lo: float, hi: float) -> torch.Tensor:
    return (t / step).round().clamp(lo / step, hi / step) * step


def dyadic_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Inputs on multiples of 1/4 in [0, 2]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, shape, generator=g).float() / 4


def _dyadic_weight(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    fan_in = w[0].numel()
    step = 2.0 ** round(math.log2(1.0 / math.sqrt(fan_in)))  # ~ the default init scale
    return torch.randint(-2, 3, w.shape, generator=g).float() * step


def randomize_amplitudes(model: nn.Module, seed: int = 0, negative: bool = True) -> None:
    """Amplitudes on multiples of 1/4 in [0.25, 2]; a quarter of the entries negative where legal.

    Negative amplitudes are illegal before max pooling, so amplitudes whose spikes reach
    a max-pool (the conversion report's ``max_pooled``) stay positive.
    """
    g = torch.Generator().manual_seed(seed)
    before_maxpool = set(conversion_report(model).max_pooled)
    with torch.no_grad():
        for path, m in model.named_modules():
            if amplitude_of(m) is None:
                continue
            a = amplitude_of(m).a
            mag = torch.randint(1, 9, a.shape, generator=g).float() / 4
            sign = torch.ones(a.shape)
            if negative and path not in before_maxpool:
                sign = torch.where(torch.rand(a.shape, generator=g) < 0.25, -1.0, 1.0)
            a.copy_(mag * sign)


def make_dyadic(model: nn.Module, x: torch.Tensor, seed: int = 0, amplitudes: bool = True,
                negative: bool = True) -> nn.Module:
    """Put ``model`` (in place) on the dyadic grid with calibrated firing; returns it in eval mode.

    Conv/linear weights get few-bit values at the default init scale, biases multiples
    of 1/8; neurons get dyadic time constants (LIF tau=2, PLIF w=0); BatchNorm gets
    eps=0, statistics from a train-mode pass on ``x`` rounded to the grid (mean to 1/8,
    var to a power of 4), gamma in [0.5, 2] and beta in [0, 0.5] on 1/8 steps.
    """
    g = torch.Generator().manual_seed(seed)
    if amplitudes and any(amplitude_of(m) is not None for m in model.modules()):
        randomize_amplitudes(model, seed, negative)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (*CONV_TYPES, nn.Linear)):
                m.weight.copy_(_dyadic_weight(m.weight, g))
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-2, 3, m.bias.shape, generator=g).float() / 8)
            elif (adapter := adapter_for(m)) is not None:
                adapter.make_dyadic(m)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(x)  # with autograd on: models may register gradient hooks in training mode (cifar10_r11's LIF)
    reset(model)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for bn in bns:
            bn.eps = 0.0
            bn.running_mean.copy_(_grid(bn.running_mean, 1 / 8, -64, 64))
            var = bn.running_var.clamp_min(2.0 ** -12)
            bn.running_var.copy_(4.0 ** torch.round(torch.log(var) / math.log(4)))
            bn.weight.copy_(torch.randint(4, 17, bn.weight.shape, generator=g).float() / 8)
            bn.bias.copy_(torch.randint(0, 5, bn.bias.shape, generator=g).float() / 8)
    model.eval()
    return model


def run(model: nn.Module, x: torch.Tensor, steps: bool = False) -> torch.Tensor:
    """Eval forward from reset state, leaving the state reset afterwards.

    ``steps=True`` feeds a single-step ('s') model ``x[t]`` for each ``t`` and stacks the outputs.
    """
    reset(model)
    with torch.no_grad():
        y = stack_steps(run_steps(model, x)) if steps else model(x)
    reset(model)
    return y


def assert_exact_in_fp32(model: nn.Module, x: torch.Tensor, steps: bool = False) -> Any:
    """The precondition of every bit-exact test: the fp32 forward equals the fp64 forward.

    Returns the fp32 output; an output of several tensors (snnTorch's ``(spk, mem)``) is
    compared tensor by tensor.
    """
    y32 = run(model, x, steps)
    m64 = copy.deepcopy(model).double()
    for m in m64.modules():
        if (adapter := adapter_for(m)) is not None:
            adapter.to_double(m)
    y64 = run(m64, x.double(), steps)
    leaves32, leaves64 = pytree.tree_leaves(y32), pytree.tree_leaves(y64)
    assert len(leaves32) == len(leaves64)
    for a, b in zip(leaves32, leaves64):
        assert torch.equal(a.double(), b), (
            f"model is not dyadic: fp32 and fp64 forwards differ by {(a.double() - b).abs().max().item()}")
    return y32


def spike_values(model: nn.Module, x: torch.Tensor, steps: bool = False) -> dict[str, set[float]]:
    """The set of values each neuron of ``model`` emits on ``x`` (forward hooks)."""
    values: dict[str, set[float]] = {}
    hooks = []
    for name, m in model.named_modules():
        if is_neuron(m):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: values.setdefault(name, set()).update(
                    spikes_of(mod, out).unique().tolist())))
    try:
        run(model, x, steps)
    finally:
        for h in hooks:
            h.remove()
    return values


def firing_rate(model: nn.Module, x: torch.Tensor, steps: bool = False) -> float:
    """Fraction of non-zero neuron outputs over all neurons and steps."""
    total, nonzero = 0, 0
    hooks = []

    def count(mod, inp, out):
        nonlocal total, nonzero
        out = spikes_of(mod, out)
        total += out.numel()
        nonzero += int((out != 0).sum())

    for m in model.modules():
        if is_neuron(m):
            hooks.append(m.register_forward_hook(count))
    try:
        run(model, x, steps)
    finally:
        for h in hooks:
            h.remove()
    return nonzero / max(total, 1)
