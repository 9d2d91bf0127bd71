"""Train a converted model with DistributedDataParallel, then fold (and export) on rank 0.

CPU, two processes (gloo):
    torchrun --nproc_per_node 2 examples/train_ddp.py --steps 20 --out ddp_out

GPUs: the same script on one node with N GPUs uses nccl and one GPU per process:
    torchrun --nproc_per_node N examples/train_ddp.py ...
and across nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint`` as usual.

Amplitudes are ordinary parameters, so DDP all-reduces their gradients like any
weight; each rank writes its amplitudes to ``OUT/amplitudes_rank{r}.pt`` so you can
check they stay identical. Random data stands in for a dataset (use a
DistributedSampler over your own).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from quickstart import make_net
from spikingjelly.activation_based import functional
from torch.nn.parallel import DistributedDataParallel as DDP

import sj_realspike as rs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16, help="per-process batch size")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--out", default="ddp_out")
    args = p.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # same initial model everywhere (DDP also broadcasts rank 0's)

    encode = lambda x: x.unsqueeze(0).repeat(args.T, 1, 1, 1, 1)  # noqa: E731
    example = encode(torch.rand(args.batch, 1, 16, 16, device=device))
    model = rs.convert_model(make_net().to(device), example, granularity="channel")
    amp_ids = {id(a) for a in rs.amplitude_parameters(model)}
    ddp = DDP(model)
    optimizer = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in amp_ids], "weight_decay": 5e-4},
        {"params": list(rs.amplitude_parameters(model)), "weight_decay": 0.0},
    ], lr=0.1, momentum=0.9)

    generator = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard of data
    for step in range(args.steps):
        images = torch.rand(args.batch, 1, 16, 16, generator=generator).to(device)
        labels = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
        loss = F.cross_entropy(ddp(encode(images)).mean(0), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(model)
        if rank == 0 and step % 5 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({n: a.detach().cpu() for n, a in model.named_parameters() if id(a) in amp_ids},
               out / f"amplitudes_rank{rank}.pt")
    if rank == 0:
        model.eval()
        deploy = rs.fold(model)
        x = example[:, :2]
        rs.export_onnx(deploy.cpu(), out / "model.onnx", x.cpu())
        print(rs.fold_report(deploy))
        print(f"rank 0 of {world}: folded and exported {out / 'model.onnx'}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
