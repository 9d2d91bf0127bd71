"""`verify`: trained model, deploy model and ONNX compared; spike purity of the ONNX graph; a verdict."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from .errors import RealSpikeError
from .export import ANY_T, METADATA_PREFIX, as_deploy_model, export_onnx, model_fingerprint, spike_kinds
from .layout import input_layout_of, stack_steps
from .frameworks import reset, run_steps, spikes_of
from .neurons import step_mode_of
from .neurons import is_neuron
from .provenance import first_difference, was_exported
from .purity import SpikeTensor, Violation, spike_tensors, static_violations
from .report import compiled_original, format_table, record_of
from .runtime import OnnxRunner, load_onnx
from .state import restore, snapshot

__all__ = ["DEFAULT_RTOL", "Comparison", "NeuronCheck", "VerifyReport", "exciting_input", "verify"]

DEFAULT_RTOL = 1e-5
_ALLOWED = {"binary": {0.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}
_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_SHOWN = 4  # neuron names listed in a one-line reason
_STREAM_T = 4  # steps of the default input for a stream graph of a model whose example has no T


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``reference`` on the same input.

    ``max_rel`` is ``max|a − b| / max|b|`` (relative to the reference's scale, so it
    stays meaningful where outputs cross zero). ``top1_agreement`` compares the
    argmax over the last dim of the time-averaged output (``None`` if not a logit tensor).
    NaN never counts as agreement: a NaN on either side makes the error NaN and that
    sample's top-1 a disagreement. Outputs of different shapes have infinite errors.
    """

    reference: str
    candidate: str
    max_abs: float
    max_rel: float
    top1_agreement: float | None
    identical: bool  # bit for bit
    shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # reference's, candidate's


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
    """What `verify` measured, and its verdict: ``report.ok``, ``report.failures``.

    ``str(report)`` starts with the verdict line (``PASS: …`` or ``FAIL: <first reason>``),
    followed by readable tables.
    """

    onnx_path: str
    input_shape: tuple[int, ...]
    rtol: float = DEFAULT_RTOL
    input_note: str = "given"  # where the input came from (the scale of a default random input)
    comparisons: list[Comparison] = field(default_factory=list)
    neurons: list[NeuronCheck] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    not_spiking: list[str] = field(default_factory=list)  # neurons that emit non-spike values in the model itself
    nonfinite: dict[str, int] = field(default_factory=dict)  # NaN/Inf count: "input", "trained", "deploy", "onnx"
    nonfinite_weights: dict[str, int] = field(default_factory=dict)  # deploy state_dict key → NaN/Inf count
    nonfinite_initializers: dict[str, int] = field(default_factory=dict)  # ONNX initializer → NaN/Inf count
    firing: dict[str, float] = field(default_factory=dict)  # deploy model neuron → fraction of nonzero spikes
    provenance: list[str] = field(default_factory=list)  # why the ONNX file is not this model's export
    fingerprint: str = ""  # the deploy model's `model_fingerprint`
    file_fingerprint: str | None = None  # the one the ONNX file records

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

    @property
    def silent_neurons(self) -> list[str]:
        """Neurons of the deploy model that emitted no spike on the input."""
        return [name for name, rate in self.firing.items() if rate == 0.0]

    @property
    def failures(self) -> list[str]:
        """Why the verdict is FAIL, one line each, most important first (empty: PASS).

        In order: the ONNX file is not this model's export (spike kind, ``T``, layout,
        fingerprint, the graph itself); NaN/Inf in the weights, the ONNX initializers, the input, an output; no neuron fired; an output
        outside ``rtol`` of the trained model's or a top-1 disagreement; non-spike values
        or unfolded amplitudes in the ONNX graph; neurons that never fired.
        """
        out = list(self.provenance)
        for what, bad in (("the deploy model's weights", self.nonfinite_weights),
                          ("the ONNX file's initializers", self.nonfinite_initializers)):
            if bad:
                out.append(f"{what} hold NaN/Inf: " + ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:_SHOWN])
                           + (", …" if len(bad) > _SHOWN else ""))
        if self.nonfinite.get("input"):
            out.append(f"the input holds {self.nonfinite['input']} NaN/Inf values: outputs compared on it prove "
                       "nothing (NaN never fires a neuron); pass finite data")
        for name in ("trained", "deploy", "onnx"):
            if self.nonfinite.get(name):
                out.append(f"the {name} output holds {self.nonfinite[name]} NaN/Inf values "
                           "(NaN/Inf weights, or an overflow)")
        if self.firing and not any(self.firing.values()):
            out.append(f"no spikes observed: none of the {len(self.firing)} neurons fired on this input "
                       f"({self.input_note}), so the comparison is vacuous; pass --input with real data "
                       "(API: verify(model, path, x))")
        order = {("trained", "onnx"): 0, ("trained", "deploy"): 1, ("deploy", "onnx"): 2}
        for c in sorted(self.comparisons, key=lambda c: order.get((c.reference, c.candidate), 3)):
            if c.shapes[0] != c.shapes[1]:
                out.append(f"{c.candidate} output has shape {list(c.shapes[1])}, {c.reference} output "
                           f"{list(c.shapes[0])}")
                continue
            problems = []
            if not c.max_rel <= self.rtol:  # NaN fails too
                problems.append(f"max rel err {c.max_rel:.3g} > rtol {self.rtol:g} (max abs err {c.max_abs:.3g})")
            if c.top1_agreement is not None and c.top1_agreement < 1.0:
                problems.append(f"top-1 agrees on {c.top1_agreement:.2%} of samples, not 100%")
            if problems and c.top1_agreement == 1.0 and c.max_rel < 0.5:
                problems.append("top-1 still agrees on every sample: on weights that are not exact in fp32, "
                                "rounding flips spikes near the threshold; pass a larger rtol (--rtol) if "
                                "that is acceptable")
            if problems:
                out.append(f"{c.candidate} output differs from the {c.reference} model's: {'; '.join(problems)}")
        if not self.neurons:
            out.append("no neurons found in the ONNX graph (no node records a neuron module scope)")
        impure = [n for n in self.neurons if not n.pure]
        if impure:
            out.append(f"{len(impure)} of {len(self.neurons)} neurons emit non-spike values in the ONNX graph: "
                       + ", ".join(f"{n.neuron} ({', '.join(f'{v:g}' for v in n.values[:4])})"
                                   for n in impure[:_SHOWN]) + (", …" if len(impure) > _SHOWN else ""))
        if self.violations:
            out.append(f"{len(self.violations)} op(s) scale spikes before a synapse (amplitudes not folded); "
                       f"first: {self.violations[0]}")
        silent = self.silent_neurons
        if silent and len(silent) < len(self.firing):
            out.append(f"{len(silent)} of {len(self.firing)} neurons never fired on this input ("
                       + ", ".join(silent[:_SHOWN]) + (", …" if len(silent) > _SHOWN else "")
                       + "): the synapses after them were not checked; pass --input with real data")
        return out

    @property
    def ok(self) -> bool:
        """The verdict: the ONNX file is this model's export and reproduces it (see `failures`)."""
        return not self.failures

    def __str__(self) -> str:
        failures = self.failures
        if failures:
            parts = [f"FAIL: {failures[0]}"] + [f"  also: {f}" for f in failures[1:]]
        else:
            parts = [f"PASS: outputs within rtol {self.rtol:g} of the trained model, top-1 100%, spikes pure, "
                     f"all {len(self.firing)} neurons fired"]
        parts.append(f"verify {self.onnx_path} on input {list(self.input_shape)} ({self.input_note})")
        rows = [[f"{c.candidate} vs {c.reference}", f"{c.max_abs:.3g}", f"{c.max_rel:.3g}",
                 "n/a" if c.top1_agreement is None else f"{c.top1_agreement:.2%}",
                 "yes" if c.identical else "no"] for c in self.comparisons]
        parts.append(format_table(["outputs", "max abs err", "max rel err", "top-1 agree", "bit-identical"], rows))
        flips = self.spike_flip_rate
        kinds = sorted({n.kind for n in self.neurons})
        fired = sum(rate > 0 for rate in self.firing.values())
        parts.append(format_table(["spikes", "result"], [
            ["neurons found in the ONNX graph", f"{len(self.neurons)} ({', '.join(kinds) or 'none'})"
             + (f", and {len(self.not_spiking)} that emit non-spike values in the model itself (not checked: "
                f"{', '.join(self.not_spiking[:_SHOWN])})" if self.not_spiking else "")],
            ["purity (spike values only)", f"{self.purity:.2%}"],
            ["amplitudes left between neuron and synapse", len(self.violations)],
            ["spike flip rate vs PyTorch deploy", "n/a" if flips is None else f"{flips:.4%}"],
            ["neurons that fired (PyTorch deploy)", f"{fired} of {len(self.firing)}"],
            ["fingerprint (model / file)", f"{self.fingerprint[:12]} / {(self.file_fingerprint or 'none')[:12]}"],
        ]))
        impure = [n for n in self.neurons if not n.pure or n.flip_rate]
        if impure:
            parts.append(format_table(["neuron", "kind", "values", "flip rate"], [
                [n.neuron, n.kind, ", ".join(f"{v:g}" for v in n.values),
                 "n/a" if n.flip_rate is None else f"{n.flip_rate:.4%}"] for n in impure]))
        parts += [f"IMPURE: {v}" for v in self.violations]
        return "\n".join(parts)


