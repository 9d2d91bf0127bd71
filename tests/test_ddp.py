"""examples/train_ddp.py under torchrun (2 CPU processes, gloo): amplitudes stay in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sj_realspike as rs

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_ddp.py"


@pytest.mark.slow
def test_ddp_training_keeps_amplitudes_identical_and_rank0_exports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(EXAMPLE), "--steps", "3", "--batch", "4", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0 = torch.load(tmp_path / "amplitudes_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "amplitudes_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) == 3
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.all(a == 1.0) for a in rank0.values()), "training did not move the amplitudes"
    assert "rank 0 of 2: folded and exported" in r.stdout
    y = rs.OnnxRunner(tmp_path / "model.onnx")(np.random.rand(4, 3, 1, 16, 16).astype(np.float32))
    assert y.shape == (4, 3, 10)
