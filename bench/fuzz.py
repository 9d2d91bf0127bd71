"""Fuzzing convert → train → fold → export on random SpikingJelly, Norse or snnTorch architectures.

Every generated network must end in one of two ways:

* **exact**: converted (some neurons possibly skipped with a reason), one training
  step runs, and on the dyadic grid the folded model reproduces the converted one bit
  for bit with pure {0,1} / {−1,0,1} spikes; its ONNX export reproduces the deploy
  model bit for bit in onnxruntime, and `verify` finds every spike tensor pure;
* **refused**: an `UnsupportedPatternError` that names a node (a neuron named in the
  config that cannot be folded, or a negative amplitude before max pooling), or a network
  that folds and exports exactly but where convert converted no neuron (it names the first
  one skipped and why): nothing was folded, so it does not count as exact.

A neuron convert skipped that multiplies its spikes by a factor of its own (snnTorch's
``graded_spikes_factor``) keeps it in the deploy model: its spikes may be graded, and
`verify` must name exactly those neurons as scaling their spikes.

Anything else (another exception, a mismatch, an impure spike) is a bug and is
reported with the seed that reproduces it.

Usage: python bench/fuzz.py --n 500 [--start 0] [--framework spikingjelly|norse|snntorch]

``--framework norse`` draws Norse networks in Norse's three styles (`fuzz_norse`),
``--framework snntorch`` snnTorch networks in snnTorch's (`fuzz_snntorch`); a network
returning several tensors (snnTorch's ``(spk, mem)``) is compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike.frameworks import adapter_for, reset, run_steps
from sj_realspike.layout import stack_steps
from sj_realspike.testing import assert_exact_in_fp32, make_dyadic, run, spike_values

NEURON_FACTORIES = {
    "IF": lambda r: neuron.IFNode(v_reset=r.choice([0.0, None])),
    "LIF": lambda r: neuron.LIFNode(tau=2.0, decay_input=r.random() < 0.5, v_reset=r.choice([0.0, None])),
    "PLIF": lambda r: neuron.ParametricLIFNode(init_tau=2.0, decay_input=r.random() < 0.5,
                                               v_reset=r.choice([0.0, None])),
}


class FuzzNet(nn.Module):
    """A network interpreted from a static program (fx traces straight through the loop)."""

    def __init__(self, program: list[tuple[str, object]], mods: dict[str, nn.Module], batch_dims: int) -> None:
        super().__init__()
        self.program = program
        self.mods = nn.ModuleDict(mods)
        self.batch_dims = batch_dims

    def forward(self, x):
        slots = {}
        for op, arg in self.program:
            if op == "mod":
                x = self.mods[arg](x)
            elif op == "save":
                slots[arg] = x
            elif op == "add":
                x = x + slots[arg]
            elif op == "scale":
                x = x * arg
            elif op == "flatten":
                x = torch.flatten(x, self.batch_dims)
            elif op == "branch":
                x = self.mods[arg[0]](x) + self.mods[arg[1]](x)
        return x


@dataclass
class Spec:
    net: FuzzNet
    step_mode: str
    shape: tuple[int, ...]  # [T, N, C, H, W]
    spike: str
    granularity: str
    named: tuple[str, str] | None  # (neuron name, granularity) forced by set_name


def random_spec(seed: int) -> Spec:
    """A random network of conv/BN/neuron blocks, pooling, residual sums, shortcuts into membranes,
    branches, scalar factors, dropout and a linear head."""
    r = random.Random(seed)
    step_mode = r.choice(["m", "s"])
    size = r.choice([8, 12, 16])
    c, h = 3, size
    mods: dict[str, nn.Module] = {}
    program: list[tuple[str, object]] = []
    neurons: list[str] = []
    sn_kind = r.choice(list(NEURON_FACTORIES))

    def add(name: str, m: nn.Module) -> None:
        mods[name] = m
        program.append(("mod", name))

    def new_neuron() -> None:
        name = f"sn{len(neurons)}"
        neurons.append(name)
        kind = sn_kind if r.random() < 0.8 else r.choice(list(NEURON_FACTORIES))
        add(name, NEURON_FACTORIES[kind](r))

    # the first block turns the analog input into spikes
    cout = r.choice([4, 8])
    add("conv0", layer.Conv2d(c, cout, 3, padding=1, bias=False))
    add("bn0", layer.BatchNorm2d(cout))
    new_neuron()
    c = cout
    saved: dict[str, tuple[int, int]] = {}
    for i in range(1, r.randint(2, 6)):
        choice = r.random()
        if choice < 0.35:  # conv block, maybe a shortcut into its membrane
            groups = r.choice([1, 2]) if c % 2 == 0 else 1
            cout = r.choice([c, 2 * c]) if c < 16 else c
            stride = 2 if h >= 8 and r.random() < 0.3 else 1
            k, dil = r.choice([(1, 1), (3, 1), (3, 2)])
            add(f"conv{i}", layer.Conv2d(c, cout, k, stride=stride, padding=dil * (k // 2), dilation=dil,
                                         groups=groups, bias=r.random() < 0.3))
            h = (h - 1) // stride + 1
            c = cout
            if r.random() < 0.8:
                add(f"bn{i}", layer.BatchNorm2d(c))
            match = [s for s, shp in saved.items() if shp == (c, h)]
            if match and r.random() < 0.5:
                program.append(("add", match[0]))  # a*s straight into the membrane
            new_neuron()
        elif choice < 0.5 and h >= 4:
            pool = r.choice([layer.MaxPool2d(2), layer.AvgPool2d(2), layer.AdaptiveAvgPool2d(h // 2)])
            add(f"pool{i}", pool)
            h //= 2
        elif choice < 0.65:  # save spikes for a later residual sum / shortcut
            program.append(("save", f"s{i}"))
            saved[f"s{i}"] = (c, h)
        elif choice < 0.75:
            match = [s for s, shp in saved.items() if shp == (c, h)]
            if match:
                program.append(("add", match[-1]))  # SEW-style sum of spike trains
        elif choice < 0.85:
            mods[f"ba{i}"] = layer.Conv2d(c, c, 3, padding=1, bias=False)
            mods[f"bb{i}"] = layer.Conv2d(c, c, 1, bias=False)
            program.append(("branch", (f"ba{i}", f"bb{i}")))  # one spike tensor, two consumers
            add(f"bn{i}", layer.BatchNorm2d(c))
            new_neuron()
        elif choice < 0.92:
            program.append(("scale", r.choice([0.5, 2.0, -1.0])))
        else:
            add(f"drop{i}", layer.Dropout(0.2))
    program.append(("flatten", None))
    features = c * h * h
    if r.random() < 0.6:
        hidden = r.choice([8, 16])
        add("fc_h", layer.Linear(features, hidden))
        if r.random() < 0.5:
            add("bn_h", layer.BatchNorm1d(hidden))
        new_neuron()
        features = hidden
    add("fc_out", layer.Linear(features, 5))

    batch_dims = 2 if step_mode == "m" else 1
    net = FuzzNet(program, mods, batch_dims)
    functional.set_step_mode(net, step_mode)
    named = (f"mods.{r.choice(neurons)}", r.choice(["layer", "channel", "element"])) if r.random() < 0.3 else None
    return Spec(net, step_mode, (2, 2, 3, size, size), r.choice(["real", "ternary"]),
                r.choice(["layer", "channel", "element"]), named)


def random_norse_spec(seed: int) -> Spec:
    """A random Norse network (`fuzz_norse`): lifted layers with LIF, cell loops, or a stepped SequentialState."""
    from fuzz_norse import random_norse_net

    r = random.Random(seed)
    size = r.choice([8, 12])
    net, style, neurons = random_norse_net(r, size)
    named = (r.choice(neurons), r.choice(["layer", "channel", "element"])) if r.random() < 0.3 else None
    return Spec(net, "s" if style == "step" else "m", (2, 2, 3, size, size), r.choice(["real", "ternary"]),
                r.choice(["layer", "channel", "element"]), named)


def random_snntorch_spec(seed: int) -> Spec:
    """A random snnTorch network (`fuzz_snntorch`): a stepped ``nn.Sequential``, tutorial 6's ``forward_pass``,
    or state in locals with the time loop in ``forward``."""
    from fuzz_snntorch import random_snntorch_net

    r = random.Random(seed)
    spike = r.choice(["real", "ternary"])
    net, style, shape, neurons = random_snntorch_net(r, r.choice([8, 12]), ternary=spike == "ternary")
    named = (r.choice(neurons), r.choice(["layer", "channel", "element"])) if neurons and r.random() < 0.3 else None
    return Spec(net, "s" if style == "sequential" else "m", shape, spike, r.choice(["layer", "channel", "element"]),
                named)


SPECS = {"spikingjelly": random_spec, "norse": random_norse_spec, "snntorch": random_snntorch_spec}


def _tensors(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output, in order (snnTorch's ``(spk, mem)`` is two)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def run_case(seed: int, framework: str = "spikingjelly") -> tuple[str, str]:
    """(outcome, detail) for one seed: 'exact', 'refused' or 'BUG'."""
    torch.manual_seed(seed)
    spec = SPECS[framework](seed)
    steps = spec.step_mode == "s"
    x = torch.randint(0, 9, spec.shape).float() / 4
    example = x[0] if steps else x
    config = rs.SpikeConfig()
    if spec.named:
        config.set_name(spec.named[0], rs.SpikeSpec(granularity=spec.named[1]))
    try:
        model = rs.convert_model(spec.net, example, spike=spec.spike, granularity=spec.granularity, config=config)
    except rs.UnsupportedPatternError as e:
        return "refused", f"convert: {e.node}: {e.reason}"
    model.train()
    out = stack_steps(run_steps(model, x)) if steps else model(x)  # a stepped Norse model carries its state
    sum(t.sum() for t in _tensors(out)).backward()
    reset(model)
    make_dyadic(model, example, seed=seed)
    amplitudes = list(rs.amplitude_parameters(model))
    if amplitudes and seed % 5 == 0:  # a negative entry anywhere, also before max pooling
        with torch.no_grad():
            amplitudes[seed % len(amplitudes)].view(-1)[0] = -0.75
    expected = _tensors(assert_exact_in_fp32(model, x, steps))
    try:
        deploy = rs.fold(model)
    except rs.UnsupportedPatternError as e:
        if "negative amplitude before max pooling" not in str(e):
            return "BUG", f"fold refused unexpectedly: {e}"
        return "refused", f"fold: {e.node}: {e.reason}"
    got = _tensors(run(deploy, x, steps))
    if len(got) != len(expected) or not all(torch.equal(g, e) for g, e in zip(got, expected)):
        diff = max(((g - e).abs().max().item() for g, e in zip(got, expected) if g.shape == e.shape), default=None)
        return "BUG", f"deploy differs by {diff} ({len(got)} output tensor(s), {len(expected)} expected)"
    allowed = {0.0, 1.0} if spec.spike == "real" else {-1.0, 0.0, 1.0}
    graded = _graded_skipped(model)
    for name, values in spike_values(deploy, x, steps).items():
        if name not in graded and not values <= allowed | {0.0, 1.0}:
            return "BUG", f"{name} emits {sorted(values)}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{seed}.onnx"
        try:
            rs.export_onnx(deploy, path, x)
        except rs.UnsupportedPatternError as e:
            return "refused", f"export: {e.node}: {e.reason}"
        report = rs.verify(model, path, x)
    unfolded = {v.neuron for v in report.violations}
    if any(not n.pure for n in report.neurons) or not (report.neurons or report.not_spiking) or not unfolded <= graded:
        return "BUG", f"ONNX spikes impure (purity {report.purity:.2%}, {len(report.violations)} violation(s))"
    if not report.bit_identical:
        return "BUG", f"onnxruntime differs from deploy by {report.comparison('deploy', 'onnx').max_abs}"
    conversion = rs.conversion_report(model)
    if not conversion.converted:  # binary from the start: exact, but nothing of ours was tested
        first = conversion.skipped[0] if conversion.skipped else None
        return "refused", (f"convert: {first.module}: nothing converted, {len(conversion.skipped)} skipped; first: "
                           f"{first.reason}" if first else "convert: model: no neurons found")
    skipped = len(conversion.skipped)
    kept = f", {len(graded)} keeping its graded_spikes_factor (verify names it)" if graded else ""
    silent = f", {len(report.silent_neurons)} silent" if report.silent_neurons else ""
    return "exact", f"{len(conversion.converted)} converted, {skipped} skipped{kept}{silent}"


def _graded_skipped(model: nn.Module) -> set[str]:
    """Neurons convert skipped that multiply their spikes by a factor of their own (snnTorch's
    ``graded_spikes_factor``): with no amplitude to move it into, the deploy neuron keeps it, so
    its spikes are graded and `verify` reports the factor left between it and its synapse."""
    return {s.module for s in rs.conversion_report(model).skipped
            if (a := adapter_for(model.get_submodule(s.module))) is not None
            and a.intrinsic_amplitude(model.get_submodule(s.module)) is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--framework", choices=list(SPECS), default="spikingjelly")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    counts: Counter[str] = Counter()
    for seed in range(args.start, args.start + args.n):
        try:
            outcome, detail = run_case(seed, args.framework)
        except Exception:
            outcome, detail = "BUG", traceback.format_exc(limit=3).strip().splitlines()[-1]
        counts[outcome] += 1
        if outcome != "exact":
            print(f"seed {seed}: {outcome}: {detail}", flush=True)
    print(f"{args.n} random networks: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if counts["BUG"] else 0


if __name__ == "__main__":
    sys.exit(main())
