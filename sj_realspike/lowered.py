"""Export-friendly twins of the deploy model's neurons and fold-made synapses.

Nothing here knows a framework. `LoweredNeuron` is an IF/LIF/PLIF neuron given by its
numbers (threshold, reset, charge, decay): an adapter whose neurons follow these
equations lowers them to it (`FrameworkAdapter.lower`; SpikingJelly's IF/LIF/PLIF and
their ternary twins: `sj_realspike.frameworks.spikingjelly`), and the stream export
(`sj_realspike.stream`) carries the membranes of exactly these neurons. The synapse
lowerings replace the fold-made synapses (`sj_realspike.synapses`), whatever the framework.

Each module here computes what its original computes, written so that
``torch.onnx.export`` emits a short sequence of standard ONNX ops that
onnxruntime runs fast on CPU:

* Neurons run their elementwise work on ``[T, M]`` tensors (time first, all other
  dims flattened): onnxruntime's broadcast kernels are slow on shapes that end in
  size-1 dims such as ``[T, N, 512, 1, 1]``. Time steps are unrolled over one
  ``Split`` and joined by one ``Concat``. No ``Where`` (several times the cost of a
  ``Mul`` in onnxruntime) and no ``Sign`` (not vectorized there): binary spikes are
  ``s = [h ≥ θ]``, ternary ones ``[h ≥ θ] − [h ≤ −θ]`` (once, on all steps joined),
  and a hard reset is ``keep = [h < θ]`` (ternary ``[|h| < θ]``), ``v = h · keep``
  (plus ``(1 − keep) · v_r``).
* Spikes come from ``≥``/``≤`` comparisons, as in SpikingJelly (``Θ(h − θ)``), so a NaN
  membrane does not fire and ±Inf fires like any value beyond the threshold; resets
  then give the same NaN/Inf membranes as SpikingJelly's (``0 · Inf`` is NaN in both).
* The charge keeps SpikingJelly's own operation order (``v + (x − (v − v_r)) / τ``),
  so a lowered neuron equals SpikingJelly's fp32 forward bit for bit; only a division
  by a power-of-two ``τ`` becomes the (identical) multiplication by ``1/τ``.
* `LoweredUnsharedConv2d` is a locally connected conv as one batched ``MatMul`` over
  output positions, with patches gathered in a positions-first layout by strided
  slices: every transpose is a plain 2-D one, which onnxruntime does fast and does
  not merge into slow N-D permutations.
* `LoweredDiagonalSynapse` multiplies by the weight expanded to the full feature
  size, so onnxruntime broadcasts over the batch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .synapses import DiagonalSynapse, UnsharedConv2d

__all__ = [
    "LoweredBinaryNeuron",
    "LoweredDiagonalSynapse",
    "LoweredNeuron",
    "LoweredRecurrence",
    "LoweredTernaryNeuron",
    "LoweredUnsharedConv2d",
]


class LoweredNeuron(nn.Module):
    """A stateless multi-step neuron: the whole sequence in, the whole spike train out.

    Charge (SpikingJelly's equations and operation order, ``v_r`` the reset voltage, 0 for soft reset)::

        IF:    h = v + x
        LIF:   h = v + (x − (v − v_r)) / τ          (decay_input)
               h = v − (v − v_r) / τ + x            (otherwise)
        PLIF:  as LIF with ``/ τ`` replaced by ``· sigmoid(w)``

    The membrane starts at ``v_r`` (hard reset) or 0 (soft reset) on every call: `rest`.

    Args:
        v_threshold: firing threshold ``θ``.
        v_reset: hard-reset voltage, or ``None`` for soft reset (subtract ``θ · s``).
        charge: ``"if"``, ``"lif"`` or ``"plif"``.
        decay: ``τ`` for LIF, ``sigmoid(w)`` for PLIF (a 0-d tensor), unused for IF.
        decay_input: LIF/PLIF ``decay_input``.
        time_steps: ``None``: inputs are ``[T, N, …]``; an int ``T``: inputs are
            ``[T·N, …]`` (a single-step model run on the time-flattened batch).
    """

    def __init__(self, v_threshold: float, v_reset: float | None, charge: str,
                 decay: float | torch.Tensor | None = None, decay_input: bool = True,
                 time_steps: int | None = None) -> None:
        super().__init__()
        if charge not in ("if", "lif", "plif"):
            raise ValueError(f"charge must be 'if', 'lif' or 'plif', got {charge!r}")
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.rest = 0.0 if v_reset is None else float(v_reset)
        self.charge = charge
        self.decay_input = decay_input
        self.time_steps = time_steps
        self.tau: float | None = None
        self.inv_tau: float | None = None
        if charge == "lif":
            self.tau = float(decay)
            mantissa, _ = math.frexp(self.tau)
            # x / τ == x · (1/τ) in every case exactly when τ is a power of two.
            self.inv_tau = 1.0 / self.tau if mantissa == 0.5 else None
        if charge == "plif":
            self.register_buffer("q", torch.as_tensor(decay).detach().clone().reshape(()))

    def forward(self, x: torch.Tensor,
                v: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The spike train for the whole sequence ``x``; with a membrane ``v``, one step: ``(spikes, next v)``.

        In the one-step form (`sj_realspike.stream`) ``x`` is one step ``[1, N, …]``
        (``time_steps`` is ``None``: a multi-step model run on one step) or ``[N, …]``, and
        ``v`` is the membrane ``[N, F]``, each sample's features flattened: elementwise ops
        on 2-D tensors, as in `fire_all` (onnxruntime's broadcast kernels are several times
        slower on shapes like ``[N, 512, 1, 1]``). The spikes keep the shape of ``x``.
        """
        if v is not None:
            lead = (1, -1) if self.time_steps is None else (-1,)
            s, v = self.step(x.reshape(-1, v.shape[1]), v)
            return s.reshape(*lead, *x.shape[len(lead):]), v
        steps = self.time_steps if self.time_steps is not None else x.shape[0]
        xs = x.reshape(steps, -1).split(1, 0)
        return self.fire_all(xs).reshape(x.shape)

    def fire_all(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Spikes ``[T, M]`` for the per-step inputs ``xs`` (each ``[1, M]``).

        With a hard reset the spikes come from one comparison on all steps joined (the
        reset needs only ``[h < θ]``); a soft reset needs each step's spikes.
        """
        last, v = len(xs) - 1, None
        if self.v_reset is None:
            spikes = []
            for t, x in enumerate(xs):
                h = self.charged(v, x)
                s = self.fire(h)
                if t < last:
                    v = self.next_membrane(h, s)
                spikes.append(s)
            return torch.cat(spikes, 0)
        hs = []
        for t, x in enumerate(xs):
            h = self.charged(v, x)
            hs.append(h)
            if t < last:
                v = self.next_membrane(h, None)
        return self.fire(torch.cat(hs, 0))  # not 1 − keep: a NaN membrane does not fire

    def step(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step from membrane ``v`` (the shape of ``x``): the spikes and the next membrane.

        The ops of one step of `fire_all`, with the state an explicit input (a streaming
        graph runs this once per call). ``v`` starts at `rest`: from there the charge gives
        the same values as `fire_all`'s first step, which starts from the constant.
        """
        h = self.charged(v, x)
        s = self.fire(h)
        return s, self.next_membrane(h, s)

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        """Spikes for the charged membrane ``h``."""
        raise NotImplementedError

    def next_membrane(self, h: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """The membrane after the reset (``s``: the spikes of ``h``, or ``None`` for a hard reset).

        A hard reset keeps ``h`` where the neuron is silent: ``keep = [h < θ]`` (ternary
        ``[|h| < θ]``), computed from ``h`` when ``s`` is ``None`` (`fire_all`, which fires all
        steps at once), else as ``1 − s`` (``1 − |s|``), one op fewer. The membranes are the
        same for every ``h``: equal keeps where ``h`` is finite; NaN stays NaN (``NaN · 0``,
        ``NaN · 1``), +∞ becomes NaN (``∞ · 0``) and −∞ stays −∞ either way.
        """
        raise NotImplementedError

    def hard_reset(self, h: torch.Tensor, keep: torch.Tensor, fired: torch.Tensor | None) -> torch.Tensor:
        """``h · keep + (1 − keep) · v_r``; ``fired`` is ``1 − keep`` when the caller has it (the spikes)."""
        v = h * keep
        if self.v_reset == 0.0:
            return v
        return v + (1.0 - keep if fired is None else fired) * self.v_reset

    # ----------------------------------------------------------------- charge
    def _decay(self, d: torch.Tensor) -> torch.Tensor:
        if self.charge == "plif":
            return d * self.q
        return d * self.inv_tau if self.inv_tau is not None else d / self.tau

    def charged(self, v: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``h`` from the state ``v`` (``None``: the initial ``v_r``, a constant) and input ``x``."""
        r = self.rest
        if v is None:
            # v = v_r makes (v − v_r) an exact 0: IF/LIF(no decay_input) → v_r + x; decay_input → v_r + x/τ.
            h = self._decay(x) if self.charge != "if" and self.decay_input else x
            return h + r if r != 0.0 else h
        if self.charge == "if":
            return v + x
        dv = v - r if r != 0.0 else v  # v − 0.0 is v exactly
        if self.decay_input:
            return v + self._decay(x - dv)
        return v - self._decay(dv) + x

    def extra_repr(self) -> str:
        decay = f", tau={self.tau}" if self.charge == "lif" else ""
        if self.charge == "plif":
            decay = f", q={float(self.q):.6g}"
        return (f"{self.charge}{decay}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"decay_input={self.decay_input}, time_steps={self.time_steps}")


class LoweredRecurrence(nn.Module):
    """A framework's neuron or read-out lowered with its recurrence inside (snnTorch's, Norse's).

    It runs the steps of one call from the state it is given or from rest, and keeps its state
    in no input or output of its own: an unrolled graph, which hands it the whole sequence,
    carries the state across steps; a stream graph, one step per call, would restart it at every
    step, so `sj_realspike.stream` refuses graphs holding one. Only `LoweredNeuron`'s membranes
    are stream inputs and outputs.
    """


class LoweredBinaryNeuron(LoweredNeuron):
    """Spikes ``s = [h ≥ θ]`` ∈ {0, 1}; hard reset ``v = s·v_r + (1 − s)·h`` or soft ``v = h − θ·s``."""

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        return (h >= self.v_threshold).to(h.dtype)

    def next_membrane(self, h: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        th = self.v_threshold
        if self.v_reset is None:
            return h - (s if th == 1.0 else s * th)
        if s is None:  # 1 where the neuron stays silent (NaN: 0, and NaN · 0 stays NaN)
            return self.hard_reset(h, (h < th).to(h.dtype), None)
        return self.hard_reset(h, 1.0 - s, s)


class LoweredTernaryNeuron(LoweredNeuron):
    """Spikes +1 at ``h ≥ θ``, −1 at ``h ≤ −θ``, else 0; both polarities reset."""

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        th = self.v_threshold
        return (h >= th).to(h.dtype) - (h <= -th).to(h.dtype)

    def next_membrane(self, h: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        th = self.v_threshold
        if self.v_reset is None:
            return h - (s if th == 1.0 else s * th)
        if s is None:  # −θ < h < θ: no spike (NaN: 0, and NaN · 0 stays NaN)
            return self.hard_reset(h, (h.abs() < th).to(h.dtype), None)
        fired = s.abs()
        return self.hard_reset(h, 1.0 - fired, fired)


class LoweredUnsharedConv2d(nn.Module):
    """`UnsharedConv2d` as one batched ``MatMul`` over output positions.

    The input ``[B, C, H, W]`` is transposed once to ``[H, W, B, C]`` (a 2-D
    transpose of ``[B·C, H·W]``), zero-padded, and each kernel tap is a strided slice
    ``[H_out, W_out, B, C]``; concatenated along channels they form the patches
    ``[L, B, K·C]``, multiplied by per-position weights ``[L, K·C, O]``. Taps that lie
    in the padding for every output position (e.g. all but the centre of a 3×3 kernel
    on a 1×1 map) read only zeros and are dropped. Groups become a block-diagonal
    dense weight. Accepts ``[B, C, H, W]`` or ``[T, N, C, H, W]``.
    """

    def __init__(self, conv: UnsharedConv2d) -> None:
        super().__init__()
        (h, w), (ho, wo) = conv.in_hw, conv.out_hw
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        (ph, pw), (dh, dw) = conv.padding, conv.dilation
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.in_hw, self.out_hw, self.stride, self.padding = conv.in_hw, conv.out_hw, conv.stride, conv.padding
        rows = [i for i in range(kh) if any(0 <= o * sh + i * dh - ph < h for o in range(ho))]
        cols = [j for j in range(kw) if any(0 <= o * sw + j * dw - pw < w for o in range(wo))]
        self.taps = [(i * dh, j * dw) for i in rows for j in cols]
        self.register_buffer("weight", _positions_first_weight(conv, rows, cols))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        c, (h, w), (ho, wo) = self.in_channels, self.in_hw, self.out_hw
        (sh, sw), (ph, pw) = self.stride, self.padding
        x = x.reshape(-1, c * h * w)
        xt = x.reshape(-1, h * w).t().reshape(h, w, -1, c)  # [H, W, B, C]
        if ph or pw:
            xt = F.pad(xt, (0, 0, 0, 0, pw, pw, ph, ph))
        eh, ew = (ho - 1) * sh + 1, (wo - 1) * sw + 1
        cols = [xt[i:i + eh:sh, j:j + ew:sw] for i, j in self.taps]  # each [Ho, Wo, B, C]
        patches = torch.cat(cols, -1) if len(cols) > 1 else cols[0]
        out = torch.matmul(patches.reshape(ho * wo, -1, patches.shape[-1]), self.weight)  # [L, B, O]
        if self.bias is not None:
            out = out + self.bias
        out = out.reshape(ho * wo, -1).t()  # [B·O, L]
        return out.reshape(*lead, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, in_hw={self.in_hw}, out_hw={self.out_hw}, "
                f"taps={len(self.taps)}")


def _positions_first_weight(conv: UnsharedConv2d, rows: list[int], cols: list[int]) -> torch.Tensor:
    """``[L, g, O/g, C/g·kh·kw]`` → ``[L, K·C, O]`` over the kept taps, tap-major like the patches."""
    positions, groups, o_per_g, _ = conv.weight.shape
    c_per_g = conv.in_channels // groups
    kh, kw = conv.kernel_size
    w = conv.weight.detach().reshape(positions, groups, o_per_g, c_per_g, kh, kw)
    w = w[:, :, :, :, rows][:, :, :, :, :, cols]  # kept taps
    taps = len(rows) * len(cols)
    w = w.reshape(positions, groups, o_per_g, c_per_g, taps)
    dense = w.new_zeros(positions, taps, groups, c_per_g, groups, o_per_g)
    for g in range(groups):  # block diagonal: output group g reads input group g only
        dense[:, :, g, :, g, :] = w[:, g].permute(0, 3, 2, 1)
    return dense.reshape(positions, taps * conv.in_channels, conv.out_channels).contiguous()


class LoweredDiagonalSynapse(nn.Module):
    """`DiagonalSynapse` ``y = w ⊙ s`` with ``w`` expanded to the full feature size.

    ``feature_shape`` is the shape of one sample (the dims ``w`` broadcasts over);
    inputs are viewed as ``[-1, prod(feature_shape)]`` so the multiplication broadcasts
    over the leading dim only. The products are the same as the original's.
    """

    def __init__(self, synapse: DiagonalSynapse, feature_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        w = synapse.weight.detach()
        self.register_buffer("weight", w.expand(self.feature_shape).reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(-1, self.weight.shape[0]) * self.weight).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"feature_shape={self.feature_shape}"
