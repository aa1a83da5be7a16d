"""Training through real Slurm daemons (CI starts a one-node cluster with cluster/local_slurm.sh): a 2-task job
runs to the end under sbatch --wait; a job sent USR1 mid-run checkpoints, requeues, resumes and ends with the
same losses as an uninterrupted job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[2]


def submit(shards: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bertline.cli", "submit", "--config", str(ROOT / "configs/train/debug_cpu.yaml"),
               "--data.shards", str(shards), "--run_dir", str(run), "--nodes", "1", "--tasks-per-node", "2",
               "--time", "00:15:00", "--data.micro_batch_size", "4", "--checkpoint.interval", "10", *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)


def job_id(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"submitted job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def until(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_two_task_job_runs_to_completion_under_sbatch_wait(slurm, shards, tmp_path):
    result = submit(shards, tmp_path / "run", "--train.max_steps", "12", "--wait")
    log = next((tmp_path / "run").glob("slurm-*.log")).read_text()
    assert result.returncode == 0, result.stderr[-2000:] + log[-3000:]
    assert "2 ranks, srun launch" in log and "finished with exit code 0" in log
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, 13))
    assert (tmp_path / "run" / "checkpoints" / "step00000012" / "COMPLETE").exists()


def test_usr1_checkpoints_requeues_resumes_and_matches_an_uninterrupted_job(slurm, shards, tmp_path):
    steps = ["--train.max_steps", "30"]
    straight = submit(shards, tmp_path / "straight", *steps, "--wait")
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "preempted"
    job = job_id(submit(shards, run, *steps))
    until(lambda: len(metrics(run)) >= 12, 300, "step 12 of the job")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    # Slurm holds a requeued job until the old run's credential expires (AuthInfo=cred_expire, 10 s on the
    # local cluster, 120 s by default). Releasing it sooner fails the job ("Job credential revoked"): wait.
    until(lambda: job_state(job).get("JobState") == "PENDING" and job_state(job).get("Reason") == "BeginTime", 300, "the requeue")
    final = until(lambda: job_state(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and job_state(job), 600,
                  "the requeued job to end")
    log = (run / f"slurm-{job}.log").read_text()
    assert final["JobState"] == "COMPLETED" and final["Restarts"] == "1", (final, log[-4000:])
    stopped = int(re.search(r"SIGUSR1 received: checkpointed step (\d+); exiting with code 75", log).group(1))
    assert 12 <= stopped < 30
    assert "requeueing job" in log and f"requeued Slurm job (SLURM_RESTART_COUNT=1): resuming from step {stopped}" in log
    resumed, uninterrupted = metrics(run), metrics(tmp_path / "straight")
    assert [m["step"] for m in resumed] == list(range(1, 31))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in uninterrupted]  # bitwise, the tail included
