"""NIR export: folded real-spike nets round-trip through a .nir file bit for bit; refusals name the node."""

from __future__ import annotations

import nets
import numpy as np
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

import sj_realspike as rs
from sj_realspike.testing import firing_rate, make_dyadic, run

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")


class GroupNet(nn.Module):
    """Grouped conv, average pooling, and a LIF with decay_input=False and a non-zero reset."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.sn1 = layer.Conv2d(3, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8), \
            neuron.LIFNode(tau=2.0)
        self.conv2, self.bn2 = layer.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), layer.BatchNorm2d(8)
        self.sn2 = neuron.LIFNode(tau=2.0, decay_input=False, v_reset=-0.5, v_threshold=0.5)
        self.pool, self.flatten, self.fc = layer.AvgPool2d(2), layer.Flatten(), layer.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x)))))))))


def _deploy(net: nn.Module, x: torch.Tensor, **convert) -> tuple[nn.Module, nn.Module]:
    model = rs.convert_model(net, x, **convert)
    make_dyadic(model, x)  # exact fp32 arithmetic, calibrated firing, random (also negative) amplitudes
    return model, rs.fold(model)


def _node_types(graph) -> set[str]:
    return {type(n).__name__ for n in graph.nodes.values()}


@pytest.mark.parametrize("net_name, neuron_name, expected", [
    ("shortcut", "LIF", {"Scale", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine"}),  # shortcut into a membrane
    ("sum", "IF", {"Scale", "Conv2d", "IF", "AvgPool2d", "Flatten"}),  # SEW sums, branches summed at the output
    ("mlp", "PLIF", {"Affine", "LIF", "Flatten"}),  # Linear+BatchNorm1d fused into Affine, learned tau
])
def test_folded_real_spike_net_round_trips_bit_exact(tmp_path, net_name, neuron_name, expected):
    x = nets.example("m")
    _, deploy = _deploy(nets.custom(net_name, neuron_name), x, granularity="channel")
    assert firing_rate(deploy, x) > 0.1  # the comparison is not vacuous
    path = tmp_path / "model.nir"
    graph = rs.export_nir(deploy, path, x)
    assert expected <= _node_types(graph)
    read = nir.read(path)
    assert read.metadata["sj_realspike.spike"] == "binary"
    assert float(read.metadata["sj_realspike.dt"]) == rs.NIR_DT
    imported = rs.import_nir(read, step_mode="m")
    y, _ = imported(x)
    assert torch.equal(y, run(deploy, x))  # dyadic model: every fp32 op exact, so equal bit for bit


def test_grouped_conv_and_lif_conventions_round_trip_through_spikingjelly(tmp_path):
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = GroupNet()
    functional.set_step_mode(net, "m")
    x = nets.example("m")
    model, deploy = _deploy(net, x, granularity="channel")
    assert firing_rate(deploy, x) > 0.1
    graph = rs.export_nir(model, tmp_path / "g.nir", x)  # a converted model is folded first
    # the grouped conv goes out dense: groups=1 and zero blocks across the two groups
    conv2 = graph.nodes["conv2__sn1"]
    assert int(conv2.groups) == 1 and conv2.weight.shape == (8, 8, 3, 3)
    assert not conv2.weight[:4, 4:].any() and not conv2.weight[4:, :4].any() and conv2.weight[:4, :4].any()
    # SpikingJelly's conventions: tau·dt, r = 1 (decay_input) or tau, v_leak = v_reset
    sn1, sn2 = graph.nodes["sn1"], graph.nodes["sn2"]
    assert np.all(sn1.tau == 2.0 * rs.NIR_DT) and np.all(sn1.r == 1.0) and np.all(sn1.v_leak == 0.0)
    assert np.all(sn2.r == 2.0) and np.all(sn2.v_leak == -0.5) and np.all(sn2.v_reset == -0.5)
    assert np.all(sn2.v_threshold == 0.5) and sn2.tau.shape == (8, 16, 16)
    y, _ = import_from_nir(tmp_path / "g.nir", step_mode="m")(x)  # no Scale: SpikingJelly's own importer
    assert torch.equal(y, run(deploy, x))


def test_single_step_model_round_trips_step_by_step():
    xs = nets.example("m")
    _, deploy = _deploy(nets.custom("shortcut", "IF", "s"), xs[0], granularity="layer")
    imported = rs.import_nir(rs.export_nir(deploy, None, xs[0]), step_mode="s")
    state, ys = None, []
    for xt in xs:
        y, state = imported(xt, state)
        ys.append(y)
    assert torch.equal(torch.stack(ys), run(deploy, xs, steps=True))


def test_a_single_step_model_given_the_whole_sequence_exports_its_first_step():
    # export_onnx takes a step function's [T, N, ...] sequence; export_nir refused it, blaming a Linear.
    xs = nets.example("m")
    _, deploy = _deploy(nets.custom("mlp", "LIF", "s"), xs[0])
    one, whole = rs.export_nir(deploy, None, xs[0]), rs.export_nir(deploy, None, xs)
    assert one.nodes.keys() == whole.nodes.keys()
    for key, node in one.nodes.items():
        assert type(node) is type(whole.nodes[key])
        assert all(np.array_equal(a, b) for a, b in zip(node.input_type.values(), whole.nodes[key].input_type.values(),
                                                        strict=True))


def test_import_nir_asks_the_named_framework_adapter_and_refuses_one_without_an_importer():
    from sj_realspike.frameworks import adapters

    x = nets.example("m")
    _, deploy = _deploy(nets.custom("shortcut", "LIF"), x, granularity="channel")
    graph = rs.export_nir(deploy, None, x)
    imported = rs.import_nir(graph, step_mode="m", framework="spikingjelly")
    assert any(isinstance(m, neuron.LIFNode) for m in imported.modules())  # SpikingJelly's own neurons
    assert any(isinstance(m, rs.DiagonalSynapse) for m in imported.modules())  # Scale, added by import_nir
    with pytest.raises(ValueError, match=r"no framework adapter named 'sinabs' \(installed: spikingjelly"):
        rs.import_nir(graph, framework="sinabs")
    others = [a.name for a in adapters() if a.name != "spikingjelly"]
    if others:  # snnTorch and Norse keep their own importers
        with pytest.raises(ValueError, match=f"sj_realspike has no NIR importer for {others[0]}"):
            rs.import_nir(graph, framework=others[0])


def _plain(*modules: nn.Module) -> nn.Module:
    net = nn.Sequential(*modules)
    functional.set_step_mode(net, "m")
    return net


@pytest.mark.parametrize("build, convert, match", [
    (lambda: nets.custom("pool", "LIF"), {}, r"node 'features_14'.*MaxPool2d.*NIR has no max pooling"),
    (lambda: nets.custom("shortcut", "LIF"), {"spike": "ternary"}, r"node 'stem_2'.*TernaryLIFNode.*ternary spikes"),
    (lambda: nets.custom("shortcut", "LIF-soft"), {}, r"node 'stem_2'.*soft reset"),
    (lambda: nets.custom("shortcut", "LIF"), {"granularity": "element"},
     r"node 'conv1__stem_2'.*UnsharedConv2d.*unshared \(locally connected\).*channel or layer granularity"),
])
def test_what_nir_cannot_express_is_refused_naming_the_node(tmp_path, build, convert, match):
    x = nets.example("m")
    model = rs.convert_model(build(), x, **convert)
    path = tmp_path / "refused.nir"
    with pytest.raises(rs.UnsupportedPatternError, match=match):
        rs.export_nir(model, path, x)
    assert not path.exists()


def test_unfusable_batchnorm_and_unknown_ops_are_refused():
    x = nets.example("m")
    after_neuron = _plain(layer.Conv2d(3, 4, 3), neuron.IFNode(), layer.BatchNorm2d(4), layer.Conv2d(4, 4, 3))
    with pytest.raises(rs.UnsupportedPatternError, match=r"node '_2'.*BatchNorm that fold could not fuse"):
        rs.export_nir(after_neuron, None, x)

    class Sigmoid(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(rs.UnsupportedPatternError, match=r"node 'sigmoid'.*no NIR equivalent"):
        rs.export_nir(_plain(layer.Conv2d(3, 4, 3), neuron.IFNode(), Sigmoid()), None, x)
    with pytest.raises(ValueError, match="dt must be positive"):
        rs.export_nir(_plain(layer.Conv2d(3, 4, 3), neuron.IFNode()), None, x, dt=0.0)


def test_export_leaves_a_deploy_models_live_state_as_it_was():
    # A deploy model is used as it is: export_nir reset its membranes (v -> 0.0) and v_seq (-> None).
    net = nn.Sequential(layer.Linear(8, 6), neuron.LIFNode(tau=2.0, store_v_seq=True), layer.Linear(6, 3))
    functional.set_step_mode(net, "m")
    x = torch.rand(3, 2, 8) * 4
    deploy = rs.fold(rs.convert_model(net, x))
    with torch.no_grad():
        deploy(x)  # mid-stream
    sn = deploy.get_submodule("1")
    v, v_seq = sn.v, sn.v_seq
    rs.export_nir(deploy, None, x)
    assert sn.v is v and sn.v_seq is v_seq
