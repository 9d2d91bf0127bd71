"""What ``tie_summed`` saves at inference: tied Real Spike deploy model against the vanilla one in onnxruntime.

One run, interleaved (round robin, medians), CPU, 2 threads by default, sew_resnet18 (SEW ``ADD``):

* ``vanilla``: the network folded as is (BN fused, binary IF neurons).
* ``real-channel``: Real Spike, channel amplitudes, folded: each conv reading a residual sum
  of k spike trains gets k scaled copies.
* ``real-channel-tied``: the same with ``tie_summed=True``: one amplitude per residual
  stream, so fold scales the vanilla model's own convs.

All three are exported with `export_onnx`; the script prints their Conv/Gemm counts and
weight shapes (tied must equal vanilla), parameters, and the time ratios (target: tied
≤ 1.05× vanilla).

    python bench/tied.py                   # T=4, N=8 and N=1, 32x32, 2 threads
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from infer import ARCHS, _calibrate, _time
from onnx import numpy_helper
from spikingjelly.activation_based import functional

import sj_realspike as rs
from sj_realspike.fold import NotConvertedWarning
from sj_realspike.report import format_table


def _synapses(path: Path) -> Counter:
    """``(op, weight shape)`` of every Conv/Gemm/MatMul node of an ONNX file, counted."""
    model = onnx.load(str(path))
    weights = {t.name: tuple(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    return Counter((n.op_type, weights.get(n.input[1])) for n in model.graph.node
                   if n.op_type in ("Conv", "Gemm", "MatMul"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="sew_resnet18")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.getLogger("sj_realspike").setLevel(logging.ERROR)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"{args.arch}, T={args.time_steps}, {args.size}x{args.size}, {args.threads} threads, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"1-min load average {load:.2f} (other processes distort timings with few threads)")

    T = args.time_steps
    calib = torch.rand(T, max(args.batch), 3, args.size, args.size)
    net = ARCHS[args.arch]()
    functional.set_step_mode(net, "m")
    _calibrate(net, calib)
    example = calib[:, :2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvertedWarning)
        deploys = {"vanilla": rs.fold(net, example_input=example)}
    trained = {}
    for tag, tie in (("real-channel", False), ("real-channel-tied", True)):
        model = rs.convert_model(net, example, granularity="channel", tie_summed=tie)
        with torch.no_grad():
            for a in rs.amplitude_parameters(model):
                a.uniform_(0.5, 1.5)
        trained[tag] = model
        deploys[tag] = rs.fold(model)

    with tempfile.TemporaryDirectory() as tmpdir:
        paths = {tag: rs.export_onnx(d, Path(tmpdir) / f"{tag}.onnx", example) for tag, d in deploys.items()}
        synapses = {tag: _synapses(p) for tag, p in paths.items()}
        rows = [[tag, sum(s.values()), f"{sum(p.numel() for p in deploys[tag].parameters()):,}",
                 "yes" if s == synapses["vanilla"] else "no"] for tag, s in synapses.items()]
        print("\n" + format_table(["deploy model", "Conv/Gemm nodes", "parameters", "same synapses as vanilla"],
                                  rows))
        runners = {tag: rs.OnnxRunner(p, threads=args.threads) for tag, p in paths.items()}
        for n in args.batch:
            x = torch.rand(T, n, 3, args.size, args.size).numpy()
            repeats = args.repeats if n > 1 else args.repeats * 3
            ms = _time(runners, dict.fromkeys(runners, x), repeats)
            print(f"\nN={n}: median ms per forward of [T={T}, N={n}] in onnxruntime (interleaved, {repeats} rounds)")
            print(format_table(["deploy model", "ms"], [[k, f"{v:.2f}"] for k, v in ms.items()]))
            print(format_table(["ratio", "value"], [
                ["real-channel-tied / vanilla (target <= 1.05x)", f"{ms['real-channel-tied'] / ms['vanilla']:.2f}x"],
                ["real-channel (untied) / vanilla", f"{ms['real-channel'] / ms['vanilla']:.2f}x"],
                ["real-channel (untied) / real-channel-tied", f"{ms['real-channel'] / ms['real-channel-tied']:.2f}x"],
            ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
