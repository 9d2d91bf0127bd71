"""The whole story on real data: train the spike variants, fold, export, run in onnxruntime.

``sj-realspike demo`` (or ``python -m sj_realspike.demo``) trains the same small
SpikingJelly conv SNN on scikit-learn's bundled handwritten digits (1,797 real 8×8
images, no download) as a vanilla binary SNN, as Real Spike with layer-, channel- and
element-wise amplitudes, and as Ternary Spike; and a variant of it with a SEW ``ADD``
residual block as Real Spike with channel amplitudes, once untied (the conv after the
block gets one scaled copy per addend) and once with ``tie_summed`` (one amplitude for
the residual stream: the deploy model has the plain network's convs). Each trained
model is folded into its binary/ternary deploy form, exported to ONNX and run on the
test set in onnxruntime; one table compares trained, deploy and ONNX results, and a PNG
shows the learned amplitudes and spike rates.

Every variant starts from the same initial weights (amplitudes start at 1, where Real
Spike *is* the vanilla SNN) and sees the same batches, so the rows differ only by the
spike kind. Needs the ``demo`` extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from tqdm.auto import tqdm

from .amplitude import amplitude_parameters
from .console import OneLineParser, error_line, log_to_stderr, positive_int
from .convert import convert_model
from .energy import energy_report, format_joules
from .fold import NotConvertedWarning, fold
from .neurons import is_neuron
from .report import fold_report, format_table
from .spiking import amplitude_of

__all__ = [
    "VARIANTS",
    "Digits",
    "Variant",
    "VariantResult",
    "build_model",
    "encode",
    "evaluate",
    "format_results",
    "load_digits_split",
    "main",
    "make_net",
    "plot_results",
    "run_variant",
    "train",
]

logger = logging.getLogger("sj_realspike.demo")  # also when run as __main__ (python -m)


@dataclass(frozen=True)
class Variant:
    """One row of the demo: ``spike=None`` is the unconverted (vanilla binary) network.

    ``residual`` builds `make_net` with a SEW ``ADD`` block; ``tie_summed`` is
    `convert_model`'s option of the same name.
    """

    name: str
    spike: str | None = None
    granularity: str | None = None
    residual: bool = False
    tie_summed: bool = False


VARIANTS: tuple[Variant, ...] = (
    Variant("vanilla"),
    Variant("real-layer", "real", "layer"),
    Variant("real-channel", "real", "channel"),
    Variant("real-element", "real", "element"),
    # The Ternary Spike paper learns one amplitude per layer.
    Variant("ternary", "ternary", "layer"),
    Variant("sew-real-channel", "real", "channel", residual=True),
    Variant("sew-real-channel-tied", "real", "channel", residual=True, tie_summed=True),
)


@dataclass(frozen=True)
class Digits:
    """Images ``[N, 1, 8, 8]`` scaled to [0, 1] and integer labels, split into train and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(test_fraction: float = 0.2, split_seed: int = 0) -> Digits:
    """scikit-learn's bundled digits with a stratified, seeded train/test split.

    The split seed is separate from the training seed so that every training seed is
    scored on the same test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # pixels are 0..16
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=digits.target, random_state=split_seed)
    return Digits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


def encode(images: torch.Tensor, T: int) -> torch.Tensor:
    """Direct encoding: the analog image is the input current at each of the ``T`` steps."""
    return images.unsqueeze(0).repeat(T, *([1] * images.dim()))


def _lif() -> neuron.LIFNode:
    return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True)


class _SewBlock(nn.Module):
    """SEW ``ADD`` residual block: ``s + LIF(BN(conv(s)))``, the sum of two spike trains."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = layer.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = layer.BatchNorm2d(channels)
        self.sn = _lif()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s + self.sn(self.bn(self.conv(s)))


def make_net(residual: bool = False) -> nn.Module:
    """conv-BN-LIF (8×8) → strided conv-BN-LIF (4×4) → avg-pool → flatten → linear, multi-step.

    The first downsampling is a strided conv rather than a pooling layer so that every
    granularity folds everywhere: an element-wise amplitude cannot pass max pooling,
    and after average pooling only a Linear can absorb it. ``residual`` adds a SEW
    ``ADD`` block (`_SewBlock`) after the first layer, so the strided conv reads the sum
    of two neurons' spikes.
    """
    first = OrderedDict(conv1=layer.Conv2d(1, 16, 3, padding=1, bias=False), bn1=layer.BatchNorm2d(16),
                        sn1=_lif())
    rest = OrderedDict(
        conv2=layer.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), bn2=layer.BatchNorm2d(32), sn2=_lif(),
        pool=layer.AvgPool2d(2), flatten=layer.Flatten(), fc=layer.Linear(32 * 2 * 2, 10))
    net = nn.Sequential(OrderedDict({**first, **({"block": _SewBlock(16)} if residual else {}), **rest}))
    functional.set_step_mode(net, "m")
    return net


