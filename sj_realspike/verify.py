"""`verify`: trained model, deploy model and ONNX compared; spike purity of the ONNX graph."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional

from .fold import fold
from .lowering import step_mode_of
from .neurons import is_neuron
from .purity import SpikeTensor, Violation, spike_tensors, static_violations
from .report import META_KEY, format_table
from .runtime import OnnxRunner

__all__ = ["Comparison", "NeuronCheck", "VerifyReport", "verify"]

_ALLOWED = {"binary": {0.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``reference`` on the same input.

    ``max_rel`` is ``max|a − b| / max|b|`` (relative to the reference's scale, so it
    stays meaningful where outputs cross zero). ``top1_agreement`` compares the
    argmax over the last dim of the time-averaged output (``None`` if not a logit tensor).
    """

    reference: str
    candidate: str
    max_abs: float
    max_rel: float
    top1_agreement: float | None
    identical: bool  # bit for bit


@dataclass(frozen=True)
class NeuronCheck:
    """One neuron's spikes inside the ONNX graph on the verification input."""

    neuron: str
    kind: str  # "binary" or "ternary"
    values: tuple[float, ...]  # distinct values seen (at most 8 shown)
    pure: bool  # values within {0, 1} or {-1, 0, 1}
    flip_rate: float | None  # fraction of spikes differing from the PyTorch deploy model (None: no match)
    elements: int


@dataclass
class VerifyReport:
    """What `verify` measured; ``str(report)`` is a readable table."""

    onnx_path: str
    input_shape: tuple[int, ...]
    comparisons: list[Comparison] = field(default_factory=list)
    neurons: list[NeuronCheck] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    def comparison(self, reference: str, candidate: str) -> Comparison:
        """The comparison of ``candidate`` against ``reference`` (``"trained"``, ``"deploy"``, ``"onnx"``)."""
        for c in self.comparisons:
            if (c.reference, c.candidate) == (reference, candidate):
                return c
        raise KeyError(f"no comparison {candidate} vs {reference} (have: "
                       f"{', '.join(f'{c.candidate} vs {c.reference}' for c in self.comparisons)})")

    @property
    def purity(self) -> float:
        """Fraction of neurons whose ONNX spike tensors hold only spike values (1.0 = 100%)."""
        return sum(n.pure for n in self.neurons) / max(len(self.neurons), 1)

    @property
    def spike_flip_rate(self) -> float | None:
        """Fraction of all ONNX spikes that differ from the PyTorch deploy model's."""
        matched = [n for n in self.neurons if n.flip_rate is not None]
        if not matched:
            return None
        return sum(n.flip_rate * n.elements for n in matched) / sum(n.elements for n in matched)

    @property
    def pure(self) -> bool:
        """Every neuron emits spike values on the input and no op scales spikes before a synapse."""
        return bool(self.neurons) and self.purity == 1.0 and not self.violations

    @property
    def bit_identical(self) -> bool:
        """onnxruntime reproduced the PyTorch deploy model's output bit for bit."""
        return self.comparison("deploy", "onnx").identical

    def __str__(self) -> str:
        rows = [[f"{c.candidate} vs {c.reference}", f"{c.max_abs:.3g}", f"{c.max_rel:.3g}",
                 "n/a" if c.top1_agreement is None else f"{c.top1_agreement:.2%}",
                 "yes" if c.identical else "no"] for c in self.comparisons]
        parts = [f"verify {self.onnx_path} on input {list(self.input_shape)}",
                 format_table(["outputs", "max abs err", "max rel err", "top-1 agree", "bit-identical"], rows)]
        flips = self.spike_flip_rate
        kinds = sorted({n.kind for n in self.neurons})
        parts.append(format_table(["spikes", "result"], [
            ["neurons found in the ONNX graph", f"{len(self.neurons)} ({', '.join(kinds) or 'none'})"],
            ["purity (spike values only)", f"{self.purity:.2%}"],
            ["amplitudes left between neuron and synapse", len(self.violations)],
            ["spike flip rate vs PyTorch deploy", "n/a" if flips is None else f"{flips:.4%}"],
        ]))
        impure = [n for n in self.neurons if not n.pure or n.flip_rate]
        if impure:
            parts.append(format_table(["neuron", "kind", "values", "flip rate"], [
                [n.neuron, n.kind, ", ".join(f"{v:g}" for v in n.values),
                 "n/a" if n.flip_rate is None else f"{n.flip_rate:.4%}"] for n in impure]))
        parts += [f"IMPURE: {v}" for v in self.violations]
        return "\n".join(parts)


