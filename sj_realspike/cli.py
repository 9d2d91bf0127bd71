"""The ``sj-realspike`` command line: the library's passes, one subcommand each.

Every subcommand is a thin layer over the public API; errors print one line
(``sj-realspike: error: …``) and exit with status 2, and no partial output file
is left behind (all outputs are written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RealSpikeError

__all__ = ["main"]

EXAMPLES = {
    "convert": """example:
  sj-realspike convert --model spikingjelly.activation_based.model.sew_resnet:sew_resnet18 \\
      --kwargs '{"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode", "cnf": "ADD", "num_classes": 10}' \\
      --example-shape 4,8,3,32,32 --recipe sew_resnet -o converted.bundle""",
    "fold": "example:\n  sj-realspike fold converted.bundle -o deploy.bundle",
    "export": "example:\n  sj-realspike export deploy.bundle -o model.onnx",
    "verify": "example:\n  sj-realspike verify converted.bundle model.onnx --input x.npy",
    "run": "example:\n  sj-realspike run model.onnx --input x.npy -o y.npy",
    "inspect": "examples:\n  sj-realspike inspect converted.bundle\n  sj-realspike inspect model.onnx\n"
               "  sj-realspike inspect converted.bundle --energy --energy-plot energy.png",
    "demo": "examples:\n  sj-realspike demo\n  sj-realspike demo --quick --out demo_out",
}


class CliError(Exception):
    """A bad command-line input: reported as one line, exit status 2."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 4,8,3,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be positive, got {text!r}")
    return shape


