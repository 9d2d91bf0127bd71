"""CPU inference benchmark: folded SNN in onnxruntime against SpikingJelly eager and the ReLU limit.

One run, every variant interleaved (round robin, medians), CPU, 2 threads by default:

* ``sj-eager``: the original SpikingJelly network, eager eval (``torch.no_grad``).
* ``ort-plain``: the original network through a plain ``torch.onnx.export(dynamo=True)``
  (SpikingJelly's neuron loop as the exporter lowers it) in onnxruntime.
* ``sj-<variant>``: the trained (converted, unfolded) model of a variant, eager eval.
* ``ort-<variant>``: its deploy model from `fold`, exported with `export_onnx` (lowered neurons).
* ``limit-<variant>``: the limit: the same convolutions (BN fused) run as a plain ANN on the
  time-folded batch ``[T·N, C, H, W]`` with ReLU instead of each neuron (the single-step form
  of the same deploy model, so no reshapes between layers), in onnxruntime.
* ``relu-<variant>``: the exported deploy graph itself with ReLU instead of each lowered neuron:
  the difference to ``ort-<variant>`` is what the neurons cost.
* ``floor-<variant>``: the limit with a stateless threshold ``[x ≥ θ]`` instead of each ReLU
  (`_reference`): ``floor / limit`` is what spikes themselves cost in onnxruntime, before any
  neuron dynamics.

Variants: ``vanilla`` (the network folded as is: BN fused, binary IF), ``real-channel``
(Real Spike with channel amplitudes, folded; a SEW conv reading a sum of k spike trains
gets k scaled copies, so it has more convolutions than vanilla) and ``ternary-layer``.

Element-wise amplitudes fold into unshared (locally connected) convs; each one of the
``real-element`` deploy model is timed alone in onnxruntime against the shared conv of the
same geometry at batch T·N.

    python bench/infer.py                 # sew_resnet18, T=4, N=8 and N=1, 32x32, 2 threads
    python bench/infer.py --arch spiking_resnet18 --repeats 50
"""

from __future__ import annotations

import argparse
import functools
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import sew_resnet, spiking_resnet

import sj_realspike as rs
from _reference import Relu, Threshold, export_plain, replace_neurons
from _timing import interleaved_ms
from sj_realspike.errors import NotConvertedWarning
from sj_realspike.lowered import LoweredUnsharedConv2d
from sj_realspike.report import format_table

ARCHS = {
    "sew_resnet18": lambda: sew_resnet.sew_resnet18(spiking_neuron=neuron.IFNode, cnf="ADD", num_classes=10),
    "spiking_resnet18": lambda: spiking_resnet.spiking_resnet18(spiking_neuron=neuron.IFNode, num_classes=10),
}