def exciting_input(model: nn.Module, shape: Sequence[int], *, seed: int = 0,
                   scales: Sequence[float] = _SCALES) -> tuple[torch.Tensor, float]:
    """A random input ``[T, N, …]`` that makes the neurons of ``model`` fire.

    Uniform noise in ``[0, 1)`` (seeded) times a scale: the first of ``scales`` at which
    every neuron module emits a spike, else the one at which the most do (the smaller on
    ties). Untrained networks are often silent on ``[0, 1)`` noise, which would make any
    comparison vacuous; real data is better still.

    Args:
        model: the model to excite (any step mode; stepped over ``T`` if single-step).
        shape: the input sequence shape ``[T, N, …]``.
        seed: seed of the noise.
        scales: scales to try, in order.

    Returns:
        ``(x, scale)``.
    """
    base = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed))
    steps = input_layout_of(model, base).per_step
    names = [name for name, m in model.named_modules() if is_neuron(m)]
    best = (-1, float(scales[0]))
    for scale in scales:
        recorded: dict[str, list[torch.Tensor]] = {}
        _run(model, base * scale, steps, recorded)
        fired = sum(_fires(recorded.get(name, [])) for name in names)
        if fired == len(names):
            return base * scale, float(scale)
        if fired > best[0]:
            best = (fired, float(scale))
    return base * best[1], best[1]


