"""`export_onnx`: a deploy model as a pure binary/ternary ONNX graph (standard ops; T unrolled, or one step)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.fx as fx
import torch.nn as nn

from .atomic import atomic_write
from .blame import blame_export_failure
from .compact import compact
from .decompose import lean_decompositions
from .errors import RealSpikeError
from .fold import NotConvertedWarning, fold
from .frameworks import adapter_for, reset
from .layout import input_layout_of
from .lowering import lower_for_export
from .neurons import step_mode_of
from .provenance import remember_export
from .neurons import is_neuron, is_ternary
from .report import compiled_original, record_of
from .state import copy_model
from .stream import STATE_IN, STATE_OUT, lower_for_stream
from .torchlib_cache import cached_torchlib_registry
from .weightless import weightless

__all__ = ["ANY_T", "METADATA_PREFIX", "ExportError", "as_deploy_model", "check_opset", "export_onnx",
           "model_fingerprint", "spike_kinds"]

logger = logging.getLogger(__name__)

METADATA_PREFIX = "sj_realspike."
ANY_T = "any"  # the time_steps a stream graph records: it runs one step per call, any number of them


class ExportError(RealSpikeError, RuntimeError):
    """The exporter or the ONNX checker rejected the lowered deploy model (no file was written)."""


def as_deploy_model(model: nn.Module, example_input: torch.Tensor, *, announce: bool = True) -> fx.GraphModule:
    """``model`` if it is a float32 deploy model from `fold`, else a float32 deploy copy.

    A converted model (with amplitudes) or a plain SpikingJelly network is folded first:
    fold is exact, and it refuses anything it cannot fold exactly. ``example_input`` (one
    forward call's input: ``[T, N, …]`` multi-step, ``[N, …]`` single-step) records the
    shapes a plain network lacks, so that fold can absorb its constant factors on spikes.
    A model with float16/bfloat16/float64 weights is copied to float32 first (the ONNX
    graph computes in float32). Each of these steps is logged (``announce=False``: silent);
    ``model`` itself is never changed.
    """
    meta = record_of(model)
    deploy = meta.get("stage") == "deploy"
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in (*model.parameters(), *model.buffers())
                     if t.is_floating_point() and t.dtype != torch.float32})
    if deploy and not dtypes:
        return model
    gm = copy_model(model)
    if dtypes:
        if announce:
            logger.warning("%s holds %s weights: exporting a float32 copy (the ONNX graph computes in float32)",
                           type(model).__name__, "/".join(dtypes))
        gm = gm.float()
    if deploy:
        return gm
    if announce:
        what = "a converted model (it holds spike amplitudes)" if meta.get("stage") == "converted" \
            else "not a deploy model from sj_realspike.fold"
        logger.warning("%s is %s: folding a copy first (sj_realspike.fold)", type(model).__name__, what)
    with warnings.catch_warnings():  # folding a plain network is this function's job, announced above
        warnings.simplefilter("ignore", NotConvertedWarning)
        # A converted model is captured on its recorded example; a plain network on this one.
        return fold(gm, inplace=True, example_input=None if "example_shape" in meta else example_input)


def spike_kinds(model: nn.Module) -> str:
    """``"binary"``, ``"ternary"`` or ``"binary+ternary"``: the spikes the neurons of ``model`` emit."""
    return "+".join(sorted({"ternary" if is_ternary(m) else "binary" for m in model.modules() if is_neuron(m)}))


def model_fingerprint(deploy_model: nn.Module, time_steps: int, layout: str) -> str:
    """A sha256 of what a deploy model computes, recorded by `export_onnx` and checked by `verify`.

    Hashed: the spike kind, ``T`` and input layout; every ``state_dict`` tensor, sorted by
    key, as its key, shape and float32 bytes (other dtypes as their own bytes); each
    neuron's path, class and hyper-parameters (threshold, reset, ``τ``, ``decay_input``),
    which are not in the ``state_dict``. Take it on the deploy model, not the lowered one
    (lowering renames and reshapes weights). `fold` is deterministic, so folding the same
    converted model again gives the same fingerprint.
    """
    h = hashlib.sha256(f"sj_realspike.fingerprint/1|{spike_kinds(deploy_model)}|{time_steps}|{layout}".encode())
    for key, t in sorted(deploy_model.state_dict().items()):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        h.update(f"|{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    for name, m in deploy_model.named_modules():
        if is_neuron(m):
            params = [getattr(m, k, None) for k in ("v_threshold", "v_reset", "tau", "decay_input")]
            h.update(f"|{name}|{type(m).__qualname__}|{params}".encode())
            adapter = adapter_for(m)
            settings = adapter.settings(m) if adapter is not None else {}
            if settings:  # Norse's parameter tuple, snnTorch's reset_delay...: what the state_dict lacks
                h.update(f"|{_canonical(settings)}".encode())
    return h.hexdigest()


def _canonical(value: Any) -> str:
    """``value`` as text that changes with every number in it (tensors in full precision, not torch's 4 digits)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}{value.detach().cpu().double().flatten().tolist()}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canonical(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple such as norse's LIFParameters
        return type(value).__name__ + _canonical(value._asdict())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return repr(value)


def check_opset(opset: int) -> None:
    """Refuse an opset that ``torch.onnx.export(dynamo=True)`` would not honour.

    The exporter writes its graphs in the opset its torchlib is implemented in and
    converts them with onnxscript's version converter; below that opset the conversion
    often fails and the exporter then keeps its own opset, above the converter's
    maximum it falls back to onnx's C converter, which silently leaves the model as it is.

    Raises:
        ValueError: ``opset`` is outside that range (the message gives it).
    """
    from onnxscript.version_converter import _version_converter
    from torch.onnx import _constants as onnx_constants
    from torch.onnx._internal.exporter import _constants as exporter_constants

    low, high = exporter_constants.TORCHLIB_OPSET, _version_converter.SUPPORTED_MAX_ONNX_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ValueError(f"opset {opset} is not supported by the installed torch.onnx exporter: choose "
                         f"{low} to {high} (default {onnx_constants.ONNX_DEFAULT_OPSET})")


def export_onnx(deploy_model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor, *,
                opset: int | None = None, dynamic_batch: bool = True, stream: bool = False) -> Path:
    """Export a deploy model to ONNX: binary/ternary spikes, standard ops; ``T`` unrolled, or one step.

    Unrolled (default): the graph takes the whole input sequence ``[T, N, …]``
    (float32), with ``T`` static and ``N`` dynamic, and returns the model's output for it.

    ``stream=True``: the graph computes one time step (`sj_realspike.stream`). It takes
    ``x`` (one step ``[N, …]``) and ``state_in.<neuron>`` (each neuron's membrane, the
    neuron's module path), and returns the step's output (``y``, or ``y.0``, ``y.1``…
    for several) and ``state_out.<neuron>``, the membranes to feed to the next step. Its
    size and export time do not depend on ``T``. `OnnxRunner` keeps the state
    (``step``, ``reset``) and runs whole sequences as the unrolled graph does, bit for
    bit. Models without a per-step graph are refused (see `sj_realspike.stream`).

    Neurons and fold-made synapses are first lowered to compact op sequences
    (`sj_realspike.lowering`), then exported with ``torch.onnx.export(dynamo=True)``
    (without its second trace of the program where renaming a few nodes does the same,
    `sj_realspike.decompose`) and compacted (constant folding, common subexpressions,
    reshape chains: what of onnxscript's optimizer pays, see bench/export_time.py). The
    result must pass
    ``onnx.checker.check_model(full_check=True)`` and strict shape inference and use the
    default ONNX domain only; it is then written atomically (an existing file survives
    any failure). ``metadata_props`` record ``sj_realspike.spike``
    (binary/ternary/binary+ternary), ``.time_steps`` (``"any"`` for a stream graph),
    ``.input_layout`` (of the sequence), ``.step_mode``, ``.mode`` (``unrolled`` or
    ``stream``), ``.version`` and ``.fingerprint`` (the deploy model's
    `model_fingerprint`, which `verify` recomputes to tell a file exported from another
    model); stream graphs also ``.stream_states`` (JSON: each state's initial value) and
    ``.stream_outputs`` (per output: ``stack`` along a new time dim, or ``cat`` along dim 0).

    A model that is not a deploy model (a converted model with amplitudes, or a plain
    SpikingJelly network) is folded first, with a log line saying so: folding is exact
    and raises on anything it cannot fold, so the export stays pure. A float16/bfloat16
    (or float64) model is exported as a float32 copy, also with a log line.

    Single-step (``'s'``) models are exported to the same sequence interface: the graph
    runs all ``T`` steps of the step function and stacks the per-step outputs into
    ``[T, N, …]``; pass ``example_input`` as that sequence.

    Args:
        deploy_model: the deploy model from `fold` (or a model to fold, see above).
        path: destination ``.onnx`` file.
        example_input: an input sequence ``[T, N, …]``; fixes ``T`` (unrolled) and the feature shape.
        opset: ONNX opset version (default: the exporter's; `check_opset` gives the range).
        dynamic_batch: export ``N`` as a dynamic dimension (otherwise fixed to the example's).
        stream: export the graph of one time step, with the membranes as inputs and outputs.

    Returns:
        The written path.

    Raises:
        TypeError: ``example_input`` is not a tensor.
        ValueError: ``example_input`` is not a float tensor ``[T, N, …]`` the model accepts, or
            ``opset`` is out of the exporter's range.
        UnsupportedPatternError: the model cannot be folded or lowered (names the node), or
            (``stream``) it has no per-step graph.
        ExportError: the exporter or the ONNX checker failed.
    """
    if opset is not None:
        check_opset(opset)
    deploy_model = compiled_original(deploy_model)
    x = _check_example(example_input)
    layout = input_layout_of(deploy_model, x)
    layout.check(x, record_of(deploy_model).get("example_shape"))
    model = as_deploy_model(deploy_model, x[0] if layout.per_step else x)
    layout = input_layout_of(model, x)  # fold may have found dims the graph is specialized to
    layout.check(x, None)
    time_steps = ANY_T if stream else layout.time_steps(x)
    fingerprint = model_fingerprint(model, time_steps, layout.name)  # before lowering renames weights
    if dynamic_batch and layout.batch_dim in layout.fixed:
        logger.warning("the deploy graph is specialized to batch size %d (its forward depends on it): exporting "
                       "a fixed batch", x.shape[layout.batch_dim])
        dynamic_batch = False
    metadata = {"spike": spike_kinds(model), "time_steps": time_steps, "input_layout": layout.name,
                "step_mode": step_mode_of(model), "mode": "stream" if stream else "unrolled"}
    if stream:
        graph = lower_for_stream(model, x, layout)
        batch = layout.batch_dim - 1
        inputs = [(graph.step_input, "x", batch)] + [(s.example, STATE_IN + s.name, 0) for s in graph.states]
        outputs = ["y"] if len(graph.joins) == 1 else [f"y.{i}" for i in range(len(graph.joins))]
        proto = _export(graph.module, inputs, outputs + [STATE_OUT + s.name for s in graph.states], opset,
                        dynamic_batch)
        metadata["stream_states"] = json.dumps({s.name: s.initial for s in graph.states})
        metadata["stream_outputs"] = ",".join(graph.joins)
    else:
        lowered = lower_for_export(model, x, per_step=layout.per_step)
        trace_x, b = x, layout.batch_dim
        if dynamic_batch and x.shape[b] == 1:  # batch 1 would be specialized
            trace_x = torch.cat([x, x], dim=b)
        proto = _export(lowered, [(trace_x, "x", b)], None, opset, dynamic_batch)
    from . import __version__  # at call time: the package sets it after importing this module

    metadata |= {"version": __version__, "fingerprint": fingerprint}
    for key, value in metadata.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    _check(proto)
    written = atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    remember_export(fingerprint, proto)  # verify then knows this graph without exporting it again
    return written


def _check_example(example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor [T, N, ...], got {type(example_input).__name__}")
    if not example_input.is_floating_point() or example_input.dim() < 2:
        raise ValueError(
            f"example_input must be a float tensor: the whole time sequence [T, N, features...], or one call's "
            f"input in the layout the model was converted with; got {example_input.dtype} of shape "
            f"{tuple(example_input.shape)}")
    return example_input.detach().to(torch.float32)


def _export(lowered: fx.GraphModule, inputs: list[tuple[torch.Tensor, str, int]], output_names: list[str] | None,
            opset: int | None, dynamic_batch: bool) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` of ``lowered`` on ``inputs`` (tensor, name, batch dim), compacted."""
    args = tuple(t for t, _, _ in inputs)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = tuple({b: batch} for _, _, b in inputs) if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings(), cached_torchlib_registry(), lean_decompositions():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                lowered, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                input_names=[name for _, name, _ in inputs], output_names=output_names, verbose=False,
                optimize=False)
    except Exception as e:  # the exporter raises many types; report the root cause's first line
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip().split("\n")[0]
        blamed = blame_export_failure(lowered, args[0] if len(args) == 1 else None, reset, e)
        if blamed is not None:
            raise blamed from e
        raise ExportError(f"torch.onnx.export failed on the lowered deploy model ({type(root).__name__}: {first})") from e
    finally:
        reset(lowered)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    compact(program.model)
    return program.model_proto


def _check(proto: onnx.ModelProto) -> None:
    foreign = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")}
                     | {o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx")})
    if foreign or proto.functions:
        raise ExportError(f"the exported graph uses non-standard domains or functions ({', '.join(foreign)}); "
                          "only default-domain ONNX ops are allowed")
    bare = weightless(proto)  # the checks read types and shapes only; weights cost them seconds
    try:
        onnx.checker.check_model(bare, full_check=True)
        onnx.shape_inference.infer_shapes(bare, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph failed the ONNX checker: {e}") from e
