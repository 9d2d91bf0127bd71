"""`convert_model`: insert learnable spike amplitudes into a SpikingJelly network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional

from .amplitude import Amplitude, amplitude_shape
from .config import Granularity, RuleSource, SpikeConfig, SpikeKind, SpikeSpec
from .errors import UnsupportedPatternError
from .flow import follow_amplitudes, neuron_batch_dims
from .neurons import is_neuron, is_ternary, ternary_counterpart, to_ternary
from .report import META_KEY, ConversionReport, ConvertedNeuron, SkippedNeuron
from .state import copy_model
from .tracing import propagate_shapes, trace

__all__ = ["convert_model"]


@dataclass
class _Selected:
    node: fx.Node
    spec: SpikeSpec
    rule: RuleSource
    amp: fx.Node | None = None


def convert_model(
    net: nn.Module,
    example_input: torch.Tensor,
    spike: SpikeKind = "real",
    granularity: Granularity = "channel",
    config: SpikeConfig | None = None,
    inplace: bool = False,
) -> fx.GraphModule:
    """Give a SpikingJelly network real-valued (or ternary) spikes with learnable amplitudes.

    Each selected neuron gets an `Amplitude` right after it (``o = a ⊙ s``); with
    ``spike="ternary"`` the neuron is also swapped for its ternary counterpart with
    the same hyper-parameters. The neuron modules themselves are reused, so their
    surrogate, backend and step mode stay the user's.

    A neuron whose spikes could never be folded exactly later (they reach SEW
    ``AND``/``IAND``, max pooling with an element-wise amplitude, the network output,
    or any other nonlinear op) is skipped and listed in the report; if it was named
    explicitly with ``SpikeConfig.set_name`` the call raises instead.

    Args:
        net: the user's network (``nn.Module``); left untouched unless ``inplace``.
        example_input: a batch shaped as in training (``[N, …]`` or ``[T, N, …]``),
            used once (no gradients, eval mode) to record tensor shapes.
        spike: default spike kind, ``"real"`` or ``"ternary"``.
        granularity: default amplitude granularity, ``"layer"``, ``"channel"`` or ``"element"``.
        config: per-neuron rules; fields a rule leaves unset come from ``spike``/``granularity``.
            ``None`` converts every neuron with the defaults.
        inplace: reuse ``net``'s modules instead of deep-copying them first.

    Returns:
        A ``torch.fx.GraphModule`` in ``net``'s training mode, with neuron state reset; its
        report is available via `conversion_report`.

    Raises:
        UnsupportedPatternError: ``net`` is already converted, cannot be traced, or a
            neuron named in ``config`` cannot be converted exactly.
    """
    for name, m in net.named_modules():
        if isinstance(m, Amplitude):
            raise UnsupportedPatternError(
                name, "the model is already converted (it holds spike amplitudes)",
                "Convert the original network once; to deploy this one, call sj_realspike.fold(model)")
    default = SpikeSpec(spike=spike, granularity=granularity, init=1.0)
    config = config or SpikeConfig()

    model = net if inplace else copy_model(net)
    gm = trace(model)
    propagate_shapes(gm, example_input)
    modules = dict(gm.named_modules())
    report = ConversionReport()

    selected: list[_Selected] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not is_neuron(modules[node.target]):
            continue
        spec, rule = config.resolve(node.target, modules[node.target], default)
        if spec is None:
            report.untouched.append(node.target)
            continue
        reason = _unsupported_neuron(modules[node.target], spec)
        if reason is not None:
            _skip_or_raise(report, node, modules, rule, reason)
            continue
        selected.append(_Selected(node, spec, rule))

    device = example_input.device
    for sel in selected:
        sel.amp = insert_amplitude(gm, sel.node, modules[sel.node.target], sel.spec, device)

    # Drop the amplitudes that could never be folded, until every remaining one can.
    while True:
        blockers, _ = follow_amplitudes(gm, rewrite=False)
        if not blockers:
            break
        by_amp = {sel.amp: sel for sel in selected}
        for blocker in blockers:
            if not blocker.sources:
                raise UnsupportedPatternError(blocker.node, blocker.reason, blocker.remedy)
            for amp in blocker.sources:
                sel = by_amp.pop(amp, None)
                if sel is None:
                    continue
                remove_amplitude(gm, amp)
                selected.remove(sel)
                where = "" if f"'{blocker.node}'" in blocker.reason else f" at node '{blocker.node}'"
                _skip_or_raise(report, sel.node, modules, sel.rule, blocker.reason + where, blocker.remedy)

    for sel in selected:
        module = modules[sel.node.target]
        if sel.spec.spike == "ternary" and not is_ternary(module):
            module = to_ternary(module)
            _set_module(gm, sel.node.target, module)
            modules[sel.node.target] = module
        amp: Amplitude = gm.get_submodule(sel.amp.target)
        amp.spike = "ternary" if is_ternary(module) else "real"
        report.converted.append(ConvertedNeuron(
            sel.node.name, sel.node.target, type(module).__name__, amp.spike, sel.spec.granularity,
            tuple(amp.a.shape), sel.rule))

    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    # reset_net caches the modules it resets per network; neurons were swapped since.
    functional.invalidate_reset_cache(gm)
    functional.reset_net(gm)
    gm.train(net.training)
    gm.meta[META_KEY] = {
        "stage": "converted",
        "conversion": report,
        "config": config.to_dict(),
        "spike": spike,
        "granularity": granularity,
        "example_shape": tuple(example_input.shape),
    }
    return gm


def _unsupported_neuron(module: nn.Module, spec: SpikeSpec) -> str | None:
    if getattr(module.surrogate_function, "spiking", True) is False:
        return "its surrogate runs with spiking=False, so it emits analog values, not spikes"
    if spec.spike == "ternary" and not is_ternary(module) and ternary_counterpart(module) is None:
        return f"{type(module).__name__} has no ternary counterpart (IFNode, LIFNode, ParametricLIFNode have)"
    if spec.spike == "ternary" and not is_ternary(module):
        v_th, v_reset = module.v_threshold, module.v_reset
        if v_reset is not None and not -v_th < v_reset < v_th:
            return f"v_reset={v_reset} lies outside (-v_threshold, v_threshold), which a ternary neuron needs"
    return None


def _skip_or_raise(report: ConversionReport, node: fx.Node, modules: dict[str, nn.Module], rule: RuleSource,
                   reason: str, remedy: str = "") -> None:
    if rule == "name":
        raise UnsupportedPatternError(
            node.target, f"cannot convert this neuron: {reason}",
            remedy or "Remove its set_name rule or set it to None to keep it binary")
    report.skipped.append(SkippedNeuron(node.name, node.target, type(modules[node.target]).__name__, reason))


def insert_amplitude(gm: fx.GraphModule, node: fx.Node, neuron: nn.Module, spec: SpikeSpec,
                     device: torch.device) -> fx.Node:
    """An `Amplitude` module called on ``node``'s spikes, which every former user of ``node`` now reads."""
    features = tuple(node.meta["tensor_meta"].shape[neuron_batch_dims(neuron):])
    amp = Amplitude(amplitude_shape(features, spec.granularity), spec.granularity, spec.init).to(device)
    target = f"{node.target}_amplitude"
    i = 1
    while _has_submodule(gm, target):
        target, i = f"{node.target}_amplitude_{i}", i + 1
    gm.add_submodule(target, amp)
    with gm.graph.inserting_after(node):
        amp_node = gm.graph.call_module(target, (node,))
    # Same shape and dtype as the spikes; but not the neuron's module identity, or exporters
    # would attribute the amplitude's ops to the neuron's scope.
    amp_node.meta = {k: v for k, v in node.meta.items() if k not in ("nn_module_stack", "source_fn_stack")}
    node.replace_all_uses_with(amp_node, delete_user_cb=lambda user: user is not amp_node)
    return amp_node


def remove_amplitude(gm: fx.GraphModule, amp_node: fx.Node) -> None:
    """Undo `insert_amplitude`: the users read the neuron's spikes again."""
    amp_node.replace_all_uses_with(amp_node.args[0])
    gm.graph.erase_node(amp_node)


def _has_submodule(gm: nn.Module, target: str) -> bool:
    try:
        gm.get_submodule(target)
        return True
    except AttributeError:
        return False


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