def build_model(variant: Variant, example_input: torch.Tensor) -> nn.Module:
    """`make_net`, converted as ``variant`` asks (the vanilla variant stays unconverted)."""
    net = make_net(variant.residual)
    if variant.spike is None:
        return net
    return convert_model(net, example_input, spike=variant.spike, granularity=variant.granularity,
                         tie_summed=variant.tie_summed)


def train(model: nn.Module, data: Digits, T: int, epochs: int, seed: int, *, batch_size: int = 64,
          lr: float = 1e-2, weight_decay: float = 1e-4, desc: str = "train") -> None:
    """AdamW with a cosine schedule; amplitudes in their own group without weight decay.

    The loss is cross-entropy on the output averaged over time steps. Batches are drawn
    from a generator seeded with ``seed``, so every variant sees the same batches.

    Args:
        model: a multi-step network (converted or not); trained in place, left in eval mode.
        data: the split; only the training half is used.
        T: time steps of the direct encoding.
        epochs: passes over the training set (a tqdm bar on a terminal, otherwise one log line
            per epoch, shows loss and accuracy).
        seed: seed of the batch order.
        batch_size, lr, weight_decay: optimizer settings (weight decay never touches amplitudes).
        desc: label of the progress bar.
    """
    amplitudes = list(amplitude_parameters(model))
    amp_ids = {id(a) for a in amplitudes}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) not in amp_ids]},
        {"params": amplitudes, "weight_decay": 0.0},  # as the authors do
    ], lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    generator = torch.Generator().manual_seed(seed)
    n = len(data.train_y)
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None)
    for epoch in bar:
        order = torch.randperm(n, generator=generator)
        correct, total_loss = 0, 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            out = model(encode(data.train_x[idx], T)).mean(0)
            loss = F.cross_entropy(out, data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            functional.reset_net(model)
            correct += (out.argmax(1) == data.train_y[idx]).sum().item()
            total_loss += loss.item() * len(idx)
        schedule.step()
        bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{correct / n:.1%}")
        if bar.disable:  # not a terminal: a line per epoch instead of the bar
            logger.info("%s: epoch %d/%d, loss %.3f, train acc %.1f%%", desc, epoch + 1, epochs,
                        total_loss / n, 100 * correct / n)
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, T: int) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
    """Time-averaged logits ``[N, classes]`` and, per neuron, (non-zero outputs, outputs).

    Neuron outputs are counted before any amplitude, so a trained model and its deploy
    model report the same counts; a ternary −1 counts as a spike.
    """
    model.eval()
    counts: dict[str, tuple[int, int]] = {}

    def count(name: str):
        def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            fired, total = counts.get(name, (0, 0))
            counts[name] = (fired + int((out != 0).sum()), total + out.numel())
        return hook

    handles = [m.register_forward_hook(count(name)) for name, m in model.named_modules() if is_neuron(m)]
    try:
        functional.reset_net(model)
        logits = model(encode(images, T)).mean(0)
        functional.reset_net(model)
    finally:
        for h in handles:
            h.remove()
    return logits, counts


def _amplitudes(model: nn.Module) -> dict[str, np.ndarray]:
    """Learned amplitude values per neuron (keyed by the neuron they scale); empty for vanilla."""
    return {name: amplitude_of(m).a.detach().flatten().numpy().copy()
            for name, m in model.named_modules() if amplitude_of(m) is not None}


@dataclass
class VariantResult:
    """Everything the table and the plot show for one trained variant."""

    name: str
    acc_trained: float
    acc_deploy: float
    acc_onnx: float | None  # None: not exported
    agree_deploy: float  # top-1 agreement of the deploy model with the trained model
    agree_onnx: float | None  # top-1 agreement of onnxruntime with the trained model
    max_rel_err: float  # max |y − y_trained| / max |y_trained|, over deploy and ONNX logits
    latency_us: float | None  # onnxruntime, batch 1, median per sample
    spike_rate: float  # all neurons together
    layer_rates: dict[str, float]
    amplitudes: dict[str, np.ndarray] = field(repr=False)
    params_trained: int = 0
    params_deploy: int = 0
    train_seconds: float = 0.0
    energy_trained_pj: float = 0.0  # synaptic energy per test sample (45 nm), amplitude-scaled spikes: MACs
    energy_deploy_pj: float = 0.0  # the same after fold: binary/ternary spikes, ACs


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _onnx_logits(deploy: nn.Module, data: Digits, T: int, path: Path,
                 latency_samples: int) -> tuple[torch.Tensor, float | None]:
    """Export ``deploy`` to ``path``, run the test set in onnxruntime; median batch-1 latency in µs.

    The latency is the median over the first ``latency_samples`` test images (``None`` for 0).
    """
    from .export import export_onnx
    from .runtime import OnnxRunner

    export_onnx(deploy, path, encode(data.test_x[:1], T))
    runner = OnnxRunner(path, threads=1)  # batch-1 latency of a tiny net: one core is the honest setting
    logits = torch.as_tensor(np.asarray(runner(encode(data.test_x, T).numpy()))).mean(0)
    times = []
    for i in range(min(latency_samples, len(data.test_y))):
        x = encode(data.test_x[i:i + 1], T).numpy()
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return logits, statistics.median(times) * 1e6 if times else None


