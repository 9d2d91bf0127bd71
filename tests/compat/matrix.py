"""SpikingJelly compatibility matrix: convert → forward/backward → fold → export → verify.

Each cell ends as ``pass`` (verify: ONNX bit-identical to the deploy model and to the trained
model on a dyadic version of the net, 100 % spike purity, at least one neuron converted),
``refused`` (a clear error naming the node, or no neuron converted: the notes say why each was
skipped) or ``fail`` (anything else: a bug). Every cell records how many neuron modules
convert found and converted, and why the others were skipped.

Three tables, written to docs/compatibility.md with a per-family summary line on top:

- ``models``: every factory and model class of ``spikingjelly.activation_based.model``
  (`zoo_models.MODEL_CASES`), smallest configs, LIF, real spikes, channel granularity;
- ``wild``: networks written by others (`wild_cases.WILD_CASES`: tests/wild.py, SpikingJelly's
  example scripts, every SpikingJelly neuron type swapped into a small conv net), same settings;
- ``zoo``: 10 zoo models × IF/LIF/PLIF × real/ternary × layer/channel/element × step modes;
- ``snntorch``: snnTorch's tutorial networks (`snntorch_cases.SNNTORCH_CASES`), same settings as ``wild``;
- ``norse``: Norse's conv and MLP examples (`norse_cases.NORSE_CASES`), same settings as ``wild``.

    python tests/compat/matrix.py --out docs/compatibility.md [--tables models wild zoo] [--step-modes m s] [--jobs 2]
                                  [--zoo-sample K]

Cells run in ``--jobs`` worker processes (one torch thread each; the ONNX export that
dominates a cell is single-threaded Python), replaced every four cells to bound their
memory; a cell that runs longer than ``--cell-timeout`` seconds ends as ``fail``. Every
finished cell is appended to a JSON-lines log (``--log``, default: the output path with
``.jsonl``), and a rerun skips the cells already there, so an interrupted run resumes where
it stopped; the markdown is written from every logged cell of the tables, run now or before.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import re
import signal
import subprocess
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
from cases import FAMILIES, Case
from sj_realspike.atomic import atomic_write
from sj_realspike.frameworks import run_steps
from sj_realspike.layout import stack_steps
from sj_realspike.testing import make_dyadic
from norse_cases import NORSE_CASES
from snntorch_cases import SNNTORCH_CASES
from wild_cases import NOT_SWAPPED, WILD_CASES
from zoo_models import MODEL_CASES

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
CASES: dict[str, dict[str, Case]] = {"models": {c.name: c for c in MODEL_CASES},
                                     "wild": {c.name: c for c in WILD_CASES},
                                     "snntorch": {c.name: c for c in SNNTORCH_CASES},
                                     "norse": {c.name: c for c in NORSE_CASES}}
TABLES = ("models", "wild", "snntorch", "norse", "zoo")  # the order they run in and appear in


@dataclass
class Cell:
    model: str
    neuron: str
    spike: str
    granularity: str
    step_mode: str
    table: str = "zoo"
    status: str = ""
    note: str = ""  # the error (refused/fail) or what verify found wrong
    seconds: float = 0.0
    converted: int | None = None  # neuron modules given an amplitude (None: convert raised)
    total: int | None = None  # neuron modules convert found
    skipped: str = ""  # `skipped_note` of the neurons convert skipped
    silent: int = 0  # deploy neurons that never fired in verify (their synapses went unchecked)
    commit: str = ""  # the checkout's HEAD when the worker that ran the cell imported sj_realspike


class CellTimeout(Exception):
    """A cell ran past ``--cell-timeout``."""


def _inputs(cell: Cell) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, bool, bool]:
    """``(net, example for convert, sequence for export/verify, step over the sequence?, backward?)``."""
    if cell.table == "zoo":
        sn, kw = NEURONS[cell.neuron]
        net = MODELS[cell.model](sn, kw)
        functional.set_step_mode(net, cell.step_mode)
        x = torch.randint(0, 9, (2, 2, 3, 32, 32)).float() / 4  # [T, N, C, H, W], dyadic
        steps = cell.step_mode == "s"
        return net, x[0] if steps else x, x, steps, True
    case = CASES[cell.table][cell.model]
    net, x = case.build()
    return net, x[0] if case.single_step else x, x, case.single_step, case.backward


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def run_cell(cell: Cell, workdir: Path) -> Cell:
    """Fill in the cell's results by running the whole pipeline once."""
    start = time.perf_counter()
    try:
        net, example, sequence, steps, backward = _inputs(cell)
        model = rs.convert_model(net, example, spike=cell.spike, granularity=cell.granularity)
        conversion = rs.conversion_report(model)
        cell.converted, cell.total = len(conversion.converted), conversion.total
        cell.skipped = skipped_note([s.reason for s in conversion.skipped])
        out = stack_steps(run_steps(model, sequence)) if steps else model(example)  # state carried as its framework does
        if backward:  # a training step's gradients, through amplitudes and surrogates
            sum(t.sum() for t in _tensors(out)).backward()
        make_dyadic(model, example)
        deploy = rs.fold(model)
        path = workdir / "cell.onnx"
        rs.export_onnx(deploy, path, sequence)  # single-step models export the whole [T, N, ...] sequence too
        report = rs.verify(model, path, sequence)
    except rs.RealSpikeError as e:
        # Refused only with a clear reason naming the node; a wrapped exporter failure is a bug.
        cell.status = "refused" if "node '" in str(e) else "fail"
        cell.note = str(e).split(". ")[0]
    except Exception as e:  # a bug: record it, keep going
        cell.status, cell.note = "fail", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        traceback.print_exc()
    else:
        ok = report.pure and report.bit_identical and report.comparison("trained", "deploy").identical
        cell.status = "pass" if ok else "fail"
        cell.silent = len(report.silent_neurons)
        if not ok:
            cell.note = f"purity {report.purity:.2%}, bit-identical {report.bit_identical}"
        elif cell.converted == 0:  # binary spikes from the start: the pipeline ran, but nothing was folded
            cell.status = "refused"
            cell.note = f"nothing converted: none of the {cell.total} neuron(s) could be given an amplitude"
    cell.seconds = time.perf_counter() - start
    return cell


