"""Resume cost: wall time of a `python -m trainer` process that resumes and trains one step, from a
checkpoint at step 10 against one at step 10,000 (same weights; the step-10 checkpoint's loader position,
step count and folder name rewritten to what 10,000 steps would have left). The loader's resume is a seek
to (epoch, position), so the two should cost the same. Target (issue #4): ratio ≤ 1.2.

    .venv/bin/python bench/resume.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

from pipeline.__main__ import main as prepare  # noqa: E402
from trainer.checkpoint import MARKER, tag  # noqa: E402
from trainer.data import ShardSet, batches_per_epoch  # noqa: E402

TRAIN = ["--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--checkpoint.interval", "10", "--eval.interval", "100000",
         "--tensorboard", "false"]


def trainer(shards: Path, run_dir: Path, max_steps: int) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trainer", *TRAIN, "--data.shards", str(shards), "--run_dir", str(run_dir),
                             "--train.max_steps", str(max_steps)], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return time.perf_counter() - started


def pretend_step(run_dir: Path, shards: Path, step: int) -> None:
    """Rename the step-10 checkpoint to `step` and give its client state the loader position of that step."""
    folder = run_dir / "checkpoints"
    source, target = folder / tag(10), folder / tag(step)
    source.rename(target)
    states = target / "mp_rank_00_model_states.pt"
    state = torch.load(states, map_location="cpu", weights_only=False)
    global_batch = 8  # debug_cpu.yaml: micro 8, 1 rank, no accumulation
    per_epoch = batches_per_epoch(ShardSet.open(shards).total_samples, 0, global_batch)
    state["loader"] = {"epoch": step // per_epoch, "position": (step % per_epoch) * global_batch}
    state["train"] = {"step": step, "samples": step * global_batch}
    torch.save(state, states)
    (folder / "latest").write_text(tag(step))
    marker = json.loads((target / MARKER).read_text())
    (target / MARKER).write_text(json.dumps({**marker, "step": step}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of each (the median is printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bertline-resume-") as scratch:
        scratch = Path(scratch)
        shards = scratch / "shards"
        if prepare(["--output", str(shards), "--config", str(ROOT / "configs/pipeline/demo.yaml")]) != 0:
            return 1
        trainer(shards, scratch / "base", 10)
        for name in ("at10", "at10000"):
            shutil.copytree(scratch / "base", scratch / name)
        pretend_step(scratch / "at10000", shards, 10_000)
        times = {"at10": [], "at10000": []}
        for _ in range(args.repeats):  # interleaved; each run resumes and trains one step, then is reset
            for name, step in (("at10", 10), ("at10000", 10_000)):
                run = scratch / f"{name}-try"
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(scratch / name, run)
                times[name].append(trainer(shards, run, step + 1))
                last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                assert last["step"] == step + 1, last
    at10, at10000 = statistics.median(times["at10"]), statistics.median(times["at10000"])
    print(f"bench/resume.py: wall seconds of a process that resumes and trains one step (median of {args.repeats})")
    print("resumed from | seconds")
    print(f"step 10 | {at10:.2f}")
    print(f"step 10,000 | {at10000:.2f}")
    print(f"ratio | {at10000 / at10:.3f}")
    record({"what": "wall time to resume and train one step: at step 10,000 vs at step 10, s", "ours": at10000, "baseline": at10,
            "ratio": at10000 / at10, "target": "<= 1.2", "met": at10000 / at10 <= 1.2, "higher_is_better": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
