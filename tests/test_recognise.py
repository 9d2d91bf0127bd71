"""recognise: which modules fire, and whether they emit binary/ternary spikes (every SpikingJelly neuron type)."""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import encoding, functional, layer, neuron, surrogate

from sj_realspike.frameworks.spikingjelly import TernaryParametricLIFNode
from sj_realspike.recognise import is_spiking_module, spike_output_problem

T, N, F = 2, 2, 8


def ramp(*shape: int, lo: float = -0.5, hi: float = 3.5) -> torch.Tensor:
    """A deterministic input on a grid from ``lo`` to ``hi``: strong enough to make every neuron fire."""
    n = 1
    for s in shape:
        n *= s
    return torch.linspace(lo, hi, n).reshape(shape)


def multi() -> torch.Tensor:
    return ramp(T, N, F)


def single() -> torch.Tensor:
    return ramp(N, F)


def signed() -> torch.Tensor:
    return ramp(T, N, F, lo=-3.0, hi=3.0)


def sg() -> surrogate.Sigmoid:
    return surrogate.Sigmoid()


def flexsn_lif(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A FlexSN core: IF charge, fire at 1, hard reset (as in SpikingJelly's FlexSN example)."""
    h = v + x
    s = surrogate.heaviside(h - 1.0)
    return s, h * (1.0 - s)


def flexsn_with_v(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A FlexSN core that also returns its membrane as a second output."""
    h = v + x
    s = surrogate.heaviside(h - 1.0)
    return s, h, h * (1.0 - s)


class ChargeOnlyLIF(neuron.LIFNode):
    """A NonSpikingLIF in the style public repositories write it: charge, never fire, return v."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v if isinstance(self.v, torch.Tensor) else torch.full_like(x, self.v)
        self.v = v + (x - v) / self.tau
        return self.v


class SummingLIF(neuron.LIFNode):
    """A neuron that returns its spike count over time (drops T)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(x_seq).sum(0)


class DoubleSpikeLIF(neuron.LIFNode):
    """Spikes of height 2 (a hard-coded amplitude)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


class NaNLIF(neuron.LIFNode):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.tensor(float("nan"))


class EvalMembraneLIF(neuron.LIFNode):
    """Spikes in training mode, the membrane potential in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spike = super().forward(x)
        return spike if self.training else self.v


class Locked(neuron.LIFNode):
    """A neuron that cannot be deep-copied (holds a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def few_spike_table() -> neuron.FewSpikeTable:
    return neuron.FewSpikeTable([1.0, 0.5], [1.0, 0.5], [1.0, 0.5])


# name -> (module factory, sample factory): the module emits binary (or, for its class, ternary) spikes.
SPIKING: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "IFNode-m": (lambda: neuron.IFNode(step_mode="m"), multi),
    "IFNode-s": (lambda: neuron.IFNode(), single),
    "IFNode-soft": (lambda: neuron.IFNode(v_reset=None, step_mode="m"), multi),
    "LIFNode-m": (lambda: neuron.LIFNode(tau=2.0, step_mode="m"), multi),
    "LIFNode-s": (lambda: neuron.LIFNode(tau=2.0), single),
    "ParametricLIFNode": (lambda: neuron.ParametricLIFNode(step_mode="m"), multi),
    "QIFNode": (lambda: neuron.QIFNode(step_mode="m"), multi),
    "EIFNode": (lambda: neuron.EIFNode(step_mode="m"), multi),
    "IzhikevichNode": (lambda: neuron.IzhikevichNode(step_mode="m"), multi),
    "KLIFNode": (lambda: neuron.KLIFNode(step_mode="m"), multi),
    "ComplementaryLIFNode": (lambda: neuron.ComplementaryLIFNode(step_mode="m"), multi),
    "CUBALIFNode": (lambda: neuron.CUBALIFNode(), single),
    "RAFNode": (lambda: neuron.RAFNode(step_mode="m"), lambda: ramp(T, N, F, lo=0.0, hi=10.0)),
    "HalfThresholdIFNode": (lambda: neuron.HalfThresholdIFNode(step_mode="m"), multi),
    "MPBNLIFNode": (lambda: neuron.MPBNLIFNode(out_features=F, step_mode="m"), multi),
    "SimpleIFNode": (lambda: neuron.SimpleIFNode(), single),
    "SimpleLIFNode": (lambda: neuron.SimpleLIFNode(tau=2.0, decay_input=True), single),
    "SLTTLIFNode": (lambda: neuron.SLTTLIFNode(), single),
    # SpikingJelly's multi-step LIAF runs LIFNode's fused kernel: binary spikes, unlike single-step.
    "LIAFNode-m": (lambda: neuron.LIAFNode(act=nn.ReLU(), threshold_related=False, step_mode="m"), multi),
    "ActivationAwareIFNode": (lambda: neuron.ActivationAwareIFNode(step_mode="m"), multi),
    "ILCIFNode": (lambda: neuron.ILCIFNode(act_dim=2, dec_pop_dim=4), multi),
    "PSN": (lambda: neuron.PSN(T=T), multi),
    "MaskedPSN": (lambda: neuron.MaskedPSN(k=2, T=T, step_mode="m"), multi),
    "SlidingPSN": (lambda: neuron.SlidingPSN(k=2, step_mode="m"), multi),
    "GatedLIFNode": (lambda: neuron.GatedLIFNode(T=T, inplane=4), lambda: ramp(T, N, 4, 3, 3)),
    "FlexSN": (lambda: neuron.FlexSN(core=flexsn_lif, num_states=1, step_mode="m"), multi),
    "TernaryIFNode": (lambda: neuron.TernaryIFNode(step_mode="m"), signed),
    "TernaryLIFNode": (lambda: neuron.TernaryLIFNode(step_mode="m"), signed),
    "TernaryParametricLIFNode": (lambda: TernaryParametricLIFNode(step_mode="m"), signed),
}

# name -> (module factory, sample factory, expected reason: a full regex).
NOT_SPIKES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], str]] = {
    "ILIFNode": (lambda: neuron.ILIFNode(step_mode="m"), lambda: ramp(T, N, F, lo=0.0, hi=6.0),
                 r"ILIFNode emits values \{0, 1, 2, 3, 4\} \(spike counts\), not binary spikes"),
    "OTTTLIFNode": (lambda: neuron.OTTTLIFNode(), single,
                    r"OTTTLIFNode returns a list of 2 values \[tensor \[2, 8\], tensor \[2, 8\]\] "
                    r"in training mode, not one spike tensor"),
    "LIAFNode-s": (lambda: neuron.LIAFNode(act=nn.ReLU(), threshold_related=False), single,
                   r"LIAFNode outputs real values \(\d+ distinct, in \[0, [\d.]+\]: "
                   r"a membrane potential or an analog activation\?\), not spikes"),
    "LIFNode-spiking=False": (lambda: neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False),
                                                     step_mode="m"), multi,
                              r"LIFNode outputs real values \(.*\), not spikes"),
    "ChargeOnlyLIF": (lambda: ChargeOnlyLIF(), single, r"ChargeOnlyLIF outputs real values \(.*\), not spikes"),
    "NonSpikingLIFNode": (lambda: neuron.NonSpikingLIFNode(), multi,
                          r"NonSpikingLIFNode returns a list of 2 values \[tensor \[2, 8\], tensor \[2, 8\]\], "
                          r"not one spike tensor"),
    "DSRIFNode": (lambda: neuron.DSRIFNode(T=T), lambda: ramp(T, N, F, lo=0.0, hi=12.0),
                  r"DSRIFNode emits values \{0, 6\} \(graded spikes: each spike carries a weight\), "
                  r"not binary spikes"),
    "DSRLIFNode": (lambda: neuron.DSRLIFNode(T=T), lambda: ramp(T, N, F, lo=0.0, hi=400.0),
                   r"DSRLIFNode emits values \{0, 20\} \(graded spikes: each spike carries a weight\), "
                   r"not binary spikes"),
    "FewSpikeNode": (lambda: neuron.FewSpikeNode(few_spike_table()), single,
                     r"FewSpikeNode emits values \{0, 0\.5, 1, 1\.5\} \(graded spikes: each spike carries a weight\), "
                     r"not binary spikes"),
    "STBIFNode": (lambda: neuron.STBIFNode(q_threshold=0.5, level=4, step_mode="m"), multi,
                  r"STBIFNode emits values \{0, 0\.5\} \(graded spikes: each spike carries a weight\), "
                  r"not binary spikes"),
    "FlexSN-two-outputs": (lambda: neuron.FlexSN(core=flexsn_with_v, num_states=1, step_mode="m"), multi,
                           r"FlexSN returns a tuple of 2 values \[tensor \[2, 2, 8\], tensor \[2, 2, 8\]\], "
                           r"not one spike tensor"),
    "NoisyCUBALIFNode": (lambda: neuron.NoisyCUBALIFNode(num_node=F, T=T), multi,
                         r"NoisyCUBALIFNode: running it on its input failed \(training mode, AttributeError: "
                         r".*noise_step.*\)"),
    "SummingLIF": (lambda: SummingLIF(step_mode="m"), multi,
                   r"SummingLIF returns shape \[2, 8\] for input shape \[2, 2, 8\]"),
    "DoubleSpikeLIF": (lambda: DoubleSpikeLIF(step_mode="m"), multi,
                       r"DoubleSpikeLIF emits values \{0, 2\} \(graded spikes: each spike carries a weight\), "
                       r"not binary spikes"),
    "NaNLIF": (lambda: NaNLIF(step_mode="m"), multi, r"NaNLIF emits non-finite values \(nan or inf\), not spikes"),
    "EvalMembraneLIF": (lambda: EvalMembraneLIF(), single,
                        r"EvalMembraneLIF outputs real values \(.*\) in eval mode, not spikes"),
    "Locked": (lambda: Locked(), single,
               r"Locked: running it on its input failed \(training mode, TypeError: .*lock.*\)"),
}