def verify(model: nn.Module, onnx_path: str | os.PathLike[str], x: torch.Tensor | np.ndarray | None = None, *,
           rtol: float = DEFAULT_RTOL, seed: int = 0) -> VerifyReport:
    """Compare the trained model, its deploy model and the ONNX export on ``x``; check spike purity; judge.

    Outputs: max abs/rel error, top-1 agreement and bit identity for deploy vs trained,
    ONNX vs deploy and ONNX vs trained (onnxruntime with its default optimizations).
    Purity: a copy of the graph exposing every neuron output as an extra output runs
    unoptimized on ``x``; each must hold only {0, 1} (binary) or {−1, 0, 1} (ternary)
    values, and is compared spike by spike with the PyTorch deploy model (flip rate:
    with realistic weights, neurons whose membrane lands within fp32 rounding of the
    threshold may flip; on dyadic models there must be none). Statically, no op may
    scale spikes between a neuron and its synapse (`sj_realspike.purity`).

    The verdict (``report.ok``; reasons in ``report.failures``) is PASS only if all hold:

    * the file is this model's export: its recorded spike kind, ``T``, layout and
      fingerprint (`sj_realspike.export.model_fingerprint` of the deploy model) match, and
      its graph is exactly what `export_onnx` writes for the model, node for node and
      initializer for initializer, bit for bit (`sj_realspike.provenance`: remembered from
      this process's export, else exported again on ``x``): an edited weight, an added op
      or a relabelled neuron fails, however close its outputs;
    * no NaN/Inf in the deploy model's weights, the ONNX initializers, the input or any
      output (a NaN membrane never fires, so NaN can hide in a graph with finite outputs);
    * every output (deploy and ONNX) is within ``rtol`` of the trained model's
      (``max_rel ≤ rtol``, as `Comparison` defines it), as is ONNX of deploy, and top-1
      agreement is 100 %; bit identity is reported, not required;
    * every neuron found in the ONNX graph emits only spike values and no op scales
      spikes before a synapse;
    * every neuron module of the deploy model emits at least one spike on ``x``: a
      silent neuron leaves the synapses after it unchecked (their weights multiply
      zeros), so an untrained network whose deep layers never fire fails, and says so.

    Args:
        model: the trained (converted) model, or a deploy model (then there is no
            "trained" row). Evaluated in eval mode; its mode and state are restored.
        onnx_path: the file from `export_onnx`: unrolled, or a stream graph (run step by
            step on ``x`` by `OnnxRunner`, its spikes checked at every step).
        x: the input sequence ``[T, N, …]`` (single-step models too: stepped over ``T``).
            ``None``: `exciting_input` of the ONNX input shape (a dynamic batch takes the
            model's conversion batch size, else 2; a stream graph the conversion example's
            ``T``, else 4), seeded by ``seed``.
        rtol: the largest relative output error accepted (see `Comparison.max_rel`).
        seed: seed of the default input.

    Returns:
        A `VerifyReport` (a dataclass; ``print`` it for the verdict and tables).

    Raises:
        ValueError: ``x`` does not fit the ONNX model or the model (expected vs given
            shape/dtype), or ``rtol`` is not a finite number ≥ 0.
    """
    model = compiled_original(model)
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    path = os.fspath(onnx_path)
    proto = load_onnx(path)
    runner = OnnxRunner(path)
    if x is not None:
        x = torch.as_tensor(x)
        runner.check_input(x.detach().cpu().numpy())  # before any work: a wrong input is an error, not a FAIL
    shape = _default_shape(runner, model) if x is None else tuple(x.shape)
    example = torch.zeros(shape)
    layout = input_layout_of(model, example)
    try:
        layout.check(example, record_of(model).get("example_shape"))
    except ValueError as e:
        raise ValueError(f"{e} (is the ONNX file this model's export?)") from None
    deploy = as_deploy_model(model, example[0] if layout.per_step else example, announce=False)
    layout = input_layout_of(deploy, example)
    trained = None if _stage(model) == "deploy" else model
    steps = layout.per_step
    scale = None
    if x is None:
        x, scale = exciting_input(deploy, shape, seed=seed)
    x_np = x.detach().cpu().numpy()

    outputs: dict[str, torch.Tensor] = {}
    if trained is not None:
        outputs["trained"] = _run(trained, x, steps)
    recorded: dict[str, list[torch.Tensor]] = {}
    outputs["deploy"] = _run(deploy, x, steps, recorded)
    outputs["onnx"] = _as_one_tensor(runner(x_np))
    stream = runner.stream
    del runner  # its session (the weights, prepacked) is freed before _spike_values makes another
    if len({tuple(o.shape) for o in outputs.values()}) > 1 and len({o.numel() for o in outputs.values()}) == 1:
        # A tuple output flattened on one side may be a single tensor on the other ((logits, None) → logits).
        outputs = {k: o.reshape(-1) for k, o in outputs.items()}

    report = VerifyReport(path, tuple(x.shape), rtol=float(rtol))
    report.nonfinite = {"input": _count_nonfinite(x.float())} | {k: _count_nonfinite(v) for k, v in outputs.items()}
    report.firing = {name: _rate(recorded.get(name, [])) for name, m in deploy.named_modules() if is_neuron(m)}
    report.nonfinite_weights = {k: n for k, t in deploy.state_dict().items() if (n := _count_nonfinite(t))}
    report.nonfinite_initializers = {
        t.name: n for t in proto.graph.initializer
        if (n := _count_nonfinite_array(onnx.numpy_helper.to_array(t)))}
    if scale is not None:
        tried = ", ".join(f"{s:g}" for s in _SCALES)
        report.input_note = f"default: random uniform in [0, {scale:g}), seed {seed}; scale {scale:g} " + (
            f"is the first of {tried} at which every neuron fires" if all(report.firing.values())
            else f"fires the most neurons of {tried}")
    pairs = [("trained", "deploy"), ("deploy", "onnx"), ("trained", "onnx")]
    report.comparisons = [_compare(r, c, outputs[r], outputs[c]) for r, c in pairs if r in outputs]
    time_steps = ANY_T if stream else layout.time_steps(example)  # a stream graph runs any T
    report.fingerprint = model_fingerprint(deploy, time_steps, layout.name)
    report.provenance, report.file_fingerprint = _provenance(proto, deploy, report.fingerprint, time_steps,
                                                             layout.name)
    if not report.provenance and not was_exported(report.fingerprint, proto):
        if (difference := _export_difference(proto, deploy, x, stream)) is not None:
            report.provenance.append(difference)

    spikes = spike_tensors(proto)
    report.violations = static_violations(proto, spikes)
    values = _spike_values(proto, spikes, x_np)  # proto gains outputs: it is not read after this
    for s in spikes:
        v = values[s.value]
        seen = np.unique(v)
        reference = recorded.get(s.neuron)
        flip = None
        if reference is not None:
            ref = torch.cat([t.reshape(-1) for t in reference]).numpy()
            if not set(np.unique(ref).tolist()) <= _ALLOWED[s.kind]:
                # The model's own neuron emits other values (ILIF's counts, an analog surrogate): nothing
                # sj-realspike made, and nothing its purity speaks for; convert left it without an amplitude.
                report.not_spiking.append(s.neuron)
                continue
            if ref.size == v.size:
                flip = float(np.count_nonzero(ref != v.reshape(-1))) / max(v.size, 1)
        report.neurons.append(NeuronCheck(
            s.neuron, s.kind, tuple(float(u) for u in seen[:8]),
            bool(set(seen.tolist()) <= _ALLOWED[s.kind]), flip, int(v.size)))
    return report


