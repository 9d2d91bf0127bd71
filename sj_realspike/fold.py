"""`fold`: amplitudes and BatchNorm folded into synapse weights → a binary/ternary deploy model."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx as fx
import torch.nn as nn

from .amplitude import Amplitude
from .capture import capture, check_generality
from .convert import call_after, insert_amplitude, remove_amplitude, spike_nodes
from .errors import NotConvertedWarning, UnsupportedPatternError
from .flow import follow_amplitudes
from .frameworks import invalidate, reset, step_mode
from .neurons import is_neuron, is_ternary
from .ops import OpKind, classify, computed_weight, scalar_factor
from .recurrent import fold_internal_synapses
from .report import FoldReport, compiled_original, record_of, set_record
from .spiking import AMPLITUDE_ATTR, AmplitudeNeuron, detach_amplitude
from .state import copy_model
from .weights import fuse_conv_bn_weights, fuse_linear_bn_weights

__all__ = ["NotConvertedWarning", "constant_factors_on_spikes", "fold", "fuse_batchnorm"]


def fold(model: nn.Module, *, inplace: bool = False,
         example_input: torch.Tensor | None = None) -> fx.GraphModule:
    """The deploy model: every neuron emits {0,1} or {−1,0,1}, amplitudes live in the weights.

    The converted model is captured (`sj_realspike.capture`) with each amplitude spliced
    in after every call of its neuron; BatchNorm is fused into the conv/linear before
    it, then each amplitude is pushed through the ops between its neuron and the
    synapses that consume it (reshape, pooling, residual additions) and folded into
    those synapses' weights; see `sj_realspike.flow` for the rules. All weight math
    runs in float64 and is cast back once. The result computes the trained model's
    eval-mode function.

    Max pooling is folded only where the amplitudes before it are non-negative; a
    negative one raises (``max(a·s) = a·min(s)`` has no binary max-pool form).

    Constant factors the model itself puts on the spikes of a neuron without an
    amplitude (``2 * s`` before a conv) are folded the same way where that is exact,
    so the synapses receive binary spikes there too; where it is not, they stay.

    Args:
        model: a model from `convert_model` (possibly trained), or any SpikingJelly
            network (then only BatchNorm and constant factors are folded). A
            ``DistributedDataParallel`` wrapper must be unwrapped first (``model.module``).
        inplace: allowed to take ``model`` apart instead of working on a deep copy.
        example_input: a batch to capture the model on (default: zeros of the shape
            and dtype recorded by `convert_model`; needed for unconverted networks).

    Returns:
        The deploy ``GraphModule`` in eval mode with neuron state reset; `fold_report`
        describes it. Folding a deploy model again returns an equal model.

    Raises:
        UnsupportedPatternError: an amplitude cannot be folded exactly, or the model's
            forward reads neuron state (names the module).
        ValueError: an unconverted network without ``example_input``.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise UnsupportedPatternError(type(model).__name__, "a data-parallel wrapper cannot be folded",
                                      "Fold the wrapped model on one rank: sj_realspike.fold(model.module)")
    model = compiled_original(model)
    record = record_of(model)
    if record.get("stage") == "deploy":
        return model if inplace else copy_model(model)
    if not any(isinstance(m, AmplitudeNeuron) for m in model.modules()):
        warnings.warn(f"{type(model).__name__} holds no spike amplitudes (was sj_realspike.convert_model "
                      "forgotten?): fold only fuses BatchNorm and folds constant factors on spikes",
                      NotConvertedWarning, stacklevel=2)
    x = example_for(model, record, example_input)
    work = model if inplace else copy_model(model)
    gm, fixed, _ = capture_converted(work, x)
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    before = sum(p.numel() for p in work.parameters())
    gm.eval()
    reset(gm)

    report = FoldReport(parameters_before=before)
    # Weights stay float64 until the very end: BN and amplitude factors round once.
    report.fused_batchnorms = fuse_batchnorm(gm, dtype=torch.float64)
    _amplitudes_for_constant_factors(gm)
    internal = fold_internal_synapses(gm)  # recurrent weights inside neurons (RLeaky) read their own spikes
    _, stats = follow_amplitudes(gm, rewrite=True)
    for m in gm.modules():  # the folded amplitudes, parked on their neurons for the capture
        if AMPLITUDE_ATTR in m._modules:
            delattr(m, AMPLITUDE_ATTR)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.to(dtype)
    invalidate(gm)  # frameworks may cache the modules they reset; the graph changed since
    reset(gm)

    modules = dict(gm.named_modules())
    report.neurons = {
        n.target: "ternary" if is_ternary(modules[n.target]) else "binary"
        for n in gm.graph.nodes if n.op == "call_module" and is_neuron(modules[n.target])
    }
    report.scaled_synapses = [*internal, *stats.scaled_synapses]
    report.unshared_convs = stats.unshared_convs
    report.merged_linears = stats.merged_linears
    report.diagonal_synapses = stats.diagonal_synapses
    report.parameters_after = sum(p.numel() for p in gm.parameters())
    report.fixed_input_dims = fixed
    set_record(gm, {**record, "stage": "deploy", "fold": report, "example_shape": tuple(x.shape),
                    "fixed_input_dims": fixed})
    return gm


