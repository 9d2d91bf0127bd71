"""Export time: `export_onnx` (unrolled and stream) against a plain dynamo export of the original network.

One run, every variant interleaved (round robin, medians of ``--rounds``), on a folded
real-channel sew_resnet18 (32×32, example batch 2) and its original SpikingJelly network:

* ``plain T=4``: ``torch.onnx.export(net, (x,), dynamo=True)`` of the original multi-step
  network (its own neuron loops; the exporter's default ``optimize=True``), batch dynamic.
* ``before T=4``: `export_onnx` as it was before export compacted its graphs itself and
  skipped the exporter's second trace: the exporter's full onnxscript optimizer
  (``optimize=True``) in place of `sj_realspike.compact`, and torch's decomposition of the whole program.
* ``retrace T=4``: `export_onnx` with torch's decomposition of the whole program in place of
  `sj_realspike.decompose.lean_decompositions` (what skipping the second trace saves).
* ``ours T=…``: `export_onnx` unrolled; ``stream T=…``: ``export_onnx(..., stream=True)``
  (the example's ``T`` only sizes the check of its graph).

Every variant, ``plain`` included, takes the torchlib registry built once per process
(`sj_realspike.torchlib_cache`), as every export after a process's first does; the first
export of a process pays about 1.2 s more, whichever it is.

Then the graphs of ``before`` and ``ours`` at T=4 side by side: nodes, and onnxruntime time
per sequence (interleaved, N=8, 2 threads) — the compaction must not cost inference time.

    python bench/export_time.py                       # T = 4, 16, 64 for stream; 2 rounds
    python bench/export_time.py --rounds 3 --unrolled-steps 4 16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import onnx
import torch
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import sew_resnet

import sj_realspike as rs
from sj_realspike.torchlib_cache import cached_torchlib_registry
from _timing import interleaved_ms
from sj_realspike import export as export_module
from sj_realspike.report import format_table


def _full_optimizer(model: object) -> None:
    from onnxscript import optimizer

    optimizer.optimize_ir(model)


def _plain(net: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    functional.reset_net(net)
    with warnings.catch_warnings(), torch.no_grad(), cached_torchlib_registry():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=True, verbose=False, input_names=["x"],
                          dynamic_shapes=({1: torch.export.Dim("batch", min=1)},))
    functional.reset_net(net)


def _ort_ms(paths: dict[str, Path], x, threads: int, repeats: int) -> dict[str, float]:
    runners = {k: rs.OnnxRunner(p, threads=threads) for k, p in paths.items()}
    return interleaved_ms({k: functools.partial(run, x) for k, run in runners.items()}, repeats, warmup=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream-steps", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--unrolled-steps", type=int, nargs="+", default=[4])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="onnxruntime rounds for the inference check")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.getLogger("sj_realspike").setLevel(logging.ERROR)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"sew_resnet18 real-channel, {args.size}x{args.size}, example batch 2, torch {torch.__version__}, "
          f"1-min load average {load:.2f} (other processes distort timings)")
    net = sew_resnet.sew_resnet18(spiking_neuron=neuron.IFNode, cnf="ADD", num_classes=10)
    functional.set_step_mode(net, "m")

    def example(steps: int) -> torch.Tensor:
        return torch.rand(steps, 2, 3, args.size, args.size)

    model = rs.convert_model(net, example(4), spike="real", granularity="channel")
    deploy = rs.fold(model)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        variants: dict[str, Callable[[], None]] = {"plain T=4": lambda: _plain(net, example(4), tmp / "plain.onnx")}

        def before() -> None:
            with mock.patch.object(export_module, "compact", _full_optimizer), \
                    mock.patch.object(export_module, "lean_decompositions", contextlib.nullcontext):
                rs.export_onnx(deploy, tmp / "before.onnx", example(4))

        def retrace() -> None:
            with mock.patch.object(export_module, "lean_decompositions", contextlib.nullcontext):
                rs.export_onnx(deploy, tmp / "retrace.onnx", example(4))

        variants["before T=4"] = before
        variants["retrace T=4"] = retrace
        for t in args.unrolled_steps:
            variants[f"ours T={t}"] = lambda t=t: rs.export_onnx(deploy, tmp / f"ours{t}.onnx", example(t))
        for t in args.stream_steps:
            variants[f"stream T={t}"] = lambda t=t: rs.export_onnx(deploy, tmp / f"stream{t}.onnx", example(t),
                                                                    stream=True)
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        variants["plain T=4"]()  # the exporter's first call pays for its imports and caches
        for r in range(args.rounds):
            for name, export in variants.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                export()
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()), flush=True)
        # Export is single-threaded Python: its CPU time is what it costs, on a busy machine too.
        s = {k: statistics.median(v) for k, v in cpu.items()}
        wall = {k: statistics.median(v) for k, v in seconds.items()}
        nodes = {k: len(onnx.load(tmp / f).graph.node) for k, f in
                 [("plain T=4", "plain.onnx"), ("before T=4", "before.onnx"), ("retrace T=4", "retrace.onnx"),
                  ("ours T=4", "ours4.onnx")]
                 + [(f"stream T={t}", f"stream{t}.onnx") for t in args.stream_steps] if (tmp / f).exists()}
        print(f"\nmedian export seconds of {args.rounds} interleaved rounds (ratios below: CPU seconds)")
        print(format_table(["export", "CPU s", "wall s", "ONNX nodes"],
                           [[k, f"{v:.1f}", f"{wall[k]:.1f}", nodes.get(k, "")] for k, v in s.items()]))
        t0 = args.stream_steps[0]
        rows = [["ours / plain dynamo export of the original, T=4 (target <= 1)",
                 f"{s['ours T=4'] / s['plain T=4']:.2f}x"],
                ["before / ours, T=4 (compaction instead of the full optimizer, no second trace)",
                 f"{s['before T=4'] / s['ours T=4']:.2f}x"],
                ["retrace / ours, T=4 (what skipping the second trace saves)",
                 f"{s['retrace T=4'] / s['ours T=4']:.2f}x"],
                [f"before (unrolled, T=4) / stream T={t0} (target >= 2)",
                 f"{s['before T=4'] / s[f'stream T={t0}']:.2f}x"]]
        rows += [[f"stream T={t} / stream T={t0} (target ~1: flat in T)",
                  f"{s[f'stream T={t}'] / s[f'stream T={t0}']:.2f}x"] for t in args.stream_steps[1:]]
        rows += [[f"ours T={t} / ours T=4 (unrolled grows with T)", f"{s[f'ours T={t}'] / s['ours T=4']:.2f}x"]
                 for t in args.unrolled_steps if t != 4]
        print(format_table(["ratio", "value"], rows))

        x = torch.rand(4, 8, 3, args.size, args.size).numpy()
        ms = _ort_ms({"before T=4": tmp / "before.onnx", "ours T=4": tmp / "ours4.onnx"}, x, args.threads,
                     args.repeats)
        print(f"\nonnxruntime, median ms per sequence [4, 8, 3, {args.size}, {args.size}], {args.threads} threads, "
              f"{args.repeats} interleaved rounds")
        print(format_table(["graph", "nodes", "ms"], [[k, nodes[k], f"{v:.2f}"] for k, v in ms.items()]))
        print(f"ours / before: {ms['ours T=4'] / ms['before T=4']:.2f}x (target ~1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
