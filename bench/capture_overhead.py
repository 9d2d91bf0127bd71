"""convert + fold + export time of this checkout against a baseline revision, interleaved.

The capture front end (real-valued tracing, a generality check in fold) must not make
the pipeline noticeably slower than the fx tracer it replaced. This script checks out
``--baseline`` into a temporary git worktree and runs the same job (sew_resnet18, LIF,
T=4, N=2, 32x32, channel granularity: convert, fold, export) alternately with the
baseline and with this checkout, each in a fresh process (first-call imports included,
as a user sees them), and prints each stage's median time and the ratio new/baseline.

    python bench/capture_overhead.py --baseline 9dbf0c3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

JOB = r"""
import json, sys, tempfile, time, warnings, logging
warnings.simplefilter("ignore"); logging.disable(logging.WARNING)
import torch
torch.set_num_threads(1)
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import sew_resnet
import sj_realspike as rs
torch.manual_seed(0)
net = sew_resnet.sew_resnet18(spiking_neuron=neuron.LIFNode, cnf="ADD", num_classes=10)
functional.set_step_mode(net, "m")
x = torch.rand(4, 2, 3, 32, 32)
times = {}
t = time.perf_counter(); model = rs.convert_model(net, x, granularity="channel"); times["convert"] = time.perf_counter() - t
t = time.perf_counter(); deploy = rs.fold(model); times["fold"] = time.perf_counter() - t
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter(); rs.export_onnx(deploy, d + "/m.onnx", x); times["export"] = time.perf_counter() - t
times["total"] = sum(times.values())
print("RESULT " + json.dumps(times))
"""


def run(source: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", JOB], env=env, capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="9dbf0c3", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        try:
            results: dict[str, list[dict[str, float]]] = {"baseline": [], "new": []}
            for i in range(args.repeats):
                for name, src in (("baseline", base), ("new", ROOT)) if i % 2 == 0 else (("new", ROOT), ("baseline", base)):
                    results[name].append(run(src))
                    print(f"run {i + 1}/{args.repeats} {name}: " + ", ".join(
                        f"{k} {v:.2f}s" for k, v in results[name][-1].items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print(f"\nmedian of {args.repeats} interleaved runs (sew_resnet18, T=4, N=2, 32x32, channel):")
    print(f"{'stage':8s} {'baseline':>9s} {'new':>9s} {'new/baseline':>13s}")
    for stage in results["new"][0]:
        b = statistics.median(r[stage] for r in results["baseline"])
        n = statistics.median(r[stage] for r in results["new"])
        print(f"{stage:8s} {b:8.2f}s {n:8.2f}s {n / b:12.2f}x")


if __name__ == "__main__":
    main()
