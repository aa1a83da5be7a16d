"""Preemption: Slurm warns a job before it stops it — USR1 at `--signal=B:USR1@N` seconds before the time
limit (the job script forwards it to the ranks) or TERM when it preempts the job. The trainer does not die
there: it finishes the logging interval it is in (log.interval steps), every rank agrees to stop after the same step, it writes a
checkpoint and exits with REQUEUE_EXIT_CODE, and the job script requeues the job, which resumes from that
checkpoint.

A stop file does the same without signals: rank 0 looks for `<run_dir>/STOP` every log.interval steps. The batch
script of the deepspeed launch mode touches it (DeepSpeed's launcher does not pass USR1 on), and a user can
touch it to stop a run cleanly. A run removes a stale STOP file when it starts.
"""

from __future__ import annotations

import signal
from pathlib import Path

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; cluster/sbatch.sh.j2 requeues on it
STOP_FILE = "STOP"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a signal sent to the whole job step must not kill the loader's workers
    (the rank would then crash instead of checkpointing); the rank itself handles it."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class StopSignals:
    """Remembers the first USR1/TERM (or the stop file); `agreed()` tells every rank whether any rank saw one."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.received: str | None = None
        self.stop_file = stop_file
        for number in SIGNALS:
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame) -> None:
        self.received = self.received or signal.Signals(number).name

    def clear_stop_file(self) -> None:
        """A STOP file left by the run this one resumes must not stop it again."""
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)

    def agreed(self, world_size: int, device="cpu", rank: int = 0) -> bool:
        """Collective: True on every rank once any rank has a signal (or rank 0 sees the stop file), so all
        stop after the same step. `device`: where the flag is reduced (NCCL reduces only CUDA tensors)."""
        import torch

        if not self.received and rank == 0 and self.stop_file is not None and self.stop_file.exists():
            self.received = f"{self.stop_file}"
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
