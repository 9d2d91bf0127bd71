"""`export_nir`: a folded (binary) deploy model as a NIR graph for neuromorphic toolchains.

Once amplitudes are folded, a Real Spike network is an ordinary binary SNN, which is
what NIR (the Neuromorphic Intermediate Representation) describes. Each node of the
deploy ``fx`` graph becomes one NIR node; NIR sums the edges that enter a node, so
residual additions become plain edges. Each framework's adapter maps its own neurons
(`FrameworkAdapter.nir_node`) and builds a model back from a graph (`FrameworkAdapter.nir_import`,
called by `import_nir`); SpikingJelly's follow its own ``nir_exchange`` conventions, so its
importer reads the graph back unchanged:

* ``IFNode``   → ``nir.IF(r=1/dt, v_threshold, v_reset)``
* ``LIFNode``  → ``nir.LIF(tau=τ·dt, r=1 if decay_input else τ, v_leak=v_reset, …)``
  (forward Euler with step ``dt`` gives back SpikingJelly's update exactly);
  ``ParametricLIFNode`` exports its learned ``τ = 1/sigmoid(w)`` the same way.
* conv/linear → ``Conv1d``/``Conv2d`` (zero bias when absent; a grouped conv as the equal
  dense conv with zero blocks) / ``Linear``/``Affine``;
  average pooling → ``AvgPool2d``; flatten/reshape of the features → ``Flatten``.
* snnTorch's ``Leaky``/``Synaptic`` (zero reset) → ``LIF``/``CubaLIF`` in snnTorch's own
  conventions (``τ = dt/(1 − β)``, ``r = τ/dt``), Norse's LIF cells and read-outs → ``LIF``,
  ``CubaLIF``, ``LI``, ``CubaLI`` (each framework's adapter maps its neurons: ``nir_node``).
* ``DiagonalSynapse`` (a scaled shortcut into a membrane) → ``Scale`` (Hadamard product);
  a sum of branches reaching the network output → ``Scale`` of ones (a summing junction,
  because importers do not sum at the ``Output`` node).

Refused, naming the node: ternary neurons (NIR neurons emit {0, 1}), soft reset, max
pooling, unshared (locally connected) convs, BatchNorm that fold could not fuse, a neuron's
state read as a tensor (snnTorch's ``output=True`` membrane), and any other op without a
NIR primitive. Every refusal is an `UnsupportedPatternError`.

NIR's neurons fire at ``v > θ`` in the specification while SpikingJelly fires at
``v ≥ θ``; importers that follow SpikingJelly (this module's `import_nir`) reproduce the
deploy model exactly, other toolchains may differ where a membrane lands on ``θ``. Importers
also sum a node's incoming edges in their own order: where three or more branches meet (SEW
residual streams), float32 rounding can differ from the deploy model's order (round trips are
bit-exact on dyadic models; on sew_resnet18 with off-grid weights, 6e-8 relative).
"""

from __future__ import annotations

import logging
import operator
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .atomic import atomic_write
from .errors import UnsupportedPatternError
from .export import as_deploy_model
from .frameworks import Refusal, adapter_for, adapters, identity_types, neuron_adapter, step_output
from .layout import input_layout_of
from .neurons import is_neuron, step_mode_of
from .ops import computed_weight, describe
from .report import compiled_original, record_of
from .state import left_as_is
from .synapses import DiagonalSynapse, UnsharedConv2d
from .tracing import propagate_shapes

if TYPE_CHECKING:
    import nir

__all__ = ["export_nir", "import_nir", "NIR_DT"]

NIR_DT = 1e-4
"""Default time step in seconds: SpikingJelly's ``nir_exchange`` default, shared by most NIR tools."""

_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAXPOOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                  nn.AdaptiveMaxPool3d)
_ONNX_REMEDY = "export_onnx supports this model as it is"

logger = logging.getLogger(__name__)


def _require_nir() -> tuple[Any, Any]:
    try:
        import nir
        import nirtorch
    except ImportError as e:
        raise ImportError(f"NIR export needs the optional packages nir and nirtorch ({e}); "
                          "install them with: pip install 'sj-realspike[nir]'") from None
    return nir, nirtorch