def run_variant(variant: Variant, data: Digits, T: int, epochs: int, seed: int, onnx_dir: Path | None,
                latency_samples: int = 100) -> VariantResult:
    """Train, fold and evaluate one variant; with ``onnx_dir``, also export it and run it in onnxruntime.

    Args:
        variant: which spikes to train with.
        data: the train/test split; all metrics are on the test half.
        T: time steps.
        epochs: training epochs.
        seed: fixes the initial weights (identical for every variant) and the batch order.
        onnx_dir: where ``<variant>.onnx`` is written; ``None`` skips export and onnxruntime.
        latency_samples: test images timed one by one in onnxruntime (median); 0 skips timing.

    Returns:
        The row of the demo table, with the per-layer data for the plot.
    """
    torch.manual_seed(seed)
    example = encode(data.train_x[:8], T)
    model = build_model(variant, example)
    start = time.perf_counter()
    train(model, data, T, epochs, seed, desc=f"{variant.name} T={T}")
    seconds = time.perf_counter() - start

    trained, _ = evaluate(model, data.test_x, T)
    with warnings.catch_warnings():  # the vanilla variant is unconverted on purpose
        warnings.simplefilter("ignore", NotConvertedWarning)
        deploy = fold(model, example_input=example)  # the vanilla net records no example of its own
    folded, counts = evaluate(deploy, data.test_x, T)
    onnx, latency = None, None
    if onnx_dir is not None:
        onnx, latency = _onnx_logits(deploy, data, T, onnx_dir / f"{variant.name}.onnx", latency_samples)
    report = fold_report(deploy)
    energy = energy_report(model, encode(data.test_x, T))
    before = energy.before or energy.after  # vanilla: nothing to fold, the same binary network
    return VariantResult(
        name=variant.name,
        acc_trained=_accuracy(trained, data.test_y),
        acc_deploy=_accuracy(folded, data.test_y),
        acc_onnx=None if onnx is None else _accuracy(onnx, data.test_y),
        agree_deploy=_agreement(folded, trained),
        agree_onnx=None if onnx is None else _agreement(onnx, trained),
        max_rel_err=max(_rel_err(y, trained) for y in (folded, onnx) if y is not None),
        latency_us=latency,
        spike_rate=sum(f for f, _ in counts.values()) / max(sum(t for _, t in counts.values()), 1),
        layer_rates={name: f / t for name, (f, t) in counts.items()},
        amplitudes=_amplitudes(model),
        params_trained=report.parameters_before,
        params_deploy=report.parameters_after,
        train_seconds=seconds,
        energy_trained_pj=before.energy_pj / before.samples,
        energy_deploy_pj=energy.after.energy_pj / energy.after.samples,
    )


TABLE_HEADERS = ["variant", "acc trained", "acc deploy", "acc ONNX", "top-1 agree deploy/ONNX",
                 "max rel err", "ORT us/sample", "spike rate", "params trained -> deploy",
                 "energy trained -> deploy"]


