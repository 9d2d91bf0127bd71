"""The ``sj-realspike`` command line: the library's passes, one subcommand each.

Every subcommand is a thin layer over the public API; errors print one line
(``sj-realspike: error: …``) and exit with status 2, and no partial output file
is left behind (all outputs are written atomically, and SIGTERM/SIGINT remove the
temporary file of a write in progress). Every input path must be a regular file and no
output may replace an input, checked before any work; third-party warnings are not shown.
torch, numpy and onnx are imported by the handlers only, so ``sj-realspike --help``
answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import remove_pending, resolve_destination
from .console import OneLineParser, error_line, format_table, log_to_stderr, own_warnings_only, positive_int
from .errors import RealSpikeError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

__all__ = ["main"]

logger = logging.getLogger("sj_realspike.cli")  # also when run as __main__ (python -m)

EXAMPLES = {
    "convert": """example:
  sj-realspike convert --model spikingjelly.activation_based.model.sew_resnet:sew_resnet18 \\
      --kwargs '{"spiking_neuron": "spikingjelly.activation_based.neuron.LIFNode", "cnf": "ADD", "num_classes": 10}' \\
      --example-shape 4,8,3,32,32 --recipe sew_resnet -o converted.bundle""",
    "fold": "example:\n  sj-realspike fold converted.bundle -o deploy.bundle",
    "export": "examples:\n  sj-realspike export deploy.bundle -o model.onnx\n"
              "  sj-realspike export deploy.bundle -o stream.onnx --stream",
    "verify": "example:\n  sj-realspike verify converted.bundle model.onnx --input x.npy",
    "run": "example:\n  sj-realspike run model.onnx --input x.npy -o y.npy",
    "inspect": "examples:\n  sj-realspike inspect converted.bundle\n  sj-realspike inspect model.onnx\n"
               "  sj-realspike inspect converted.bundle --energy --energy-plot energy.png",
}


class CliError(Exception):
    """A bad command-line input: reported as one line, exit status 2."""


# An example batch only has to show the model its shapes: 2**28 float32 values (1 GiB) is far
# more than any real one needs, and bounds what a typo can make convert allocate.
MAX_EXAMPLE_ELEMENTS = 2**28


def _shape(text: str) -> tuple[int, ...]:
    """``--example-shape``: comma-separated positive sizes, at most `MAX_EXAMPLE_ELEMENTS` in all."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 4,8,3,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be positive, got {text!r}")
    elements = math.prod(shape)
    if elements > MAX_EXAMPLE_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"{text} is {elements:,} values ({elements * 4 / 2**30:,.0f} GiB as float32), more than the "
            f"{MAX_EXAMPLE_ELEMENTS:,} allowed: the example batch only shows the model its shapes, so use a "
            "small T and N")
    return shape


