"""`convert_model`: give the neurons of a user's network learnable spike amplitudes.

The result is the user's own class (a copy): each converted neuron is swapped, at
its attribute path, for the same neuron carrying an `Amplitude`
(`sj_realspike.spiking`). A graph is captured only to decide which neurons can be
folded exactly later (`sj_realspike.capture`, `sj_realspike.flow`); the model the
user trains runs its own ``forward``.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .amplitude import Amplitude, amplitude_shape
from .capture import CaptureResult, capture
from .config import Granularity, RuleSource, SpikeConfig, SpikeKind, SpikeSpec
from .errors import UnsupportedPatternError
from .flow import Blocker, FoldStats, follow_amplitudes, neuron_batch_dims
from .ops import OpKind, classify
from .frameworks import framework_of, invalidate, neuron_adapter, reset, step_mode
from .layout import sequence_layout
from .neurons import is_neuron, is_ternary, kept_module_around, ternary_problem, to_ternary
from .recognise import amplitude_problem, is_spiking_module, spike_output_problem
from .recurrent import internal_synapse_problem
from .report import ConversionReport, ConvertedNeuron, SkippedNeuron, compiled_original, set_record
from .spiking import AmplitudeNeuron, attach_amplitude, base_class
from .state import copy_model

__all__ = ["convert_model", "insert_amplitude", "remove_amplitude"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Selected:
    target: str  # the neuron module's path
    spec: SpikeSpec
    rule: RuleSource
    amplitude: Amplitude
    amp_target: str = ""
    amp_nodes: list[fx.Node] = field(default_factory=list)


def convert_model(
    net: nn.Module,
    example_input: torch.Tensor,
    spike: SpikeKind = "real",
    granularity: Granularity = "channel",
    config: SpikeConfig | None = None,
    inplace: bool = False,
    input_layout: str | None = None,
    tie_summed: bool = False,
) -> nn.Module:
    """Give a SpikingJelly network real-valued (or ternary) spikes with learnable amplitudes.

    Each selected neuron module gets an `Amplitude` (``o = a ⊙ s``, one ``a`` however
    often the module is called); with ``spike="ternary"`` it is first swapped for its
    ternary counterpart with the same hyper-parameters. The returned model is ``net``'s
    own class with those neurons swapped at their attribute paths, so its ``forward``,
    other time steps and batch sizes, train/eval mode, SpikingJelly backends,
    ``torch.compile`` and DDP work as before.

    To decide which neurons can be folded exactly later, the model is captured once on
    ``example_input`` (`sj_realspike.capture`: Python control flow is answered from the
    example). A neuron whose spikes could never be folded exactly (they reach SEW
    ``AND``/``IAND``, max pooling with an element-wise amplitude, the network output,
    an opaque module, or any other nonlinear op) is skipped and listed in the report;
    if it was named explicitly with ``SpikeConfig.set_name`` the call raises instead.
    Converting no neuron at all logs a warning.

    Args:
        net: the user's network (``nn.Module``); left untouched unless ``inplace``.
        example_input: a batch shaped as in training (``[T, N, …]`` for multi-step
            models, or whatever ``forward`` takes), used once (eval mode, no gradients).
        spike: default spike kind, ``"real"`` or ``"ternary"``.
        granularity: default amplitude granularity, ``"layer"``, ``"channel"`` or ``"element"``.
        config: per-neuron rules; fields a rule leaves unset come from ``spike``/``granularity``.
            ``None`` converts every neuron with the defaults.
        inplace: convert ``net`` itself instead of a deep copy.
        input_layout: what the dims of ``example_input`` are, e.g. ``"T,N,C,H,W"``
            (default for multi-step models), ``"N,C,H,W"`` (a model that repeats its input
            over time inside ``forward``) or ``"N,C,T,F"``; ``N`` marks the batch dim,
            which export keeps dynamic, and ``T`` the time dim. Recorded for export/verify.
        tie_summed: one shared amplitude for the neurons whose spikes are added before a
            synapse (SEW ``ADD`` residual streams), so the deploy model has the plain
            network's convolutions instead of one scaled copy per addend
            (`SpikeConfig.set_tie_summed`; a config that sets it decides).

    Returns:
        ``net``'s class (a copy unless ``inplace``) in ``net``'s training mode with neuron
        state reset; its report is available via `conversion_report`.

    Raises:
        UnsupportedPatternError: ``net`` is already converted, the example input does not
            run through it, or a neuron named in ``config`` cannot be converted exactly.
    """
    net = compiled_original(net)  # torch.compile'd: the network it wraps
    for name, m in net.named_modules():
        if isinstance(m, (Amplitude, AmplitudeNeuron)):
            raise UnsupportedPatternError(
                name, "the model is already converted (it holds spike amplitudes)",
                "Convert the original network once; to deploy this one, call sj_realspike.fold(model)")
    framework_of(net)  # refuses a network that mixes frameworks
    default = SpikeSpec(spike=spike, granularity=granularity, init=1.0)
    config = config or SpikeConfig()
    tie = tie_summed if config.tie_summed is None else config.tie_summed
    model = net if inplace else copy_model(net)
    training = model.training

    result = capture(model, example_input, record=is_spiking_module)
    report, selected = _plan(result, config, default, _device(model, example_input), tie)
    layout = check_layout(input_layout, example_input, result, model)
    for sel in selected:
        module = model.get_submodule(sel.target)
        if sel.spec.spike == "ternary" and not is_ternary(module):
            module = to_ternary(module)
            _set_module(model, sel.target, module)
        sel.amplitude.spike = "ternary" if is_ternary(module) else "real"
        _take_intrinsic_amplitude(module, sel)
        attach_amplitude(module, sel.amplitude)
        report.converted.append(ConvertedNeuron(
            sel.target, sel.target, base_class(module).__name__, sel.amplitude.spike, sel.spec.granularity,
            tuple(sel.amplitude.a.shape), sel.rule))
    if not report.converted:
        logger.warning("convert_model converted 0 of %d neurons: %s", report.total,
                       "; ".join(f"{s.module}: {s.reason}" for s in report.skipped[:3]) or "the config selected none")

    invalidate(model)  # frameworks may cache the modules they reset; neurons were swapped since
    reset(model)
    model.train(training)
    set_record(model, {
        "stage": "converted",
        "conversion": report,
        "config": {**config.to_dict(), **({"tie_summed": True} if tie else {})},
        "spike": spike,
        "granularity": granularity,
        "example_shape": tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None,
        "example_dtype": str(example_input.dtype).removeprefix("torch.")
        if isinstance(example_input, torch.Tensor) else None,
        "input_layout": layout,
        # One forward call consumes the whole sequence (multi-step neurons, or a time loop in forward).
        "sequence_per_call": bool(report.calls) or any(
            step_mode(m) == "m" for m in model.modules() if is_neuron(m)),
    })
    return model


def _plan(result: CaptureResult, config: SpikeConfig, default: SpikeSpec, device: torch.device,
          tie: bool = False) -> tuple[ConversionReport, list[_Selected]]:
    """Which neuron modules get which amplitude: decided on the captured graph, which is discarded.

    With ``tie``, the neurons whose scaled spikes meet in one addition first share one
    amplitude (`_tie_summed`); the sum then travels as one term, so ops that take one
    spike train only (a max-pool, a concatenation, a product) may follow it.
    """
    gm = result.gm
    modules = dict(gm.named_modules())
    report = ConversionReport(opaque=list(result.opaque), state_reads=list(result.state_reads),
                              value_branches=[n for n, _ in result.value_forced])
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and is_spiking_module(modules[node.target]):
            calls.setdefault(node.target, []).append(node)
    report.total = len(calls)
    report.calls = {t: len(nodes) for t, nodes in calls.items() if len(nodes) > 1}
    for target, module in modules.items():  # neurons a kept module calls itself (recurrent containers)
        if target not in calls and is_neuron(module) and (outer := kept_module_around(gm, target)) is not None:
            report.total += 1
            spec, rule = config.resolve(target, module, default)
            if spec is None:
                report.untouched.append(target)
                continue
            _skip_or_raise(report, target, module, rule,
                           f"it runs inside '{outer}' ({type(modules[outer]).__name__}), which is kept whole and calls "
                           "it itself, once per step, so no amplitude can be inserted after it")
    # From here on, each call is the node holding its spikes (a (spk, mem) call: its spike item).
    called, calls = calls, {t: spike_nodes(nodes, modules[t]) for t, nodes in calls.items()}

    selected: list[_Selected] = []
    for target, nodes in calls.items():
        module = modules[target]
        spec, rule = config.resolve(target, module, default)
        if spec is None:
            report.untouched.append(target)
            continue
        reason = _output_problem(module, result.samples.get(target)) or _unsupported_neuron(module, spec) \
            or (_unused(called[target]) if not nodes else None) \
            or _shape_problem(nodes, module)
        if reason is not None:
            _skip_or_raise(report, target, module, rule, reason)
            continue
        features = tuple(nodes[0].meta["tensor_meta"].shape[neuron_batch_dims(module):])
        last = spec.granularity in ("channel", "slice") and _reads_last_dim(nodes[0], features, modules)
        amp = _amplitude(features, spec, last)
        if amp is None:
            _skip_or_raise(report, target, module, rule, f"its {features[-1 if last else 0]} channels do not split "
                                                         f"into {spec.slices or 3} equal slices")
            continue
        amp = amp.to(device)
        if (problem := internal_synapse_problem(module, amp.full().detach())) is not None:
            _skip_or_raise(report, target, module, rule, problem)
            continue
        if spec.spike == "real" or is_ternary(module):  # else swapped for the framework's own ternary neuron
            if (problem := amplitude_problem(module, amp, result.samples[target])) is not None:
                _skip_or_raise(report, target, module, rule, problem)
                continue
        sel = _Selected(target, spec, rule, amp)
        sel.amp_target, sel.amp_nodes = insert_amplitude(gm, nodes, amp, target)
        selected.append(sel)

    if tie:
        _, stats = follow_amplitudes(gm, rewrite=False)
        report.tied, report.untied = _tie_summed(gm, selected, stats.sums, modules)
    pooled = set(_drop_blocked(gm, selected, calls, report, modules).max_pooled)
    pooled_amps = {id(sel.amplitude) for sel in selected if pooled.intersection(sel.amp_nodes)}
    report.max_pooled = [sel.target for sel in selected if id(sel.amplitude) in pooled_amps]
    kept = {sel.target for sel in selected}
    report.tied = [g for g in (tuple(t for t in group if t in kept) for group in report.tied) if len(g) > 1]
    return report, selected


def _drop_blocked(gm: fx.GraphModule, selected: list[_Selected], calls: dict[str, list[fx.Node]],
                  report: ConversionReport, modules: dict[str, nn.Module]) -> FoldStats:
    """Drop the amplitudes that could never be folded, until every remaining one can (in place).

    A channel amplitude blocked in one orientation (channels first / last) gets one try in
    the other (not a shared one: its other neurons keep theirs). Returns what the last walk,
    with no blocker left, found.
    """
    retried: set[str] = set()
    while True:
        blockers, stats = follow_amplitudes(gm, rewrite=False)
        if not blockers:
            return stats
        by_amp = {node: sel for sel in selected for node in sel.amp_nodes}
        hit: dict[_Selected, Blocker] = {}  # each blocked neuron once per round, with its first blocker
        for blocker in blockers:
            if not blocker.sources:
                raise UnsupportedPatternError(blocker.node, blocker.reason, blocker.remedy)
            for a in blocker.sources:
                if a in by_amp:
                    hit.setdefault(by_amp[a], blocker)
        for sel, blocker in hit.items():
            remove_amplitude(gm, sel.amp_nodes)
            shared = any(o is not sel and o.amplitude is sel.amplitude for o in selected)
            if sel.target not in retried and not shared and _flip_channels(sel):
                retried.add(sel.target)
                sel.amp_nodes = call_after(gm, calls[sel.target], sel.amp_target)
                continue
            selected.remove(sel)
            where = "" if f"'{blocker.node}'" in blocker.reason else f" at node '{blocker.node}'"
            _skip_or_raise(report, sel.target, modules[sel.target], sel.rule, blocker.reason + where,
                           blocker.remedy)


def _tie_summed(gm: fx.GraphModule, selected: list[_Selected], sums: list[tuple[fx.Node, ...]],
                modules: dict[str, nn.Module]) -> tuple[list[tuple[str, ...]], list[tuple[tuple[str, ...], str]]]:
    """Let the neurons whose scaled spikes one addition sums share one amplitude (in ``gm`` and ``selected``).

    Groups are the connected sets of "added together" (a residual stream: every block's
    output neuron and the stream's first neuron). A group shares only if its amplitudes
    are alike (shape, spike kind, granularity, init, slices); otherwise it stays untied
    with the reason. Returns the tied groups and the untied ones, by neuron module path.
    """
    by_amp = {node: sel for sel in selected for node in sel.amp_nodes}
    parent = {sel.target: sel.target for sel in selected}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for summed in sums:
        members = [by_amp[a].target for a in summed if a in by_amp]
        for other in members[1:]:
            parent[root(other)] = root(members[0])
    groups: dict[str, list[_Selected]] = {}
    for sel in selected:
        groups.setdefault(root(sel.target), []).append(sel)
    tied, untied = [], []
    for group in (g for g in groups.values() if len(g) > 1):
        names = tuple(sel.target for sel in group)
        kinds = [_alike(sel, modules[sel.target]) for sel in group]
        if len(set(kinds)) > 1:
            untied.append((names, "their amplitudes differ in shape, spike kind, granularity, init or slices ("
                                  + "; ".join(f"{n}: {_describe_alike(k)}" for n, k in zip(names, kinds)) + ")"))
            continue
        first = group[0]
        for sel in group[1:]:
            for node in sel.amp_nodes:
                node.target = first.amp_target
            delattr(gm, sel.amp_target)
            sel.amplitude, sel.amp_target = first.amplitude, first.amp_target
        tied.append(names)
    return tied, untied


def _alike(sel: _Selected, module: nn.Module) -> tuple:
    """What must be equal for two neurons to share one amplitude."""
    amp, spec = sel.amplitude, sel.spec
    spike = "ternary" if spec.spike == "ternary" or is_ternary(module) else "real"
    return tuple(amp.a.shape), spike, spec.granularity, spec.init, amp.repeat, amp.repeat_dim


def _describe_alike(key: tuple) -> str:
    shape, spike, granularity, init, repeat, _ = key
    return f"{'x'.join(map(str, shape)) or 'scalar'} {spike} {granularity} init={init}" + \
        (f" slices of {repeat}" if repeat != 1 else "")


def check_layout(layout: str | None, example_input: object, result: CaptureResult, model: nn.Module) -> str | None:
    """The validated input layout, or the detected one when ``None``.

    Detection: a multi-step model whose example has ≥ 3 dims takes ``[T, N, …]`` unless
    its second dim cannot change size (one more entry there does not run: it is a
    feature dim, as in ``[N, C, H, W]`` images repeated over time inside ``forward``);
    a single-step model with a time loop in ``forward`` takes ``[T, N, …]`` if one more
    entry along the first dim means more neuron calls (the loop runs over it); otherwise
    ``[N, …]``.

    Raises:
        ValueError: the layout does not name one letter per dim of the example, or has no ``N``.
    """
    if not isinstance(example_input, torch.Tensor):
        return layout
    rank = example_input.dim()
    if layout is None:
        multi = any(step_mode(m) == "m" for m in result.gm.modules() if is_neuron(m))
        sequence = sequence_layout(rank)
        if multi and rank >= 3 and _runs(model, _one_more(example_input, 1)):
            return sequence
        if not multi and result.calls and rank >= 2:
            # A time loop in forward: over the input's first dim if growing it adds calls.
            grown = _grown(model, example_input, 0)
            if grown is not None and grown.calls != result.calls and _runs(model, _one_more(example_input, 1)):
                return sequence
        return sequence_layout(rank + 1)[len("T,"):]  # one step: [N, …]
    dims = [d.strip() for d in layout.split(",")]
    if len(dims) != rank or dims.count("N") != 1 or dims.count("T") > 1 or len(set(dims)) != len(dims) \
            or not all(d.isidentifier() for d in dims):
        raise ValueError(f"input_layout {layout!r} must name each of the {rank} dims of the example input "
                         f"{tuple(example_input.shape)} once, with exactly one 'N' (batch), e.g. 'N,C,H,W'")
    return ",".join(dims)


def _one_more(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat([x, x.narrow(dim, 0, 1)], dim=dim)


def _grown(model: nn.Module, x: torch.Tensor, dim: int) -> CaptureResult | None:
    """The capture of ``model`` on ``x`` with one more entry along ``dim`` (``None``: it does not run)."""
    try:
        return capture(model, _one_more(x, dim))
    except UnsupportedPatternError:
        return None


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model``'s forward runs on ``x``: eval mode, no gradients, state reset afterwards.

    A plain forward answers what a capture would (which runs the same code on the same
    values) at a fraction of its cost.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:  # any failure: that dim cannot take another size
        return False
    finally:
        for m, training in modes.items():
            m.training = training
        reset(model)


def _amplitude(features: tuple[int, ...], spec: SpikeSpec, channels_last: bool) -> Amplitude | None:
    """A fresh amplitude for a neuron with these feature dims (``None``: the slices do not divide the channels)."""
    if spec.granularity != "slice" or not features:
        return Amplitude(amplitude_shape(features, spec.granularity, channels_last), spec.granularity, spec.init)
    slices = spec.slices or 3
    channels = features[-1] if channels_last else features[0]
    if channels % slices:
        return None
    shape = amplitude_shape(features, "slice", channels_last, slices)
    return Amplitude(shape, "slice", spec.init, repeat=channels // slices,
                     repeat_dim=len(shape) - 1 if channels_last else 0)


def _flip_channels(sel: _Selected) -> bool:
    """Give a channel (or slice) amplitude of a rank ≥ 2 feature map the other channel dim (first ↔ last)."""
    shape = tuple(sel.amplitude.a.shape)
    if sel.spec.granularity not in ("channel", "slice") or len(shape) < 2:
        return False
    features = tuple(sel.amp_nodes[0].meta["tensor_meta"].shape[-len(shape):])
    last = sel.amplitude.repeat_dim == len(shape) - 1 if sel.spec.granularity == "slice" \
        else (shape[-1] > 1 or (shape[0] == 1 and features[0] > 1))
    flipped = _amplitude(features, sel.spec, not last)
    if flipped is None:
        return False
    sel.amplitude.a = nn.Parameter(torch.full(tuple(flipped.a.shape), float(sel.spec.init),
                                              device=sel.amplitude.a.device))
    sel.amplitude.repeat, sel.amplitude.repeat_dim = flipped.repeat, flipped.repeat_dim
    return True


def _reads_last_dim(node: fx.Node, features: tuple[int, ...], modules: dict[str, nn.Module]) -> bool:
    """Whether the first synapse the spikes of ``node`` reach is a Linear reading their last feature dim.

    Decides which dim a channel-wise amplitude scales: a conv reads channels from the
    first feature dim, so does a Linear on flattened features; a Linear whose inputs are
    exactly the last dim (token layouts ``[T, N, L, C]``) reads channels there.
    """
    if len(features) < 2:
        return False
    frontier, seen = list(node.users), set()
    while frontier:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        kind = classify(n, modules)
        if kind is OpKind.CONV:
            return False
        if kind is OpKind.LINEAR:
            return modules[n.target].in_features == features[-1] != math.prod(features)
        if kind not in (OpKind.NEURON, OpKind.OUTPUT):
            frontier.extend(n.users)
    return False


def spike_nodes(nodes: list[fx.Node], module: nn.Module) -> list[fx.Node]:
    """The node holding the spikes of each call of ``module``: the call, or its ``getitem`` of the spike item.

    Capture records one ``getitem`` per item of a tuple-returning neuron; a call whose
    spikes nobody reads is left out.
    """
    found = []
    for node in nodes:
        meta = node.meta.get("tensor_meta")
        # A tuple of TensorMetadata (itself a NamedTuple): the call returned a tuple.
        index = neuron_adapter(module).spike_index(module, meta) if type(meta) is tuple else None
        if index is None:
            if node.users:
                found.append(node)
            continue
        found.extend(u for u in node.users if u.op == "call_function" and u.target is operator.getitem
                     and u.args[1] == index)
    return found


def _take_intrinsic_amplitude(module: nn.Module, sel: _Selected) -> None:
    """Move the factor the neuron scales its spikes by itself (snnTorch's ``graded_spikes_factor``) into its amplitude.

    ``a ⊙ s`` then computes what ``s · g`` did (the same products), the neuron emits plain
    spikes, and fold puts ``g`` into the next synapse with the rest of the amplitude.

    Raises:
        UnsupportedPatternError: ``g`` varies along dims the amplitude does not (granularity too coarse).
    """
    adapter = neuron_adapter(module)
    g = adapter.intrinsic_amplitude(module)
    if g is None:
        return
    amp = sel.amplitude
    shape = tuple(amp.full().shape)
    while g.dim() > len(shape) and g.shape[0] == 1:  # leading batch dims of size 1
        g = g.squeeze(0)
    try:
        fits = torch.broadcast_shapes(shape, tuple(g.shape)) == shape and (amp.repeat == 1 or g.numel() == 1)
    except RuntimeError:
        fits = False
    if not fits:
        raise UnsupportedPatternError(
            sel.target, f"its spike factor (graded_spikes_factor) of shape {tuple(g.shape)} varies where a "
                        f"{sel.spec.granularity} amplitude of shape {shape} does not, so it cannot move into it",
            "Convert this neuron with a finer granularity (SpikeConfig.set_name(<neuron>, "
            "SpikeSpec(granularity='element')))")
    with torch.no_grad():
        amp.a.copy_((g.reshape(()) if g.numel() == 1 else g).to(amp.a).expand(amp.a.shape))
    adapter.clear_intrinsic_amplitude(module)


def _device(model: nn.Module, example_input: object) -> torch.device:
    if isinstance(example_input, torch.Tensor):
        return example_input.device
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _output_problem(module: nn.Module, sample: torch.Tensor | None) -> str | None:
    """Why ``module`` does not emit binary/ternary spikes (checked on its real input, and 8× it)."""
    if sample is None:
        return f"{type(module).__name__} was called without a tensor input, so its output cannot be checked"
    problem = spike_output_problem(module, sample) or spike_output_problem(module, sample * 8)
    if problem is not None:
        return problem
    if not is_neuron(module):
        return neuron_adapter(module).not_neuron_reason(module)
    return None


def _unused(calls: list[fx.Node]) -> str:
    """Why a neuron none of whose spikes are read gets no amplitude (it would count as converted, folding nothing)."""
    return "its spikes are never used" + (" (only its state is)" if any(n.users for n in calls) else "")


def _unsupported_neuron(module: nn.Module, spec: SpikeSpec) -> str | None:
    problem = neuron_adapter(module).conversion_problem(module)
    if problem is None and spec.spike == "ternary":
        problem = ternary_problem(module)
    return problem


def _shape_problem(nodes: list[fx.Node], module: nn.Module) -> str | None:
    shapes = {tuple(n.meta["tensor_meta"].shape) for n in nodes if "tensor_meta" in n.meta}
    if len(shapes) != 1 or len(shapes.pop()) <= neuron_batch_dims(module) - 1:
        return "its calls give outputs of different or unknown shapes, so no single amplitude fits them all"
    return None


def _skip_or_raise(report: ConversionReport, target: str, module: nn.Module, rule: RuleSource,
                   reason: str, remedy: str = "") -> None:
    if rule == "name":
        raise UnsupportedPatternError(
            target, f"cannot convert this neuron: {reason}",
            remedy or "Remove its set_name rule or set it to None to keep it binary")
    report.skipped.append(SkippedNeuron(target, target, type(module).__name__, reason))


def insert_amplitude(gm: fx.GraphModule, nodes: list[fx.Node], amp: Amplitude,
                     name: str) -> tuple[str, list[fx.Node]]:
    """Call ``amp`` on the output of each of ``nodes`` (the calls of one neuron), which their users now read.

    ``amp`` is registered once on ``gm`` (a fresh top-level name derived from ``name``), so
    every call shares it. Returns the target and the new nodes.
    """
    target = _unique_name(gm, name.replace(".", "_") + "_amplitude")
    gm.add_submodule(target, amp)
    return target, call_after(gm, nodes, target)


def call_after(gm: fx.GraphModule, nodes: list[fx.Node], target: str) -> list[fx.Node]:
    """A call of module ``target`` on the output of each of ``nodes``, which their users now read."""
    amp_nodes = []
    for node in nodes:
        with gm.graph.inserting_after(node):
            amp_node = gm.graph.call_module(target, (node,))
        # Same shape and dtype as the spikes; but not the neuron's module identity, or exporters
        # would attribute the amplitude's ops to the neuron's scope.
        amp_node.meta = {k: v for k, v in node.meta.items() if k not in ("nn_module_stack", "source_fn_stack")}
        node.replace_all_uses_with(amp_node, delete_user_cb=lambda user, a=amp_node: user is not a)
        amp_nodes.append(amp_node)
    return amp_nodes


def remove_amplitude(gm: fx.GraphModule, amp_nodes: list[fx.Node]) -> None:
    """Undo `insert_amplitude`: the users read the neuron's spikes again."""
    for amp_node in amp_nodes:
        amp_node.replace_all_uses_with(amp_node.args[0])
        gm.graph.erase_node(amp_node)


def _unique_name(gm: nn.Module, base: str) -> str:
    candidate, i = base, 1
    while hasattr(gm, candidate):
        candidate, i = f"{base}_{i}", i + 1
    return candidate


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
