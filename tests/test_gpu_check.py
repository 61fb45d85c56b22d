"""bench/gpu_check.sh --dry-run: the GPU machine's one prepared script, exercised on a CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
STEPS = ["environment", "install", "tests", "kernels", "end_to_end", "high_resolution_memory", "cuda_fast_path"]


def test_dry_run_runs_every_step_and_writes_one_folder(tmp_path):
    out, archive = tmp_path / "check", tmp_path / "check.tar.gz"
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--output", str(out), "--archive", str(archive)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == STEPS and all(row[1] == "ok" for row in rows)
    assert "cuda available: False" in (out / "environment.log").read_text()
    results = json.loads((out / "cpu-gpu-check-dry-run.json").read_text())
    assert results["memory_read"] and results["environment"]["git_commit"]
    assert {row["variant"] for row in results["cuda_fast_path"]["rows"]} == {"plain", "fast path"}
    assert archive.stat().st_size > 0 and (out / "summary.txt").is_file()


def test_bad_arguments_are_refused(tmp_path):
    for args in (["--budget", "soon"], ["--frobnicate"]):
        done = subprocess.run(["bash", str(SCRIPT), *args, "--output", str(tmp_path)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "gpu_check.sh:" in done.stderr
