"""`bertline submit`: a training run as a Slurm batch job.

    bertline submit --config configs/train/bert_base_zero2_fp16.yaml --nodes 4 --gpus-per-node 8 --time 24:00:00 \
        [--partition gpu] [--account proj] [--dotted.key value …] [--dry-run] [--wait]

It checks what can be checked before queueing (the config, the batch arithmetic for this many ranks, the
shards, the run folder), renders cluster/sbatch.sh.j2, and writes into `<run_dir>/submit/<time>/` the script, the
resolved config, the code revision and a copy of the code, so that a requeued job runs exactly what was
submitted. Then `sbatch` queues it. `--dry-run` prints the script and changes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import yaml

from bertline.config import load_config, parse_overrides
from bertline.errors import UserError, run_command
from trainer import checkpoint, init_from
from trainer.config import TrainConfig, deepspeed_config
from trainer.data import ShardSet, batches_per_epoch
from trainer.preemption import REQUEUE_EXIT_CODE, STOP_FILE

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("sbatch.sh.j2")
PACKAGES = ("bertline", "pipeline", "trainer", "model")  # what a rank imports from this checkout
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # Slurm's MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


@dataclasses.dataclass(frozen=True)
class Job:
    """One submission: the resolved config and where its ranks go."""

    config: TrainConfig
    config_name: str
    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    time: str
    partition: str | None = None
    account: str | None = None
    job_name: str | None = None
    # Each submission gets its own folder: a resubmission must not rewrite the code of a job still queued or running.
    stamp: str = dataclasses.field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def submit_dir(self) -> Path:
        return self.run_dir / "submit" / self.stamp


def check(job: Job) -> None:
    """Everything that would otherwise fail only once the job starts, as one sentence each."""
    config, where = job.config, job.config_name
    if re.search(r"[\s'\"#\\]", str(job.run_dir)):
        raise UserError(f"run_dir {str(job.run_dir)!r} holds a space, quote, # or backslash, which #SBATCH lines cannot carry; "
                        f"choose a plain path")
    if not _TIME.match(job.time):
        raise UserError(f"--time {job.time!r} is not a Slurm time limit; write HH:MM:SS or D-HH:MM:SS")
    if config.train.device == "cuda" and job.gpus_per_node == 0:
        raise UserError(f"{where} trains on GPUs (train.device: cuda) but --gpus-per-node is 0; ask for GPUs, "
                        f"or set --train.device cpu for a CPU job")
    if config.train.device == "cpu" and job.gpus_per_node > 0:
        raise UserError(f"{where} trains on CPU (train.device: cpu) but --gpus-per-node is {job.gpus_per_node}; "
                        f"drop --gpus-per-node or set --train.device cuda")
    ds_config = deepspeed_config(config, job.world_size)  # the batch arithmetic for this many ranks
    shards = ShardSet.open(config.data.shards)  # manifest and COMPLETED, before the job waits in the queue
    per_epoch = batches_per_epoch(shards.total_samples, 0, ds_config["train_batch_size"])
    if per_epoch == 0:
        raise UserError(f"{config.data.shards} holds {shards.total_samples} training samples, fewer than one global batch of "
                        f"{ds_config['train_batch_size']} on {job.world_size} ranks; prepare more data or use fewer nodes")
    saved = checkpoint.newest(job.run_dir / "checkpoints")
    if config.model.init_from is not None and saved is None:  # the source, its tokenizer and positions, as the trainer will check them
        source = init_from.open_source(config.model.init_from)
        init_from.check_vocabulary(source, config.data.shards, shards.tokenizer)
        init_from.check_positions(shards.max_seq_length, init_from.model_config(source, config.model), from_source=True)
    if saved is not None and saved.step >= config.train.max_steps:
        raise UserError(f"{job.run_dir} already holds a finished run (step {saved.step} of train.max_steps="
                        f"{config.train.max_steps}); choose another --run_dir, or raise --train.max_steps to train it further")


def revision() -> str:
    """The code's git revision, marked -dirty when the checkout has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def render(job: Job, revision_text: str) -> str:
    slurm = job.config.slurm
    srun = slurm.launcher == "srun"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    environment.filters["shell_quote"] = shlex.quote
    template = environment.from_string(TEMPLATE.read_text())
    return template.render(
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), revision=revision_text,
        job_name=job.job_name or f"bertline-{job.run_dir.name}", nodes=job.nodes, gpus_per_node=job.gpus_per_node,
        tasks_per_node=job.tasks_per_node, world_size=job.world_size, time=job.time, partition=job.partition,
        account=job.account, slurm=slurm, launcher=slurm.launcher, sbatch_options=slurm.sbatch_options,
        # srun: one Slurm task per rank; deepspeed: one task per node whose launcher starts the ranks.
        sbatch_tasks_per_node=job.tasks_per_node if srun else 1,
        sbatch_cpus_per_task=slurm.cpus_per_task if srun else slurm.cpus_per_task * job.tasks_per_node,
        mem_gb=slurm.mem_per_task_gb * job.tasks_per_node, signal_seconds=slurm.signal_seconds,
        run_dir=shlex.quote(str(job.run_dir)), submit_dir=shlex.quote(str(job.submit_dir)),
        code_dir=shlex.quote(str(job.submit_dir / "code")), config_file=shlex.quote(str(job.submit_dir / "config.yaml")),
        stop_file=shlex.quote(str(job.run_dir / STOP_FILE)),
        python=shlex.quote(sys.executable), requeue_exit_code=REQUEUE_EXIT_CODE,
    )