def capture_converted(model: nn.Module, x: torch.Tensor, *,
                      generality: bool = True) -> tuple[fx.GraphModule, dict[int, int], dict[str, str]]:
    """The graph of a converted model with each amplitude as its own node after every neuron call.

    Takes ``model`` apart (pass a copy): each neuron carrying an amplitude becomes its
    plain class again and the amplitude a top-level module the capture splices in.
    Also returns the input dims the graph is specialized to (`check_generality`, empty
    when ``generality`` is false) and ``{neuron path: amplitude module name}``.

    Raises:
        UnsupportedPatternError: the model's forward reads neuron state, which the
            deploy graph would freeze into a constant.
    """
    after, first_path = {}, {}
    for path, m in list(model.named_modules()):
        if isinstance(m, AmplitudeNeuron):
            # The neuron becomes its plain class again; the amplitude stays its submodule, where no
            # container's forward can run it (a root nn.Sequential would run a module added to it).
            amp = detach_amplitude(m)
            m.add_module(AMPLITUDE_ATTR, amp)
            # An amplitude shared by several neurons (tie_summed) is called by one name, its first.
            after[path] = first_path.setdefault(id(amp), f"{path}.{AMPLITUDE_ATTR}" if path else AMPLITUDE_ATTR)
    invalidate(model)
    result = capture(model, x, after=after)
    if result.value_forced:
        node, value = result.value_forced[0]
        raise UnsupportedPatternError(
            node, f"the model's forward branches (or loops) on tensor values here (the example gave {value!r}), so "
                  "a captured deploy graph would take the example's branch for every input",
            "Make the control flow depend on shapes only, or move the data-dependent part out of the model")
    if result.state_reads:
        path, attr = result.state_reads[0]
        raise UnsupportedPatternError(
            path, f"the model's forward reads this module's state '{attr}', which a captured deploy graph "
                  "would freeze into a constant",
            "Return the module's output instead of its state (for a membrane readout, use a neuron that "
            "outputs v, or a Linear/integrator layer), then convert again")
    layout = record_of(model).get("input_layout") or ("T,N" if x.dim() >= 3 else "N")
    batch_dims = tuple(i for i, d in enumerate(layout.split(",")) if d in ("T", "N"))
    fixed = check_generality(model, x, batch_dims, result, after=after) if generality else {}
    return result.gm, fixed, after


