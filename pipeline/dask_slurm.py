"""The Beam job on a dask.distributed cluster whose workers are Slurm jobs (dask-jobqueue's SLURMCluster):
`bertline prepare … --slurm-workers K`. The scheduler lives in the driver process; K worker jobs are queued,
and once they have joined, the job runs on Beam's DaskRunner exactly as on any Dask cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Iterator

from bertline.errors import UserError
from pipeline.config import SlurmWorkersConfig

log = logging.getLogger("bertline.prepare")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


@contextlib.contextmanager
def slurm_cluster(workers: int, config: SlurmWorkersConfig) -> Iterator[str]:
    """Start K Dask workers as Slurm jobs; yields the scheduler address; cancels the jobs on exit."""
    try:
        from dask_jobqueue import SLURMCluster
        from distributed import Client
    except ImportError:
        raise UserError("--slurm-workers needs dask-jobqueue and distributed: pip install -e '.[dask]'") from None
    if shutil.which("sbatch") is None:
        raise UserError("--slurm-workers needs Slurm's sbatch on PATH: run bertline prepare on a Slurm login node")
    for name in ("distributed", "dask_jobqueue"):  # their INFO lines (every worker joining and leaving) drown the job's
        logging.getLogger(name).setLevel(logging.WARNING)
    logs = os.path.expanduser(config.log_directory)
    os.makedirs(logs, exist_ok=True)
    cluster = SLURMCluster(
        cores=config.cores, processes=1, memory=config.memory, walltime=config.walltime, queue=config.partition,
        account=config.account, interface=config.interface, log_directory=logs,
        job_extra_directives=config.job_extra_directives, job_name="bertline-prepare",
    )
    try:
        cluster.scale(jobs=workers)
        log.info("waiting for %d Dask worker job(s) on Slurm (scheduler %s, worker logs in %s)", workers, cluster.scheduler_address, logs)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(workers, timeout=config.start_timeout_s)
            except TimeoutError:
                raise UserError(
                    f"only {len(client.scheduler_info()['workers'])} of {workers} Dask worker jobs joined within "
                    f"{config.start_timeout_s} s; check `squeue --name bertline-prepare` and the logs in {logs}, or raise "
                    f"--dask_slurm.start_timeout_s"
                ) from None
        yield cluster.scheduler_address
    finally:
        cluster.close()