def _stage(model: nn.Module) -> str | None:
    return record_of(model).get("stage")


def _default_shape(runner: OnnxRunner, model: nn.Module) -> tuple[int, ...]:
    """The ONNX input shape; a dynamic batch takes the model's conversion batch size (else 2).

    A stream graph takes any ``T``: the conversion example's (else `_STREAM_T`).
    """
    record = record_of(model)
    example, layout = record.get("example_shape"), record.get("input_layout")
    dims = layout.split(",") if layout else (["T", "N"] if step_mode_of(model) == "m" else ["N"])
    batch, steps = 2, _STREAM_T
    if example:
        batch = int(example[dims.index("N")])
        steps = int(example[dims.index("T")]) if "T" in dims[:len(example)] else steps
    shape = [d if isinstance(d, int) and d > 0 else batch for d in runner.input_shape]
    if runner.stream:
        shape[0] = steps
    return tuple(shape)


def _provenance(proto: onnx.ModelProto, deploy: nn.Module, fingerprint: str, time_steps: str,
                layout: str) -> tuple[list[str], str | None]:
    """Why the ONNX file was not exported from ``deploy`` (empty: it was), and the file's fingerprint."""
    meta = {p.key: p.value for p in proto.metadata_props}
    recorded = meta.get(METADATA_PREFIX + "fingerprint")
    problems = []
    file_kind, kind = meta.get(METADATA_PREFIX + "spike"), spike_kinds(deploy)
    if file_kind is not None and file_kind != kind:
        problems.append(f"ONNX file was exported from a different model: its spikes are {file_kind}, "
                        f"this model's are {kind}")
    file_t = meta.get(METADATA_PREFIX + "time_steps")
    if file_t is not None and file_t != time_steps:
        problems.append(f"ONNX file records T={file_t}, but its graph takes T={time_steps}")
    file_layout = meta.get(METADATA_PREFIX + "input_layout")
    if file_layout is not None and file_layout != layout:
        problems.append(f"ONNX file records input layout {file_layout}, the input is {layout}")
    if recorded is None:
        problems.append("ONNX file records no sj_realspike.fingerprint (exported by another tool or an older "
                        "sj-realspike), so nothing ties it to this model: re-export it with export_onnx")
    elif recorded != fingerprint and not problems:
        problems.append(f"ONNX file was exported from a different model (fingerprint {recorded[:12]} in the file "
                        f"vs {fingerprint[:12]} of this model's deploy weights)")
    return problems, recorded