def example_for(model: nn.Module, record: dict, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input
    shape = record.get("example_shape")
    if shape is None:
        raise ValueError(f"fold needs example_input= to capture this {type(model).__name__}: it was not "
                         "produced by sj_realspike.convert_model (which records the example's shape)")
    dtype = getattr(torch, record.get("example_dtype") or "float32")
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if dtype.is_floating_point and weight is not None:
        dtype = weight.dtype  # the model may have been cast (model.half()) since it was converted
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(shape, dtype=dtype, device=device)


# Ops that carry spikes towards a synapse unchanged but for linear rearrangement.
_PASS_THROUGH = (OpKind.RESHAPE, OpKind.AVGPOOL, OpKind.IDENTITY, OpKind.MAXPOOL, OpKind.ADD, OpKind.SCALAR)
_SYNAPSES = (OpKind.CONV, OpKind.LINEAR, OpKind.NEURON)


def constant_factors_on_spikes(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """``(neuron, factor)`` node pairs: a constant ≠ 1 multiplies the neuron's spikes before a synapse.

    Paths run through reshapes, pooling, dropout, additions and further factors, and
    end at a conv/linear layer or a membrane (a neuron); amplitudes are not factors
    (a factor after an amplitude folds with it).
    """
    modules = dict(gm.named_modules())
    found: dict[tuple[fx.Node, fx.Node], None] = {}
    for neuron in gm.graph.nodes:
        if not (neuron.op == "call_module" and is_neuron(modules[neuron.target])):
            continue
        # from the spikes: a (spk, mem) call's spike item, not its state items
        todo: list[tuple[fx.Node, fx.Node | None]] = [
            (u, None) for spikes in spike_nodes([neuron], modules[neuron.target]) for u in spikes.users]
        seen = set()
        while todo:
            node, factor = todo.pop()
            if (node, factor) in seen:
                continue
            seen.add((node, factor))
            kind = classify(node, modules)
            if kind in _SYNAPSES:
                if factor is not None:
                    found[(neuron, factor)] = None
                continue
            if kind is OpKind.SCALAR and factor is None and scalar_factor(node) != 1.0:
                factor = node
            if kind in _PASS_THROUGH or kind is OpKind.AMPLITUDE:
                todo.extend((u, factor) for u in node.users)
    return list(found)


def _amplitudes_for_constant_factors(gm: fx.GraphModule) -> None:
    """Give a fixed amplitude of 1 to each neuron without one whose spikes the model scales by a constant.

    The flow then folds ``c·s`` into the synapses like a learned ``a·s``. Needs the
    shapes recorded at conversion (``tensor_meta``). Amplitudes the flow would block
    (the factor is not exactly foldable on that path) are removed again, to a fixpoint.
    """
    modules = dict(gm.named_modules())
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    added: list[fx.Node] = []
    target = None  # one module for all: sums of such spikes fold as one term (`flow`'s shared amplitudes)
    neurons = dict.fromkeys(neuron for neuron, _ in constant_factors_on_spikes(gm))
    # the amplitude goes on the spikes: a (spk, mem) call's spike item (`spike_nodes`), like convert's
    for node in dict.fromkeys(s for n in neurons for s in spike_nodes([n], modules[n.target])):
        if "tensor_meta" not in node.meta:
            continue
        if any(classify(u, modules) is OpKind.AMPLITUDE for u in node.users):
            continue
        if target is None:
            target, amps = insert_amplitude(gm, [node], Amplitude((), "layer", 1.0).to(device), "constant_factor")
        else:
            amps = call_after(gm, [node], target)
        added.extend(amps)
    while added:
        blockers, _ = follow_amplitudes(gm, rewrite=False, check_values=True)
        blocked = {s for b in blockers for s in b.sources}.intersection(added)
        if not blocked:
            break
        for amp in blocked:
            remove_amplitude(gm, [amp])
            added.remove(amp)


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_batchnorm(gm: fx.GraphModule, dtype: torch.dtype | None = None) -> list[str]:
    """Fuse every eval-mode BatchNorm into the conv/linear whose only consumer it is (in place).

    SpikingJelly's ``conv_bn_fusion`` does the same in float32 by re-tracing; this
    keeps the fused weights in ``dtype`` (float64 during fold) and also fuses
    Linear + BatchNorm1d where BN normalizes the linear's output features.

    Returns:
        Names of the fused BatchNorm modules.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    fused = []
    for bn_node in list(gm.graph.nodes):
        if bn_node.op != "call_module" or not isinstance(modules[bn_node.target], _BN_TYPES):
            continue
        syn_node = bn_node.args[0] if bn_node.args else None
        if not (isinstance(syn_node, fx.Node) and syn_node.op == "call_module" and len(syn_node.users) == 1
                and calls[syn_node.target] == 1 and calls[bn_node.target] == 1):
            continue
        syn, bn = modules[syn_node.target], modules[bn_node.target]
        if not isinstance(syn, (*_CONV_TYPES, nn.Linear)) or computed_weight(syn) is not None \
                or bn.running_mean is None:
            continue  # (a weight computed in forward, e.g. standardized, would undo the fused one)
        if not _normalizes_output_features(syn, bn, syn_node):
            continue
        new = copy.deepcopy(syn)
        w = syn.weight.detach().to(dtype or syn.weight.dtype)
        b = syn.bias.detach().to(w.dtype) if syn.bias is not None else None
        stats = [t.detach().to(w.dtype) if t is not None else None
                 for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)]
        mean, var, gamma, beta = stats
        if gamma is None:
            gamma = torch.ones_like(mean)
        if beta is None:
            beta = torch.zeros_like(mean)
        fuse = fuse_linear_bn_weights if isinstance(syn, nn.Linear) else fuse_conv_bn_weights
        new.weight, new.bias = fuse(w, b, mean, var, bn.eps, gamma, beta)
        parent, _, name = syn_node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, new)
        modules[syn_node.target] = new
        bn_node.replace_all_uses_with(syn_node)
        gm.graph.erase_node(bn_node)
        fused.append(bn_node.target)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return fused


def _normalizes_output_features(syn: nn.Module, bn: nn.Module, syn_node: fx.Node) -> bool:
    """Whether ``bn`` normalizes exactly the output channels/features of ``syn``."""
    out_features = syn.out_features if isinstance(syn, nn.Linear) else syn.out_channels
    if bn.num_features != out_features:
        return False
    meta = syn_node.meta.get("tensor_meta")
    ndim = len(meta.shape) if meta is not None else None
    bn_multi = step_mode(bn) == "m"
    bn_channel_dim = 2 if bn_multi else 1
    syn_multi = step_mode(syn) == "m"
    if isinstance(syn, nn.Linear):
        # BN must normalize the last dim: [N, F] ('s') or [T, N, F] ('m').
        return ndim is not None and ndim - 1 == bn_channel_dim
    return bn_multi == syn_multi
