"""Convert a SpikingJelly network, train it a few steps, fold it, check the deploy model.

Random data stands in for a dataset here; the digits demo (`sj-realspike demo`)
does the same on real images. Runs in seconds on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import sj_realspike as rs


def make_net() -> nn.Module:
    sn = lambda: neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan())  # noqa: E731
    net = nn.Sequential(
        layer.Conv2d(1, 16, 3, padding=1, bias=False), layer.BatchNorm2d(16), sn(), layer.MaxPool2d(2),
        layer.Conv2d(16, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32), sn(), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(32 * 4 * 4, 64), sn(), layer.Linear(64, 10),
    )
    functional.set_step_mode(net, "m")
    return net


def main() -> None:
    torch.manual_seed(0)
    T, N = 4, 32
    images = torch.rand(256, 1, 16, 16)
    labels = torch.randint(0, 10, (256,))
    encode = lambda x: x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # noqa: E731  direct input encoding

    model = rs.convert_model(make_net(), encode(images[:N]), spike="real", granularity="channel")
    print(rs.conversion_report(model), end="\n\n")

    amplitudes = list(rs.amplitude_parameters(model))
    amp_ids = {id(a) for a in amplitudes}
    optimizer = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in amp_ids], "weight_decay": 5e-4},
        {"params": amplitudes, "weight_decay": 0.0},  # amplitudes without weight decay, as the authors do
    ], lr=0.1, momentum=0.9)
    for step in range(20):
        idx = torch.randint(0, len(images), (N,))
        loss = F.cross_entropy(model(encode(images[idx])).mean(0), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(model)
        if step % 5 == 0:
            print(f"step {step:2d}  loss {loss.item():.3f}")

    model.eval()
    x = encode(images[:N])
    with torch.no_grad():
        trained = model(x)
    functional.reset_net(model)
    deploy = rs.fold(model)
    with torch.no_grad():
        folded = deploy(x)
    print()
    print(rs.fold_report(deploy))
    agree = (trained.mean(0).argmax(-1) == folded.mean(0).argmax(-1)).float().mean().item()
    print(f"\ntrained vs deploy: max abs diff {(trained - folded).abs().max().item():.2e}, top-1 agreement {agree:.0%}")


if __name__ == "__main__":
    main()