def export_nir(deploy_model: nn.Module, path: str | os.PathLike[str] | None, example_input: torch.Tensor, *,
               dt: float = NIR_DT) -> nir.NIRGraph:
    """Export a deploy model to a NIR graph (and, with ``path``, an HDF5 ``.nir`` file).

    Neuromorphic toolchains (Lava, Norse, Rockpool, Sinabs, Spyx, SpikingJelly…) read NIR.
    A model that is not a deploy model (a converted model with amplitudes, or a plain
    network) is folded first (`sj_realspike.fold`): amplitudes go into the synapse weights
    and BatchNorm into the conv/linear before it, so every spike is binary; a plain network
    whose neurons scale their own spikes (snnTorch's ``graded_spikes_factor``) is converted
    before that, so that the factors go into the weights too. The graph describes one time
    step; shapes exclude the time and batch dims.
    Graph metadata records ``sj_realspike.dt``, ``.step_mode``, ``.spike`` and ``.version``.

    Args:
        deploy_model: the deploy model from `fold` (or a model to fold, see above).
        path: destination file, written atomically; ``None`` to only build the graph.
        example_input: one forward call's input (``[T, N, …]`` for multi-step models,
            ``[N, …]`` for single-step ones); fixes the feature shapes. A single-step model
            also takes the sequence ``[T, N, …]`` that `export_onnx` takes: its first step.
        dt: time step in seconds; LIF time constants become ``τ·dt`` and IF's
            resistance ``1/dt``. Import with the same ``dt``.

    Returns:
        The ``nir.NIRGraph`` (type-checked by ``nir``).

    Raises:
        UnsupportedPatternError: a node NIR cannot express (names the node and why).
        ImportError: ``nir``/``nirtorch`` are not installed (``pip install 'sj-realspike[nir]'``).
        ValueError: ``dt`` is not positive.
    """
    nir, _ = _require_nir()
    deploy_model = compiled_original(deploy_model)
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    example_input = _one_call(deploy_model, example_input)
    with left_as_is(deploy_model):  # a deploy model is used as it is: its live state comes back
        gm = as_deploy_model(_spike_factors_converted(deploy_model, example_input), example_input)
        batch_dims = 2 if step_mode_of(gm) == "m" else 1
        propagate_shapes(gm, example_input)
        graph = _GraphBuilder(gm, batch_dims, dt, nir).build()
    from . import __version__  # at call time: the package sets it after importing this module

    graph.metadata = {"sj_realspike.dt": float(dt), "sj_realspike.step_mode": "m" if batch_dims == 2 else "s",
                      "sj_realspike.spike": "binary", "sj_realspike.version": __version__}
    if path is not None:
        atomic_write(path, lambda tmp: nir.write(tmp, graph))
    return graph


