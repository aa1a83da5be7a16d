"""Checkpoint folders: a step counts only once its COMPLETE marker exists; keep the last K; find the newest.

The marker also records the world size and ZeRO stage the checkpoint was written with, so a resume can tell,
before it builds the engine, whether DeepSpeed's partitioned state has to be converted to the universal format
(another world size or stage: see `needs_universal`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bertline.errors import UserError

MARKER = "COMPLETE"
_STEP = re.compile(r"^step(\d+)$")


def tag(step: int) -> str:
    return f"step{step:08d}"


def complete_steps(folder: Path) -> list[int]:
    """Steps whose checkpoint finished writing, oldest first."""
    if not folder.exists():
        return []
    steps = []
    for child in folder.iterdir():
        match = _STEP.match(child.name)
        if match and (child / MARKER).exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


@dataclasses.dataclass(frozen=True)
class Saved:
    """What the COMPLETE marker of one checkpoint says."""

    step: int
    world_size: int
    zero_stage: int

    @property
    def folder_name(self) -> str:
        return tag(self.step)


def mark_complete(folder: Path, step: int, world_size: int, zero_stage: int) -> None:
    marker = {"step": step, "world_size": world_size, "zero_stage": zero_stage}
    path = folder / tag(step) / MARKER
    partial = path.with_name(MARKER + ".partial")  # written whole, then renamed: a marker is never half there
    partial.write_text(json.dumps(marker) + "\n")
    os.replace(partial, path)


def newest(folder: Path) -> Saved | None:
    """The newest complete checkpoint, or None."""
    steps = complete_steps(folder)
    if not steps:
        return None
    marker = json.loads((folder / tag(steps[-1]) / MARKER).read_text())
    return Saved(int(marker["step"]), int(marker["world_size"]), int(marker["zero_stage"]))


def needs_universal(saved: Saved, world_size: int, zero_stage: int) -> bool:
    """ZeRO 1-3 partition the optimizer state by rank: DeepSpeed loads it only on the same world size and stage.
    Otherwise the checkpoint goes through its universal format (stage 0 state is whole and loads anywhere)."""
    return saved.zero_stage > 0 and (saved.world_size, saved.zero_stage) != (world_size, zero_stage)


def prune(folder: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, and half-written ones older than them."""
    steps = complete_steps(folder)
    keep = set(steps[-keep_last:])
    newest = max(keep) if keep else -1
    for child in folder.iterdir() if folder.exists() else []:
        match = _STEP.match(child.name)
        if match and int(match.group(1)) not in keep and int(match.group(1)) < newest:
            shutil.rmtree(child, ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


UNIVERSAL_FAILED = "universal.failed"  # rank 0 writes it (with the error) when a universal conversion fails


def wait_for_universal(step_folder: Path, timeout_s: float, poll_s: float = 2.0) -> Path:
    """Wait, polling the file system, until rank 0 has converted `step_folder` to `<step>/universal` (it renames
    the finished folder into place) or has failed; one sentence on failure or timeout."""
    done, failed = step_folder / "universal", step_folder / UNIVERSAL_FAILED
    deadline = time.monotonic() + timeout_s
    while not done.is_dir():
        if failed.exists():
            raise UserError(f"rank 0 could not convert {step_folder} to a universal checkpoint ({failed.read_text().strip()[:300]}); "
                            f"see rank 0's log")
        if time.monotonic() > deadline:
            raise UserError(f"waited {timeout_s / 60:.0f} minutes for rank 0 to convert {step_folder} to a universal checkpoint; "
                            f"raise checkpoint.universal_wait_minutes, or convert it beforehand with python -m "
                            f"deepspeed.checkpoint.ds_to_universal --input_folder {step_folder} --output_folder {done} --inject_missing_state")
        time.sleep(poll_s)
    return done
