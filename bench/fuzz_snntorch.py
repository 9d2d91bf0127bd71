"""Random snnTorch networks for bench/fuzz.py (``--framework snntorch``), in snnTorch's own styles.

* ``sequential``: ``nn.Sequential(Conv2d, [BatchNorm2d], [MaxPool2d], Leaky(init_hidden=True), ...,
  Flatten, Linear, [neuron(output=True)])`` stepped by the caller, one ``[N, ...]`` step per call
  after a reset (tutorial 6's ``forward_pass``), so the last layer may return ``(spk, mem)``;
* ``forward_pass``: the same ``nn.Sequential`` inside a module whose ``forward`` is tutorial 6's
  ``forward_pass``: ``utils.reset(net)``, then ``for step in range(x.size(0)): spk, mem = net(x[step])``;
* ``locals``: a class whose ``forward`` keeps each neuron's state in locals (``mem = lif.init_leaky()``,
  ``syn, mem = lif.init_synaptic()``, ``spk, mem = rlif.init_rleaky()``) and loops over the time
  steps itself (tutorials 5 and 7): ``spk, mem = lif(cur, mem)`` (by position, by keyword, or with no
  state so the neuron keeps it), with residual sums of spike trains, shortcuts into a membrane,
  branches and scalar factors between blocks, returning the stacked output or tutorial 5's
  ``(spk_rec, mem_rec)`` of a last ``Leaky``; sometimes tutorial 5's static input, repeated over
  ``num_steps`` inside ``forward``.

Neurons: ``Leaky``, ``Synaptic``, ``RLeaky`` (linear, conv or one-to-one recurrence), ``Lapicque``,
rarely ``Alpha`` (sj_realspike refuses its export), with random ``beta`` (scalar or per feature,
learnable or not), ``threshold`` (learnable or not), ``graded_spikes_factor`` (scalar or per channel,
learnable or not), ``reset_mechanism`` ``subtract``/``zero`` and surrogate.
"""

from __future__ import annotations

import random

import snntorch as snn
import torch
import torch.nn as nn
from snntorch import surrogate, utils

STYLES = ("sequential", "forward_pass", "locals")
KINDS = ("leaky", "synaptic", "rleaky", "lapicque", "alpha")
KIND_WEIGHTS = (0.45, 0.2, 0.15, 0.15, 0.05)


def _features(conv: bool, width: int) -> tuple[int, ...]:
    """The shape of a per-feature neuron parameter: ``[C, 1, 1]`` for conv maps, ``[F]`` for vectors."""
    return (width, 1, 1) if conv else (width,)


def neuron(r: random.Random, kind: str, width: int, conv: bool, init_hidden: bool, output: bool = False) -> nn.Module:
    """An snnTorch neuron of ``kind`` for ``width`` channels (``conv``) or features, with random settings."""
    beta: float | torch.Tensor = r.choice([0.5, 0.9, 0.95])
    if kind in ("leaky", "synaptic", "rleaky") and r.random() < 0.2:
        beta = torch.full(_features(conv, width), 0.75)
    common = dict(threshold=r.choice([0.5, 1.0]), init_hidden=init_hidden, output=output,
                  learn_threshold=r.random() < 0.3, reset_mechanism=r.choice(["subtract", "zero"]))
    if r.random() < 0.3:
        common["spike_grad"] = surrogate.fast_sigmoid(slope=25)
    learn_beta = r.random() < 0.3
    if kind == "leaky":
        m = snn.Leaky(beta=beta, learn_beta=learn_beta, **common)
    elif kind == "synaptic":
        m = snn.Synaptic(alpha=r.choice([0.5, 0.9]), beta=beta, learn_alpha=r.random() < 0.3, learn_beta=learn_beta,
                         **common)
    elif kind == "rleaky":
        if r.random() < 0.25:  # one-to-one recurrence: V scales each neuron's own spike
            recurrence = dict(all_to_all=False, V=r.choice([0.5, 1.0]))
        elif conv:
            recurrence = dict(conv2d_channels=width, kernel_size=r.choice([1, 3]))
        else:
            recurrence = dict(linear_features=width)
        m = snn.RLeaky(beta=beta, learn_beta=learn_beta, learn_recurrent=r.random() < 0.8, **recurrence, **common)
    elif kind == "lapicque":
        m = snn.Lapicque(beta=beta, learn_beta=learn_beta, **common)
    else:  # Alpha needs alpha > beta
        common["reset_mechanism"] = "zero"
        m = snn.Alpha(alpha=0.9, beta=0.8, **common)
    if r.random() < 0.3:  # a spike factor as after training with learn_graded_spikes_factor
        g = torch.full((), r.choice([0.5, 2.0])) if r.random() < 0.7 else \
            ((torch.arange(width) % 4 + 2) / 4).reshape(_features(conv, width))  # 0.5 … 1.25: dyadic
        m.graded_spikes_factor = nn.Parameter(g) if r.random() < 0.5 else g
    return m