def _add_trust(p: argparse.ArgumentParser, extra: str = "") -> None:
    """``--trust MODULE`` (repeatable): modules a bundle's factory and kwargs may come from."""
    p.add_argument("--trust", action="append", default=[], metavar="MODULE",
                   help="also allow factories and kwargs classes from MODULE and its submodules (loading runs "
                        f"their code; the frameworks' zoos, neurons, surrogates and layers need none){extra}; "
                        "repeatable")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sj-realspike", description=(
        "Real Spike / Ternary Spike for SpikingJelly: convert, fold, export, verify and run."))
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        # argparse %-formats help strings (not descriptions): a literal % must be doubled there.
        return sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    c = command("convert", "Build a SpikingJelly model from its factory and give it learnable spike amplitudes.")
    c.add_argument("--model", required=True, metavar="PKG.MODULE:FACTORY", help="function that builds the network")
    c.add_argument("--kwargs", default="{}", metavar="JSON",
                   help="factory keyword arguments; strings naming classes (neurons, surrogates, layers) "
                        "are resolved")
    c.add_argument("--checkpoint", metavar="STATE.PTH", help="state_dict to load into the network first")
    _add_trust(c, "; --model's own module is trusted")
    c.add_argument("--example-shape", required=True, type=_shape, metavar="T,N,C,H,W",
                   help="training batch shape: [T,N,...] multi-step or [N,...] single-step; a 5-d shape is "
                        "read as multi-step [T,N,C,H,W], any other needs --step-mode (the reading is printed)")
    c.add_argument("--step-mode", choices=("m", "s"),
                   help="m: multi-step, inputs [T,N,...]; s: single-step, inputs [N,...] (default m for 5-d "
                        "shapes; required otherwise)")
    c.add_argument("--spike", choices=("real", "ternary"), default="real")
    c.add_argument("--granularity", choices=("layer", "channel", "element"), default="channel")
    c.add_argument("--recipe", metavar="FILE|NAME", help="TOML recipe, by path or shipped name")
    c.add_argument("--tie-summed", action="store_true",
                   help="one amplitude for the neurons whose spikes are added before a synapse (SEW ADD "
                        "streams): the deploy model keeps the plain network's convs (a recipe's tie_summed decides)")
    c.add_argument("-o", "--output", required=True, metavar="BUNDLE")

    f = command("fold", "Fold the amplitudes of a converted bundle into the weights (binary/ternary spikes).")
    f.add_argument("bundle")
    _add_trust(f)
    f.add_argument("-o", "--output", required=True, metavar="BUNDLE")

    e = command("export", "Export a deploy (or converted, folded first) bundle to a pure binary/ternary ONNX graph.")
    e.add_argument("bundle")
    _add_trust(e)
    e.add_argument("-o", "--output", required=True, metavar="MODEL.ONNX")
    e.add_argument("--opset", type=int, metavar="N",
                   help="ONNX opset version, within the range the installed torch.onnx exporter supports "
                        "(default: the exporter's)")
    e.add_argument("--time-steps", type=positive_int, metavar="T",
                   help="sequence length to export (single-step models only; not with --stream)")
    e.add_argument("--stream", action="store_true",
                   help="export the graph of one time step, each neuron's membrane an input (state_in.NEURON) and "
                        "an output (state_out.NEURON): any T, one step per call ('run' steps it)")

    v = command("verify", "Compare trained model, deploy model and ONNX on one input; check spike purity in the "
                          "ONNX graph and that the file was exported from this model.\nExit status 0 only on PASS "
                          "(outputs within --rtol, top-1 100%, no NaN/Inf, pure spikes, every neuron fired), "
                          "else 1 with the reason first.")
    v.add_argument("bundle")
    _add_trust(v)
    v.add_argument("onnx")
    v.add_argument("--input", metavar="X.NPY",
                   help="input sequence [T, N, ...], float32 (default: random noise of the ONNX input shape, "
                        "scaled until the neurons fire; real data checks more)")
    v.add_argument("--rtol", type=float, metavar="R",
                   help="largest accepted output error relative to the trained output's max |value| "
                        "(default: 1e-05, verify's DEFAULT_RTOL)")

    r = command("run", "Run an ONNX model from export on an input sequence [T, N, ...] with onnxruntime (a stream "
                       "graph is run step by step).")
    r.add_argument("onnx")
    r.add_argument("--input", required=True, metavar="X.NPY",
                   help="float32 input sequence [T, N, ...] (both kinds of graph; a stream graph takes any T)")
    r.add_argument("-o", "--output", metavar="Y.NPY")
    r.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads (default: physical cores)")

    i = command("inspect", "Describe a bundle (layers, amplitudes, parameters) or an ONNX model.")
    i.add_argument("path")
    _add_trust(i, " (bundles)")
    i.add_argument("--energy", action="store_true",
                   help="bundles: synaptic ops and 45 nm energy per layer before and after fold, on a random "
                        "input of the example shape")
    i.add_argument("--energy-plot", metavar="PNG", help="also write the energy bar chart (implies --energy)")

    # The demo parses its own options (sj_realspike.demo.main, which also prints its --help).
    sub.add_parser("demo", add_help=False, help="Train, fold, export and compare the five variants on "
                                                "scikit-learn's digits (see sj-realspike demo --help).")
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that atomic writes remove their temporary files.

    A ``BaseException`` like ``KeyboardInterrupt``: library code that catches ``Exception``
    (the ONNX exporter does) must not swallow it.
    """


# Errors the passes raise on purpose: their message is the whole story.
_EXPECTED = (CliError, RealSpikeError, OSError, ValueError, TypeError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sj-realspike`` console script.

    Returns:
        The exit status: 0 on success, 1 when ``verify`` finds a mismatch, 2 on any
        error (one line on stderr; ``--debug`` re-raises instead), 130 on SIGINT and
        143 on SIGTERM (the temporary file of a write in progress is removed).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1]
    try:
        with _sigterm_raises(), log_to_stderr(), own_warnings_only():
            try:
                args, rest = _parser().parse_known_args(argv)
            except SystemExit as e:  # --help (0) or a one-line argument error (2)
                return e.code if isinstance(e.code, int) else 2
            if args.command == "demo":
                from . import demo

                return demo.main(rest)
            if rest:
                raise CliError(f"unrecognized arguments: {' '.join(rest)} (see sj-realspike {args.command} --help)")
            _check_paths(args)
            status = globals()[f"_cmd_{args.command}"](args) or 0
            sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
            return status
    except KeyboardInterrupt:
        error_line("interrupted (SIGINT)")
        return 130
    except Terminated:
        error_line("terminated (SIGTERM)")
        return 143
    except BrokenPipeError:  # `sj-realspike verify ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        if debug:
            raise
        message = str(e) if isinstance(e, _EXPECTED) and str(e) else \
            f"unexpected {type(e).__name__}{': ' + str(e) if str(e) else ''} (run with --debug for the traceback)"
        error_line(message)
        return 2
    finally:
        remove_pending()


# The files each command reads (argument dest, what errors call it); --recipe may also name a shipped recipe.
_INPUTS = {
    "convert": (("checkpoint", "checkpoint"), ("recipe", "recipe")),
    "fold": (("bundle", "bundle"),),
    "export": (("bundle", "bundle"),),
    "verify": (("bundle", "bundle"), ("onnx", "ONNX model"), ("input", "input")),
    "run": (("onnx", "ONNX model"), ("input", "input")),
    "inspect": (("path", "input"),),
}
_OUTPUTS = (("output", "-o"), ("energy_plot", "--energy-plot"))


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse bad paths before any work: every input must be a regular file (a FIFO or ``/dev/zero``
    would block or never end), every output a file that is not also an input (see `resolve_destination`)."""
    inputs = _input_files(args)
    for what, path in inputs:
        if not path.is_file():
            raise CliError(f"{what} {path} does not exist" if not path.exists() else
                           f"{what} {path} is not a regular file")
    for dest, flag in _OUTPUTS:
        output = getattr(args, dest, None)
        if output:
            target = resolve_destination(output)
            clash = next((f"{what} {path}" for what, path in inputs if target.exists() and target.samefile(path)),
                         None)
            if clash:
                raise CliError(f"{flag} {output} is the {clash}: writing it would replace a file this command "
                               f"reads; choose another output name")


