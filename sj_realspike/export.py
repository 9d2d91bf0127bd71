"""`export_onnx`: a deploy model as a pure binary/ternary ONNX graph (standard ops, T unrolled)."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import onnx
import torch
import torch.fx as fx
import torch.nn as nn
from spikingjelly.activation_based import functional

from .atomic import atomic_write
from .errors import RealSpikeError
from .fold import NotConvertedWarning, fold
from .lowered import LoweredNeuron, LoweredTernaryNeuron
from .lowering import lower_for_export, step_mode_of
from .neurons import is_neuron, is_ternary
from .report import META_KEY
from .state import copy_model
from .tracing import propagate_shapes, trace

__all__ = ["METADATA_PREFIX", "ExportError", "as_deploy_model", "export_onnx"]

logger = logging.getLogger(__name__)

METADATA_PREFIX = "sj_realspike."
_LAYOUTS = {3: "T,N,F", 4: "T,N,C,L", 5: "T,N,C,H,W", 6: "T,N,C,D,H,W"}


class ExportError(RealSpikeError, RuntimeError):
    """The exporter or the ONNX checker rejected the lowered deploy model (no file was written)."""


def as_deploy_model(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """``model`` if it is a deploy model from `fold`, else ``fold`` of a copy (logged).

    A converted model (with amplitudes) or a plain SpikingJelly network is folded first:
    fold is exact, and it refuses anything it cannot fold exactly. ``example_input`` (one
    forward call's input: ``[T, N, …]`` multi-step, ``[N, …]`` single-step) records the
    shapes a plain network lacks, so that fold can absorb its constant factors on spikes.
    """
    meta = model.meta.get(META_KEY, {}) if isinstance(model, fx.GraphModule) else {}
    if meta.get("stage") == "deploy":
        return model
    what = "a converted model (it holds spike amplitudes)" if meta.get("stage") == "converted" \
        else "not a deploy model from sj_realspike.fold"
    logger.warning("%s is %s: folding a copy first (sj_realspike.fold)", type(model).__name__, what)
    gm = copy_model(model)
    if not isinstance(gm, fx.GraphModule):
        gm = trace(gm)
    if any("tensor_meta" not in n.meta for n in gm.graph.nodes if n.op == "call_module"):
        propagate_shapes(gm, example_input)
    with warnings.catch_warnings():  # folding a plain network is this function's job, announced above
        warnings.simplefilter("ignore", NotConvertedWarning)
        return fold(gm, inplace=True)


def export_onnx(deploy_model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor, *,
                opset: int | None = None, dynamic_batch: bool = True) -> Path:
    """Export a deploy model to ONNX: binary/ternary spikes, standard ops, ``T`` unrolled.

    The graph takes the whole input sequence ``[T, N, …]`` (float32), with ``T``
    static and ``N`` dynamic, and returns the model's output for it. Neurons and
    fold-made synapses are first lowered to compact op sequences
    (`sj_realspike.lowering`), then exported with ``torch.onnx.export(dynamo=True)``.
    The result must pass ``onnx.checker.check_model(full_check=True)`` and strict
    shape inference and use the default ONNX domain only; it is then written
    atomically (an existing file survives any failure). ``metadata_props`` record
    ``sj_realspike.spike`` (binary/ternary/binary+ternary), ``.time_steps``,
    ``.input_layout``, ``.step_mode`` and ``.version``.

    A model that is not a deploy model (a converted model with amplitudes, or a plain
    SpikingJelly network) is folded first, with a log line saying so: folding is exact
    and raises on anything it cannot fold, so the export stays pure.

    Single-step (``'s'``) models are exported to the same sequence interface: the graph
    runs all ``T`` steps of the step function and stacks the per-step outputs into
    ``[T, N, …]``; pass ``example_input`` as that sequence.

    Args:
        deploy_model: the deploy model from `fold` (or a model to fold, see above).
        path: destination ``.onnx`` file.
        example_input: an input sequence ``[T, N, …]``; fixes ``T`` and the feature shape.
        opset: ONNX opset version (default: the exporter's).
        dynamic_batch: export ``N`` as a dynamic dimension (otherwise fixed to the example's).

    Returns:
        The written path.

    Raises:
        TypeError: ``example_input`` is not a tensor.
        ValueError: ``example_input`` is not a float tensor ``[T, N, …]`` the model accepts.
        UnsupportedPatternError: the model cannot be folded or lowered (names the node).
        ExportError: the exporter or the ONNX checker failed.
    """
    mode = step_mode_of(deploy_model)
    x = _check_example(deploy_model, example_input, mode)
    model = as_deploy_model(deploy_model, x if mode == "m" else x[0])
    lowered = lower_for_export(model, x)
    proto = _export(lowered, x, opset, dynamic_batch)
    kinds = sorted({"ternary" if isinstance(m, LoweredTernaryNeuron) or is_ternary(m) else "binary"
                    for m in lowered.modules() if isinstance(m, LoweredNeuron) or is_neuron(m)})
    from . import __version__  # at call time: the package sets it after importing this module

    metadata = {
        "spike": "+".join(kinds),
        "time_steps": str(x.shape[0]),
        "input_layout": _LAYOUTS.get(x.dim(), "T,N,..."),
        "step_mode": mode,
        "version": __version__,
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    _check(proto)
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))


def _check_example(model: nn.Module, example_input: torch.Tensor, mode: str) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor [T, N, ...], got {type(example_input).__name__}")
    if not example_input.is_floating_point() or example_input.dim() < 3:
        raise ValueError(
            f"example_input must be a float tensor [T, N, features...] (the whole time sequence), "
            f"got {example_input.dtype} of shape {tuple(example_input.shape)}")
    x = example_input.detach().to(torch.float32)
    meta = model.meta.get(META_KEY, {}) if isinstance(model, fx.GraphModule) else {}
    recorded = meta.get("example_shape")  # the conversion example: [T, N, ...] ('m') or [N, ...] ('s')
    if recorded is not None:
        features = tuple(recorded)[2:] if mode == "m" else tuple(recorded)[1:]
        if tuple(x.shape[2:]) != features:
            raise ValueError(
                f"example_input has shape {tuple(x.shape)}, but this {'multi' if mode == 'm' else 'single'}-step "
                f"model was converted for inputs {tuple(recorded)}: pass the whole time sequence "
                f"[T, N, {', '.join(map(str, features))}]")
    return x


def _export(lowered: fx.GraphModule, x: torch.Tensor, opset: int | None, dynamic_batch: bool) -> onnx.ModelProto:
    trace_x = x
    if dynamic_batch and x.shape[1] == 1:
        trace_x = x.expand(x.shape[0], 2, *x.shape[2:]).contiguous()  # batch 1 would be specialized
    dynamic_shapes = ({1: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                lowered, (trace_x,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                input_names=["x"], verbose=False, optimize=True)
    except Exception as e:  # the exporter raises many types; report the root cause's first line
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip().split("\n")[0]
        raise ExportError(f"torch.onnx.export failed on the lowered deploy model ({type(root).__name__}: {first})") from e
    finally:
        functional.reset_net(lowered)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _check(proto: onnx.ModelProto) -> None:
    foreign = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")}
                     | {o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx")})
    if foreign or proto.functions:
        raise ExportError(f"the exported graph uses non-standard domains or functions ({', '.join(foreign)}); "
                          "only default-domain ONNX ops are allowed")
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph failed the ONNX checker: {e}") from e