def _export_difference(proto: onnx.ModelProto, deploy: nn.Module, x: torch.Tensor, stream: bool) -> str | None:
    """How the file differs from exporting ``deploy`` again as it was exported (``None``: not at all).

    The recorded fingerprint ties the file to the model's weights by a string anyone can
    copy; the graph itself must be what `export_onnx` writes (`sj_realspike.provenance`),
    with the file's opset, batch dim and mode, on the verification input.
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    dynamic_batch = any(d.dim_param or not d.HasField("dim_value") for d in dims)
    quiet = logging.getLogger("sj_realspike")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # what this export would log, the user's export said already
    try:
        with tempfile.TemporaryDirectory() as tmp:
            reference = onnx.load(export_onnx(deploy, Path(tmp) / "reference.onnx", x, opset=opset,
                                              dynamic_batch=dynamic_batch, stream=stream))
    except (RealSpikeError, ValueError) as e:
        return f"the ONNX file could not be compared with this model's export, which fails here ({e})"
    finally:
        quiet.setLevel(level)
    difference = first_difference(proto, reference)
    if difference is None:
        return None
    made_by = {p.key: p.value for p in proto.metadata_props}.get(METADATA_PREFIX + "version")
    from . import __version__  # at call time: the package sets it after importing this module

    versions = [f"sj-realspike {made_by} (this is {__version__})" if made_by and made_by != __version__ else "",
                f"torch {proto.producer_version} (this is {reference.producer_version})"
                if proto.producer_version != reference.producer_version else ""]
    note = "; it was exported with " + " and ".join(v for v in versions if v) + ": re-export it with this " \
           "version to verify it" if any(versions) else ""
    return f"the ONNX graph is not what export_onnx writes for this model: {difference}{note}"


def _fires(spikes: list[torch.Tensor]) -> bool:
    return any(bool(t.count_nonzero()) for t in spikes)


def _rate(spikes: list[torch.Tensor]) -> float:
    total = sum(t.numel() for t in spikes)
    return sum(int(t.count_nonzero()) for t in spikes) / total if total else 0.0


def _count_nonfinite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def _count_nonfinite_array(a: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(a))) if np.issubdtype(a.dtype, np.floating) else 0


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, steps: bool,
         record: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
    """Eval-mode forward from reset state (stepped over ``T`` for single-step models); the model is left as it was."""
    saved = snapshot(model)  # the user's membranes mid-sequence, v_seq, modes
    hooks = []
    if record is not None:
        for name, m in model.named_modules():
            if is_neuron(m):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: record.setdefault(name, []).append(
                        spikes_of(mod, out).detach().float().cpu())))
    model.eval()
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    xd = x.to(device=device, dtype=weight.dtype if weight is not None else torch.float32)
    try:
        reset(model)
        y = stack_steps(run_steps(model, xd)) if steps else model(xd)
    finally:
        reset(model)
        restore(saved)
        for h in hooks:
            h.remove()
    return _as_one_tensor(y)


def _as_one_tensor(y: object) -> torch.Tensor:
    """A model's output as one float tensor: several outputs (``(logits, aux)``) flattened and joined."""
    if isinstance(y, (tuple, list)):  # ONNX drops None outputs (an aux head that is off in eval mode)
        return torch.cat([_as_one_tensor(t).reshape(-1) for t in y if t is not None])
    return torch.as_tensor(y).detach().float().cpu()


