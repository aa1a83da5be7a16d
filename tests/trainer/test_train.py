"""The real DeepSpeed engine on CPU, in separate processes: loss goes down, and a resumed run continues
bitwise where an uninterrupted one would be."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from pipeline.__main__ import main

    output = tmp_path_factory.mktemp("shards")
    assert main(["--output", str(output), "--config", str(ROOT / "configs/pipeline/demo.yaml")]) == 0
    return output


def _train(shards: Path, run_dir: Path, *extra: str) -> list[dict]:
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"),
               "--data.shards", str(shards), "--run_dir", str(run_dir), "--checkpoint.interval", "5", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_resume_is_bitwise_exact(shards, tmp_path):
    straight = _train(shards, tmp_path / "straight", "--train.max_steps", "16")
    assert [m["step"] for m in straight] == list(range(1, 17))
    first, last = sum(m["loss"] for m in straight[:4]) / 4, sum(m["loss"] for m in straight[-4:]) / 4
    assert last < first - 0.3, (first, last)
    # The same run stopped after step 7 (a checkpoint at 5, and one on stopping), then resumed in new processes.
    _train(shards, tmp_path / "resumed", "--train.max_steps", "16", "--stop-after", "7")
    resumed = _train(shards, tmp_path / "resumed", "--train.max_steps", "16")
    assert [m["step"] for m in resumed] == list(range(1, 17))
    assert [m["loss"] for m in resumed[7:]] == [m["loss"] for m in straight[7:]]  # bitwise, steps 8-16
    assert [m["lr"] for m in resumed] == [m["lr"] for m in straight]
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step*"))
    assert checkpoints == ["step00000015", "step00000016"]  # keep_last 2
    assert {"eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"} <= set(straight[-1])  # evaluated at the end
    assert [m.get("eval_mlm_loss") for m in resumed[-1:]] == [m.get("eval_mlm_loss") for m in straight[-1:]]


def test_export_gives_a_folder_transformers_loads(shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    _train(shards, tmp_path / "run", "--train.max_steps", "3")
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "export", str(tmp_path / "run" / "checkpoints" / "step00000003"),
                             str(tmp_path / "hf")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    hf, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from model.hf import from_pretrained

    ours = from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).nsp_logits, hf.eval()(input_ids=ids).seq_relationship_logits, atol=1e-5, rtol=1e-5)
    # bertline eval scores the step folder and its export alike, and agrees with the trainer's own final eval
    # (debug_cpu.yaml: eval.samples 80, seed 1234).
    def evaluate(path: Path) -> dict:
        result = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(path), "--shards", str(shards), "--json",
                                 "--batch-size", "8", "--max-batches", "10", "--seed", "1234"],
                                capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    step, exported = evaluate(tmp_path / "run" / "checkpoints" / "step00000003"), evaluate(tmp_path / "hf")
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("mlm_loss", "mlm_accuracy", "nsp_accuracy"):
        assert step[key] == pytest.approx(exported[key], abs=1e-5) and step[key] == pytest.approx(final[f"eval_{key}"], abs=1e-5)
    assert step["sequences"] == 80 and step["split"] == "validation"
    from pipeline.__main__ import main as prepare

    other = tmp_path / "other-shards"  # another tokenizer (a smaller vocabulary)
    assert prepare(["--output", str(other), "--config", str(ROOT / "configs/pipeline/demo.yaml"), "--tokenizer.vocab_size", "1500"]) == 0
    for path, message in ((tmp_path / "run" / "checkpoints" / "step00000003", "was trained with another tokenizer"),
                          (tmp_path / "hf", "has a vocabulary of 2000 but")):
        result = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(path), "--shards", str(other)],
                                capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-1000:]
    incomplete = tmp_path / "run" / "checkpoints" / "step00000099"
    incomplete.mkdir()
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "export", str(incomplete), str(tmp_path / "x")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "is not a complete checkpoint" in result.stderr
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(incomplete), "--shards", str(shards)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "is neither a complete training checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_bad_train_config_and_missing_shards_are_one_sentence(tmp_path):
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"),
               "--data.shards", str(tmp_path / "nowhere"), "--run_dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "has no COMPLETED marker" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(command + ["--train.max_stepz", "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "unknown config key 'train.max_stepz'" in result.stderr


def _torchrun(shards: Path, run_dir: Path, *extra: str) -> list[dict]:
    from trainer.dist import free_port

    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "trainer",
               "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(run_dir), "--data.micro_batch_size", "4", "--checkpoint.interval", "4", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_zero2_resume_is_bitwise_exact(shards, tmp_path):
    straight = _torchrun(shards, tmp_path / "straight", "--train.max_steps", "10")
    _torchrun(shards, tmp_path / "resumed", "--train.max_steps", "10", "--stop-after", "6")
    resumed = _torchrun(shards, tmp_path / "resumed", "--train.max_steps", "10")
    assert [m["step"] for m in resumed] == list(range(1, 11))
    assert [m["loss"] for m in resumed[6:]] == [m["loss"] for m in straight[6:]]
    assert straight[-1]["samples"] == 10 * 4 * 2


def test_elastic_resume_of_a_two_rank_checkpoint_on_one_rank(shards, tmp_path):
    """2 ranks × micro 4 stopped after step 6, resumed on 1 rank × micro 4 × accumulation 2 (the same global
    batch): DeepSpeed's universal checkpoint carries the ZeRO-2 state, the loader the sample position."""
    same = ["--train.max_steps", "10", "--data.record_samples", "true",
            "--model.hidden_dropout_prob", "0", "--model.attention_probs_dropout_prob", "0"]
    straight = _torchrun(shards, tmp_path / "straight", *same)
    _torchrun(shards, tmp_path / "elastic", *same, "--stop-after", "6")
    resumed = _train(shards, tmp_path / "elastic", *same, "--data.micro_batch_size", "4", "--train.gradient_accumulation_steps", "2")
    assert (tmp_path / "elastic" / "checkpoints" / "step00000006" / "universal").is_dir()
    assert [m["step"] for m in resumed] == list(range(1, 11))
    assert [m["lr"] for m in resumed] == [m["lr"] for m in straight]
    # Only the reduction order differs (two ranks' all-reduce vs one rank's accumulation).
    assert [m["loss"] for m in resumed[6:]] == pytest.approx([m["loss"] for m in straight[6:]], abs=1e-4)

    def consumed(run: Path) -> list[list[int]]:
        lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines] == list(range(1, 11))
        return [sorted(i for rank in line["sample_ids"] for i in rank) for line in lines]

    elastic = consumed(tmp_path / "elastic")
    assert elastic == consumed(tmp_path / "straight")  # the same samples in every step
    everything = [i for step in elastic for i in step]
    assert len(everything) == len(set(everything)) == 80  # within the epoch: none twice, none skipped


