"""Random Norse networks for bench/fuzz.py (``--framework norse``), in Norse's three styles.

* ``sequential``: ``SequentialState(Lift(Conv2d), LIF(), Lift(MaxPool2d), ..., Lift(Linear), LI())``
  on the whole sequence ``[T, N, C, H, W]``;
* ``loop``: cells (``LIFCell``, ``LIFBoxCell``) called in a time loop in ``forward`` with their
  states, with residual sums of spike trains, shortcuts into a membrane, branches and scalar
  factors between conv blocks, and a ``LICell`` read-out or a plain ``Linear`` head;
* ``step``: ``SequentialState(Conv2d, LIFCell(), ...)`` called once per step by the caller with
  its state (``out, state = model(x[t], state)``).
"""

from __future__ import annotations

import random

import torch
import torch.nn as nn
from norse.torch import LI, LIF, LIBoxCell, LICell, LIFBoxCell, LIFCell, LIFParameters, Lift, SequentialState

STYLES = ("sequential", "loop", "step")


class LoopNet(nn.Module):
    """Cells stepped by ``forward`` over ``x``'s first dim, following a static program (like fuzz.FuzzNet)."""

    def __init__(self, program: list[tuple[str, object]], mods: dict[str, nn.Module], cells: set[str]) -> None:
        super().__init__()
        self.program = program
        self.mods = nn.ModuleDict(mods)
        self.cells = sorted(cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states: dict[str, object] = {name: None for name in self.cells}
        outs = []
        for xt in x:
            h, slots = xt, {}
            for op, arg in self.program:
                if op == "mod" and arg in states:
                    h, states[arg] = self.mods[arg](h, states[arg])
                elif op == "mod":
                    h = self.mods[arg](h)
                elif op == "save":
                    slots[arg] = h
                elif op == "add":
                    h = h + slots[arg]
                elif op == "scale":
                    h = h * arg
                elif op == "flatten":
                    h = torch.flatten(h, 1)
                elif op == "branch":
                    h = self.mods[arg[0]](h) + self.mods[arg[1]](h)
            outs.append(h)
        return torch.stack(outs)


class Voltages(nn.Module):
    """``out, _ = model(x)``: what a Norse user keeps of a ``SequentialState``'s ``(output, states)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.net(x)
        return out


def _cell(r: random.Random) -> nn.Module:
    p = LIFParameters(v_th=torch.as_tensor(r.choice([0.5, 1.0])))
    return LIFCell(p) if r.random() < 0.6 else LIFBoxCell()


def _conv(r: random.Random, c: int, h: int) -> tuple[nn.Conv2d, int, int]:
    groups = r.choice([1, 2]) if c % 2 == 0 else 1
    cout = r.choice([c, 2 * c]) if c < 16 else c
    stride = 2 if h >= 8 and r.random() < 0.3 else 1
    k, dil = r.choice([(1, 1), (3, 1), (3, 2)])
    conv = nn.Conv2d(c, cout, k, stride=stride, padding=dil * (k // 2), dilation=dil, groups=groups,
                     bias=r.random() < 0.5)
    return conv, cout, (h - 1) // stride + 1


def random_norse_net(r: random.Random, size: int) -> tuple[nn.Module, str, list[str]]:
    """``(network, style, neuron module paths)`` for input ``[T, N, 3, size, size]``."""
    style = r.choice(STYLES)
    c, h = 3, size
    layers: list[nn.Module] = []
    neurons: list[int] = []
    if style in ("sequential", "step"):
        wrap = Lift if style == "sequential" else (lambda m: m)
        neuron = (lambda: LIF(LIFParameters(v_th=torch.as_tensor(r.choice([0.5, 1.0]))))) \
            if style == "sequential" else (lambda: _cell(r))
        for _ in range(r.randint(1, 3)):
            conv, c, h = _conv(r, c, h)
            layers.append(wrap(conv))
            neurons.append(len(layers))
            layers.append(neuron())
            if h >= 4 and r.random() < 0.4:
                layers.append(wrap(r.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
                h //= 2
        layers.append(wrap(nn.Flatten()))
        features = c * h * h
        if r.random() < 0.5:
            layers.append(wrap(nn.Linear(features, 8)))
            neurons.append(len(layers))
            layers.append(neuron())
            features = 8
        layers.append(wrap(nn.Linear(features, 5)))
        if r.random() < 0.5:
            layers.append(LI() if style == "sequential" else r.choice([LICell(), LIBoxCell()]))
        if style == "step":  # called as out, state = model(x[t], state)
            return SequentialState(*layers), style, [str(i) for i in neurons]
        return Voltages(SequentialState(*layers)), style, [f"net.{i}" for i in neurons]

    mods: dict[str, nn.Module] = {}
    program: list[tuple[str, object]] = []
    cells: set[str] = set()
    saved: dict[str, tuple[int, int]] = {}

    def add(name: str, m: nn.Module, cell: bool = False) -> None:
        mods[name] = m
        program.append(("mod", name))
        if cell:
            cells.add(name)

    conv, c, h = _conv(r, c, h)
    add("conv0", conv)
    add("sn0", _cell(r), cell=True)
    for i in range(1, r.randint(2, 5)):
        choice = r.random()
        if choice < 0.35:
            conv, c, h = _conv(r, c, h)
            add(f"conv{i}", conv)
            match = [s for s, shp in saved.items() if shp == (c, h)]
            if match and r.random() < 0.5:
                program.append(("add", match[0]))  # a·s straight into the membrane
            add(f"sn{i}", _cell(r), cell=True)
        elif choice < 0.5 and h >= 4:
            add(f"pool{i}", r.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
            h //= 2
        elif choice < 0.65:
            program.append(("save", f"s{i}"))
            saved[f"s{i}"] = (c, h)
        elif choice < 0.75:
            match = [s for s, shp in saved.items() if shp == (c, h)]
            if match:
                program.append(("add", match[-1]))  # a sum of spike trains
        elif choice < 0.88:
            mods[f"ba{i}"] = nn.Conv2d(c, c, 3, padding=1, bias=False)
            mods[f"bb{i}"] = nn.Conv2d(c, c, 1, bias=False)
            program.append(("branch", (f"ba{i}", f"bb{i}")))
            add(f"sn{i}", _cell(r), cell=True)
        else:
            program.append(("scale", r.choice([0.5, 2.0, -1.0])))
    program.append(("flatten", None))
    add("fc_out", nn.Linear(c * h * h, 5))
    if r.random() < 0.5:
        add("readout", LICell(), cell=True)
    return LoopNet(program, mods, cells), style, [f"mods.{n}" for n in sorted(cells) if n.startswith("sn")]
