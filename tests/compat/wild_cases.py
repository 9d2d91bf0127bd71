"""Networks written by others, for the matrix's third table: one `Case` each.

- every network of `wild.WILD` (papers' idioms and SpikingJelly's examples at toy size);
- the networks of SpikingJelly's example scripts themselves, imported from
  ``spikingjelly.activation_based.examples`` where that module imports without extra
  packages (spiking_dqn_state needs gym: `wild.DQSN` reproduces it; spiking_lstm_text defines
  its net inside ``main``: reproduced here; classify_dvsg builds the zoo's DVSGestureNet);
- `wild.NeuronSwapNet` (a small conv net) with each SpikingJelly neuron type that `wild.WILD`
  does not already swap in, and `SingleStepSwapNet` for neurons that train in single-step mode only.

`NOT_SWAPPED` says why the remaining classes of ``spikingjelly.activation_based.neuron`` are
not swapped into a conv net; `unlisted_neurons` checks the installed package against both.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, rnn, surrogate
from spikingjelly.activation_based.examples import (cifar10_r11_enabling_spikebased_backpropagation, conv_fashion_mnist,
                                                    lif_fc_mnist, rsnn_sequential_fmnist, speech_commands,
                                                    spiking_lstm_sequential_mnist)
from spikingjelly.activation_based.model import parametric_lif_net

from cases import N, T, Case, dyadic, image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: wild.py
import wild  # noqa: E402

_FAMILY = {
    "spikformer": "transformers", "fused_qkv_attention": "transformers", "qkformer": "transformers",
    "ms_resnet": "MS-ResNets", "ms_resnet_seq": "MS-ResNets", "ms_resnet_mem_update": "MS-ResNets",
    "sew_resnet_add": "SeqToANNContainer/SEW", "sew_resnet_iand": "SeqToANNContainer/SEW",
    "sew_resnet_reset_in_forward": "SeqToANNContainer/SEW",
    "ilif": "neuron types", "liaf_multi_step": "neuron types", "analog_surrogate": "neuron types",
    "charge_only_readout": "neuron types", "ottt": "neuron types", "psn": "neuron types",
    "masked_psn": "neuron types", "sliding_psn": "neuron types", "gated_lif": "neuron types",
}
_SINGLE_STEP = {"ottt", "charge_only_readout"}  # one call is one time step; the user loops over T outside


def _wild(name: str) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build():
        net, x = wild.WILD[name].build()
        x = dyadic(x)
        if name in _SINGLE_STEP:
            x = torch.stack([x, x.flip(0)])  # two steps, the batch order reversed in the second
        return net, x
    return build


class SingleStepSwapNet(nn.Module):
    """`wild.NeuronSwapNet` in single-step layers (``layer.*`` modules, one call per time step) on ``[N, 2, 8, 8]``,
    for neurons that train in single-step mode only."""

    def __init__(self, neuron_factory: Callable[[int], nn.Module], channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            layer.Conv2d(2, channels, 3, 1, 1, bias=False), layer.BatchNorm2d(channels), neuron_factory(channels),
            layer.Conv2d(channels, channels, 3, 2, 1, bias=False), layer.BatchNorm2d(channels),
            neuron.LIFNode(tau=2.0), layer.Flatten(), layer.Linear(channels * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _swap(factory: Callable[[int], nn.Module], single_step: bool = False):
    def build():
        if single_step:
            x = image(T, N, 2, 8, 8)
            net = SingleStepSwapNet(factory)
            wild.prime(net, x[0])
            return net, x
        net = wild.NeuronSwapNet(factory)
        x = image(T, N, 2, 8, 8)
        return wild.prime(net, x), x
    return build


def _step_mode_m(node: nn.Module) -> nn.Module:
    node.step_mode = "m"  # CUBALIFNode's constructor takes no step_mode
    return node


# Neuron classes swapped in at sn1 of a conv net: name -> (factory(channels), single-step net?, config).
SWAPS: dict[str, tuple[Callable[[int], nn.Module], bool, str]] = {
    "IFNode": (lambda c: neuron.IFNode(step_mode="m"), False, ""),
    "LIFNode": (lambda c: neuron.LIFNode(tau=2.0, step_mode="m"), False, "tau=2"),
    "LIFNode (soft reset)": (lambda c: neuron.LIFNode(tau=2.0, v_reset=None, step_mode="m"), False, "v_reset=None"),
    "LIFNode (decay_input=False)": (lambda c: neuron.LIFNode(tau=2.0, decay_input=False, step_mode="m"), False, ""),
    "ParametricLIFNode": (lambda c: neuron.ParametricLIFNode(step_mode="m"), False, ""),
    "QIFNode": (lambda c: neuron.QIFNode(step_mode="m"), False, "v_reset=-0.1"),
    "EIFNode": (lambda c: neuron.EIFNode(step_mode="m"), False, "v_reset=-0.1"),
    "IzhikevichNode": (lambda c: neuron.IzhikevichNode(step_mode="m"), False, ""),
    "KLIFNode": (lambda c: neuron.KLIFNode(step_mode="m"), False, ""),
    "ComplementaryLIFNode (CLIF)": (lambda c: neuron.ComplementaryLIFNode(step_mode="m"), False, ""),
    "CUBALIFNode": (lambda c: _step_mode_m(neuron.CUBALIFNode()), False, "step_mode set after construction"),
    "HalfThresholdIFNode": (lambda c: neuron.HalfThresholdIFNode(step_mode="m"), False, ""),
    "MPBNLIFNode": (lambda c: neuron.MPBNLIFNode(out_channels=c, step_mode="m"), False, "out_channels=4"),
    "RAFNode": (lambda c: neuron.RAFNode(step_mode="m"), False, ""),
    "TernaryIFNode": (lambda c: neuron.TernaryIFNode(step_mode="m"), False, "SpikingJelly's own ternary neuron"),
    "TernaryLIFNode": (lambda c: neuron.TernaryLIFNode(step_mode="m"), False, "SpikingJelly's own ternary neuron"),
    "SimpleIFNode": (lambda c: neuron.SimpleIFNode(step_mode="m"), False, "not a BaseNode"),
    "SimpleLIFNode": (lambda c: neuron.SimpleLIFNode(tau=2.0, decay_input=True, step_mode="m"), False,
                      "not a BaseNode"),
    "ActivationAwareIFNode": (lambda c: neuron.ActivationAwareIFNode(channel_dim=2, step_mode="m"), False,
                              "channel_dim=2"),
    "DSRIFNode": (lambda c: neuron.DSRIFNode(T=T), False, "T=2; emits v_threshold-sized spikes"),
    "DSRLIFNode": (lambda c: neuron.DSRLIFNode(T=T), False, "T=2"),
    "SLTTLIFNode": (lambda c: neuron.SLTTLIFNode(), True, "single-step net (SLTT trains in single-step mode only)"),
}

# Classes of spikingjelly.activation_based.neuron that no conv-net row swaps in, and why.
NOT_SWAPPED: dict[str, str] = {
    "BaseNode": "abstract base class", "MPBNBaseNode": "abstract base class", "AdaptBaseNode": "abstract base class",
    "SimpleBaseNode": "abstract base class", "NonSpikingBaseNode": "abstract base class",
    "ILIFNode": "wild 'ilif'", "LIAFNode": "wild 'liaf_multi_step'", "OTTTLIFNode": "wild 'ottt'",
    "PSN": "wild 'psn'", "MaskedPSN": "wild 'masked_psn'", "SlidingPSN": "wild 'sliding_psn'",
    "GatedLIFNode": "wild 'gated_lif'",
    "NonSpikingIFNode": "a read-out that decodes a whole sequence into one tensor (no spikes; wild 'dqsn' and "
                        "'charge_only_readout' cover membrane read-outs)",
    "NonSpikingLIFNode": "as NonSpikingIFNode",
    "STBIFNode": "ANN-to-SNN inference neuron: its transitions do not support autograd",
    "FewSpikeNode": "ANN-to-SNN few-spike coding: needs a table fitted to an activation",
    "HGNode": "as FewSpikeNode", "OutlierAwareThresholdNode": "as FewSpikeNode",
    "FlexSN": "a template for user-written neuron dynamics (a core function compiled by Triton), no fixed dynamics",
    "ILCBaseNode": "population-coded RL actor neuron (act_dim x dec_pop_dim outputs, spiking_a2c/ppo examples)",
    "ILCIFNode": "as ILCBaseNode", "ILCLIFNode": "as ILCBaseNode", "ILCCUBALIFNode": "as ILCBaseNode",
    "NoisyBaseNode": "noisy RL exploration neuron with a fixed num_node (noisy_san example)",
    "NoisyCUBALIFNode": "as NoisyBaseNode", "NoisyILCBaseNode": "as NoisyBaseNode",
    "NoisyILCCUBALIFNode": "as NoisyBaseNode", "NoisyNonSpikingBaseNode": "as NoisyBaseNode",
    "NoisyNonSpikingIFNode": "as NoisyBaseNode",
}


def unlisted_neurons() -> list[str]:
    """Module classes of the installed ``spikingjelly.activation_based.neuron`` in neither `SWAPS` nor `NOT_SWAPPED`."""
    swapped = {name.split(" ")[0] for name in SWAPS}
    return sorted(n for n, c in vars(neuron).items()
                  if inspect.isclass(c) and issubclass(c, nn.Module) and n not in swapped | set(NOT_SWAPPED))


class SpikingLSTMText(nn.Module):
    """spiking_lstm_text's ``Net`` (defined inside its ``main``): ``rnn.SpikingLSTM`` → Linear on the last step
    → softmax, on ``[T, N, n_letters]``; 16 hidden units instead of 256."""

    def __init__(self, n_letters: int = 8, n_hidden: int = 16, n_categories: int = 3) -> None:
        super().__init__()
        self.lstm = rnn.SpikingLSTM(n_letters, n_hidden, 1)
        self.fc = nn.Linear(n_hidden, n_categories)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(x)
        return torch.softmax(self.fc(x[-1]), dim=1)


def _r11():
    net = cifar10_r11_enabling_spikebased_backpropagation.ResNet11()
    for m in net.modules():  # the script's training loop sets each LIF's gradient scale before backward
        if hasattr(m, "new_grad"):
            m.new_grad = torch.tensor(1.0)
    return net, image(T, N, 3, 32, 32)


def _multi_step(net: nn.Module) -> nn.Module:
    functional.set_step_mode(net, "m")
    return net


_EXAMPLES = "SpikingJelly example"
EXAMPLE_CASES: list[Case] = [
    Case("conv_fashion_mnist.CSNN", f"{_EXAMPLES} conv_fashion_mnist", "others",
         lambda: (conv_fashion_mnist.CSNN(T=T, channels=4), image(N, 1, 28, 28)),
         "CSNN(T=2, channels=4): [N, 1, 28, 28] expanded to T steps inside forward", neuron="IF"),
    Case("lif_fc_mnist.SNN", f"{_EXAMPLES} lif_fc_mnist", "others",
         lambda: (lif_fc_mnist.SNN(tau=2.0), image(T, N, 1, 28, 28)),
         "SNN(tau=2.0), single-step: the script loops over T (Poisson-encoded frames)", single_step=True),
    Case("rsnn_sequential_fmnist.PlainNet", f"{_EXAMPLES} rsnn_sequential_fmnist", "others",
         lambda: (_multi_step(rsnn_sequential_fmnist.PlainNet()), image(T, N, 28)),
         "multi-step, image rows as time steps [T, N, 28]", neuron="IF"),
    Case("rsnn_sequential_fmnist.StatefulSynapseNet", f"{_EXAMPLES} rsnn_sequential_fmnist", "others",
         lambda: (_multi_step(rsnn_sequential_fmnist.StatefulSynapseNet()), image(T, N, 28)),
         "multi-step, SynapseFilter between IF and Linear, [T, N, 28]", neuron="IF"),
    Case("rsnn_sequential_fmnist.FeedBackNet", f"{_EXAMPLES} rsnn_sequential_fmnist", "others",
         lambda: (_multi_step(rsnn_sequential_fmnist.FeedBackNet()), image(T, N, 28)),
         "multi-step, LinearRecurrentContainer (spikes fed back through a Linear), [T, N, 28]", neuron="IF"),
    Case("speech_commands.Net", f"{_EXAMPLES} speech_commands", "others",
         lambda: (speech_commands.Net(), image(N, speech_commands.delta_order + 1, T, speech_commands.n_mels)),
         "Net() (64 channels, 40 mel bins fixed): [N, 1, T, 40]; LIFs on x.transpose(0, 2)"),
    Case("classify_dvsg: DVSGestureNet", f"{_EXAMPLES} classify_dvsg", "others",
         lambda: (_multi_step(parametric_lif_net.DVSGestureNet(
             channels=8, spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(), detach_reset=True)),
             image(T, N, 2, 128, 128)),
         "as the script builds it (LIFNode, ATan, detach_reset) with channels=8 instead of 128, [T, N, 2, 128, 128]"),
    Case("cifar10_r11.ResNet11", f"{_EXAMPLES} cifar10_r11_enabling_spikebased_backpropagation", "others", _r11,
         "ResNet11(): the script's own neuron classes (nn.Module, not SpikingJelly), single-step; new_grad=1 set "
         "as its training loop does", neuron="the script's LIF/IF", single_step=True),
    Case("spiking_lstm_sequential_mnist.Net", f"{_EXAMPLES} spiking_lstm_sequential_mnist", "others",
         lambda: (spiking_lstm_sequential_mnist.Net(), image(T, N, 28)),
         "Net(): rnn.SpikingLSTM(28, 1024, 1) → Linear on the last step, [T, N, 28]", neuron="SpikingLSTM"),
    Case("spiking_lstm_text: Net (reproduced)", f"{_EXAMPLES} spiking_lstm_text", "others",
         lambda: (SpikingLSTMText(), image(T, N, 8)),
         "reproduced (defined inside main): SpikingLSTM(8, 16, 1) → Linear → softmax, [T, N, 8]",
         neuron="SpikingLSTM"),
]

WILD_CASES: list[Case] = [
    *[Case(name, "tests/wild.py", _FAMILY.get(name, "others"), _wild(name), wild.WILD[name].notes.split(". ")[0],
           neuron="", single_step=name in _SINGLE_STEP) for name in wild.WILD],
    *EXAMPLE_CASES,
    *[Case(f"NeuronSwapNet + {name}", "SpikingJelly neuron types", "neuron types", _swap(factory, single),
           f"{'SingleStepSwapNet' if single else 'wild.NeuronSwapNet'}: conv → {name.split(' ')[0]} → conv → LIF → "
           f"Linear{'; ' + config if config else ''}", neuron=name.split(" ")[0], single_step=single)
      for name, (factory, single, config) in SWAPS.items()],
]
