"""SpikingJelly zoo compatibility matrix: convert → forward/backward → fold → export → verify.

Each cell ends as ``pass`` (verify: ONNX bit-identical to the deploy model on a dyadic
version of the net, 100 % spike purity), ``refused`` (a clear error naming the node,
e.g. a network torch.fx cannot trace) or ``fail`` (anything else: a bug). Neurons
skipped at conversion are counted in the notes.

Writes the markdown table kept in docs/compatibility.md:

    python tests/compat/matrix.py --out docs/compatibility.md [--step-modes m s] [--jobs 2]

Cells run in ``--jobs`` worker processes (one torch thread each; the ONNX export that
dominates a cell is single-threaded Python), replaced every four cells to bound their
memory. Every finished cell is appended to a JSON-lines log (``--log``, default: the output path with ``.jsonl``), and a rerun
skips the cells already there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import (ms_resnet, parametric_lif_net, sew_resnet, spikformer, spiking_resnet,
                                                  spiking_vgg)

import sj_realspike as rs
from sj_realspike.atomic import atomic_write
from sj_realspike.testing import make_dyadic

NEURONS = {"IF": (neuron.IFNode, {}), "LIF": (neuron.LIFNode, {"tau": 2.0}),
           "PLIF": (neuron.ParametricLIFNode, {"init_tau": 2.0})}
MODELS = {
    "spiking_resnet18": lambda sn, kw: spiking_resnet.spiking_resnet18(spiking_neuron=sn, num_classes=10, **kw),
    "spiking_resnet34": lambda sn, kw: spiking_resnet.spiking_resnet34(spiking_neuron=sn, num_classes=10, **kw),
    "sew_resnet18 (ADD)": lambda sn, kw: sew_resnet.sew_resnet18(spiking_neuron=sn, cnf="ADD", num_classes=10, **kw),
    "sew_resnet18 (AND)": lambda sn, kw: sew_resnet.sew_resnet18(spiking_neuron=sn, cnf="AND", num_classes=10, **kw),
    "sew_resnet18 (IAND)": lambda sn, kw: sew_resnet.sew_resnet18(spiking_neuron=sn, cnf="IAND", num_classes=10, **kw),
    "spiking_vgg11": lambda sn, kw: spiking_vgg.spiking_vgg11(spiking_neuron=sn, num_classes=10, **kw),
    "spiking_vgg11_bn": lambda sn, kw: spiking_vgg.spiking_vgg11_bn(spiking_neuron=sn, num_classes=10, **kw),
    "CIFAR10Net (16 ch)": lambda sn, kw: parametric_lif_net.CIFAR10Net(channels=16, spiking_neuron=sn, **kw),
    "ms_resnet18": lambda sn, kw: ms_resnet.ms_resnet18(spiking_neuron=sn, num_classes=10, **kw),
    "spikformer_cifar10": lambda sn, kw: spikformer.spikformer_cifar10(T=2, num_classes=10, spiking_neuron=sn, **kw),
}


@dataclass
class Cell:
    model: str
    neuron: str
    spike: str
    granularity: str
    step_mode: str
    status: str = ""
    note: str = ""
    seconds: float = 0.0


def run_cell(cell: Cell, workdir: Path) -> Cell:
    """Fill in ``cell.status`` and ``cell.note`` by running the whole pipeline once."""
    start = time.perf_counter()
    sn, kw = NEURONS[cell.neuron]
    net = MODELS[cell.model](sn, kw)
    functional.set_step_mode(net, cell.step_mode)
    x = torch.randint(0, 9, (2, 2, 3, 32, 32)).float() / 4  # [T, N, C, H, W], dyadic
    example = x if cell.step_mode == "m" else x[0]
    try:
        model = rs.convert_model(net, example, spike=cell.spike, granularity=cell.granularity)
        out = torch.stack([model(xt) for xt in x]) if cell.step_mode == "s" else model(x)
        out.sum().backward()  # a training step's gradients, through amplitudes and surrogates
        make_dyadic(model, example)
        deploy = rs.fold(model)
        path = workdir / "cell.onnx"
        rs.export_onnx(deploy, path, x)  # single-step models export the whole [T, N, ...] sequence too
        report = rs.verify(model, path, x)
    except rs.RealSpikeError as e:
        cell.status, cell.note = "refused", str(e).split(". ")[0]
    except Exception as e:  # a bug: record it, keep going
        cell.status, cell.note = "fail", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        traceback.print_exc()
    else:
        skipped = rs.conversion_report(model).skipped
        ok = report.pure and report.bit_identical and report.comparison("trained", "deploy").identical
        cell.status = "pass" if ok else "fail"
        cell.note = _skipped_note([n.reason for n in skipped])
        if not ok:
            cell.note = f"purity {report.purity:.2%}, bit-identical {report.bit_identical}"
    cell.seconds = time.perf_counter() - start
    return cell


def _skipped_note(reasons: list[str]) -> str:
    """``'12 neuron(s) skipped: 11× <why>; 1× <why>'``, each why without node names or details."""
    if not reasons:
        return ""
    whys = Counter(_gist(r) for r in reasons)
    return f"{len(reasons)} neuron(s) skipped: " + "; ".join(f"{n}× {why}" for why, n in whys.most_common())


def _gist(reason: str) -> str:
    """A skip reason with node types for node names, up to its first top-level ': ' or ', which'."""
    reason = re.sub(r"'[^']*' \(([\w.]+)\)", r"\1", reason).strip()
    depth = 0
    for i, ch in enumerate(reason):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and (reason.startswith(": ", i) or reason.startswith(", which", i)):
            return reason[:i]
    return reason


def cells(models: list[str], step_modes: list[str]) -> list[Cell]:
    return [Cell(m, n, s, g, sm) for m, n, s, g, sm in itertools.product(
        models, NEURONS, ("real", "ternary"), ("layer", "channel", "element"), step_modes)]


def to_markdown(results: list[Cell]) -> str:
    counts = {s: sum(c.status == s for c in results) for s in ("pass", "refused", "fail")}
    lines = ["# SpikingJelly zoo compatibility", "",
             "Generated by `python tests/compat/matrix.py --out docs/compatibility.md`. Each cell: convert → "
             "forward and backward (a training step's gradients) → fold → ONNX export → `verify` on a dyadic copy "
             "of the net (pass = ONNX bit-identical to the deploy model and to the trained model, 100 % spike "
             "purity). Input 2×2×3×32×32 (T, N, C, H, W).",
             "", f"**{len(results)} cells: {counts['pass']} pass, {counts['refused']} refused, {counts['fail']} fail.**",
             "", "| model | neuron | spike | granularity | step mode | result | notes |", "|---|---|---|---|---|---|---|"]
    for c in results:
        lines.append(f"| {c.model} | {c.neuron} | {c.spike} | {c.granularity} | {c.step_mode} | {c.status} | "
                     f"{c.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _key(cell: Cell) -> tuple[str, ...]:
    return cell.model, cell.neuron, cell.spike, cell.granularity, cell.step_mode


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_in_worker(cell: Cell) -> Cell:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        return run_cell(cell, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/compatibility.md")
    p.add_argument("--log", default=None, help="JSON-lines log of finished cells (default: OUT with .jsonl)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    p.add_argument("--step-modes", nargs="+", default=["m", "s"], choices=["m", "s"])
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    args = p.parse_args(argv)
    log = Path(args.log or Path(args.out).with_suffix(".jsonl"))
    todo = cells(args.models, args.step_modes)
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            cell = Cell(**json.loads(line))
            done[_key(cell)] = cell
    pending = [c for c in todo if _key(c) not in done]
    print(f"{len(todo)} cells, {len(todo) - len(pending)} already in {log}", flush=True)
    # Fresh workers every few cells: the exporter's caches grow (a worker that had run some
    # 180 cells had reached 10 GiB and was killed for memory, which leaves Pool waiting).
    context = multiprocessing.get_context("spawn")
    with (context.Pool(args.jobs, initializer=_worker_init, maxtasksperchild=4) as pool,
          log.open("a") as f):
        for i, cell in enumerate(pool.imap_unordered(_run_in_worker, pending), 1):
            done[_key(cell)] = cell
            f.write(json.dumps(dataclasses.asdict(cell)) + "\n")
            f.flush()
            print(f"[{i}/{len(pending)}] {cell.model} {cell.neuron} {cell.spike} {cell.granularity} "
                  f"{cell.step_mode}: {cell.status} ({cell.seconds:.0f}s) {cell.note}", flush=True)
    results = [done[_key(c)] for c in todo]
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(to_markdown(results)))
    return 1 if any(c.status == "fail" for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
