"""Fixtures for the Slurm tests: a reachable Slurm cluster (CI starts one with cluster/local_slurm.sh) and shards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm() -> str:
    """The idle node's name. Skips with the reason where no Slurm answers; fails instead under
    BERTLINE_REQUIRE_SLURM=1 (CI), so a broken cluster cannot pass as a skip."""
    reason = None
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        reason = "no Slurm client on PATH (sinfo/sbatch); start one with `bash cluster/local_slurm.sh install && bash cluster/local_slurm.sh start`"
    else:
        out = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True, timeout=30)
        idle = [line.split()[0] for line in out.stdout.splitlines() if line.split()[1:] == ["idle"]]
        if out.returncode != 0 or not idle:
            reason = f"no idle Slurm node answers sinfo ({(out.stderr or out.stdout).strip() or 'no nodes'}); start one with cluster/local_slurm.sh"
    if reason:
        if os.environ.get("BERTLINE_REQUIRE_SLURM") == "1":
            pytest.fail(f"BERTLINE_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    return idle[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from pipeline.__main__ import main

    output = tmp_path_factory.mktemp("shards")
    assert main(["--output", str(output), "--config", str(ROOT / "configs/pipeline/demo.yaml")]) == 0
    return output