def _compare(reference: str, candidate: str, ref: torch.Tensor, got: torch.Tensor) -> Comparison:
    shapes = (tuple(ref.shape), tuple(got.shape))
    if shapes[0] != shapes[1]:
        return Comparison(reference, candidate, math.inf, math.inf, None, False, shapes)
    r, g = ref.double(), got.double()
    diff = (g - r).abs()  # NaN wherever either side is NaN (or both are the same infinity)
    max_abs = float(diff.max()) if diff.numel() else 0.0  # max propagates NaN
    scale = float(r.abs().max()) if r.numel() else 0.0
    top1 = None
    if ref.dim() in (2, 3) and ref.shape[-1] > 1:
        a, b = (t.mean(0) if t.dim() == 3 else t for t in (r, g))
        nan_rows = a.isnan().any(-1) | b.isnan().any(-1)
        top1 = float(((a.argmax(-1) == b.argmax(-1)) & ~nan_rows).double().mean())
    return Comparison(reference, candidate, max_abs, max_abs / scale if 0 < scale < math.inf else max_abs, top1,
                      torch.equal(ref, got), shapes)


def _spike_values(proto: onnx.ModelProto, spikes: list[SpikeTensor], x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the graph, unoptimized, with every spike tensor as an extra output (added to ``proto``, not
    to a copy: a copy of a zoo model's unshared convolutions costs hundreds of megabytes).

    A stream graph runs step by step; each spike tensor is then its steps flattened in
    order (the order of the deploy model's ``[T, N, …]`` spikes).
    """
    outputs = {o.name for o in proto.graph.output}
    for s in spikes:
        if s.value not in outputs:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(s.value, onnx.TensorProto.FLOAT, None))
            outputs.add(s.value)
    runner = OnnxRunner(proto, optimize=False)
    if runner.stream:
        steps = runner.run_steps(x)
        return {name: np.concatenate([s[name].reshape(-1) for s in steps]) for name in runner.output_names}
    results = runner.session.run(None, {runner.input_name: np.ascontiguousarray(x)})
    return dict(zip(runner.output_names, results, strict=True))