def _kind(r: random.Random, default: str) -> str:
    return default if r.random() < 0.7 else r.choices(KINDS, KIND_WEIGHTS)[0]


def _conv(r: random.Random, c: int, h: int) -> tuple[nn.Conv2d, int, int]:
    groups = r.choice([1, 2]) if c % 2 == 0 else 1
    cout = r.choice([c, 2 * c]) if c < 16 else c
    stride = 2 if h >= 8 and r.random() < 0.3 else 1
    k, dil = r.choice([(1, 1), (3, 1), (3, 2), (5, 1)])
    conv = nn.Conv2d(c, cout, k, stride=stride, padding=dil * (k // 2), dilation=dil, groups=groups,
                     bias=r.random() < 0.7)  # snnTorch's tutorials keep nn.Conv2d's default bias
    return conv, cout, (h - 1) // stride + 1


class ForwardPass(nn.Module):
    """Tutorial 6's ``forward_pass`` as a module: reset the net, step it over ``x``'s first dim, stack the spikes."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net
        self.returns_state = bool(getattr(net[-1], "output", False))  # (spk, mem) / (spk, syn, mem) per step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spk_rec = []
        utils.reset(self.net)
        for step in range(x.size(0)):
            out = self.net(x[step])
            spk_rec.append(out[0] if self.returns_state else out)
        return torch.stack(spk_rec)


def _sequential(r: random.Random, default: str, image: bool, size: int) -> tuple[nn.Sequential, list[str]]:
    layers: list[nn.Module] = []
    neurons: list[str] = []

    def add_neuron(width: int, conv: bool, output: bool = False) -> None:
        neurons.append(str(len(layers)))
        layers.append(neuron(r, _kind(r, default), width, conv, init_hidden=True, output=output))

    if image:
        c, h = 3, size
        for _ in range(r.randint(1, 3)):
            conv, c, h = _conv(r, c, h)
            layers.append(conv)
            if r.random() < 0.3:
                layers.append(nn.BatchNorm2d(c))
            if h >= 4 and r.random() < 0.5:  # tutorial 6: conv, max pool, then the neuron
                layers.append(r.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
                h //= 2
            add_neuron(c, conv=True)
        layers.append(nn.Flatten())
        features = c * h * h
    else:
        features = size
    for _ in range(r.randint(0 if image else 1, 2)):
        hidden = r.choice([6, 8])
        layers.append(nn.Linear(features, hidden))
        add_neuron(hidden, conv=False)
        features = hidden
    layers.append(nn.Linear(features, 5))
    if r.random() < 0.6:  # tutorial 6's last layer: spikes and membrane out
        add_neuron(5, conv=False, output=True)
    return nn.Sequential(*layers), neurons


_INIT = ((snn.Synaptic, "init_synaptic"), (snn.RLeaky, "init_rleaky"), (snn.Lapicque, "init_lapicque"),
         (snn.Alpha, "init_alpha"), (snn.Leaky, "init_leaky"))  # subclasses (RealSpike<Cls>, TernaryLeaky) too


class LocalsNet(nn.Module):
    """State in locals and the time loop in ``forward``, following a static program (like fuzz.FuzzNet).

    ``calls[name]`` says how a neuron is called: ``"positional"`` (``spk, mem = lif(cur, mem)``),
    ``"keyword"`` (``lif(cur, mem=mem)``) or ``"hidden"`` (``spk, _ = lif(cur)``: the neuron keeps its state).
    ``num_steps`` set: the input is one static ``[N, ...]`` tensor fed at every step (tutorial 5).
    """

    def __init__(self, program: list[tuple[str, object]], mods: dict[str, nn.Module], calls: dict[str, str],
                 record_membrane: bool, num_steps: int | None) -> None:
        super().__init__()
        self.program = program
        self.mods = nn.ModuleDict(mods)
        self.calls = calls
        self.record_membrane = record_membrane
        self.num_steps = num_steps

    def _call(self, name: str, h: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        lif = self.mods[name]
        style = self.calls[name]
        if style == "hidden":
            out = lif(h)
            return out[0], state
        if isinstance(lif, snn.RLeaky):  # spk, mem = rlif(cur, spk, mem)
            spk, mem = lif(h, *state) if style == "positional" else lif(h, spk=state[0], mem=state[1])
            return spk, (spk, mem)
        if isinstance(lif, snn.Synaptic):  # spk, syn, mem = lif(cur, syn, mem)
            spk, syn, mem = lif(h, *state) if style == "positional" else lif(h, syn=state[0], mem=state[1])
            return spk, (syn, mem)
        if isinstance(lif, snn.Alpha):
            spk, *rest = lif(h, *state)
            return spk, tuple(rest)
        spk, mem = lif(h, *state) if style == "positional" else lif(h, mem=state[0])
        return spk, (mem,)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        states = {}
        for name in self.calls:
            lif = self.mods[name]
            init = getattr(lif, next(method for cls, method in _INIT if isinstance(lif, cls)))()
            states[name] = init if isinstance(init, tuple) else (init,)
        spk_rec, mem_rec = [], []
        for step in range(self.num_steps or x.size(0)):
            h, slots = (x if self.num_steps else x[step]), {}
            for op, arg in self.program:
                if op == "neuron":
                    h, states[arg] = self._call(arg, h, states[arg])
                elif op == "mod":
                    h = self.mods[arg](h)
                elif op == "save":
                    slots[arg] = h
                elif op == "add":
                    h = h + slots[arg]
                elif op == "scale":
                    h = h * arg
                elif op == "rscale":  # the factor written first
                    h = arg * h
                elif op == "flatten":
                    h = torch.flatten(h, 1)
                elif op == "branch":
                    h = self.mods[arg[0]](h) + self.mods[arg[1]](h)
            spk_rec.append(h)
            if self.record_membrane:
                mem_rec.append(states["lif_out"][-1])
        if self.record_membrane:  # tutorial 5: return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)
            return torch.stack(spk_rec, dim=0), torch.stack(mem_rec, dim=0)
        return torch.stack(spk_rec)


def _locals(r: random.Random, default: str, image: bool, size: int, static: bool) -> tuple[LocalsNet, list[str]]:
    mods: dict[str, nn.Module] = {}
    program: list[tuple[str, object]] = []
    calls: dict[str, str] = {}
    saved: dict[str, tuple[int, int]] = {}

    def add(name: str, m: nn.Module) -> None:
        mods[name] = m
        program.append(("mod", name))

    def add_neuron(name: str, width: int, conv: bool, kind: str | None = None) -> None:
        mods[name] = neuron(r, kind or _kind(r, default), width, conv, init_hidden=False)
        calls[name] = r.choices(["positional", "keyword", "hidden"], [0.7, 0.2, 0.1])[0]
        program.append(("neuron", name))

    if image:
        c, h = 3, size
        conv, c, h = _conv(r, c, h)
        add("conv0", conv)
        add_neuron("lif0", c, conv=True)
        for i in range(1, r.randint(2, 5)):
            choice = r.random()
            if choice < 0.35:  # conv block, maybe a shortcut into its membrane
                conv, c, h = _conv(r, c, h)
                add(f"conv{i}", conv)
                match = [s for s, shp in saved.items() if shp == (c, h)]
                if match and r.random() < 0.5:
                    program.append(("add", match[0]))  # a·s straight into the membrane
                add_neuron(f"lif{i}", c, conv=True)
            elif choice < 0.5 and h >= 4:
                add(f"pool{i}", r.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
                h //= 2
            elif choice < 0.65:  # spikes kept for a later residual sum or shortcut
                program.append(("save", f"s{i}"))
                saved[f"s{i}"] = (c, h)
            elif choice < 0.75:
                match = [s for s, shp in saved.items() if shp == (c, h)]
                if match:
                    program.append(("add", match[-1]))  # a sum of spike trains
            elif choice < 0.88:  # one spike tensor, two synapses
                mods[f"ba{i}"] = nn.Conv2d(c, c, 3, padding=1, bias=False)
                mods[f"bb{i}"] = nn.Conv2d(c, c, 1, bias=False)
                program.append(("branch", (f"ba{i}", f"bb{i}")))
                add_neuron(f"lif{i}", c, conv=True)
            else:
                program.append((r.choice(["scale", "rscale"]), r.choice([0.5, 2.0, -1.0])))
        program.append(("flatten", None))
        features = c * h * h
    else:
        features = size
        add("fc0", nn.Linear(features, 8))
        add_neuron("lif0", 8, conv=False)
        features = 8
        for i in range(1, r.randint(1, 3)):
            choice = r.random()
            if choice < 0.5:
                add(f"fc{i}", nn.Linear(features, features))
                match = [s for s, f in saved.items() if f == (features, 0)]
                if match and r.random() < 0.5:
                    program.append(("add", match[0]))
                add_neuron(f"lif{i}", features, conv=False)
            elif choice < 0.7:
                program.append(("save", f"s{i}"))
                saved[f"s{i}"] = (features, 0)
            elif choice < 0.85:
                match = [s for s, f in saved.items() if f == (features, 0)]
                if match:
                    program.append(("add", match[-1]))
            else:
                program.append((r.choice(["scale", "rscale"]), r.choice([0.5, 2.0, -1.0])))
    add("fc_out", nn.Linear(features, 5))
    record_membrane = r.random() < 0.5
    if record_membrane:  # tutorial 5's last Leaky, its spikes and membranes recorded
        add_neuron("lif_out", 5, conv=False, kind="leaky")
        calls["lif_out"] = "positional"
    neurons = [f"mods.{n}" for n in calls if n != "lif_out"]
    return LocalsNet(program, mods, calls, record_membrane, 2 if static else None), neurons


def random_snntorch_net(r: random.Random, size: int, ternary: bool = False
                        ) -> tuple[nn.Module, str, tuple[int, ...], list[str]]:
    """``(network, style, input shape, neuron module paths)``; the input is ``[T, N, ...]`` (``[N, ...]``
    for a ``locals`` net with a static input), images ``3 × size × size`` or vectors of ``size`` features.

    Most neurons of a network are of one kind; for a ``ternary`` conversion mostly ``Leaky`` (the one
    with a ternary counterpart), so that most networks convert something.
    """
    style = r.choice(STYLES)
    default = "leaky" if ternary and r.random() < 0.8 else r.choices(KINDS[:4], KIND_WEIGHTS[:4])[0]
    image = r.random() < 0.6
    item = (3, size, size) if image else (size,)
    if style == "locals":
        static = r.random() < 0.2
        net, neurons = _locals(r, default, image, size, static)
        return net, style, ((2, *item) if static else (2, 2, *item)), neurons
    seq, neurons = _sequential(r, default, image, size)
    if style == "forward_pass":
        return ForwardPass(seq), style, (2, 2, *item), [f"net.{n}" for n in neurons]
    return seq, style, (2, 2, *item), neurons