def test_deepspeed_launcher_trains_like_torchrun(shards, tmp_path):
    """The deepspeed launcher (which appends --local_rank=N) runs the same module to the same losses."""
    from trainer.dist import free_port

    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "--module", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(tmp_path / "deepspeed"), "--data.micro_batch_size", "4", "--train.max_steps", "4"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    launched = [json.loads(line) for line in (tmp_path / "deepspeed" / "metrics.jsonl").read_text().splitlines()]
    torchrun = _torchrun(shards, tmp_path / "torchrun", "--train.max_steps", "4")
    assert [m["loss"] for m in launched] == [m["loss"] for m in torchrun]


@pytest.mark.parametrize("stage", [1, 3])
def test_two_ranks_train_under_zero_stage(shards, tmp_path, stage):
    metrics = _torchrun(shards, tmp_path / f"zero{stage}", "--train.max_steps", "12", "--train.zero_stage", str(stage),
                        "--optimizer.lr", "0.002")
    assert sum(m["loss"] for m in metrics[-3:]) / 3 < sum(m["loss"] for m in metrics[:3]) / 3 - 0.2


def test_gradient_accumulation_matches_a_bigger_micro_batch(shards, tmp_path):
    no_dropout = ["--model.hidden_dropout_prob", "0", "--model.attention_probs_dropout_prob", "0", "--train.max_steps", "2",
                  "--schedule.warmup_steps", "0", "--schedule.decay", "constant"]
    accumulated = _train(shards, tmp_path / "a", *no_dropout, "--data.micro_batch_size", "2", "--train.gradient_accumulation_steps", "4")
    single = _train(shards, tmp_path / "b", *no_dropout, "--data.micro_batch_size", "8")
    assert accumulated[0]["samples"] == single[0]["samples"] == 8
    # Same 8 samples in step 1, so the same update: step 2's loss agrees (summation order differs slightly).
    assert accumulated[1]["loss"] == pytest.approx(single[1]["loss"], abs=1e-4)
    assert accumulated[0]["loss"] == pytest.approx(single[0]["loss"], abs=1e-4)


# The fault-injecting trainer the GPU check uses: this CPU says fp16 is unsupported (DeepSpeed's fp16 engine
# runs anyway), and an inf gradient is injected in the N-th backward pass (or in every one).
FP16_CHILD = [sys.executable, str(ROOT / "bench" / "gpu_run.py"), "--force-fp16-on-cpu"]