def _one_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x``'s first step if ``model`` is a converted step function given a whole sequence, else ``x``.

    The NIR graph is one time step; `export_onnx` takes the sequence ``[T, N, …]`` of a
    single-step model, so the same input should do here. Only a converted or deploy model
    records how many dims one call takes.
    """
    recorded = record_of(model).get("input_layout")
    if recorded and x.dim() == len(recorded.split(",")) + 1 and input_layout_of(model, x).per_step:
        return x[0]
    return x


def _spike_factors_converted(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """``model``, converted (a copy) if it is a plain network whose neurons scale their own spikes.

    NIR neurons emit {0, 1}: a factor a neuron puts on its spikes (snnTorch's
    ``graded_spikes_factor``) must end up in the weights of the synapses that read them.
    `convert_model` moves it into the neuron's amplitude (the other amplitudes start at 1,
    which folds to nothing), and fold then scales those weights by it, which folding a plain
    network does not. Channel granularity carries a scalar or per-channel factor.
    """
    if record_of(model).get("stage") is not None:
        return model  # converted or deploy: the factors are amplitudes already
    if not any((a := adapter_for(m)) is not None and a.intrinsic_amplitude(m) is not None for m in model.modules()):
        return model
    from .convert import convert_model

    logger.warning("%s scales its spikes itself (graded_spikes_factor): converting a copy first so that fold moves "
                   "the factors into the weights (sj_realspike.convert_model)", type(model).__name__)
    return convert_model(model, example_input, granularity="channel")


def import_nir(graph: nir.NIRGraph | str | os.PathLike[str], *, dt: float = NIR_DT, step_mode: str = "m",
               dtype: torch.dtype = torch.float32, framework: str = "spikingjelly") -> nn.Module:
    """Read a NIR graph back as a model of ``framework`` (its adapter's importer, plus ``Scale``).

    The framework's importer builds the nodes it knows (`FrameworkAdapter.nir_import`);
    ``Scale``, which `export_nir` writes for scaled shortcuts and SpikingJelly's
    ``import_from_nir`` lacks, becomes a `DiagonalSynapse`.
    Useful to check an exported file: the result reproduces the deploy model.

    Args:
        graph: a ``nir.NIRGraph`` or the path of a ``.nir`` file.
        dt: the time step the graph was exported with.
        step_mode: ``'m'`` (inputs ``[T, N, …]``) or ``'s'`` (one step ``[N, …]`` per call).
        dtype: parameter dtype of the model.
        framework: the adapter whose importer builds the model (`FrameworkAdapter.name`);
            SpikingJelly's is the one sj_realspike has.

    Returns:
        SpikingJelly's: a ``GraphModule`` called as ``y, state = model(x, state=None)``
        (nirtorch's convention); pass the returned ``state`` back to continue a single-step run.

    Raises:
        ValueError: a node the framework cannot represent (e.g. non-uniform neuron parameters), or
            no importer for ``framework``.
        ImportError: ``nir``/``nirtorch`` are not installed (``pip install 'sj-realspike[nir]'``).
    """
    nir, _ = _require_nir()
    found = {a.name: a for a in adapters()}
    if framework not in found:
        raise ValueError(f"no framework adapter named {framework!r} (installed: {', '.join(found)})")
    if isinstance(graph, (str, os.PathLike)):
        graph = nir.read(Path(graph))
    try:
        return found[framework].nir_import(graph, {nir.Scale: _import_scale}, dt, step_mode, dtype)
    except Refusal as r:
        raise ValueError(f"{r.reason}: {r.remedy}") from None


def _import_scale(node: Any) -> DiagonalSynapse:
    return DiagonalSynapse(torch.from_numpy(np.asarray(node.scale, dtype=np.float32)))


class _GraphBuilder:
    """One pass over the deploy graph: NIR nodes for compute, edges through additions."""

    def __init__(self, gm: fx.GraphModule, batch_dims: int, dt: float, nir: Any) -> None:
        self.gm, self.b, self.dt, self.nir = gm, batch_dims, dt, nir
        self.modules = dict(gm.named_modules())
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        # fx node -> the NIR nodes whose outputs sum to its value (additions and identities pass through)
        self.sources: dict[fx.Node, list[str]] = {}

    def build(self) -> Any:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "output":
                self._output(node)
            elif node.op == "call_module" and self._returns_state(node):
                self._module(node)  # a Norse neuron or read-out: (out, state); its out is read by getitem 0
            elif not self._is_tensor(node):
                continue  # shape queries and the like: their users are mapped from recorded shapes
            elif node.op == "call_module":
                self._module(node)
            elif self._is_output_item(node):
                self.sources[node] = self.sources[node.args[0]]
            elif self._is_add(node):
                self._add(node)
            elif self._is_reshape(node):
                self._reshape(node)
            elif self._is_state_item(node):
                self._refuse(node, f"it reads item {node.args[1]} of what {describe(node.args[0], self.modules)} "
                                   "returns, the neuron's state (a membrane or current); NIR neurons keep their "
                                   "state inside and emit only spikes",
                             "Use only the neuron's spikes (snnTorch: output=False), or use ONNX "
                             f"({_ONNX_REMEDY})")
            else:
                self._refuse(node, f"{describe(node, self.modules)} has no NIR equivalent",
                             "NIR graphs hold synapses (conv, linear, scale), average pooling, flatten, "
                             f"additions and IF/LIF neurons; restructure the model or use ONNX ({_ONNX_REMEDY})")
        return self.nir.NIRGraph(self.nodes, self.edges, type_check=True)

    # ---------------------------------------------------------------- helpers
    def _refuse(self, node: fx.Node, reason: str, remedy: str) -> NoReturn:
        raise UnsupportedPatternError(node.name, reason, remedy)

    @staticmethod
    def _is_tensor(node: fx.Node) -> bool:
        return "tensor_meta" in node.meta and hasattr(node.meta["tensor_meta"], "shape")

    def _returns_state(self, node: fx.Node) -> bool:
        """A framework module whose call returns ``(out, state)`` (Norse); NIR nodes keep their state themselves."""
        meta = node.meta.get("tensor_meta")
        return (adapter_for(self.modules[node.target]) is not None and type(meta) is tuple and len(meta) == 2
                and hasattr(meta[0], "shape"))

    def _is_output_item(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target is operator.getitem and node.args[1:] == (0,)
                and isinstance(node.args[0], fx.Node) and node.args[0] in self.sources
                and node.args[0].op == "call_module")

    def _is_state_item(self, node: fx.Node) -> bool:
        """An item other than the spikes of what a framework's neuron call returns (snnTorch's ``(spk, mem)``)."""
        source = node.args[0] if node.op == "call_function" and node.target is operator.getitem else None
        return (isinstance(source, fx.Node) and source.op == "call_module"
                and adapter_for(self.modules[source.target]) is not None and node.args[1:] != (0,))

    def _features(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)[self.b:]

    def _input(self, node: fx.Node) -> fx.Node:
        carried = [a for a in node.all_input_nodes if self._is_tensor(a)]
        if len(carried) != 1 or node.args[:1] != (carried[0],):
            self._refuse(node, f"{describe(node, self.modules)} takes {len(carried)} tensor inputs; NIR nodes take one",
                         f"Combine branches by addition only, or use ONNX ({_ONNX_REMEDY})")
        return carried[0]

    def _add_node(self, node: fx.Node, nir_node: Any, source: fx.Node) -> None:
        self.nodes[node.name] = nir_node
        self._connect(self._sources(node, source), node.name)
        self.sources[node] = [node.name]

    def _sources(self, node: fx.Node, source: fx.Node) -> list[str]:
        names = self.sources[source]
        if len(set(names)) != len(names):
            self._refuse(node, f"its input sums the same branch more than once ({', '.join(names)}); "
                               "NIR edges are a set and cannot carry the factor", "Scale the branch with a layer instead")
        return names

    def _connect(self, sources: list[str], target: str) -> None:
        self.edges.extend((s, target) for s in sources)

    # ------------------------------------------------------------------ nodes
    def _placeholder(self, node: fx.Node) -> None:
        if self.nodes and node.args:
            return  # an argument left at its default (a Norse state=None: NIR neurons start from rest)
        if self.nodes:
            self._refuse(node, "the model takes several inputs; this export supports one", "Export a single-input model")
        self.nodes[node.name] = self.nir.Input(input_type=np.array(self._features(node)))
        self.sources[node] = [node.name]

    def _output(self, node: fx.Node) -> None:
        result = step_output(self.gm, node.args[0])  # a step's output without the state it returns
        if not isinstance(result, fx.Node) or not self._is_tensor(result):
            self._refuse(node, "the model returns a container; this export supports one output tensor",
                         "Return a single tensor from forward()")
        names = self._sources(node, result)
        shape = np.array(self._features(result))
        if len(names) > 1:  # importers do not sum at the Output node: a summing junction does
            junction = f"{result.name}_sum"
            self.nodes[junction] = self.nir.Scale(scale=np.ones(shape))
            self._connect(names, junction)
            names = [junction]
        self.nodes["output"] = self.nir.Output(output_type=shape)
        self._connect(names, "output")

    @staticmethod
    def _is_add(node: fx.Node) -> bool:
        return ((node.op == "call_function" and node.target in _ADD_FUNCS)
                or (node.op == "call_method" and node.target == "add")) and "alpha" not in node.kwargs

    def _add(self, node: fx.Node) -> None:
        names = []
        for arg in node.args:
            if not isinstance(arg, fx.Node) or self._features(arg) != self._features(node):
                self._refuse(node, f"{describe(node, self.modules)} adds a constant or broadcasts "
                                   f"({arg if not isinstance(arg, fx.Node) else self._features(arg)} to "
                                   f"{self._features(node)}); NIR sums equal-shaped edges only",
                             "Put constants into a bias and add tensors of equal shape")
            names.extend(self.sources[arg])
        self.sources[node] = names

    @staticmethod
    def _is_reshape(node: fx.Node) -> bool:
        return ((node.op == "call_function" and node.target in _RESHAPE_FUNCS)
                or (node.op == "call_method" and node.target in _RESHAPE_METHODS))

    def _reshape(self, node: fx.Node) -> None:
        source = self._input(node)
        before, after = tuple(source.meta["tensor_meta"].shape), tuple(node.meta["tensor_meta"].shape)
        if before[:self.b] != after[:self.b]:
            self._refuse(node, f"{describe(node, self.modules)} reshapes {before} to {after}, mixing the time/batch "
                               "dims with the features", f"Reshape only the feature dims (torch.flatten(x, {self.b}))")
        if before == after:
            self.sources[node] = self.sources[source]
            return
        dims = _flatten_dims(before[self.b:], after[self.b:])
        if dims is None:
            self._refuse(node, f"{describe(node, self.modules)} reshapes features {before[self.b:]} to "
                               f"{after[self.b:]}, which is not a flatten; NIR has only Flatten",
                         "Flatten contiguous feature dims instead")
        self._add_node(node, self.nir.Flatten(input_type={"input": np.array(before[self.b:])}, start_dim=dims[0],
                                              end_dim=dims[1]), source)

    def _module(self, node: fx.Node) -> None:
        m = self.modules[node.target]
        what = describe(node, self.modules)
        if isinstance(m, _IDENTITY_MODULES) or isinstance(m, identity_types()):
            self.sources[node] = self.sources[self._input(node)]
            return
        if isinstance(m, nn.Flatten):
            self._reshape(node)
            return
        source = self._input(node)
        if is_neuron(m) or self._returns_state(node):
            nir_node = self._neuron(node, m, what, source)
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and (computed := computed_weight(m)) is not None:
            self._refuse(node, f"{what} {computed}: a NIR layer holds the weight it applies",
                         "Use a plain Conv2d/Linear (or export to ONNX, which runs the layer's own forward)")
        elif isinstance(m, nn.Linear):
            if len(self._features(source)) != 1:
                self._refuse(node, f"{what} acts on the last dim of features {self._features(source)}; "
                                   "NIR's Linear takes a vector", "Flatten the features before the Linear layer")
            w = _np(m.weight)
            nir_node = self.nir.Linear(weight=w) if m.bias is None else self.nir.Affine(weight=w, bias=_np(m.bias))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nir_node = self._conv(node, m, source, what)
        elif isinstance(m, DiagonalSynapse):
            # a ⊙ s into a membrane: the Hadamard product NIR calls Scale, over the whole feature shape
            scale = torch.broadcast_to(m.weight.detach(), self._features(source))
            nir_node = self.nir.Scale(scale=_np(scale))
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            nir_node = self._avgpool(node, m, source, what)
        else:
            self._refuse(node, self._module_reason(m, what), self._module_remedy(m))
        self._add_node(node, nir_node, source)

    def _module_reason(self, m: nn.Module, what: str) -> str:
        if isinstance(m, _MAXPOOL_TYPES):
            return f"{what}: NIR has no max pooling"
        if isinstance(m, UnsharedConv2d):
            return f"{what} is an unshared (locally connected) convolution, which NIR cannot express"
        if isinstance(m, _BN_TYPES):
            return f"{what} is a BatchNorm that fold could not fuse into a preceding conv/linear; NIR has no BatchNorm"
        return f"{what} has no NIR equivalent"

    @staticmethod
    def _module_remedy(m: nn.Module) -> str:
        if isinstance(m, _MAXPOOL_TYPES):
            return f"Use average pooling for neuromorphic targets, or ONNX ({_ONNX_REMEDY})"
        if isinstance(m, UnsharedConv2d):
            return ("It comes from an element-wise amplitude feeding a conv: use channel or layer granularity "
                    f"for that neuron, or ONNX ({_ONNX_REMEDY})")
        if isinstance(m, _BN_TYPES):
            return "Place BatchNorm right after a conv/linear whose only user it is, so fold can fuse it"
        return f"Use conv/linear/average-pooling layers and IF/LIF/PLIF neurons, or ONNX ({_ONNX_REMEDY})"

    def _neuron(self, node: fx.Node, m: nn.Module, what: str, source: fx.Node) -> Any:
        try:  # each framework maps its own neurons (and read-outs)
            return (neuron_adapter(m) or adapter_for(m)).nir_node(m, self.nir, self._features(source), self.dt)
        except Refusal as r:
            self._refuse(node, f"{what}: {r.reason}", r.remedy)

    def _conv(self, node: fx.Node, m: nn.Conv1d | nn.Conv2d, source: fx.Node, what: str) -> Any:
        if m.padding_mode != "zeros":
            self._refuse(node, f"{what} pads with {m.padding_mode!r}; NIR convolutions pad with zeros",
                         f"Use zero padding, or ONNX ({_ONNX_REMEDY})")
        # nir's type check reads a conv's input channels from weight.shape[1] and SpikingJelly's
        # importer refuses groups: a grouped conv goes out as the equal dense conv (zero blocks)
        w = _np(_dense_groups(m.weight.detach(), m.groups))
        bias = _np(m.bias) if m.bias is not None else np.zeros(w.shape[0], dtype=w.dtype)
        spatial = self._features(source)[1:]
        if isinstance(m, nn.Conv1d):
            padding = m.padding if isinstance(m.padding, str) else m.padding[0]
            return self.nir.Conv1d(input_shape=spatial[0], weight=w, stride=m.stride[0], padding=padding,
                                   dilation=m.dilation[0], groups=1, bias=bias)
        return self.nir.Conv2d(input_shape=spatial, weight=w, stride=m.stride, padding=m.padding,
                               dilation=m.dilation, groups=1, bias=bias)

    def _avgpool(self, node: fx.Node, m: nn.Module, source: fx.Node, what: str) -> Any:
        hw = self._features(source)[-2:]
        if isinstance(m, nn.AdaptiveAvgPool2d):
            out = self._features(node)[-2:]
            if any(i % o for i, o in zip(hw, out)):
                self._refuse(node, f"{what} pools {hw} to {out}, windows of unequal size; NIR's AvgPool2d has one kernel",
                             "Choose an input size divisible by the output size, or use AvgPool2d")
            kernel = stride = tuple(i // o for i, o in zip(hw, out))
            padding = (0, 0)
        else:
            if m.ceil_mode or m.divisor_override is not None or (np.any(m.padding) and not m.count_include_pad):
                self._refuse(node, f"{what} uses ceil_mode, divisor_override or padding excluded from the average, "
                                   "which NIR's AvgPool2d does not represent", "Use plain average pooling")
            kernel, stride, padding = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        return self.nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _dense_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ungrouped conv weight ``[O, C, k…]`` equal to a grouped one ``[O, C/g, k…]`` (zeros across groups)."""
    if groups == 1:
        return weight
    out, per_group = weight.shape[0] // groups, weight.shape[1]
    dense = weight.new_zeros(weight.shape[0], per_group * groups, *weight.shape[2:])
    for g in range(groups):
        dense[g * out:(g + 1) * out, g * per_group:(g + 1) * per_group] = weight[g * out:(g + 1) * out]
    return dense


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _flatten_dims(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[int, int] | None:
    """``(start, end)`` such that flattening dims ``start..end`` of ``before`` gives ``after``, if any."""
    for start in range(len(before)):
        for end in range(start, len(before)):
            size = int(np.prod(before[start:end + 1]))
            if before[:start] + (size,) + before[end + 1:] == after:
                return start, end
    return None