def skipped_note(reasons: list[str]) -> str:
    """``'12 neuron(s) skipped: 11× <why>; 1× <why>'``, each why without node names or details."""
    if not reasons:
        return ""
    whys = Counter(_gist(r) for r in reasons)
    return f"{len(reasons)} neuron(s) skipped: " + "; ".join(f"{n}× {why}" for why, n in whys.most_common())


def _gist(reason: str) -> str:
    """A skip reason with node types for node names, values and shapes elided (``…``), up to its first
    top-level ': ' or ', which'."""
    reason = re.sub(r"'[^']*' \(([\w.]+)\)", r"\1", reason).strip()
    while True:  # innermost brackets of numbers (shapes, value sets, ranges), then lists of those
        shorter = re.sub(r"tensor …", "…", re.sub(r"[\[{(][\d\s,.+\-e…]*[\]})]", "…", reason))
        shorter = re.sub(r"\d+ distinct, in …", "…", shorter)
        if shorter == reason:
            break
        reason = shorter
    depth = 0
    for i, ch in enumerate(reason):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and (reason.startswith(": ", i) or reason.startswith(", which", i)):
            return reason[:i]
    return reason


SPIKES, GRANULARITIES = ("real", "ternary"), ("layer", "channel", "element")


def cells(tables: list[str], models: list[str], step_modes: list[str], zoo_sample: int | None = None) -> list[Cell]:
    """Every cell of ``tables`` (``models`` and ``step_modes`` select the zoo table's rows).

    ``zoo_sample=k`` keeps ``k`` zoo cells per model, chosen so that across models every neuron,
    spike kind, granularity and step mode appears about equally often (a Latin-square walk),
    for a re-run that fits in minutes instead of hours.
    """
    out = []
    for table in tables:
        if table == "zoo" and zoo_sample is not None:
            neurons = list(NEURONS)
            for i, m in enumerate(models):
                for j in range(zoo_sample):
                    out.append(Cell(m, neurons[(i + j) % 3], SPIKES[(i // 3 + j) % 2],
                                    GRANULARITIES[(i + 2 * j) % 3], step_modes[(i + j) % len(step_modes)]))
        elif table == "zoo":
            out += [Cell(m, n, s, g, sm) for m, n, s, g, sm in itertools.product(
                models, NEURONS, SPIKES, GRANULARITIES, step_modes)]
        else:
            out += [Cell(c.name, c.neuron, "real", "channel", "s" if c.single_step else "m", table=table)
                    for c in CASES[table].values()]
    return out


def _counts(c: Cell) -> str:
    return "—" if c.total is None else f"{c.converted} / {c.total}"


def _notes(c: Cell) -> str:
    parts = [c.note, c.skipped, f"{c.silent} neuron(s) silent in verify" if c.silent else ""]
    return "; ".join(p for p in parts if p).replace("|", "/")


def _tally(results: list[Cell]) -> str:
    counts = Counter(c.status for c in results)
    return f"{counts['pass']} pass, {counts['refused']} refused, {counts['fail']} fail"


def family_summary(results: list[Cell]) -> list[str]:
    """One line per family: neurons converted over neurons found, in the models and wild tables."""
    lines = []
    for family in FAMILIES:
        group = [c for c in results if c.table != "zoo" and CASES[c.table][c.model].family == family]
        counted = [c for c in group if c.total is not None]
        converted, total = sum(c.converted for c in counted), sum(c.total for c in counted)
        share = f" ({converted / total:.0%})" if total else ""
        missing = len(group) - len(counted)
        uncounted = f", {missing} refused at convert (not counted)" if missing else ""
        lines.append(f"- **{family}**: {converted} / {total} neurons converted{share} in {len(group)} networks "
                     f"({_tally(group)}){uncounted}")
    return lines


def to_markdown(results: list[Cell], expected: dict[str, int]) -> str:
    """docs/compatibility.md from the finished ``results``; ``expected`` is each table's full cell count."""
    by_table = {t: [c for c in results if c.table == t] for t in TABLES}

    def header(table: str, title: str) -> list[str]:
        rows = by_table[table]
        ran = f"{len(rows)} cells" if len(rows) == expected.get(table, len(rows)) else \
            f"{len(rows)} of {expected[table]} cells run"
        return [f"## {title}", "", f"**{ran}: {_tally(rows)}.**", ""]

    lines = ["# SpikingJelly compatibility", "",
             "Generated by `python tests/compat/matrix.py --out docs/compatibility.md`. Each cell: convert → "
             "forward and backward (a training step's gradients) → fold → ONNX export → `verify` on a dyadic copy "
             "of the net (pass = ONNX bit-identical to the deploy model and to the trained model, 100 % spike "
             "purity, at least one neuron converted; refused = a clear error naming the node, or no neuron "
             "converted; fail = anything else, a bug). "
             "\"converted / total\": neuron modules given an amplitude over neuron modules found (a module called "
             "in a time loop counts once); the notes say why the others were skipped.", "",
             f"Cells ran at commit(s) {', '.join(sorted({c.commit for c in results if c.commit})) or 'unknown'}.",
             "",
             "Neurons converted per family (models and wild tables: real spikes, channel granularity):", "",
             *family_summary(results), ""]
    if by_table["models"]:
        lines += header("models", "Every model in `spikingjelly.activation_based.model`")
        lines += ["Smallest configs: T=2, N=2 (T=5 where the model fixes it), small images, few channels or blocks "
                  "where the factory allows (else its class, narrowed: see config); the factory's own LIF where it "
                  "has one, else `LIFNode(tau=2)`; real spikes, channel granularity, multi-step (OTTT: single-step, "
                  "its design).", "",
                  "| module | factory / class | config | neuron | converted / total | result | notes |",
                  "|---|---|---|---|---|---|---|"]
        for c in by_table["models"]:
            case = CASES["models"][c.model]
            lines.append(f"| {case.source} | {c.model} | {case.config} | {case.neuron} | {_counts(c)} | {c.status} | "
                         f"{_notes(c)} |")
        lines.append("")
    if by_table["wild"]:
        lines += header("wild", "Networks written by others: tests/wild.py, SpikingJelly's example scripts, "
                                "neuron types")
        lines += ["Each network in its own input layout (image inputs repeated inside `forward`, user time loops, "
                  "[N, C, T, F] spectrograms); single-step networks are fed one step per call and exported over the "
                  "whole [T, N, ...] sequence. Real spikes, channel granularity.", "",
                  "| network | source | what it exercises | converted / total | result | notes |",
                  "|---|---|---|---|---|---|"]
        for c in by_table["wild"]:
            case = CASES["wild"][c.model]
            what = case.config if len(case.config) <= 160 else case.config[:157] + "..."
            lines.append(f"| {c.model} | {case.source} | {what.replace('|', '/')} | {_counts(c)} | {c.status} | "
                         f"{_notes(c)} |")
        lines += ["", "Neuron classes of `spikingjelly.activation_based.neuron` not swapped into the conv net: "
                  + "; ".join(f"`{name}` ({why})" for name, why in NOT_SWAPPED.items()) + ".", ""]
    if by_table["snntorch"]:
        lines += header("snntorch", "snnTorch: the tutorials' networks")
        lines += ["snnTorch's own layer sizes, T=2, N=2; networks with `init_hidden=True` neurons are stepped by the "
                  "caller ([N, ...] per call) and exported over the whole [T, N, ...] sequence, networks that keep "
                  "`(spk, mem)` in locals run their own time loop. Real spikes, channel granularity. Tests with "
                  "every neuron type, ternary `TernaryLeaky`, layer/element granularity and bit-exact folds: "
                  "tests/test_snntorch.py. NIR export: `Leaky(reset_mechanism=\"zero\")` → `LIF` and "
                  "`Synaptic(reset_mechanism=\"zero\", reset_delay=False)` → `CubaLIF`, read back bit-identical by "
                  "snnTorch's `import_from_nir`; the tutorial nets (max pooling, subtract reset, `output=True` "
                  "membrane) are refused naming the node.", "",
                  "| network | source | what it exercises | neuron | converted / total | result | notes |",
                  "|---|---|---|---|---|---|---|"]
        for c in by_table["snntorch"]:
            case = CASES["snntorch"][c.model]
            lines.append(f"| {c.model} | {case.source} | {case.config.replace('|', '/')} | {case.neuron} | "
                         f"{_counts(c)} | {c.status} | {_notes(c)} |")
        lines.append("")
    if by_table["norse"]:
        lines += header("norse", "Norse: its conv and MLP examples")
        lines += ["Norse's own models (`norse.torch.models.conv`, the MNIST task), the MNIST tutorial's network and "
                  "the quick-start's `SequentialState` idioms, with Norse's default parameters, T=2, N=2; cell loops "
                  "in `forward` run as written, single-step models are stepped as `out, state = model(x[t], state)` "
                  "and exported over the whole [T, N, ...] sequence. Real spikes, channel granularity. Tests with "
                  "ternary twins, layer/element granularity and bit-exact folds: tests/test_norse.py.", "",
                  "| network | source | what it exercises | neuron | converted / total | result | notes |",
                  "|---|---|---|---|---|---|---|"]
        for c in by_table["norse"]:
            case = CASES["norse"][c.model]
            lines.append(f"| {c.model} | {case.source} | {case.config.replace('|', '/')} | {case.neuron} | "
                         f"{_counts(c)} | {c.status} | {_notes(c)} |")
        lines.append("")
    if by_table["zoo"]:
        lines += header("zoo", "SpikingJelly zoo × neurons × spike kinds × granularities × step modes")
        lines += ["Input 2×2×3×32×32 (T, N, C, H, W), the factories' full sizes.", "",
                  "| model | neuron | spike | granularity | step mode | converted / total | result | notes |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in by_table["zoo"]:
            lines.append(f"| {c.model} | {c.neuron} | {c.spike} | {c.granularity} | {c.step_mode} | {_counts(c)} | "
                         f"{c.status} | {_notes(c)} |")
    return "\n".join(lines).rstrip() + "\n"


def _key(cell: Cell) -> tuple[str, ...]:
    return cell.table, cell.model, cell.neuron, cell.spike, cell.granularity, cell.step_mode


_COMMIT = ""


def _head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _worker_init() -> None:
    global _COMMIT
    torch.set_num_threads(1)
    _COMMIT = _head()


def _timeout(signum, frame):
    raise CellTimeout("the cell ran past --cell-timeout")


def _run_in_worker(job: tuple[Cell, int]) -> Cell:
    cell, timeout = job
    torch.manual_seed(0)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(timeout)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cell = run_cell(cell, Path(tmp))
        cell.commit = _COMMIT
        return cell
    finally:
        signal.alarm(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/compatibility.md")
    p.add_argument("--log", default=None, help="JSON-lines log of finished cells (default: OUT with .jsonl)")
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                   help="the zoo table's models")
    p.add_argument("--step-modes", nargs="+", default=["m", "s"], choices=["m", "s"], help="the zoo table's")
    p.add_argument("--cases", nargs="+", default=None, metavar="NAME",
                   help="run only these rows of the models/wild tables")
    p.add_argument("--zoo-sample", type=int, default=None, metavar="K",
                   help="run only K zoo cells per model, spread over neurons/spikes/granularities/step modes")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds before a cell ends as fail")
    args = p.parse_args(argv)
    log = Path(args.log or Path(args.out).with_suffix(".jsonl"))
    todo = [c for c in cells(args.tables, args.models, args.step_modes, args.zoo_sample)
            if args.cases is None or c.table == "zoo" or c.model in args.cases]
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
        jobs = [(c, args.cell_timeout) for c in pending]
        for i, cell in enumerate(pool.imap_unordered(_run_in_worker, jobs), 1):
            done[_key(cell)] = cell
            f.write(json.dumps(dataclasses.asdict(cell)) + "\n")
            f.flush()
            print(f"[{i}/{len(pending)}] {cell.table}: {cell.model} {cell.neuron} {cell.spike} {cell.granularity} "
                  f"{cell.step_mode}: {cell.status} {_counts(cell)} ({cell.seconds:.0f}s) {_notes(cell)}", flush=True)
    everything = cells(list(TABLES), list(MODELS), ["m", "s"])
    results = [done[_key(c)] for c in everything if _key(c) in done]
    expected = Counter(c.table for c in everything)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(to_markdown(results, expected)))
    return 1 if any(c.status == "fail" for c in results if _key(c) in {_key(t) for t in todo}) else 0


if __name__ == "__main__":
    sys.exit(main())