def verify(model: nn.Module, onnx_path: str | os.PathLike[str], x: torch.Tensor | np.ndarray) -> VerifyReport:
    """Compare the trained model, its deploy model and the ONNX export on ``x``; check spike purity.

    Outputs: max abs/rel error, top-1 agreement and bit identity for deploy vs trained,
    ONNX vs deploy and ONNX vs trained (onnxruntime with its default optimizations).
    Purity: a copy of the graph exposing every neuron output as an extra output runs
    unoptimized on ``x``; each must hold only {0, 1} (binary) or {−1, 0, 1} (ternary)
    values, and is compared spike by spike with the PyTorch deploy model (flip rate:
    with realistic weights, neurons whose membrane lands within fp32 rounding of the
    threshold may flip; on dyadic models there must be none). Statically, no op may
    scale spikes between a neuron and its synapse (`sj_realspike.purity`).

    Args:
        model: the trained (converted) model, or a deploy model (then there is no
            "trained" row). Evaluated in eval mode; its mode and state are restored.
        onnx_path: the file from `export_onnx`.
        x: the input sequence ``[T, N, …]`` (single-step models too: stepped over ``T``).

    Returns:
        A `VerifyReport` (a dataclass; ``print`` it for a table).

    Raises:
        ValueError: ``x`` does not fit the ONNX model (expected vs given shape/dtype).
    """
    path = os.fspath(onnx_path)
    proto = onnx.load(path)
    runner = OnnxRunner(path)
    x = torch.as_tensor(x)
    x_np = x.detach().cpu().numpy()
    runner.check_input(x_np)
    meta = model.meta.get(META_KEY, {}) if isinstance(model, fx.GraphModule) else {}
    trained = None if meta.get("stage") == "deploy" else model
    deploy = model if trained is None else fold(model)
    steps = step_mode_of(deploy) == "s"

    outputs: dict[str, torch.Tensor] = {}
    if trained is not None:
        outputs["trained"] = _run(trained, x, steps)
    recorded: dict[str, list[torch.Tensor]] = {}
    outputs["deploy"] = _run(deploy, x, steps, recorded)
    outputs["onnx"] = torch.as_tensor(np.asarray(runner(x_np)))

    report = VerifyReport(path, tuple(x.shape))
    pairs = [("trained", "deploy"), ("deploy", "onnx"), ("trained", "onnx")]
    report.comparisons = [_compare(r, c, outputs[r], outputs[c]) for r, c in pairs if r in outputs]

    spikes = spike_tensors(proto)
    report.violations = static_violations(proto, spikes)
    values = _spike_values(proto, spikes, x_np)
    for s in spikes:
        v = values[s.value]
        seen = np.unique(v)
        reference = recorded.get(s.neuron)
        flip = None
        if reference is not None:
            ref = torch.cat([t.reshape(-1) for t in reference]).numpy()
            if ref.size == v.size:
                flip = float(np.count_nonzero(ref != v.reshape(-1))) / max(v.size, 1)
        report.neurons.append(NeuronCheck(
            s.neuron, s.kind, tuple(float(u) for u in seen[:8]),
            bool(set(seen.tolist()) <= _ALLOWED[s.kind]), flip, int(v.size)))
    return report


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, steps: bool,
         record: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
    """Eval-mode forward from reset state (stepped over ``T`` for single-step models), mode restored."""
    modes = {m: m.training for m in model.modules()}
    hooks = []
    if record is not None:
        for name, m in model.named_modules():
            if is_neuron(m):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: record.setdefault(name, []).append(out.detach().float().cpu())))
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    xd = x.to(device=device, dtype=torch.float32)
    try:
        functional.reset_net(model)
        y = torch.stack([model(xt) for xt in xd]) if steps else model(xd)
    finally:
        functional.reset_net(model)
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return y.detach().float().cpu()


def _compare(reference: str, candidate: str, ref: torch.Tensor, got: torch.Tensor) -> Comparison:
    if ref.shape != got.shape:
        raise ValueError(f"{candidate} output has shape {tuple(got.shape)}, {reference} output {tuple(ref.shape)}")
    diff = (got.double() - ref.double()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(ref.double().abs().max()) if ref.numel() else 0.0
    top1 = None
    if ref.dim() in (2, 3) and ref.shape[-1] > 1:
        a, b = (t.mean(0) if t.dim() == 3 else t for t in (ref, got))
        top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    return Comparison(reference, candidate, max_abs, max_abs / scale if scale > 0 else max_abs, top1,
                      torch.equal(ref, got))


def _spike_values(proto: onnx.ModelProto, spikes: list[SpikeTensor], x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a copy of the graph, unoptimized, with every spike tensor as an extra output."""
    probe = copy.deepcopy(proto)
    outputs = {o.name for o in probe.graph.output}
    for s in spikes:
        if s.value not in outputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(s.value, onnx.TensorProto.FLOAT, None))
            outputs.add(s.value)
    runner = OnnxRunner(probe, optimize=False)
    results = runner.session.run(None, {runner.input_name: np.ascontiguousarray(x)})
    return dict(zip(runner.output_names, results, strict=True))

