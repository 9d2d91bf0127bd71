"""`OnnxRunner`: an onnxruntime session for exported models (unrolled or stream), with sane CPU defaults.

Needs numpy, onnx and onnxruntime only: torch tensors are accepted (and returned as tensors) when the
caller has torch, which keeps ``sj-realspike run`` and ``inspect`` of an ONNX file free of importing it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

if TYPE_CHECKING:
    import torch

__all__ = ["OnnxRunner", "check_external_data", "load_onnx", "physical_cores"]

_PREFIX, _STATE_IN, _STATE_OUT = "sj_realspike.", "state_in.", "state_out."  # as sj_realspike.export writes them
_NUMPY_OF_ONNX = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                  "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """``onnx.load`` of a file whose external data `check_external_data` accepts.

    Raises:
        ValueError: see `check_external_data`; or the external data cannot be loaded.
    """
    path = Path(path)
    proto = check_external_data(path)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as e:  # a location outside the folder, a missing file
        raise ValueError(f"{path}: its external data cannot be loaded ({type(e).__name__}: {e})") from None
    return proto


def check_external_data(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model in ``path`` without its external data, once each external tensor is known to read its own size.

    An initializer stored outside the file names a location, an offset and, optionally, a
    length; without one, ``onnx.load`` reads to the end of that file, so a few bytes of ONNX
    pointing at a large (or sparse) file fill the memory. Each external tensor must read
    exactly ``prod(dims) · itemsize`` bytes.

    Raises:
        ValueError: an external tensor would read more or fewer bytes than it holds (or its
            data cannot be found), or the file is not a readable ONNX model.
    """
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends on corrupt files
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        expected = math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        try:
            offset = int(info.get("offset", 0))
            size = int(info["length"]) if "length" in info else \
                (path.parent / info.get("location", "")).stat().st_size - offset
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: initializer '{t.name}' has unreadable external data ({e})") from None
        if size != expected:
            raise ValueError(f"{path}: initializer '{t.name}' would read {size:,} bytes of external data from "
                             f"{info.get('location')!r}, but its {list(t.dims)} values hold {expected:,}")
    return proto