def test_fp16_overflow_skips_the_step_and_halves_the_scale(shards, tmp_path):
    command = [*FP16_CHILD, "--inject-inf-at", "3", "--config", str(ROOT / "configs/train/debug_cpu.yaml"),
               "--data.shards", str(shards), "--run_dir", str(tmp_path / "fp16"), "--train.max_steps", "5",
               "--train.precision", "fp16", "--train.initial_scale_power", "10", "--train.hysteresis", "1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines()]
    scales = [m["loss_scale"] for m in metrics]
    skipped = [m["skipped_steps"] for m in metrics]
    assert scales[:2] == [1024.0, 1024.0] and scales[2] == 512.0, scales
    assert skipped[1] == 0 and skipped[2] == 1, skipped
    assert metrics[3]["lr"] == metrics[2]["lr"] != metrics[1]["lr"]  # the skipped step does not advance the schedule


def test_fp16_scale_stuck_at_its_minimum_stops_the_run(shards, tmp_path):
    command = [*FP16_CHILD, "--inject-inf-at", "always", "--config", str(ROOT / "configs/train/debug_cpu.yaml"),
               "--data.shards", str(shards), "--run_dir", str(tmp_path / "stuck"), "--train.max_steps", "20",
               "--train.precision", "fp16", "--train.initial_scale_power", "2", "--train.hysteresis", "1",
               "--train.max_steps_at_min_scale", "3", "--log.interval", "10"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    # 4 → 2 → 1, then an overflow at the minimum: DeepSpeed would raise; we stop with one sentence.
    assert "the fp16 loss scale hit its minimum (1.0) and still overflowed at step 3" in result.stderr
    assert "Traceback" not in result.stderr
    # The steps queued inside the logging interval are the trace that explains it: recorded before stopping.
    trace = [json.loads(line) for line in (tmp_path / "stuck" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss_scale"], m["skipped_steps"]) for m in trace] == [(1, 2.0, 1), (2, 1.0, 2)]


def test_run_folder_has_tensorboard_events_and_a_report(shards, tmp_path):
    _train(shards, tmp_path / "run", "--train.max_steps", "4", "--eval.interval", "2")
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    report = (run / "report.md").read_text()
    assert "validation at step 4" in report and (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"config.yaml", "deepspeed.json", "model_config.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}


def test_sigkill_mid_step_then_resume_auto_matches_the_uninterrupted_run(shards, tmp_path):
    """2 ranks, ZeRO-2, 20 steps straight vs. the same run SIGKILLed (every process) while step 13 runs, after
    the step-10 checkpoint landed, then resumed with --resume auto: steps 11-20 and the samples are identical."""
    import os
    import signal
    import time

    from trainer.dist import free_port

    args = ["--train.max_steps", "20", "--checkpoint.interval", "10", "--data.record_samples", "true"]
    straight = _torchrun(shards, tmp_path / "straight", *args)
    run = tmp_path / "killed"
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(run), "--data.micro_batch_size", "4", *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill while step 13 runs, after the step-10 checkpoint landed
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 12 and (run / "checkpoints" / "step00000010" / "COMPLETE").exists():
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, as a node failure would
    process.wait()
    assert len(metrics.read_text().splitlines()) >= 12 and not (run / "checkpoints" / "step00000020").exists()
    resumed = _torchrun(shards, run, *args)  # --resume auto is the default
    assert [m["step"] for m in resumed] == list(range(1, 21))
    assert [m["loss"] for m in resumed[10:]] == [m["loss"] for m in straight[10:]]  # bitwise
    assert [m["rank0_samples_digest"] for m in resumed] == [m["rank0_samples_digest"] for m in straight]
    # Every rank's sample ids, step by step.
    assert (tmp_path / "straight" / "samples.jsonl").read_text() == (run / "samples.jsonl").read_text()


def test_compiled_engine_trains_the_same_and_its_checkpoint_loads(shards, tmp_path):
    """train.compile wires torch.compile into the engine; the eager backend (graph capture, no code generation)
    must give the same losses, and the checkpoint keeps the model's own parameter names."""
    plain = _train(shards, tmp_path / "plain", "--train.max_steps", "3")
    compiled = _train(shards, tmp_path / "compiled", "--train.max_steps", "3", "--train.compile", "true",
                      "--train.compile_backend", "eager")
    assert [m["loss"] for m in compiled] == pytest.approx([m["loss"] for m in plain], abs=1e-6)
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(tmp_path / "compiled" / "checkpoints" / "step00000003"),
                             "--shards", str(shards), "--max-batches", "2", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and json.loads(result.stdout)["sequences"] == 128, result.stderr[-2000:]


def test_stop_file_checkpoints_exits_75_and_the_next_run_resumes(shards, tmp_path):
    """<run_dir>/STOP (what the deepspeed launch mode's job script touches, or a user) stops the run after the
    current step with a checkpoint and exit code 75; the next run removes it and continues."""
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(run), "--train.max_steps", "12", "--checkpoint.interval", "100"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.05)
    (run / "STOP").touch()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 75, err[-2000:]
    stopped = max(int(p.name[4:]) for p in (run / "checkpoints").glob("step*"))
    assert 3 <= stopped < 12 and "STOP received: checkpointed step" in err
    resumed = _train(shards, run, "--train.max_steps", "12", "--checkpoint.interval", "100")
    assert [m["step"] for m in resumed] == list(range(1, 13)) and not (run / "STOP").exists()


def test_a_half_written_step_folder_is_replaced_not_mixed(shards, tmp_path):
    """A killed run can leave a step folder without its marker, holding another world size's per-rank files;
    the next save of that step starts from an empty folder."""
    run = tmp_path / "run"
    stale = run / "checkpoints" / "step00000002"
    stale.mkdir(parents=True)
    (stale / "zero_pp_rank_7_mp_rank_00_optim_states.pt").write_bytes(b"from a 8-rank run")
    _train(shards, run, "--train.max_steps", "2")
    assert (stale / "COMPLETE").exists() and not (stale / "zero_pp_rank_7_mp_rank_00_optim_states.pt").exists()


def test_data_smaller_than_one_global_batch_stops_in_one_sentence(shards, tmp_path):
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(tmp_path / "run"), "--data.micro_batch_size", "100000", "--train.max_steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "fewer than one global batch of 100000 (data.micro_batch_size 100000 × 1 ranks)" in result.stderr


def test_a_run_stays_with_its_data_and_its_tokenizer(shards, tmp_path):
    """The shard folder is prepared again with another tokenizer of the same vocabulary size: --resume refuses
    it, and export/eval use the tokenizer recorded when the run started."""
    import hashlib
    import shutil

    from pipeline.__main__ import main as prepare

    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    run = tmp_path / "run"
    _train(data, run, "--train.max_steps", "2")
    trained_with = (data / "spm.model").read_bytes()
    assert prepare(["--output", str(data), "--config", str(ROOT / "configs/pipeline/demo.yaml"), "--overwrite", "--tokenizer.model_type", "bpe"]) == 0
    assert (data / "spm.model").read_bytes() != trained_with
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(data),
               "--run_dir", str(run), "--train.max_steps", "4"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"checkpoint {run / 'checkpoints' / 'step00000002'} was trained on {data}" in result.stderr
    assert "now holds other data (its tokenizer, " in result.stderr and "point data.shards at the run's own shards" in result.stderr
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "export", str(run / "checkpoints" / "step00000002"), str(tmp_path / "hf")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert hashlib.sha256((tmp_path / "hf" / "spm.model").read_bytes()).digest() == hashlib.sha256(trained_with).digest()
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(run / "checkpoints" / "step00000002"), "--shards", str(data)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "was trained with another tokenizer than" in result.stderr, result.stderr[-2000:]


HOST_READS = r'''
import collections, json, os, sys, traceback
import torch
from bertline.config import load_config
from model.bert import BertModel
from trainer import dist, engine
from trainer.__main__ import Trainer
from trainer.config import TrainConfig

shards, run_dir, precision = sys.argv[1:4]
os.environ["DS_ACCELERATOR"] = "cpu"
BertModel.reads_values = lambda self, tensor: self.debug_checks  # as on a GPU: value checks of device tensors are off
config = load_config(TrainConfig, "configs/train/debug_cpu.yaml", {
    "data.shards": shards, "run_dir": run_dir, "log.interval": "1000", "train.precision": precision, "tensorboard": "false"})
placement = dist.placement(os.environ)
engine.init_distributed(placement, "cpu")
trainer = Trainer(config, placement, "none")
trainer.resume()
for _ in range(2):  # warm-up steps: first-call set-up is not the steady state
    trainer.step()
trainer.flush()
callers = collections.Counter()
for name in ("item", "__float__", "__int__", "__bool__", "__index__", "tolist"):
    def counted(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
        frame = traceback.extract_stack(limit=2)[0]
        callers["deepspeed" if "deepspeed" in frame.filename else frame.filename] += 1
        return _original(self, *args, **kwargs)
    setattr(torch.Tensor, name, counted)
for _ in range(4):
    trainer.step()
steps = dict(callers)
callers.clear()
lines = trainer.flush()
print(json.dumps({"steps": steps, "flush": dict(callers), "lines": len(lines)}))
'''


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_training_step_reads_nothing_back_from_the_device(shards, tmp_path, precision):
    """Every read of a tensor's value on the host (item, float, int, bool, tolist) waits for a GPU. Counted over
    four steps: none from the trainer or the model (their step figures stay on the device until flush, which reads
    once); DeepSpeed's own grad-norm checks (3 a step under ZeRO-2) are its business."""
    result = subprocess.run([sys.executable, "-c", HOST_READS, str(shards), str(tmp_path / "run"), precision],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    ours = {caller: n for caller, n in counts["steps"].items() if caller != "deepspeed"}
    assert ours == {}, f"host reads per 4 steps outside DeepSpeed: {ours}"
    assert counts["steps"].get("deepspeed", 0) <= 4 * 4
    assert sum(counts["flush"].values()) == 1 and counts["lines"] == 4


SLOW_CONVERSION = r'''
import sys, time
from trainer import engine
convert = engine.to_universal
def slow(step_folder):  # a large model on a shared file system: longer than the collective timeout
    time.sleep(20)
    return convert(step_folder)
engine.to_universal = slow
from trainer.__main__ import main
sys.exit(main())
'''


def test_a_conversion_longer_than_the_collective_timeout_is_waited_for_and_eval_is_world_size_free(shards, tmp_path):
    """One rank trains 4 steps; two ranks resume it. Rank 0 converts to a universal checkpoint for 20 s while the
    collective timeout is 6 s: rank 1 waits on the file system, not in a barrier. Then the two-rank run's final
    evaluation equals `bertline eval` of its checkpoint in one process: the same eval.samples whatever the world size."""
    run = tmp_path / "run"
    _train(shards, run, "--data.micro_batch_size", "4", "--train.max_steps", "8", "--stop-after", "4")
    script = tmp_path / "slow_conversion.py"
    script.write_text(SLOW_CONVERSION)
    from trainer.dist import free_port

    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
               "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards), "--run_dir", str(run),
               "--data.micro_batch_size", "2", "--train.max_steps", "8", "--checkpoint.interval", "4",
               "--train.collective_timeout_minutes", "0.1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "step00000004" / "universal").is_dir()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 9))
    scored = subprocess.run([sys.executable, "-m", "bertline.cli", "eval", str(run / "checkpoints" / "step00000008"), "--shards", str(shards),
                             "--json", "--batch-size", "8", "--max-batches", "10", "--seed", "1234"],  # debug_cpu.yaml: eval.samples 80
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert scored.returncode == 0, scored.stderr[-2000:]
    one_process = json.loads(scored.stdout)
    for key in ("mlm_loss", "mlm_accuracy", "nsp_accuracy"):
        assert lines[-1][f"eval_{key}"] == pytest.approx(one_process[key], abs=1e-5)


def test_skipped_corrupt_shards_reach_the_metrics_from_loader_workers(shards, tmp_path):
    import shutil

    from trainer.data import ShardSet, shard_order

    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    first = int(shard_order(1234, 0, len(ShardSet.open(broken).shards))[0])  # debug_cpu.yaml's seed: read in step 1
    index = broken / ShardSet.open(broken).shards[first]["index"]["path"]
    index.write_bytes(b"not an index" + index.read_bytes()[12:])
    lines = _train(broken, tmp_path / "run", "--train.max_steps", "3", "--data.num_workers", "2", "--data.skip_corrupt_shards", "true")
    assert [m["skipped_shards"] for m in lines] == [1, 1, 1] and lines[-1]["skipped_records"] == 0


def test_divergence_inside_a_logging_interval_stops_before_any_checkpoint(shards, tmp_path):
    """Figures are read every log.interval (4) steps: a loss that became non-finite at step 2 stops the run at that
    read, with every step read back in metrics.jsonl and no checkpoint of the diverged weights."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(run), "--train.max_steps", "12", "--optimizer.lr", "1e6", "--schedule.warmup_steps", "0",
               "--train.gradient_clipping", "0", "--log.interval", "4", "--checkpoint.interval", "3", "--tensorboard", "false"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    assert re.search(r"bertline train: error: the loss became (nan|inf) at step 2 \(fp32\); training stopped", result.stderr)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (run / "checkpoints").exists()  # the read before step 3's checkpoint found the divergence