def record(job: Job, script: str, revision_text: str) -> Path:
    """Write the script, the resolved config, the revision and a copy of the code into <run_dir>/submit/<stamp>."""
    submit = job.submit_dir
    submit.mkdir(parents=True, exist_ok=True)
    code = submit / "code"
    shutil.rmtree(code, ignore_errors=True)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (submit / "config.yaml").write_text(yaml.safe_dump(job.config.model_dump(mode="json"), sort_keys=False))
    (submit / "revision.txt").write_text(revision_text + "\n")
    path = submit / "job.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    return path


def _absolute(config: TrainConfig) -> TrainConfig:
    """The job may start in another directory: pin the run folder and the shards to absolute paths."""
    config.run_dir = str(Path(config.run_dir).resolve())
    config.data.shards = str(Path(config.data.shards).resolve())
    if config.model.init_from is not None:
        config.model.init_from = str(Path(config.model.init_from).resolve())
    return config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        overrides, rest = parse_overrides(argv, TrainConfig)
        parser = argparse.ArgumentParser(prog="bertline submit", allow_abbrev=False,
                                         description="Render cluster/sbatch.sh.j2 for a training run and sbatch it.")
        parser.add_argument("--config", default=None, help="A YAML config (see configs/train/); dotted overrides follow.")
        parser.add_argument("--nodes", type=int, required=True)
        parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one rank each (0 for a CPU job).")
        parser.add_argument("--tasks-per-node", type=int, default=None, help="Ranks per node (default: --gpus-per-node, or 1 on CPU).")
        parser.add_argument("--time", required=True, help="Time limit, HH:MM:SS or D-HH:MM:SS.")
        parser.add_argument("--partition", default=None)
        parser.add_argument("--account", default=None)
        parser.add_argument("--job-name", default=None)
        parser.add_argument("--dry-run", action="store_true", help="Print the batch script; submit nothing, write nothing.")
        parser.add_argument("--wait", action="store_true", help="sbatch --wait: return when the job ends, with its exit code.")
        args = parser.parse_args(rest)
        if args.nodes < 1 or args.gpus_per_node < 0 or (args.tasks_per_node is not None and args.tasks_per_node < 1):
            raise UserError("--nodes and --tasks-per-node must be at least 1 and --gpus-per-node at least 0")
        tasks = args.tasks_per_node or args.gpus_per_node or 1
        if args.gpus_per_node and tasks != args.gpus_per_node:
            raise UserError(f"--tasks-per-node {tasks} with --gpus-per-node {args.gpus_per_node}: a GPU job runs one rank per GPU")
        config = _absolute(load_config(TrainConfig, args.config, overrides))
        job = Job(config, args.config or "the default config", args.nodes, args.gpus_per_node, tasks, args.time,
                  args.partition, args.account, args.job_name)
        check(job)
        revision_text = revision()
        script = render(job, revision_text)
        if args.dry_run:
            print(script, end="")
            return 0
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise UserError("sbatch is not on PATH: run bertline submit on a Slurm login node, or add --dry-run to print the script")
        path = record(job, script, revision_text)
        command = [sbatch, "--parsable", *(["--wait"] if args.wait else []), str(path)]
        if args.wait and shutil.which("stdbuf"):  # sbatch --wait buffers its job id into a pipe until the job ends
            command = ["stdbuf", "-oL", *command]
        result = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job_id = result.stdout.readline().strip().split(";")[0]
        if job_id:
            print(f"submitted job {job_id}: {job.world_size} ranks on {job.nodes} node(s); script {path}\n"
                  f"watch: squeue -j {job_id}; tail -f {job.run_dir}/slurm-{job_id}.log; tensorboard --logdir {job.run_dir}",
                  flush=True)
        out, err = result.communicate()
        if result.returncode != 0 and not job_id:
            raise UserError(f"sbatch refused {path}: {err.strip() or out.strip()}")
        return result.returncode

    return run_command("bertline submit", body)


if __name__ == "__main__":
    sys.exit(main())
