"""Rank, world size, local rank and rendezvous address from whichever launcher started the process:
torchrun / deepspeed (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, SLURM_JOB_ID), or none (one process)."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"

    def environment(self) -> dict[str, str]:
        """The env:// variables torch.distributed and DeepSpeed read (DeepSpeed reads no SLURM_* itself)."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `scontrol show hostnames` when present, else parsed here
    (`node[03-05,7],gpu1` → node03)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^(.*?)\[([^\],-]+)", head)
    return match.group(1) + match.group(2) if match else head


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def placement(env: Mapping[str, str]) -> Placement:
    """Where this process sits, from the environment (pure apart from `scontrol`, and a free port for one process)."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return Placement(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job = int(env.get("SLURM_JOB_ID", 0))
        # A port from the job id: distinct for jobs sharing a node, the same on every task of one job.
        return Placement(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")), 20000 + job % 20000, "slurm")
    return Placement(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or free_port(), "single")


def resolve_device(requested: str, cuda_available: bool) -> str:
    """train.device → "cuda" or "cpu"; asking for cuda without a visible GPU is the user's to fix."""
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        from bertline.errors import UserError

        raise UserError("train.device is cuda but this process sees no GPU; request GPUs (bertline submit --gpus-per-node, "
                        "srun --gpus-per-task) or set --train.device cpu")
    return requested
