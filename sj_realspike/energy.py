"""`energy_report`: synaptic operations and their 45 nm energy, before and after fold.

Real Spike trains with spikes ``a ⊙ s``: a synapse receiving them multiplies each
arriving value by its weight and accumulates (a MAC). Folding moves ``a`` into the
weights, so the deploy synapse only adds the weight of each arriving spike (an AC;
with ternary spikes, adds or subtracts it). The usual estimate prices them at 45 nm
(Horowitz, ISSCC 2014): MAC 4.6 pJ, AC 0.9 pJ, both parameters here.

A synaptic operation is one (non-zero input, weight) pair a layer actually uses,
counted per synapse module (conv, linear, `UnsharedConv2d`, `DiagonalSynapse`) on the
values it receives: zero padding and silent inputs cost nothing. The op type follows
those values, as SpikingJelly's ``op_counter`` does: {0, 1} → AC, {−1, 0, 1} → signed
AC, anything else (analog input, amplitude-scaled spikes, sums of spike trains) → MAC.
So the first layer, fed the analog input, is MACs in both models, and a freshly
converted model (every amplitude 1) costs what the binary network costs.
SpikingJelly's ``SynOpCounter`` agrees on binary inputs but counts nothing for
real-valued or ternary ones, which is why the count is made here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .amplitude import Amplitude, amplitude_parameters
from .atomic import atomic_write
from .frameworks import reset, step_mode
from .neurons import is_neuron
from .report import compiled_original, format_table, record_of
from .state import left_as_is
from .synapses import DiagonalSynapse, UnsharedConv2d

__all__ = ["E_AC_PJ", "E_MAC_PJ", "EnergyReport", "LayerEnergy", "ModelEnergy", "count_synaptic_ops",
           "energy_report"]

E_AC_PJ = 0.9
"""Energy of one 32-bit float accumulate at 45 nm, in picojoules."""
E_MAC_PJ = 4.6
"""Energy of one 32-bit float multiply-accumulate at 45 nm, in picojoules."""

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SYNAPSES = (*_CONVS, nn.Linear, UnsharedConv2d, DiagonalSynapse)


@dataclass(frozen=True)
class LayerEnergy:
    """One synapse layer over one forward pass (all time steps and samples)."""

    name: str  # module name in its model
    origin: str  # the trained model's layer it comes from (fold's copies of a layer share it)
    kind: str  # module class
    inputs: int  # input elements received
    nonzero: int  # non-zero input elements received
    ops: int  # synaptic operations: (non-zero input, weight) pairs used
    op: str  # "AC", "AC±" (signed, ternary input) or "MAC"
    energy_pj: float

    @property
    def input_rate(self) -> float:
        """Fraction of non-zero inputs (the spike rate for spike inputs)."""
        return self.nonzero / max(self.inputs, 1)


@dataclass
class ModelEnergy:
    """The synapse layers of one model, in call order, and their totals."""

    label: str
    layers: list[LayerEnergy]
    samples: int  # batch size of the input the counts were made on

    @property
    def ops(self) -> int:
        return sum(layer.ops for layer in self.layers)

    @property
    def energy_pj(self) -> float:
        return sum(layer.energy_pj for layer in self.layers)

    def ops_by_type(self) -> dict[str, int]:
        """Synaptic operations per op type (``AC``, ``AC±``, ``MAC``), summed over layers."""
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.op] = out.get(layer.op, 0) + layer.ops
        return out

    def describe(self) -> str:
        """``'1.23 µJ (4.5M MAC + 67M AC)'``, per sample."""
        ops = " + ".join(f"{_si(n / self.samples)} {op}" for op, n in sorted(self.ops_by_type().items()))
        return f"{format_joules(self.energy_pj / self.samples)} ({ops or 'no ops'})"


@dataclass
class EnergyReport:
    """Synaptic operations and estimated energy per layer, before and after fold.

    ``before`` is ``None`` when the model had no amplitudes to fold. Per-sample numbers
    divide the counts by the batch size of the input they were made on.
    """

    after: ModelEnergy
    before: ModelEnergy | None = None
    e_ac_pj: float = E_AC_PJ
    e_mac_pj: float = E_MAC_PJ
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """Energy before fold over energy after fold (``None`` without a ``before``)."""
        if self.before is None:
            return None
        return self.before.energy_pj / self.after.energy_pj if self.after.energy_pj else math.inf

    def summary(self) -> str:
        """One line: energy per sample before → after fold and the ratio."""
        costs = f"(45 nm: AC {self.e_ac_pj:g} pJ, MAC {self.e_mac_pj:g} pJ)"
        if self.before is None:
            return f"synaptic energy per sample: {self.after.describe()} {costs}"
        return (f"synaptic energy per sample: {self.before.describe()} before fold -> "
                f"{self.after.describe()} after fold (before/after {self.ratio:.2f}x) {costs}")

    def rows(self) -> list[tuple[str, LayerEnergy | None, LayerEnergy | None]]:
        """``(layer, before, after)`` per layer of the trained model, in call order.

        Fold's copies of one layer (one per addend of a residual sum) are merged into
        one entry; a shortcut that became a `DiagonalSynapse` has no ``before``.
        """
        after = _merge_by_origin(self.after.layers)
        before = _merge_by_origin(self.before.layers) if self.before is not None else {}
        rows = []
        for key in dict.fromkeys([*after, *before]):
            b, a = before.get(key), after.get(key)
            rows.append(((b or a).origin, b, a))
        return rows

    def __str__(self) -> str:
        def cells(layer: LayerEnergy | None, samples: int) -> list[str]:
            if layer is None:
                return ["-", "-", "-", "-"]
            return [f"{layer.input_rate:.3f}", _si(layer.ops / samples), layer.op,
                    format_joules(layer.energy_pj / samples)]

        if self.before is None:
            headers = ["layer", "type", "input rate", "ops/sample", "op", "energy/sample"]
            rows = [[o, a.kind, *cells(a, self.after.samples)] for o, _, a in self.rows()]
            rows.append(["total", "", "", _si(self.after.ops / self.after.samples), "",
                         format_joules(self.after.energy_pj / self.after.samples)])
        else:
            headers = ["layer", "type", "rate before", "ops before", "op", "energy before",
                       "rate after", "ops after", "op", "energy after"]
            rows = [[o, (a or b).kind, *cells(b, self.before.samples), *cells(a, self.after.samples)]
                    for o, b, a in self.rows()]
            rows.append(["total", "", "", _si(self.before.ops / self.before.samples), "",
                         format_joules(self.before.energy_pj / self.before.samples), "",
                         _si(self.after.ops / self.after.samples), "",
                         format_joules(self.after.energy_pj / self.after.samples)])
        return "\n".join([format_table(headers, rows), *self.notes, self.summary()])

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG bar chart of the energy per sample of each layer (before and after fold).

        Raises:
            ImportError: matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError(f"the energy chart needs matplotlib ({e}): pip install matplotlib") from None
        rows = self.rows()
        fig = Figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.5), layout="constrained")
        ax = fig.add_subplot()
        series = [(self.after.label, 2, self.after.samples, "tab:blue")]
        if self.before is not None:
            series.insert(0, (self.before.label, 1, self.before.samples, "tab:red"))
        width = 0.8 / len(series)
        for k, (label, column, samples, color) in enumerate(series):
            values = [r[column].energy_pj / samples * 1e-6 if r[column] is not None else 0.0 for r in rows]
            offset = (k - (len(series) - 1) / 2) * width
            ax.bar([p + offset for p in range(len(rows))], values, width, label=label, color=color)
        ax.set_xticks(list(range(len(rows))), [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("energy per sample (µJ)")
        title = self.after.describe() if self.before is None else \
            f"{self.before.describe()} -> {self.after.describe()} (before/after {self.ratio:.2f}x)"
        ax.set_title(f"synaptic energy per sample: {title}\n45 nm: AC {self.e_ac_pj:g} pJ, MAC {self.e_mac_pj:g} pJ",
                     fontsize=8)
        ax.legend()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def count_synaptic_ops(module: nn.Module, x: torch.Tensor) -> int:
    """Synaptic operations of one synapse module on input ``x``: (non-zero input, weight) pairs used.

    Conv: each non-zero input element reaching a kernel position feeds ``out/groups``
    weights there (zero padding adds nothing); Linear: ``out_features`` per non-zero
    input; `UnsharedConv2d` as a conv; `DiagonalSynapse`: one per non-zero input.

    Raises:
        TypeError: ``module`` is not a supported synapse.
    """
    nonzero = (x != 0).to(torch.float64)
    if isinstance(module, DiagonalSynapse):
        return int(nonzero.sum().item())
    if isinstance(module, nn.Linear):
        return int(nonzero.sum().item()) * module.out_features
    if isinstance(module, UnsharedConv2d):
        patches = F.unfold(nonzero.reshape(-1, *x.shape[-3:]), module.kernel_size, dilation=module.dilation,
                           padding=module.padding, stride=module.stride)
        return int(patches.sum().item()) * (module.out_channels // module.groups)
    if isinstance(module, _CONVS):
        spatial = module.weight.dim() - 2
        # All-ones kernels count the non-zero inputs under each window; one output channel
        # per group suffices since every output channel of a group sees the same window.
        ones = torch.ones(module.groups, *module.weight.shape[1:], dtype=torch.float64)
        counts = module._conv_forward(nonzero.reshape(-1, *x.shape[-(spatial + 1):]), ones, None)
        return int(counts.sum().item()) * (module.out_channels // module.groups)
    raise TypeError(f"{type(module).__name__} is not a synapse layer (conv, linear, UnsharedConv2d, DiagonalSynapse)")


def energy_report(model: nn.Module, x: torch.Tensor, *, e_ac_pj: float = E_AC_PJ,
                  e_mac_pj: float = E_MAC_PJ) -> EnergyReport:
    """Count synaptic operations per layer on ``x`` and price them, before and after fold.

    For a converted model (with amplitudes), counts the model itself ("before fold":
    amplitude-scaled spikes make MACs) and ``fold(model)`` ("after fold": binary spikes
    make ACs, ternary ones signed ACs). Any other model (a deploy model, a plain
    SpikingJelly network) is counted as it is. Models run in eval mode without
    gradients from reset state; then training flags and neuron state (membranes
    mid-sequence included) are put back as they were: ``model`` is left unchanged.

    Args:
        model: a converted model, a deploy model or a SpikingJelly network.
        x: one forward call's input (``[T, N, …]`` multi-step, ``[N, …]`` single-step).
        e_ac_pj: energy of one accumulate, picojoules (45 nm fp32: 0.9).
        e_mac_pj: energy of one multiply-accumulate, picojoules (45 nm fp32: 4.6).

    Returns:
        An `EnergyReport`: ``str()`` is the per-layer table, ``summary()`` the
        before/after line, ``plot(path)`` writes a PNG bar chart.

    Raises:
        UnsupportedPatternError: a converted model that fold refuses.
    """
    model = compiled_original(model)
    converted = any(isinstance(m, Amplitude) for m in model.modules())
    samples = x.shape[1] if _step_mode(model) == "m" and x.dim() > 1 else x.shape[0]
    costs = {"AC": e_ac_pj, "AC±": e_ac_pj, "MAC": e_mac_pj}
    if not converted:
        return EnergyReport(_count(model, x, "model", samples, costs), None, e_ac_pj, e_mac_pj)
    from .fold import fold

    before = _count(model, x, "before fold", samples, costs)
    after = _count(fold(model), x, "after fold", samples, costs)
    report = EnergyReport(after, before, e_ac_pj, e_mac_pj)
    if all(bool((a == 1).all()) for a in amplitude_parameters(model)):
        report.notes.append("note: every amplitude is still 1 (untrained), so the spikes reaching the synapses "
                            "are binary before fold too; train the amplitudes to see the fold's saving")
    return report


def _count(model: nn.Module, x: torch.Tensor, label: str, samples: int, costs: dict[str, float]) -> ModelEnergy:
    layers: dict[str, list] = {}  # name -> [kind, inputs, nonzero, ops, op]
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            inp = args[0]
            op = _op_type(inp)
            entry = layers.setdefault(name, [type(module).__name__, 0, 0, 0, op])
            entry[1] += inp.numel()
            entry[2] += int((inp != 0).sum().item())
            entry[3] += count_synaptic_ops(module, inp)
            entry[4] = _combine(entry[4], op)
        return record

    for name, m in model.named_modules():
        if isinstance(m, _SYNAPSES):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with left_as_is(model):
            model.eval()
            reset(model)
            with torch.no_grad():
                model(x)
    finally:
        for h in hooks:
            h.remove()
    # fold names the copies of layer `l` it makes `l__<input>`; they count as `l`
    deploy = record_of(model).get("stage") == "deploy"
    return ModelEnergy(label, [
        LayerEnergy(name, name.split("__")[0] if deploy else name, kind, inputs, nonzero, ops, op, ops * costs[op])
        for name, (kind, inputs, nonzero, ops, op) in layers.items()], samples)


def _op_type(x: torch.Tensor) -> str:
    if bool(((x == 0) | (x == 1)).all()):
        return "AC"
    if bool(((x == 0) | (x == 1) | (x == -1)).all()):
        return "AC±"
    return "MAC"


def _combine(a: str, b: str) -> str:
    """The op type of a layer that saw inputs of both types (a multiplier is needed once any needs it)."""
    if a == b:
        return a
    return "MAC" if "MAC" in (a, b) else "AC±"


def _step_mode(model: nn.Module) -> str:
    return next((step_mode(m) for m in model.modules() if is_neuron(m)), "s")


def _merge_by_origin(layers: list[LayerEnergy]) -> dict[str, LayerEnergy]:
    merged: dict[str, LayerEnergy] = {}
    for layer in layers:
        key = layer.origin.replace(".", "_")
        prev = merged.get(key)
        if prev is None:
            merged[key] = layer
            continue
        merged[key] = LayerEnergy(prev.name, prev.origin, prev.kind, prev.inputs + layer.inputs,
                                  prev.nonzero + layer.nonzero, prev.ops + layer.ops, _combine(prev.op, layer.op),
                                  prev.energy_pj + layer.energy_pj)
    return merged


def _si(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def format_joules(pj: float) -> str:
    """An energy in picojoules with the unit that keeps three significant digits readable."""
    for scale, unit in ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ")):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"