def _calibrate(net: nn.Module, x: torch.Tensor) -> None:
    """Make the default-initialised network fire (~10-30%): random BN affine, statistics from ``x``."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.0 + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.5)
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(x)
    functional.reset_net(net)
    net.eval()


def _sj_runner(net: nn.Module) -> Callable[[torch.Tensor], object]:
    def run(x: torch.Tensor) -> object:
        with torch.no_grad():
            functional.reset_net(net)
            return net(x)
    return run


def _time(runners: dict[str, Callable], inputs: dict[str, object], repeats: int) -> dict[str, float]:
    """Median milliseconds of each runner on its input (`_timing.interleaved_ms`)."""
    return interleaved_ms({name: functools.partial(run, inputs[name]) for name, run in runners.items()}, repeats)


def _unshared_layers(deploy: fx.GraphModule, x: torch.Tensor, threads: int, batch: int,
                     repeats: int, tmp: Path) -> list[list[str]]:
    """Each unshared conv of ``deploy`` against the shared conv of its geometry, alone in onnxruntime."""
    rows, total = [], {"unshared": 0.0, "shared": 0.0}
    lowered = rs.lower_for_export(deploy, x)
    for name, m in lowered.named_modules():
        if not isinstance(m, LoweredUnsharedConv2d):
            continue
        source = deploy.get_submodule(name)
        shared = nn.Conv2d(source.in_channels, source.out_channels, source.kernel_size, source.stride,
                           source.padding, source.dilation, source.groups, bias=source.bias is not None).eval()
        xi = (torch.rand(batch, source.in_channels, *source.in_hw) < 0.2).float()
        runners = {}
        for tag, module in (("unshared", m), ("shared", shared)):
            path = tmp / f"{name}_{tag}.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (xi,), path, dynamo=True, verbose=False, input_names=["x"])
            runners[tag] = rs.OnnxRunner(path, threads=threads)
        ms = _time(runners, {k: xi.numpy() for k in runners}, repeats)
        for k in total:
            total[k] += ms[k]
        geometry = (f"{source.in_channels}->{source.out_channels} k{source.kernel_size[0]} "
                    f"s{source.stride[0]} {source.in_hw[0]}x{source.in_hw[1]}")
        rows.append([name, geometry,
                     f"{ms['shared']:.3f}", f"{ms['unshared']:.3f}", f"{ms['unshared'] / ms['shared']:.2f}x"])
    rows.append(["all unshared convs", "", f"{total['shared']:.3f}", f"{total['unshared']:.3f}",
                 f"{total['unshared'] / total['shared']:.2f}x"])
    return rows


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
    logging.getLogger("sj_realspike").setLevel(logging.ERROR)  # "folding a copy first" is expected here
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"{args.arch}, T={args.time_steps}, {args.size}x{args.size}, {args.threads} threads, "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"1-min load average {load:.2f} (other processes distort timings with few threads)")

    T, N0 = args.time_steps, max(args.batch)
    calib = torch.rand(T, N0, 3, args.size, args.size)
    net = ARCHS[args.arch]()
    functional.set_step_mode(net, "m")
    _calibrate(net, calib)
    example = calib[:, :2]

    net_s = copy.deepcopy(net)
    functional.set_step_mode(net_s, "s")
    trained = {"vanilla": net}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvertedWarning)  # the vanilla network folds as is, on purpose
        deploys = {"vanilla": rs.fold(net, example_input=example)}
        single_step = {"vanilla": rs.fold(net_s, example_input=example[0])}
    for tag, spike, granularity in [("real-channel", "real", "channel"), ("ternary-layer", "ternary", "layer"),
                                    ("real-element", "real", "element")]:
        model = rs.convert_model(net, example, spike=spike, granularity=granularity)
        model_s = rs.convert_model(net_s, example[0], spike=spike, granularity=granularity)
        with torch.no_grad():
            for a, a_s in zip(rs.amplitude_parameters(model), rs.amplitude_parameters(model_s), strict=True):
                a.uniform_(0.5, 1.5)
                a_s.copy_(a)
        trained[tag] = model.eval()
        deploys[tag] = rs.fold(model)
        single_step[tag] = rs.fold(model_s)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        variants = ("vanilla", "real-channel", "ternary-layer")
        runners: dict[str, Callable] = {f"sj-{tag}": _sj_runner(trained[tag]) for tag in variants}
        runners["ort-plain"] = rs.OnnxRunner(export_plain(copy.deepcopy(net), example, tmp / "plain.onnx"),
                                             threads=args.threads)
        for tag in variants:
            path = rs.export_onnx(deploys[tag], tmp / f"{tag}.onnx", example)
            runners[f"ort-{tag}"] = rs.OnnxRunner(path, threads=args.threads)
            for kind, model, make in (("limit", single_step[tag], lambda m: Relu()),
                                      ("relu", deploys[tag], lambda m: Relu()),
                                      ("floor", single_step[tag], Threshold)):
                graph = replace_neurons(model, example, make)
                runners[f"{kind}-{tag}"] = rs.OnnxRunner(
                    export_plain(graph, example, tmp / f"{kind}-{tag}.onnx"), threads=args.threads)
        for n in args.batch:
            x = torch.rand(T, n, 3, args.size, args.size)
            inputs = {name: x if name.startswith("sj-") else x.numpy() for name in runners}
            repeats = args.repeats if n > 1 else args.repeats * 3
            ms = _time(runners, inputs, repeats)
            print(f"\nN={n}: median ms per forward of [T={T}, N={n}] (interleaved, {repeats} rounds)")
            print(format_table(["variant", "ms"], [[k, f"{v:.2f}"] for k, v in ms.items()]))
            rows = [["vanilla: SpikingJelly eager / ORT plain dynamo export", f"{ms['sj-vanilla'] / ms['ort-plain']:.2f}x"]]
            for tag in variants:
                rows += [
                    [f"{tag}: folded SNN in ORT / limit (target <= 1.15x)", f"{ms[f'ort-{tag}'] / ms[f'limit-{tag}']:.2f}x"],
                    [f"{tag}: floor (one threshold per neuron) / limit", f"{ms[f'floor-{tag}'] / ms[f'limit-{tag}']:.2f}x"],
                    [f"{tag}: folded SNN in ORT / floor", f"{ms[f'ort-{tag}'] / ms[f'floor-{tag}']:.2f}x"],
                    [f"{tag}: folded SNN in ORT / same graph with ReLU", f"{ms[f'ort-{tag}'] / ms[f'relu-{tag}']:.2f}x"],
                    [f"{tag}: SpikingJelly eager / folded SNN in ORT", f"{ms[f'sj-{tag}'] / ms[f'ort-{tag}']:.2f}x"],
                    [f"{tag}: SpikingJelly eager / limit (the bound)", f"{ms[f'sj-{tag}'] / ms[f'limit-{tag}']:.2f}x"],
                ]
            print(format_table(["ratio", "value"], rows))

        print(f"\nunshared (element-wise fold) vs shared conv, each alone in onnxruntime, batch T*N={T * N0}, ms")
        print(format_table(["conv", "geometry", "shared", "unshared", "ratio (target <= 4x)"],
                           _unshared_layers(deploys["real-element"], example, args.threads, T * N0,
                                            args.repeats, tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