def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files ``args.command`` reads, as (what, path); a ``--recipe`` only if such a path exists."""
    found = []
    for dest, what in _INPUTS.get(args.command, ()):
        value = getattr(args, dest, None)
        if value is not None and (dest != "recipe" or os.path.lexists(value)):
            found.append((what, Path(value)))
    return found


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn the first SIGTERM into `Terminated` in the main thread (later ones are ignored while it unwinds)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- commands
def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

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
    step_mode = _step_mode(args.example_shape, args.step_mode)
    manifest = {"factory": args.model, "kwargs": kwargs, "step_mode": step_mode}
    net = build_model(manifest, args.checkpoint, trust=args.trust, trust_factory=True)
    config = SpikeConfig.from_file(args.recipe) if args.recipe else None
    model = convert_model(net, torch.rand(args.example_shape), spike=args.spike, granularity=args.granularity,
                          config=config, inplace=True, tie_summed=args.tie_summed)
    record_source(model, args.model, kwargs, step_mode)
    save_bundle(model, args.output)
    print(conversion_report(model))
    print(f"wrote {args.output}")
    return 0


def _step_mode(shape: tuple[int, ...], given: str | None) -> str:
    """The step mode ``--example-shape`` is read in, printed; only a 5-d shape may go without ``--step-mode``.

    A forgotten ``T`` must not silently make a single-step bundle: ``8,3,32,32`` is a
    single-step image batch or a multi-step sequence of 1-d features.
    """
    def layout(mode: str) -> str:
        features = {0: [], 1: ["F"], 2: ["C", "L"], 3: ["C", "H", "W"], 4: ["C", "D", "H", "W"]}.get(
            len(shape) - (2 if mode == "m" else 1), ["..."])
        return "[" + ", ".join((["T", "N"] if mode == "m" else ["N"]) + features) + "]"

    text = ",".join(map(str, shape))
    if given is None and len(shape) != 5:
        options = [f"--step-mode s to read it as single-step {layout('s')}"]
        if len(shape) >= 2:
            options.append(f"--step-mode m for multi-step {layout('m')}")
        raise CliError(f"--example-shape {text} is ambiguous ({len(shape)}-d): pass {' or '.join(options)}")
    mode = given or "m"
    if mode == "m" and len(shape) < 2:
        raise CliError(f"--example-shape {text}: a multi-step input needs at least [T, N]")
    print(f"example shape {text} read as {'multi' if mode == 'm' else 'single'}-step {layout(mode)}")
    return mode


def _cmd_fold(args: argparse.Namespace) -> int:
    from .bundle import load_bundle, read_manifest, save_bundle
    from .fold import fold
    from .report import fold_report

    if read_manifest(args.bundle)[0]["stage"] == "deploy":
        # Folding is idempotent, but writing a copy under a new name would hide a mix-up of files.
        raise CliError(f"{args.bundle} is a deploy bundle: it is folded already, nothing to do (export it: "
                       f"sj-realspike export {args.bundle} -o model.onnx)")
    model = load_bundle(args.bundle, trust=args.trust)
    deploy = fold(model, inplace=True)
    save_bundle(deploy, args.output)
    print(fold_report(deploy))
    print(f"wrote {args.output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .bundle import load_bundle
    from .export import check_opset, export_onnx
    from .report import record_of

    if args.opset is not None:
        try:
            check_opset(args.opset)
        except ValueError as e:
            raise CliError(f"--{e}") from None
    model = load_bundle(args.bundle, trust=args.trust)
    record = record_of(model)
    shape = list(record["example_shape"])
    if args.stream and args.time_steps:
        raise CliError("--time-steps does not apply to --stream: the stream graph runs one step per call, any T")
    if record["source"]["step_mode"] == "s" and not record.get("sequence_per_call"):
        if not args.time_steps and not args.stream:
            raise CliError("this is a single-step model: pass --time-steps T (the exported graph runs T steps), "
                           "or --stream for the graph of one step")
        shape = [args.time_steps or 2, *shape]  # a stream graph runs any T; the example needs one
    elif args.time_steps:
        raise CliError("--time-steps is only for single-step models; T comes from the bundle's example shape")
    what = "one step" if args.stream else f"T={shape[0]}"
    logger.info("exporting %s to %s (%s): torch.onnx.export takes a few seconds for a small net, "
                "a minute for a ResNet", args.bundle, args.output, what)
    export_onnx(model, args.output, torch.rand(shape), opset=args.opset, stream=args.stream)
    print(f"wrote {args.output}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from .bundle import load_bundle
    from .verify import verify

    if Path(args.bundle).suffix == ".onnx" and Path(args.onnx).suffix != ".onnx":
        raise CliError(f"{args.bundle} is an ONNX file and {args.onnx} is not: the bundle comes first "
                       f"(sj-realspike verify {args.onnx} {args.bundle})")
    model = load_bundle(args.bundle, trust=args.trust)
    x = torch.from_numpy(_load_array(args.input)) if args.input else None  # None: verify's exciting input
    report = verify(model, args.onnx, x, **({} if args.rtol is None else {"rtol": args.rtol}))
    print(report)  # the verdict line first
    return 0 if report.ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

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
    """A ``--input`` file (a regular file: `_check_paths`): a non-empty float ``.npy`` array (never unpickled).

    Raises:
        CliError: empty, corrupt, pickled (object), non-float or empty array.
    """
    import numpy as np

    p = Path(path)
    try:
        array = np.load(p, allow_pickle=False)
    except EOFError:
        raise CliError(f"input {p} is empty: expected a .npy array (np.save('x.npy', x))") from None
    except (ValueError, OSError) as e:  # object arrays need pickle: refused
        raise CliError(f"input {p} is not a readable .npy array ({' '.join(str(e).split())})") from None
    if not isinstance(array, np.ndarray):  # np.load reads .npz archives too
        raise CliError(f"input {p} is an .npz archive; save one array with np.save")
    if not np.issubdtype(array.dtype, np.floating):
        raise CliError(f"input {p} holds {array.dtype} values; the model takes float32 "
                       "(convert with x.astype(np.float32))")
    if array.size == 0:
        raise CliError(f"input {p} is empty: shape {list(array.shape)}")
    return array


def _describe_bundle(path: Path, trust: list[str]) -> str:
    from .bundle import load_bundle, read_manifest
    from .neurons import is_neuron, is_ternary
    from .spiking import amplitude_of, base_class

    manifest, _ = read_manifest(path)
    model = load_bundle(path, trust=trust)
    head = [f"{path}: {manifest['stage']} model from {manifest['factory']}",
            f"kwargs {json.dumps(manifest.get('kwargs', {}))}, step mode {manifest.get('step_mode')}, "
            f"example shape {tuple(manifest['example_shape'])}",
            f"versions {json.dumps(manifest.get('versions', {}))}"]
    rows: list[list[Any]] = []
    for name, m in model.named_modules():
        if not is_neuron(m):
            continue
        kind = "ternary" if is_ternary(m) else "binary"
        amp = amplitude_of(m)
        if amp is None:
            rows.append([name, base_class(m).__name__, kind, "-", "-", "-", "-"])
            continue
        a = amp.a.detach()
        rows.append([name, base_class(m).__name__, kind, amp.granularity,
                     "x".join(map(str, a.shape)) or "scalar", f"{a.min():.3g} / {a.mean():.3g} / {a.max():.3g}",
                     f"{(a < 0).float().mean():.0%}"])
    params = sum(p.numel() for p in model.parameters())
    table = format_table(["neuron", "type", "spikes", "granularity", "amplitude", "min / mean / max", "negative"], rows)
    return "\n".join(head + ["", table, "", f"parameters: {params:,}"])


def _energy(path: Path, plot: str | None, trust: list[str]) -> str:
    import torch

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
    import numpy as np

    from .runtime import load_onnx

    try:
        model = load_onnx(path)
    except ValueError as e:
        raise CliError(str(e)) from None
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