def _allowed_cpus() -> int:
    """Logical CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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

    ``runner(x)`` runs a whole input sequence ``[T, N, …]`` on either kind of graph
    `export_onnx` writes. On a stream graph (``stream=True``) it runs the steps one by
    one from the initial state and joins the per-step outputs as the unrolled graph
    returns them; `step` runs one step and keeps the membranes between calls (for one
    batch size at a time), `reset` starts over. ``runner.stream`` tells the kind.

    CPU defaults: intra-op threads = physical cores, one inter-op thread (the graph is a
    chain), and worker threads that sleep instead of spinning between ops (spinning burns
    the cores of everything else on the machine for a few percent of latency).

    Args:
        path: an ``.onnx`` file (or an in-memory ``onnx.ModelProto``).
        threads: intra-op threads (default: `physical_cores`), at most the logical CPUs this
            process may run on (more only contend for them; thousands exhaust the machine).
        providers: onnxruntime execution providers (default: CPU).
        spinning: let idle worker threads spin (lower latency, busy cores).
        optimize: onnxruntime graph optimizations (``False`` runs the graph exactly as stored).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``threads`` is out of range, the file is not a model onnxruntime can load
            (message from onnxruntime), or it has several inputs and is not a stream graph from
            `export_onnx`.
    """

    def __init__(self, path: str | os.PathLike[str] | onnx.ModelProto, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, spinning: bool = False, optimize: bool = True) -> None:
        cpus = _allowed_cpus()
        if threads is not None and not (isinstance(threads, int) and 1 <= threads <= cpus):
            raise ValueError(f"threads must be an integer from 1 to {cpus} (the CPUs this process may run on), "
                             f"got {threads!r}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors reach the caller as exceptions; onnxruntime's own log stays off stderr
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
            check_external_data(self.path)
            source = str(self.path)
        try:
            self.session = ort.InferenceSession(source, opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {self.path or 'the model'}: {e}") from e
        self.threads = opts.intra_op_num_threads
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.stream = self.metadata.get(_PREFIX + "mode") == "stream"
        inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.stream:
            self._init_stream(inputs)
        elif len(inputs) != 1:
            raise ValueError(f"expected a model with one input, got {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.step_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)  # one call of the graph
        # What `__call__` takes: the graph's input, or a sequence of steps for a stream graph.
        self.input_shape: tuple[int | str | None, ...] = ("T", *self.step_shape) if self.stream else self.step_shape
        self.input_type = inputs[0].type

    def _init_stream(self, inputs: list) -> None:
        """Pair ``state_in.<k>`` inputs with ``state_out.<k>`` outputs; read initial values and joins."""
        try:
            initial = json.loads(self.metadata[_PREFIX + "stream_states"])
            joins = self.metadata[_PREFIX + "stream_outputs"].split(",")
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.path or 'the model'} is marked as a stream graph but its metadata lacks "
                             f"the state description ({e}): re-export it with export_onnx(stream=True)") from None
        states = {i.name[len(_STATE_IN):]: i for i in inputs[1:] if i.name.startswith(_STATE_IN)}
        outputs = {o[len(_STATE_OUT):] for o in self.output_names if o.startswith(_STATE_OUT)}
        if len(states) != len(inputs) - 1 or set(states) != outputs or set(states) != set(initial):
            raise ValueError(f"{self.path or 'the model'}: the stream graph's states do not pair up (inputs "
                             f"{[i.name for i in inputs[1:]]}, outputs {sorted(outputs)})")
        self._states = {k: (i.name, tuple(i.shape), float(initial[k])) for k, i in states.items()}
        outputs = [o for o in self.output_names if not o.startswith(_STATE_OUT)]
        if len(joins) > len(outputs) or not set(joins) <= {"stack", "cat"}:
            raise ValueError(f"{self.path or 'the model'}: stream_outputs {joins} does not describe the outputs "
                             f"{outputs}")
        self._outputs = outputs[:len(joins)]  # more are extra outputs of a copy (verify's probe): run_steps has them
        self._joins = joins
        self._state: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ running
    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor | tuple:
        """The model's output(s) for the input sequence ``x``, as the same kind of array as ``x``.

        Any batch size works for a dynamic batch dimension; other dims must match (a
        stream graph: any ``T``). A stream graph runs from its initial state and leaves
        the state of `step` alone.

        Raises:
            TypeError: ``x`` is not a numpy array or torch tensor.
            ValueError: wrong dtype or shape (the message gives expected vs given).
        """
        array, back = _as_array(x)
        self.check_input(array)
        if self.stream:
            steps = self.run_steps(array)
            outputs = [(np.stack if join == "stack" else np.concatenate)([s[name] for s in steps], 0)
                       for name, join in zip(self._outputs, self._joins, strict=True)]
        else:
            outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})
        outputs = [back(o) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def step(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor | tuple:
        """One time step ``x`` (``[N, …]``) of a stream graph: its output(s); the membranes are kept.

        The first step after construction or `reset` starts from the initial state, for
        the batch size of ``x``; later steps continue it and must have that batch size.

        Raises:
            TypeError: not a stream graph, or ``x`` is not a numpy array or torch tensor.
            ValueError: wrong dtype or shape, or another batch size than the kept state's.
        """
        if not self.stream:
            raise TypeError(f"{self.path or 'the model'} is an unrolled graph (it takes whole sequences [T, N, ...]): "
                            "call the runner on the sequence, or export with export_onnx(..., stream=True)")
        array, back = _as_array(x)
        self._check(array, self.step_shape)
        if self._state is not None:
            held = self._state_batch(self._state)
            if held is not None and held != self._batch_of(array):
                raise ValueError(f"the kept state is for a batch of {held}, this step has {self._batch_of(array)}: "
                                 "call reset() before stepping another batch size")
        outputs, self._state = self._run_step(array, self._state)
        outputs = [back(outputs[name]) for name in self._outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def reset(self) -> None:
        """Forget the kept state: the next `step` starts from the initial membranes."""
        if self.stream:
            self._state = None

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """A copy of the membranes `step` keeps, by neuron (``None`` before the first step, or unrolled)."""
        return None if not self.stream or self._state is None else {k: v.copy() for k, v in self._state.items()}

    def run_steps(self, x: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Every output of a stream graph (states included) at each step of ``x`` (``[T, N, …]``), from the start.

        Raises:
            TypeError: not a stream graph.
        """
        if not self.stream:
            raise TypeError(f"{self.path or 'the model'} is an unrolled graph: it has no steps to run")
        state, results = None, []
        for x_t in x:
            outputs, state = self._run_step(x_t, state)
            results.append(outputs)
        return results

    def _run_step(self, x_t: np.ndarray, state: dict[str, np.ndarray] | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if state is None:
            state = self._initial_state(self._batch_of(x_t))
        feeds = {self.input_name: np.ascontiguousarray(x_t)}
        feeds.update((name, state[k]) for k, (name, _, _) in self._states.items())
        outputs = dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        return outputs, {k: outputs[_STATE_OUT + k] for k in self._states}

    def _initial_state(self, batch: int | None) -> dict[str, np.ndarray]:
        return {k: np.full([d if isinstance(d, int) else batch for d in shape], value, dtype=np.float32)
                for k, (_, shape, value) in self._states.items()}

    def _batch_of(self, x_t: np.ndarray) -> int | None:
        """The batch size of one step: its size where the graph's input is dynamic (``None``: fixed batch)."""
        return next((n for d, n in zip(self.step_shape, x_t.shape, strict=True) if not isinstance(d, int)), None)

    def _state_batch(self, state: dict[str, np.ndarray]) -> int | None:
        for k, (_, shape, _) in self._states.items():
            return next((n for d, n in zip(shape, state[k].shape, strict=True) if not isinstance(d, int)), None)
        return None

    # ----------------------------------------------------------------- checking
    def check_input(self, array: np.ndarray) -> None:
        """Raise a ``ValueError`` naming expected vs given if ``array`` does not fit what ``runner(x)`` takes."""
        self._check(array, self.input_shape)

    def _check(self, array: np.ndarray, expected: tuple[int | str | None, ...]) -> None:
        want = _NUMPY_OF_ONNX.get(self.input_type)
        if want is not None and array.dtype != want:
            raise ValueError(f"input '{self.input_name}' must be {np.dtype(want).name}, got {array.dtype} "
                             f"(convert with x.astype(np.{np.dtype(want).name}) or x.float())")
        shown = "[" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in expected) + "]"
        what = " (a sequence of steps)" if self.stream and expected is self.input_shape else ""
        if array.ndim != len(expected) or any(
                isinstance(d, int) and d != n for d, n in zip(expected, array.shape, strict=True)):
            raise ValueError(f"input '{self.input_name}' must have shape {shown}{what}, got {list(array.shape)}")
        if any(n == 0 for n in array.shape):
            raise ValueError(f"input '{self.input_name}' is empty: shape {list(array.shape)}")

    def __repr__(self) -> str:
        kind = f", stream of {len(self._states)} states" if self.stream else ""
        return (f"OnnxRunner({str(self.path) if self.path else '<in memory>'}, input {self.input_name} "
                f"{list(self.input_shape)}{kind}, threads={self.threads})")


def _as_array(x: np.ndarray | torch.Tensor):
    """``x`` as a numpy array, and the function turning outputs back into ``x``'s kind (and device)."""
    if isinstance(x, np.ndarray):
        return x, lambda o: o
    torch = sys.modules.get("torch")  # a tensor exists only where torch is imported already
    if torch is not None and isinstance(x, torch.Tensor):
        device = x.device
        return x.detach().cpu().numpy(), lambda o: torch.from_numpy(o).to(device)
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
