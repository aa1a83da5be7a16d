"""The Beam job on Dask workers that are Slurm jobs (dask-jobqueue's SLURMCluster, `--slurm-workers 2`) writes
the same bytes as the FnApiRunner run of the same config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/pipeline/demo.yaml")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertline.cli", "prepare", "--config", DEMO, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_two_slurm_workers_write_the_same_bytes_as_fnapirunner(slurm, shards, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install -e '.[dask]')")
    result = prepare("--output", str(tmp_path / "slurm"), "--slurm-workers", "2", "--dask_slurm.memory", "2GB",
                     "--dask_slurm.log_directory", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train      8 shards" in result.stdout
    assert list((tmp_path / "logs").glob("*.out")) or list((tmp_path / "logs").glob("*.err"))  # the worker jobs ran
    assert folder_bytes(tmp_path / "slurm") == folder_bytes(shards)  # `shards` is the FnApiRunner run (conftest)


def test_slurm_workers_refuse_a_runner_flag(tmp_path):
    result = prepare("--output", str(tmp_path / "out"), "--slurm-workers", "2", "--runner=FnApiRunner")
    assert result.returncode == 2 and "--slurm-workers chooses the runner" in result.stderr and "Traceback" not in result.stderr
