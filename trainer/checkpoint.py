"""Checkpoint folders: a step counts only once its COMPLETE marker exists; keep the last K; find the newest."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

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


def mark_complete(folder: Path, step: int) -> None:
    (folder / tag(step) / MARKER).write_text(f"{step}\n")


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
