"""Preemption: Slurm warns a job before it stops it — USR1 at `--signal=B:USR1@N` seconds before the time
limit (the job script forwards it to the ranks) or TERM when it preempts or cancels. The trainer does not die
there: it finishes the optimizer step it is in, every rank agrees to stop after the same step, it writes a
checkpoint and exits with REQUEUE_EXIT_CODE, and the job script requeues the job, which resumes from that
checkpoint."""

from __future__ import annotations

import signal

import torch

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; cluster/sbatch.sh.j2 requeues on it


class StopSignals:
    """Remembers the first USR1/TERM; `agreed()` tells every rank whether any rank received one."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        for number in self.SIGNALS:
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame) -> None:
        self.received = self.received or signal.Signals(number).name

    def agreed(self, world_size: int, device: torch.device | str = "cpu") -> bool:
        """Collective: True on every rank once any rank has a signal, so all stop after the same step.
        `device`: where the flag is reduced (NCCL reduces only CUDA tensors)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
