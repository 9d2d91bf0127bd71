"""Stream vs unrolled graph in onnxruntime: time per sequence, and per step of a stream.

One run, interleaved (round robin, medians), CPU, 2 threads by default, folded
sew_resnet18 (vanilla: BN fused, binary IF; and real-channel), 32×32:

* ``unrolled``: `export_onnx` (``T`` unrolled), one ``session.run`` per sequence ``[T, N, …]``.
* ``stream``: ``export_onnx(..., stream=True)``; `OnnxRunner` runs the ``T`` steps one by one,
  feeding each step's membranes to the next (what ``runner(x)`` does for a stream graph).
* ``stream step``: one `OnnxRunner.step` (the latency of one frame of a live stream).
* ``ANN at once`` / ``ANN step by step``: the vanilla deploy model's convolutions as a plain
  ANN with ReLU instead of each neuron (`_reference`, the inference bench's limit), run on the
  ``T·N`` frames of a sequence in one call, and on its ``T`` steps of ``N`` frames one call
  each: no neurons and no state, so their ratio is what onnxruntime charges for running the
  convolutions a step at a time, the least a stream graph pays over the unrolled one.

The network is put on the dyadic grid with calibrated firing (`sj_realspike.testing.make_dyadic`):
it spikes, and the largest output difference printed first must be 0.

    python bench/stream_infer.py                  # T=4, N=8 and N=1
    python bench/stream_infer.py --time-steps 16 --batch 8
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import sew_resnet

import sj_realspike as rs
from _reference import export_plain, replace_neurons
from _timing import interleaved_ms
from sj_realspike.fold import NotConvertedWarning
from sj_realspike.report import format_table
from sj_realspike.testing import dyadic_input, make_dyadic, randomize_amplitudes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    T = args.time_steps
    print(f"sew_resnet18, T={T}, {args.size}x{args.size}, {args.threads} threads, onnxruntime "
          f"{onnxruntime.__version__}, 1-min load average {load:.2f} (other processes distort timings)")
    net = sew_resnet.sew_resnet18(spiking_neuron=neuron.IFNode, cnf="ADD", num_classes=10)
    functional.set_step_mode(net, "m")
    example = dyadic_input((T, 2, 3, args.size, args.size))
    make_dyadic(net, example)  # the neurons fire, and every fp32 op is exact: both graphs must agree bit for bit
    real = rs.convert_model(net, example, spike="real", granularity="channel")
    randomize_amplitudes(real)
    net_s = copy.deepcopy(net)
    functional.set_step_mode(net_s, "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvertedWarning)  # the vanilla network folds as is, on purpose
        deploys = {"vanilla": rs.fold(net, example_input=example), "real-channel": rs.fold(real)}
        ann = replace_neurons(rs.fold(net_s, example_input=example[0]), example[:1])  # input [1, N, ...]

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        runners: dict[str, rs.OnnxRunner] = {}
        for tag, deploy in deploys.items():
            runners[f"{tag} unrolled"] = rs.OnnxRunner(rs.export_onnx(deploy, tmp / f"{tag}-u.onnx", example),
                                                       threads=args.threads)
            runners[f"{tag} stream"] = rs.OnnxRunner(
                rs.export_onnx(deploy, tmp / f"{tag}-s.onnx", example, stream=True), threads=args.threads)
        ann_runner = rs.OnnxRunner(export_plain(ann, example[:1], tmp / "ann.onnx"), threads=args.threads)
        for n in args.batch:
            x = dyadic_input((T, n, 3, args.size, args.size), seed=n).numpy()
            for tag in deploys:
                y_u, y_s = runners[f"{tag} unrolled"](x), runners[f"{tag} stream"](x)
                print(f"N={n} {tag}: max |stream - unrolled| = {np.abs(y_u - y_s).max():.3g} "
                      f"(of max |y| {np.abs(y_u).max():.3g})")
            calls: dict[str, Callable[[], object]] = {}
            for tag in deploys:
                unrolled, stream = runners[f"{tag} unrolled"], runners[f"{tag} stream"]
                calls[f"{tag} unrolled"] = lambda r=unrolled: r(x)
                calls[f"{tag} stream"] = lambda r=stream: r(x)
                stream.reset()
                calls[f"{tag} stream step"] = lambda r=stream: r.step(x[0])
            frames = x.reshape(1, T * n, *x.shape[2:])
            calls["ANN at once"] = lambda: ann_runner(frames)
            calls["ANN step by step"] = lambda: [ann_runner(x[t:t + 1]) for t in range(T)]
            repeats = args.repeats if n > 1 else args.repeats * 3
            ms = interleaved_ms(calls, repeats)
            print(f"\nN={n}: median ms (interleaved, {repeats} rounds); a sequence is [T={T}, N={n}, ...]")
            print(format_table(["variant", "ms"], [[k, f"{v:.2f}"] for k, v in ms.items()]))
            rows = []
            for tag in deploys:
                rows += [[f"{tag}: stream / unrolled per sequence (target <= 1.15x)",
                          f"{ms[f'{tag} stream'] / ms[f'{tag} unrolled']:.2f}x"],
                         [f"{tag}: one stream step / (unrolled sequence / T)",
                          f"{ms[f'{tag} stream step'] / (ms[f'{tag} unrolled'] / T):.2f}x"]]
            rows.append(["ANN (no neurons): step by step / at once (the least a stream pays)",
                         f"{ms['ANN step by step'] / ms['ANN at once']:.2f}x"])
            print(format_table(["ratio", "value"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
