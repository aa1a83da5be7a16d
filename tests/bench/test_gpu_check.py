"""bench/gpu_check.sh --dry-run: every step of the GPU check rehearsed on CPU with the tiny model, so the
script is ready whenever a GPU machine is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_rehearses_every_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "BUNDLE": str(tmp_path / "no-bundle")}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--compile"], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    for run in ("base_zero2_fp16", "large_zero2_bf16", "base_zero2_fp16_compiled", "large_zero2_bf16_compiled"):
        assert report[run]["sequences_per_s"] > 0 and report[run]["tokens_per_s"] > 0, report[run]
    assert report["resume"]["identical"], report["resume"]
    overflow = report["fp16_overflow"]
    assert overflow["skipped"] == 1 and overflow["scale_halved"], overflow["trace"]
    assert overflow["trace"][2]["lr"] == overflow["trace"][3]["lr"]  # the skipped step did not advance the schedule


def test_bundle_selection_picks_this_pythons_wheels(tmp_path):
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    names = ["deepspeed-0.19.8-py3-none-any.whl", f"PyYAML-6.0.4-{tag}-{tag}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
             "PyYAML-6.0.4-cp99-cp99-manylinux_2_17_x86_64.whl", "psutil-7.2.2-cp36-abi3-manylinux_2_12_x86_64.manylinux2010_x86_64.whl",
             f"pydantic_core-2.50.5-{tag}-{tag}-macosx_11_0_arm64.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bundle_select.py"), str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert sorted(Path(p).name for p in out) == sorted(names[:2] + names[3:4])
