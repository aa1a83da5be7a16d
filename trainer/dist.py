"""Rank, world size, local rank and rendezvous address from whichever launcher started the process:
torchrun / deepspeed (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, SLURM_JOB_ID), or none (one process)."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
from typing import Mapping

from bertline.errors import UserError


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


def expand_nodelist(nodelist: str) -> list[str]:
    """Every host of a Slurm node list, in Slurm's order, as `scontrol show hostnames` prints them: comma-separated
    names, each with any number of bracket ranges anywhere in it (zero-padded widths kept):
    `gpu[01-02]-ib` → gpu01-ib gpu02-ib, `rack[1-2]-n[01-02]` → rack1-n01 rack1-n02 rack2-n01 rack2-n02."""
    hosts: list[str] = []
    for name in re.split(r",(?![^\[]*\])", nodelist.strip()):
        if not name:
            continue
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", name):
            values = [""]
            if ranges:
                values = []
                for part in ranges.split(","):
                    low, dash, high = part.partition("-")
                    if not low.isdigit() or (dash and not high.isdigit()) or (high and int(high) < int(low)):
                        raise UserError(f"cannot read the Slurm node list {nodelist!r}: {part!r} is not a number or a range; "
                                        f"set MASTER_ADDR to the first node's name")
                    width = len(low)
                    values += [str(number).zfill(width) for number in range(int(low), int(high or low) + 1)]
            expanded = [prefix + literal + value for prefix in expanded for value in values]
        hosts += expanded
    if not hosts:
        raise UserError(f"the Slurm node list {nodelist!r} names no host; set MASTER_ADDR to the first node's name")
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `scontrol show hostnames` when present (containers often lack it),
    else expand_nodelist."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return expand_nodelist(nodelist)[0]


def slurm_port(job_id: int) -> int:
    """The rendezvous port of a Slurm job: the same on every task, distinct for jobs sharing a node, and in
    15000-29999, below Linux's ephemeral range (32768-60999) so no outgoing connection of the node holds it."""
    return 15000 + job_id % 15000


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
        port = int(env.get("MASTER_PORT") or slurm_port(int(env.get("SLURM_JOB_ID", 0))))  # MASTER_PORT: the user's choice wins
        return Placement(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")), port, "slurm")
    return Placement(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or free_port(), "single")


def resolve_device(requested: str, cuda_available: bool) -> str:
    """train.device → "cuda" or "cpu"; asking for cuda without a visible GPU is the user's to fix."""
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise UserError("train.device is cuda but this process sees no GPU; request GPUs (bertline submit --gpus-per-node, "
                        "srun --gpus-per-task) or set --train.device cpu")
    return requested
