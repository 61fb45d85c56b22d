"""Two processes under torchrun on the CPU (gloo): DistributedDataParallel, per-rank data
shards, and logs and checkpoints from rank 0 only."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import remn


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_process_gloo_run(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "remn.train", "--config", "tiny", "--synthetic", "2", "--synthetic-size", "32", "48",
        "--crop-size", "32", "48", "--iterations", "3", "--batch-size", "1", "--lr", "1e-3", "--save-every", "2",
        "--log-every", "1", "--output", str(run), "--device", "cpu", "--threads", "1", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("weights:") == 2  # both ranks finished

    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert saved["iteration"] == 3
    assert saved["train_config"]["batch_size"] == 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in log] == [1, 2, 3]  # one writer: rank 0
    assert not list(run.glob(".*.tmp"))  # no half-written checkpoint left behind
    model = remn.build_model(config="tiny", weights=run / "model.pt", device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