def _add_trust(p: argparse.ArgumentParser, extra: str = "") -> None:
    """``--trust MODULE`` (repeatable): modules a bundle's factory and kwargs may come from."""
    p.add_argument("--trust", action="append", default=[], metavar="MODULE",
                   help="also allow factories and kwargs classes from MODULE and its submodules (loading runs "
                        f"their code; SpikingJelly's zoo, neurons, surrogates and layers need none){extra}; "
                        "repeatable")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sj-realspike", description=(
        "Real Spike / Ternary Spike for SpikingJelly: convert, fold, export, verify and run."))
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    c = command("convert", "Build a SpikingJelly model from its factory and give it learnable spike amplitudes.")
    c.add_argument("--model", required=True, metavar="PKG.MODULE:FACTORY", help="function that builds the network")
    c.add_argument("--kwargs", default="{}", metavar="JSON",
                   help="factory keyword arguments; strings naming classes (neurons, surrogates, layers) "
                        "are resolved")
    c.add_argument("--checkpoint", metavar="STATE.PTH", help="state_dict to load into the network first")
    _add_trust(c, "; --model's own module is trusted")
    c.add_argument("--example-shape", required=True, type=_shape, metavar="T,N,C,H,W",
                   help="training batch shape ([T,N,...] multi-step, [N,...] single-step)")
    c.add_argument("--step-mode", choices=("m", "s"), help="default: m for 5-d shapes, s otherwise")
    c.add_argument("--spike", choices=("real", "ternary"), default="real")
    c.add_argument("--granularity", choices=("layer", "channel", "element"), default="channel")
    c.add_argument("--recipe", metavar="FILE|NAME", help="TOML recipe, by path or shipped name")
    c.add_argument("-o", "--output", required=True, metavar="BUNDLE")

    f = command("fold", "Fold the amplitudes of a converted bundle into the weights (binary/ternary spikes).")
    f.add_argument("bundle")
    _add_trust(f)
    f.add_argument("-o", "--output", required=True, metavar="BUNDLE")

    e = command("export", "Export a deploy (or converted, folded first) bundle to a pure binary/ternary ONNX graph.")
    e.add_argument("bundle")
    _add_trust(e)
    e.add_argument("-o", "--output", required=True, metavar="MODEL.ONNX")
    e.add_argument("--opset", type=int)
    e.add_argument("--time-steps", type=int, metavar="T", help="sequence length to export (single-step models only)")

    v = command("verify", "Compare trained model, deploy model and ONNX; check spike purity in the ONNX graph "
                          "(exit status 1 if impure).")
    v.add_argument("bundle")
    _add_trust(v)
    v.add_argument("onnx")
    v.add_argument("--input", metavar="X.NPY", help="input batch (default: random in [0, 1) of the example shape)")

    r = command("run", "Run an ONNX model from export on an input array with onnxruntime.")
    r.add_argument("onnx")
    r.add_argument("--input", required=True, metavar="X.NPY")
    r.add_argument("-o", "--output", metavar="Y.NPY")
    r.add_argument("--threads", type=int)

    i = command("inspect", "Describe a bundle (layers, amplitudes, parameters) or an ONNX model.")
    i.add_argument("path")
    _add_trust(i, " (bundles)")
    i.add_argument("--energy", action="store_true",
                   help="bundles: synaptic ops and 45 nm energy per layer before and after fold, on a random "
                        "input of the example shape")
    i.add_argument("--energy-plot", metavar="PNG", help="also write the energy bar chart (implies --energy)")

    command("demo", "Train, fold, export and compare the five variants on scikit-learn's digits "
                    "(options: see python -m sj_realspike.demo --help).")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sj-realspike`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"] and argv[1:2] not in (["-h"], ["--help"]):
        # argparse.REMAINDER does not take options that start with '-': hand them over whole.
        from . import demo

        return demo.main(argv[1:])
    args = _parser().parse_args(argv)
    handler = globals()[f"_cmd_{args.command}"]
    try:
        return handler(args) or 0
    except (CliError, RealSpikeError, OSError, ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"sj-realspike: error: {e}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------- commands
def _cmd_convert(args: argparse.Namespace) -> int:
    from .bundle import build_model, record_source, save_bundle
    from .config import SpikeConfig
    from .convert import convert_model
    from .report import conversion_report

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        raise CliError(f"--kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise CliError(f"--kwargs must be a JSON object, got {type(kwargs).__name__}")
    step_mode = args.step_mode or ("m" if len(args.example_shape) == 5 else "s")
    manifest = {"factory": args.model, "kwargs": kwargs, "step_mode": step_mode}
    net = build_model(manifest, args.checkpoint, trust=args.trust, trust_factory=True)
    config = SpikeConfig.from_file(args.recipe) if args.recipe else None
    model = convert_model(net, torch.rand(args.example_shape), spike=args.spike, granularity=args.granularity,
                          config=config, inplace=True)
    record_source(model, args.model, kwargs, step_mode)
    save_bundle(model, args.output)
    print(conversion_report(model))
    print(f"wrote {args.output}")
    return 0


def _cmd_fold(args: argparse.Namespace) -> int:
    from .bundle import load_bundle, save_bundle
    from .fold import fold
    from .report import fold_report

    model = load_bundle(args.bundle, trust=args.trust)
    deploy = fold(model, inplace=True)
    save_bundle(deploy, args.output)
    print(fold_report(deploy))
    print(f"wrote {args.output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .export import export_onnx

    model = load_bundle(args.bundle, trust=args.trust)
    shape = list(model.meta["sj_realspike"]["example_shape"])
    if model.meta["sj_realspike"]["source"]["step_mode"] == "s":
        if not args.time_steps:
            raise CliError("this is a single-step model: pass --time-steps T (the exported graph runs T steps)")
        shape = [args.time_steps, *shape]
    elif args.time_steps:
        raise CliError("--time-steps is only for single-step models; T comes from the bundle's example shape")
    export_onnx(model, args.output, torch.rand(shape), opset=args.opset)
    print(f"wrote {args.output}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .verify import verify

    model = load_bundle(args.bundle, trust=args.trust)
    if args.input:
        x = torch.from_numpy(_load_array(args.input))
    else:  # the ONNX input shape, with the bundle's batch size for a dynamic batch
        from .runtime import OnnxRunner

        batch = model.meta["sj_realspike"]["example_shape"][1 if model.meta["sj_realspike"]["source"]["step_mode"] == "m" else 0]
        x = torch.rand([d if isinstance(d, int) else batch for d in OnnxRunner(args.onnx).input_shape])
    report = verify(model, args.onnx, x)
    print(report)
    return 0 if report.pure else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from .atomic import atomic_write
    from .runtime import OnnxRunner

    x = _load_array(args.input)
    y = OnnxRunner(args.onnx, threads=args.threads)(x)
    y = np.asarray(y)
    if args.output:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a path
                np.save(fh, y)

        atomic_write(args.output, write)
        print(f"wrote {args.output} {y.shape} {y.dtype}")
    else:
        print(f"output {y.shape} {y.dtype}; top-1 per sample (mean over T): "
              f"{y.reshape(-1, *y.shape[-2:]).mean(0).argmax(-1).tolist() if y.ndim == 3 else y.argmax(-1).tolist()}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    energy = args.energy or args.energy_plot
    if path.suffix == ".onnx":
        if energy:
            raise CliError("--energy needs a bundle (the model before and after fold), not an ONNX graph")
        print(_describe_onnx(path))
    else:
        print(_describe_bundle(path, args.trust))
        if energy:
            print()
            print(_energy(path, args.energy_plot, args.trust))
    return 0


# ----------------------------------------------------------------------------- helpers
def _load_array(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"input {p} does not exist")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CliError(f"input {p} is not a readable .npy array ({e})") from None


def _describe_bundle(path: Path, trust: list[str]) -> str:
    from .amplitude import Amplitude
    from .bundle import load_bundle, read_manifest
    from .neurons import is_neuron, is_ternary
    from .report import format_table

    manifest, _ = read_manifest(path)
    model = load_bundle(path, trust=trust)
    head = [f"{path}: {manifest['stage']} model from {manifest['factory']}",
            f"kwargs {json.dumps(manifest.get('kwargs', {}))}, step mode {manifest.get('step_mode')}, "
            f"example shape {tuple(manifest['example_shape'])}",
            f"versions {json.dumps(manifest.get('versions', {}))}"]
    modules = dict(model.named_modules())
    rows: list[list[Any]] = []
    for node in model.graph.nodes:
        if node.op != "call_module" or not is_neuron(modules[node.target]):
            continue
        amp = next((u for u in node.users if u.op == "call_module" and isinstance(modules[u.target], Amplitude)), None)
        kind = "ternary" if is_ternary(modules[node.target]) else "binary"
        if amp is None:
            rows.append([node.target, type(modules[node.target]).__name__, kind, "-", "-", "-", "-"])
            continue
        a = modules[amp.target].a.detach()
        rows.append([node.target, type(modules[node.target]).__name__, kind, modules[amp.target].granularity,
                     "x".join(map(str, a.shape)) or "scalar", f"{a.min():.3g} / {a.mean():.3g} / {a.max():.3g}",
                     f"{(a < 0).float().mean():.0%}"])
    params = sum(p.numel() for p in model.parameters())
    table = format_table(["neuron", "type", "spikes", "granularity", "amplitude", "min / mean / max", "negative"], rows)
    return "\n".join(head + ["", table, "", f"parameters: {params:,}"])


def _energy(path: Path, plot: str | None, trust: list[str]) -> str:
    from .bundle import load_bundle, read_manifest
    from .energy import energy_report

    manifest, _ = read_manifest(path)
    x = torch.rand(manifest["example_shape"], generator=torch.Generator().manual_seed(0))
    report = energy_report(load_bundle(path, trust=trust), x)
    if plot:
        report.plot(plot)
        return f"{report}\nwrote {plot}"
    return str(report)


def _describe_onnx(path: Path) -> str:
    import onnx

    from .report import format_table

    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError and friends on corrupt files
        raise CliError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    io = [[("input" if k == 0 else "output"), v.name,
           "x".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)]
          for k, vs in enumerate((model.graph.input, model.graph.output)) for v in vs]
    meta = {p.key: p.value for p in model.metadata_props}
    parts = [f"{path}: opset {max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default='?')}, "
             f"{len(model.graph.node)} nodes, {params:,} parameters",
             format_table(["", "name", "shape"], io),
             format_table(["metadata", "value"], sorted(meta.items())) if meta else "no metadata",
             format_table(["op", "count"], sorted(ops.items(), key=lambda kv: -kv[1]))]
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