def _fires(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``m`` emits a spike on ``x`` in training or in eval mode (MPBN's BatchNorm
    keeps it silent in training mode on a fresh module)."""
    fired = False
    for training in (True, False):
        twin = copy.deepcopy(m).train(training)
        functional.reset_net(twin)
        with torch.no_grad():
            fired |= bool((twin(x.clone()) != 0).any())
    return fired


@pytest.mark.parametrize("name", SPIKING)
def test_spiking_neurons_pass(name: str) -> None:
    make, sample = SPIKING[name]
    torch.manual_seed(0)
    m, x = make(), sample()
    assert is_spiking_module(m)
    assert _fires(m, x), "the sample must make the neuron fire, or the check proves nothing"
    assert spike_output_problem(m, x) is None


@pytest.mark.parametrize("name", NOT_SPIKES)
def test_non_spike_outputs_are_explained(name: str) -> None:
    make, sample, expected = NOT_SPIKES[name]
    torch.manual_seed(0)
    problem = spike_output_problem(make(), sample())
    assert problem is not None and re.fullmatch(expected, problem), problem
    assert "\n" not in problem


def test_ternary_flag_overrides_the_class() -> None:
    x = signed()
    assert spike_output_problem(neuron.TernaryIFNode(step_mode="m"), x, ternary=False) == \
        "TernaryIFNode emits values {-1, 0, 1} (signed spikes), not binary spikes"
    # Binary spikes are a subset of ternary ones.
    assert spike_output_problem(neuron.IFNode(step_mode="m"), multi(), ternary=True) is None
    # A ternary neuron whose spikes carry a weight is still refused as ternary.
    assert spike_output_problem(DoubleSpikeLIF(step_mode="m"), multi(), ternary=True) == \
        "DoubleSpikeLIF emits values {0, 2} (graded spikes: each spike carries a weight), not ternary spikes"


@pytest.mark.parametrize("m", [
    neuron.NonSpikingLIFNode(), neuron.NonSpikingIFNode(), nn.ReLU(), nn.Linear(2, 2), layer.Conv2d(1, 1, 1),
    layer.BatchNorm2d(1), encoding.PoissonEncoder(), layer.SynapseFilter(),
], ids=lambda m: type(m).__name__)
def test_non_spiking_modules_are_not_candidates(m: nn.Module) -> None:
    assert not is_spiking_module(m)


def test_user_subclasses_and_converted_neurons_are_candidates() -> None:
    assert is_spiking_module(ChargeOnlyLIF())
    assert is_spiking_module(neuron.HGNode([few_spike_table(), few_spike_table()], [0.5]))
    assert is_spiking_module(neuron.NoisyILCCUBALIFNode(act_dim=2, dec_pop_dim=4))


def test_users_module_state_mode_and_sample_are_untouched() -> None:
    torch.manual_seed(0)
    m = neuron.MPBNLIFNode(out_features=F, step_mode="m")
    x = multi().requires_grad_()
    m(x).sum().backward()  # v now has a history (deepcopy alone would refuse it)
    m.eval()
    v, stats = m.v, {k: t.clone() for k, t in m.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert not m.v.is_leaf
    assert spike_output_problem(m, x) is None
    assert not m.training
    assert m.v is v
    assert all(torch.equal(stats[k], t) for k, t in m.state_dict().items())  # BN running stats unmoved
    assert all(torch.equal(grads[k], p.grad) for k, p in m.named_parameters())
    assert x.grad_fn is None and x.requires_grad


def test_sample_is_not_written_by_neurons_that_write_their_input() -> None:
    m, x = neuron.ILCIFNode(act_dim=2, dec_pop_dim=4), multi()
    before = x.clone()
    assert spike_output_problem(m, x) is None
    assert torch.equal(x, before)


def test_single_step_neuron_state_is_kept() -> None:
    m = neuron.OTTTLIFNode()
    m(single())
    v, trace = m.v.clone(), m.trace.clone()
    assert spike_output_problem(m, single()) is not None
    assert m.training and torch.equal(m.v, v) and torch.equal(m.trace, trace)