def format_results(results: list[VariantResult]) -> str:
    """The demo table (`sj_realspike.report.format_table` style); agreements are with the trained model."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    rows = [[r.name, pct(r.acc_trained), pct(r.acc_deploy), pct(r.acc_onnx),
             f"{pct(r.agree_deploy)} / {pct(r.agree_onnx)}", f"{r.max_rel_err:.1e}",
             "n/a" if r.latency_us is None else f"{r.latency_us:.0f}", f"{r.spike_rate:.3f}",
             f"{r.params_trained:,} -> {r.params_deploy:,}",
             f"{format_joules(r.energy_trained_pj)} -> {format_joules(r.energy_deploy_pj)}"] for r in results]
    return format_table(TABLE_HEADERS, rows)


def plot_results(results: list[VariantResult], path: Path, title: str) -> None:
    """Two panels: learned amplitudes per layer and variant (dots), spike rates per layer (bars)."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(name for r in results for name in r.layer_rates))
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    amp_ax, rate_ax = fig.subplots(1, 2)
    with_amps = [r for r in results if r.amplitudes]
    width = 0.8 / max(len(with_amps), 1)
    rng = np.random.default_rng(0)
    for j, r in enumerate(with_amps):
        for i, name in enumerate(layers):
            values = r.amplitudes.get(name)
            if values is None:
                continue
            x = i - 0.4 + width * (j + 0.5) + rng.uniform(-0.3, 0.3, len(values)) * width * (len(values) > 1)
            amp_ax.scatter(x, values, s=6 if len(values) > 1 else 40, alpha=0.5, color=f"C{results.index(r)}",
                           label=r.name if i == 0 else None)
    amp_ax.axhline(1.0, color="gray", lw=0.8, ls="--", label="vanilla (a = 1)")
    amp_ax.set_xticks(range(len(layers)), layers)
    amp_ax.set_ylabel("learned amplitude a")
    amp_ax.set_title("amplitude distribution per layer")
    amp_ax.legend(fontsize=8, markerscale=2)

    width = 0.8 / len(results)
    for j, r in enumerate(results):
        x = np.arange(len(layers)) - 0.4 + width * (j + 0.5)
        rate_ax.bar(x, [r.layer_rates.get(name, 0.0) for name in layers], width, color=f"C{j}", label=r.name)
    rate_ax.set_xticks(range(len(layers)), layers)
    rate_ax.set_ylabel("spike rate (non-zero outputs per neuron and step)")
    rate_ax.set_title("spike rate per layer (test set)")
    rate_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Run the demo: print the table, write ``amplitudes_and_rates.png`` and ``<variant>.onnx`` to ``--out``.

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on a bad argument or when scikit-learn or matplotlib is missing.
    """
    parser = OneLineParser(
        prog="sj-realspike demo",
        description="Train a small conv SNN on scikit-learn's digits as vanilla, Real Spike (layer/channel/\n"
                    "element) and Ternary Spike; fold, export to ONNX, run in onnxruntime, compare.",
        epilog="examples:\n  sj-realspike demo\n  sj-realspike demo --quick --out demo_out",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="seconds, for CI: 2 epochs, latency over 10 images")
    parser.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default 15, --quick 2)")
    parser.add_argument("--time-steps", "-T", type=positive_int, default=4,
                        help="simulation time steps T (default 4)")
    parser.add_argument("--seed", type=int, default=0,
                        help="initial weights and batch order (the train/test split is fixed)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"),
                        help="directory for the ONNX files and the PNG (default ./demo_out)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], metavar="NAME",
                        help="run only these rows (default: all of " + ", ".join(v.name for v in VARIANTS) + ")")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line argument error (2): a status, as documented
        return e.code if isinstance(e.code, int) else 2
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        error_line(f"the demo needs scikit-learn and matplotlib ({e}); install them with: "
                   "pip install 'sj-realspike[demo]'")
        return 2

    # The net is tiny: extra intra-op threads only add synchronisation, and on a busy machine
    # spinning OpenMP workers slow training down by an order of magnitude.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with log_to_stderr():
            _run(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def _run(args: argparse.Namespace) -> None:
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else 15)
    data = load_digits_split()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"digits: {len(data.train_y)} train / {len(data.test_y)} test images (8x8), T={args.time_steps}, "
          f"{epochs} epochs, seed {args.seed}")
    start = time.perf_counter()
    results = []
    variants = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    bar = tqdm(variants, desc="variants", unit="variant", disable=None)
    for i, variant in enumerate(bar):
        if bar.disable:  # not a terminal: a line per variant instead of the bar
            logger.info("variant %d/%d: %s (train, fold, export to ONNX, run in onnxruntime)",
                        i + 1, len(variants), variant.name)
        results.append(run_variant(variant, data, args.time_steps, epochs, args.seed, args.out,
                                   latency_samples=10 if args.quick else 100))
    print()
    print(format_results(results))
    print("\nacc: test accuracy. agree: top-1 agreement with the trained model. max rel err: "
          "max |logit - trained logit| / max |trained logit|\nover the test set; above ~1e-6 it means a few "
          "spikes flipped (a membrane within float32 rounding of the\nthreshold fires in one model and not "
          "the other). spike rate: non-zero neuron outputs per neuron and step.\nenergy: synaptic energy per "
          "test sample at 45 nm (0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate): amplitude-scaled\n"
          "spikes cost a MAC per non-zero input and weight, folded binary/ternary spikes an AC.\nsew-*: the net "
          "with a SEW ADD block, so the strided conv reads the sum of two neurons' spikes: untied, fold gives\nthat "
          "conv one scaled copy per addend (more deploy parameters); tied (tie_summed), the two neurons share one "
          "amplitude\nand the deploy model has the plain net's convs.")
    png = args.out / "amplitudes_and_rates.png"
    plot_results(results, png, f"digits, T={args.time_steps}, {epochs} epochs, seed {args.seed}")
    print(f"\nwrote {png} and {len(results)} ONNX models to {args.out}/ in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
