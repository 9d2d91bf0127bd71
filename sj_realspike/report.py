"""Readable records of what convert and fold did to each neuron."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
import torch.nn as nn

from .console import format_table

__all__ = ["compiled_original", "record_of", "set_record", "ConvertedNeuron", "SkippedNeuron", "ConversionReport",
           "FoldReport", "conversion_report", "fold_report", "format_table"]

META_KEY = "sj_realspike"


@dataclass(frozen=True)
class ConvertedNeuron:
    node: str
    module: str
    neuron: str  # class after conversion (e.g. TernaryLIFNode)
    spike: str
    granularity: str
    amplitude_shape: tuple[int, ...]
    rule: str  # which config rule selected it: default/global/type/regex/name


@dataclass(frozen=True)
class SkippedNeuron:
    node: str
    module: str
    neuron: str
    reason: str


@dataclass
class ConversionReport:
    """Which neurons got which amplitude, which were skipped (and why), which were left alone."""

    converted: list[ConvertedNeuron] = field(default_factory=list)
    skipped: list[SkippedNeuron] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    total: int = 0  # neuron modules found (a module called in a time loop counts once)
    calls: dict[str, int] = field(default_factory=dict)  # modules called more than once: how often
    opaque: list[tuple[str, str]] = field(default_factory=list)  # (module, reason) kept whole at capture
    state_reads: list[tuple[str, str]] = field(default_factory=list)  # (module, attribute) read in forward
    value_branches: list[str] = field(default_factory=list)  # nodes where forward branches on tensor values
    tied: list[tuple[str, ...]] = field(default_factory=list)  # neurons sharing one amplitude (tie_summed)
    untied: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # (neurons, why) summed but not tied
    max_pooled: list[str] = field(default_factory=list)  # converted neurons whose amplitude must stay >= 0

    def __str__(self) -> str:
        parts = [f"{len(self.converted)} of {self.total} neurons converted, {len(self.skipped)} skipped, "
                 f"{len(self.untouched)} left alone by config"]
        if not self.converted and self.skipped:
            parts[0] += f" (first reason: {self.skipped[0].module}: {self.skipped[0].reason})"
        if self.converted:
            parts.append(format_table(
                ["neuron", "type", "spike", "granularity", "amplitude", "rule"],
                [[c.module, c.neuron, c.spike, c.granularity, "x".join(map(str, c.amplitude_shape)) or "scalar",
                  c.rule] for c in self.converted]))
        if self.skipped:
            parts.append("skipped (amplitude could never be folded exactly):")
            parts.append(format_table(["neuron", "type", "reason"],
                                      [[s.module, s.neuron, s.reason] for s in self.skipped]))
        if self.untouched:
            parts.append("left alone by config: " + ", ".join(self.untouched))
        parts += [f"one amplitude shared (tie_summed) by: {', '.join(group)}" for group in self.tied]
        parts += [f"summed but not tied: {', '.join(group)}: {why}" for group, why in self.untied]
        if self.max_pooled:
            parts.append("amplitudes that must stay >= 0 to fold (their spikes pass max pooling): "
                         + ", ".join(self.max_pooled))
        if self.calls:
            parts.append("called more than once (one amplitude each): "
                         + ", ".join(f"{m} x{n}" for m, n in self.calls.items()))
        parts += [f"kept whole (not traced): {m}: {why}" for m, why in self.opaque]
        parts += [f"forward reads state '{attr}' of {m}: fold and export will refuse this model"
                  for m, attr in self.state_reads]
        parts += [f"forward branches on tensor values at '{n}': fold and export will refuse this model"
                  for n in self.value_branches]
        return "\n".join(parts)


@dataclass
class FoldReport:
    """What fold produced: spike values per neuron and how the synapses grew."""

    neurons: dict[str, str] = field(default_factory=dict)  # module -> "binary" | "ternary"
    fused_batchnorms: list[str] = field(default_factory=list)
    scaled_synapses: list[str] = field(default_factory=list)
    unshared_convs: list[str] = field(default_factory=list)
    merged_linears: list[str] = field(default_factory=list)
    diagonal_synapses: list[str] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    fixed_input_dims: dict[int, int] = field(default_factory=dict)  # input dim -> size the graph is specialized to

    @property
    def parameter_growth(self) -> float:
        """Deploy parameters over trained parameters (>1 when element-wise folds unshare kernels)."""
        return self.parameters_after / max(self.parameters_before, 1)

    def __str__(self) -> str:
        kinds = sorted(set(self.neurons.values()))
        rows = [
            ["neurons", f"{len(self.neurons)} ({', '.join(kinds) or 'none'})"],
            ["BatchNorms fused", len(self.fused_batchnorms)],
            ["synapses with folded amplitudes", len(self.scaled_synapses)],
            ["unshared (locally connected) convs", len(self.unshared_convs)],
            ["pooling+linear merged into one linear", len(self.merged_linears)],
            ["diagonal synapses into membranes", len(self.diagonal_synapses)],
            ["parameters trained -> deploy",
             f"{self.parameters_before:,} -> {self.parameters_after:,} ({self.parameter_growth:.2f}x)"],
        ]
        return format_table(["fold", "result"], rows)


_ATTR = "_sj_realspike_record"


def compiled_original(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), or ``model`` itself.

    A compiled model shares the original's parameters, buffers and neurons; the passes read
    and copy the original. (Checked without importing ``torch._dynamo``: a compiled model
    means it is loaded.)
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        return model._orig_mod
    return model


def record_of(model: nn.Module) -> dict[str, Any]:
    """What sj_realspike's passes recorded on ``model`` (stage, reports, example shape…); ``{}`` if none.

    Deploy models are ``fx.GraphModule``s and keep it in ``model.meta``; converted models
    are the user's own class and keep it in an instance attribute (copied with the model).
    A ``torch.compile``d model's record is its original's.
    """
    model = compiled_original(model)
    if isinstance(model, fx.GraphModule) and META_KEY in model.meta:
        return model.meta[META_KEY]
    return model.__dict__.get(_ATTR, {})


def set_record(model: nn.Module, record: dict[str, Any]) -> None:
    """Attach ``record`` to ``model`` (see `record_of`)."""
    if isinstance(model, fx.GraphModule):
        model.meta[META_KEY] = record
        model.__dict__.pop(_ATTR, None)
    else:
        model.__dict__[_ATTR] = record




def conversion_report(model: nn.Module) -> ConversionReport:
    """The report `convert_model` attached to ``model`` (raises if it is not converted)."""
    report = record_of(model).get("conversion")
    if report is None:
        raise ValueError("this model was not produced by sj_realspike.convert_model")
    return report


def fold_report(model: nn.Module) -> FoldReport:
    """The report `fold` attached to a deploy model (raises if it is not folded)."""
    report = record_of(model).get("fold")
    if report is None:
        raise ValueError("this model was not produced by sj_realspike.fold")
    return report
