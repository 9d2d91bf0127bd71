"""Reference graphs the inference benches measure the folded SNN against.

* the *limit*: the deploy model's convolutions as a plain ANN, ReLU instead of every neuron
  (onnxruntime fuses each ReLU into its convolution): no spiking network runs faster;
* the *floor*: the same with a stateless threshold ``[x ≥ θ]`` instead of every neuron: one
  comparison per neuron, no membrane and no time steps, the least any spiking neuron computes.
  onnxruntime keeps the activations in its blocked (NCHWc) layout from conv to conv only
  through the ops it knows in that layout (ReLU, Add, pooling, …); a comparison is not one of
  them, so each neuron also pays a layout reorder on either side of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional

import sj_realspike as rs
from sj_realspike.lowered import LoweredNeuron, LoweredTernaryNeuron


class Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class Threshold(nn.Module):
    """A stateless spike ``[x ≥ θ]`` (ternary ``[x ≥ θ] − [x ≤ −θ]``) with ``neuron``'s threshold."""

    def __init__(self, neuron: LoweredNeuron) -> None:
        super().__init__()
        self.v_threshold = neuron.v_threshold
        self.ternary = isinstance(neuron, LoweredTernaryNeuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x >= self.v_threshold).to(x.dtype)
        return s - (x <= -self.v_threshold).to(x.dtype) if self.ternary else s


def replace_neurons(deploy: fx.GraphModule, x: torch.Tensor,
                    make: Callable[[LoweredNeuron], nn.Module] = lambda neuron: Relu()) -> fx.GraphModule:
    """The lowered deploy graph (for input ``x``) with every neuron replaced by ``make(neuron)``."""
    gm = rs.lower_for_export(deploy, x)
    for name, m in list(gm.named_modules()):
        if isinstance(m, LoweredNeuron):
            parent, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, make(m))
    return gm


def export_plain(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """``torch.onnx.export(dynamo=True)`` of ``model`` on ``x`` ``[T, N, …]``, the batch dim dynamic."""
    functional.reset_net(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=True, verbose=False, input_names=["x"],
                          dynamic_shapes=({1: torch.export.Dim("batch", min=1)},))
    functional.reset_net(model)
    return path
