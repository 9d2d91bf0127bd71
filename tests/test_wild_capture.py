"""Networks written by others (tests/wild.py): they run, spike, learn, and `capture` reproduces them bit for bit.

Only what does not depend on convert: forward/backward of every net, that its registry entry names exactly
its spiking modules and which of them do not emit spikes, and that the graph `capture` records gives the
network's own output (eval and training mode, the example and other inputs, gradients). Where capture
cannot follow a network the test is an ``xfail(strict=True)`` saying why, so a fix shows up as XPASS.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from sj_realspike.capture import capture
from sj_realspike.recognise import is_spiking_module, spike_output_problem
from wild import WILD

NAMES = sorted(WILD)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with two intra-op threads on a busy machine, thread hand-offs cost more
    than the convolutions (measured 20 ms per conv2d call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# Capture traces in eval mode; Python control flow on the mode (OTTTSequential routes OTTTLIFNode's
# training-mode [spike, trace] list by isinstance) is frozen to eval, and nothing in CaptureResult says so.
TRAIN_MODE_FROZEN = "capture records the eval-mode graph: OTTTSequential's isinstance(input, list) branch is " \
                    "frozen, so the graph passes OTTTLIFNode's training-mode [spike, trace] list to AvgPool2d"
# DQSN returns self.fc[-1].v: capture records the read in state_reads and the graph holds the example's value.
STATE_FROZEN = "the graph returns self.fc[-1].v as a constant from the example (reported in state_reads)"
# functional.reset_net(self) inside forward runs once at trace time and is not in the graph.
RESET_DROPPED = "functional.reset_net(self) in forward is not recorded: the graph keeps state across calls"


def _run(f: nn.Module, x: torch.Tensor, training: bool, *, grad: bool = False) -> torch.Tensor:
    f.train(training)
    functional.reset_net(f)
    with torch.set_grad_enabled(grad):
        return f(x.clone())


def _spiking(net: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in net.named_modules() if is_spiking_module(m)}


@pytest.mark.parametrize("name", NAMES)
def test_runs_spikes_and_learns(name: str) -> None:
    case = WILD[name]
    net, x = case.build()
    assert set(_spiking(net)) == set(case.expect), "the registry entry must name every spiking module"
    fired: dict[str, bool] = {}

    def record(path: str):
        def hook(m: nn.Module, args: tuple, out) -> None:
            out = out[0] if isinstance(out, (list, tuple)) else out
            fired[path] = fired.get(path, False) or bool((out != 0).any())
        return hook

    hooks = [m.register_forward_hook(record(p)) for p, m in _spiking(net).items()]
    try:
        y_eval = _run(net, x, training=False)
        y = _run(net, x, training=True, grad=True)
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(y, torch.Tensor) and torch.isfinite(y).all() and torch.isfinite(y_eval).all()
    assert all(fired.values()) and set(fired) == set(case.expect), f"silent neurons: {fired}"
    if name == "dqsn":  # its output is a membrane; the IF in front still carries gradients to fc.0
        y = net.fc[-1].v
    y.square().sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_registry_marks_the_neurons_that_do_not_emit_spikes(name: str) -> None:
    case = WILD[name]
    net, x = case.build()
    samples: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, p=p: samples.setdefault(p, args[0].detach().clone()))
             for p, m in _spiking(net).items()]
    try:
        _run(net, x, training=True)
    finally:
        for h in hooks:
            h.remove()
    problems = {p: spike_output_problem(m, samples[p]) for p, m in _spiking(net).items()}
    assert {p for p, problem in problems.items() if problem is not None} == case.not_spikes, problems


@pytest.fixture(scope="module")
def captured():
    """``captured(name)``: the network, its example and the graph `capture` recorded for it, copied
    for the calling test (net and graph copied together, so the graph still calls the copy's modules).
    Each network is captured once for the tests below that check what the graph computes."""
    cache: dict[str, tuple[nn.Module, torch.Tensor, nn.Module]] = {}

    def get(name: str) -> tuple[nn.Module, torch.Tensor, nn.Module]:
        if name not in cache:
            net, x = WILD[name].build()
            cache[name] = (net, x, capture(net, x).gm)
        net, x, gm = cache[name]
        net, gm = copy.deepcopy((net, gm))
        return net, x.clone(), gm

    return get


def _names(xfail: dict[str, str]) -> list:
    """Every registry name, those in ``xfail`` marked strict xfail with their reason."""
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=xfail[n])) if n in xfail else n
            for n in NAMES]


@pytest.mark.parametrize("name", _names({}))
def test_capture_leaves_network_and_input_untouched(name: str) -> None:
    net, x = WILD[name].build()
    net.train()
    state = copy.deepcopy(net.state_dict())
    x_before = x.clone()
    capture(net, x)
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(x, x_before)
    after = net.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


@pytest.mark.parametrize("name", _names({}))
def test_capture_reproduces_the_net_in_eval_mode(name: str, captured) -> None:
    net, x, gm = captured(name)
    assert torch.equal(_run(gm, x, training=False), _run(net, x, training=False))


@pytest.mark.parametrize("name", _names({"ottt": TRAIN_MODE_FROZEN}))
def test_capture_reproduces_the_net_in_training_mode(name: str, captured) -> None:
    net, x, gm = captured(name)
    expected = _run(net, x, training=True)
    assert torch.equal(_run(gm, x, training=True), expected)


@pytest.mark.parametrize("name", _names({"dqsn": STATE_FROZEN}))
def test_capture_follows_another_input(name: str, captured) -> None:
    case = WILD[name]
    net, x, gm = captured(name)
    other = case.make_input() * 0.5 + 0.25  # same shape, other values
    assert torch.equal(_run(gm, other, training=False), _run(net, other, training=False))


@pytest.mark.parametrize("name", _names({"dqsn": STATE_FROZEN}))
def test_capture_follows_another_batch_size(name: str, captured) -> None:
    case = WILD[name]
    net, x, gm = captured(name)
    bigger = case.make_input(2, 3)
    expected = _run(net, bigger, training=False)
    got = _run(gm, bigger, training=False)
    assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize("name", _names({"ottt": TRAIN_MODE_FROZEN, "dqsn": STATE_FROZEN}))
def test_capture_gives_the_same_gradients(name: str, captured) -> None:
    net, x, gm = captured(name)

    def grads(f: nn.Module) -> dict[str, torch.Tensor]:
        net.zero_grad()
        _run(f, x, training=True, grad=True).square().sum().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}

    expected, got = grads(net), grads(gm)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("name", _names({"sew_resnet_reset_in_forward": RESET_DROPPED, "dqsn": STATE_FROZEN}))
def test_capture_keeps_state_across_calls_like_the_net(name: str, captured) -> None:
    """Two calls without a reset in between: the second sees the state the first left (or, for a net that
    resets itself in forward, does not)."""
    net, x, gm = captured(name)
    net.eval()
    functional.reset_net(net)
    with torch.no_grad():
        expected = [net(x.clone()), net(x.clone())]
        functional.reset_net(net)
        got = [gm(x.clone()), gm(x.clone())]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_user_time_loop_calls_each_neuron_once_per_step() -> None:
    net, x = WILD["time_loop_mlp"].build()
    result = capture(net, x)
    assert {p: result.calls[p] for p in WILD["time_loop_mlp"].expect} == {"fc.2": 2, "fc.4": 2}


def test_state_read_in_forward_is_reported() -> None:
    net, x = WILD["dqsn"].build()
    assert capture(net, x).state_reads == [("fc.3", "v")]


def test_hand_written_neuron_keeps_its_autograd_function_whole() -> None:
    """MemUpdate (a loop over T, ``output[i] = spike``) is traced; its custom autograd Function is one
    node per call, so the graph keeps the Function's surrogate backward (gradients: tested above)."""
    net, x = WILD["ms_resnet_mem_update"].build()
    result = capture(net, x)
    applies = [n for n in result.gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "_SpikeAct_apply"]
    assert result.opaque == [] and len(applies) == 3 * x.shape[0]  # three neurons, T steps each
    assert not any(n.op == "call_method" and n.target == "gt" for n in result.gm.graph.nodes)


class _KeepsLast(nn.Module):
    """A user's block that keeps what it computed (``self.last = y``) and counts its calls, in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.last = y.detach()
        self.calls = getattr(self, "calls", 0) + 1
        return y


def test_capture_restores_the_attributes_forward_writes() -> None:
    """Traced through, ``self.last = y`` stores a tracing proxy: capture must put the user's value back."""
    torch.manual_seed(0)
    net, x = nn.Sequential(_KeepsLast(), nn.ReLU()), torch.rand(3, 6)
    expected = net(x)
    last = net[0].last
    del net[0].calls  # an attribute forward adds is removed again, not left with a traced value
    result = capture(net, x)
    assert net[0].last is last and not hasattr(net[0], "calls")
    assert torch.equal(result.gm(x), expected) and torch.equal(net(x), expected)
    assert capture(net, x).gm.code == result.gm.code  # a second capture sees the same model
