"""`OnnxRunner`: an onnxruntime session for exported models, with sane CPU defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

__all__ = ["OnnxRunner", "physical_cores"]

_NUMPY_OF_ONNX = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                  "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads do not speed up GEMMs).

    Counts distinct (package, core) pairs of the allowed CPUs from sysfs on Linux;
    elsewhere, or if that fails, the number of allowed logical CPUs.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    try:
        for cpu in allowed:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores))


class OnnxRunner:
    """Run an exported model in onnxruntime on numpy arrays or torch tensors.

    CPU defaults: intra-op threads = physical cores, one inter-op thread (the graph is a
    chain), and worker threads that sleep instead of spinning between ops (spinning burns
    the cores of everything else on the machine for a few percent of latency).

    Args:
        path: an ``.onnx`` file (or an in-memory ``onnx.ModelProto``).
        threads: intra-op threads (default: `physical_cores`).
        providers: onnxruntime execution providers (default: CPU).
        spinning: let idle worker threads spin (lower latency, busy cores).
        optimize: onnxruntime graph optimizations (``False`` runs the graph exactly as stored).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a model onnxruntime can load (message from onnxruntime).
    """

    def __init__(self, path: str | os.PathLike[str] | onnx.ModelProto, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, spinning: bool = False, optimize: bool = True) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if isinstance(path, onnx.ModelProto):
            source: str | bytes = path.SerializeToString()
            self.path = None
        else:
            self.path = Path(path)
            if not self.path.is_file():
                raise FileNotFoundError(f"no ONNX model at {self.path}")
            source = str(self.path)
        try:
            self.session = ort.InferenceSession(source, opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {self.path or 'the model'}: {e}") from e
        self.threads = opts.intra_op_num_threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, got {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)
        self.input_type = inputs[0].type
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor | tuple:
        """The model's output(s) for ``x``, as the same kind of array as ``x``.

        Any batch size works for a dynamic batch dimension; other dims must match.

        Raises:
            TypeError: ``x`` is not a numpy array or torch tensor.
            ValueError: wrong dtype or shape (the message gives expected vs given).
        """
        is_torch = isinstance(x, torch.Tensor)
        if is_torch:
            device = x.device
            array = x.detach().cpu().numpy()
        elif isinstance(x, np.ndarray):
            array = x
        else:
            raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
        self.check_input(array)
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})
        if is_torch:
            outputs = [torch.from_numpy(o).to(device) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def check_input(self, array: np.ndarray) -> None:
        """Raise a ``ValueError`` naming expected vs given if ``array`` does not fit the model's input."""
        want = _NUMPY_OF_ONNX.get(self.input_type)
        if want is not None and array.dtype != want:
            raise ValueError(f"input '{self.input_name}' must be {np.dtype(want).name}, got {array.dtype} "
                             f"(convert with x.astype(np.{np.dtype(want).name}) or x.float())")
        expected = self.input_shape
        shown = "[" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in expected) + "]"
        if array.ndim != len(expected) or any(
                isinstance(d, int) and d != n for d, n in zip(expected, array.shape, strict=True)):
            raise ValueError(f"input '{self.input_name}' must have shape {shown}, got {list(array.shape)}")
        if any(n == 0 for n in array.shape):
            raise ValueError(f"input '{self.input_name}' is empty: shape {list(array.shape)}")

    def __repr__(self) -> str:
        return (f"OnnxRunner({str(self.path) if self.path else '<in memory>'}, input {self.input_name} "
                f"{list(self.input_shape)}, threads={self.threads})")
