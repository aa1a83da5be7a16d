"""The one-shot GPU check (run by bench/gpu_check.sh; see bench/README.md):

    python bench/gpu_check.py --out DIR --shards SHARDS [--dry-run]

On one GPU, with the shipped configs as they are (configs/train/bert_base_zero2_fp16.yaml, bert_large_zero2_bf16.yaml:
their micro batch, optimizer, ZeRO stage and communication settings; only the shards, the step count, checkpoints
and the logging interval are set here): BERT-base ZeRO-2 fp16 and BERT-large ZeRO-2 bf16 at sequence 128 for 40
steps (samples/s, tokens/s, MFU on real tokens and on padded positions against the H200's dense fp16/bf16 peak),
an fp16 run with one injected overflow (the loss-scale trace), a save → new process → resume whose next step must
give the identical loss, and with --compile both again under torch.compile.
--dry-run rehearses every step on CPU with the tiny model. Writes DIR/gpu_check.json and DIR/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H200_PEAK_TFLOPS = 989.0  # dense fp16/bf16 tensor-core peak of an H200 SXM
TARGETS = {"large_sequences_per_s": 2200, "large_mfu": 0.55}


def train(name: str, out: Path, config: str, args: list[str], switches: list[str] = (), timeout: int = 400) -> list[dict]:
    """One `python -m trainer` process (through bench/gpu_run.py); returns its metrics.jsonl."""
    run_dir = out / "runs" / name
    command = [sys.executable, str(ROOT / "bench" / "gpu_run.py"), *switches, "--config", str(ROOT / config),
               "--run_dir", str(run_dir), "--tensorboard", "false", *args]
    started = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout)
    print(f"  {name}: exit {result.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {result.returncode}; see {out / 'logs' / (name + '.log')}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def throughput(metrics: list[dict], skip: int) -> dict:
    """Medians over the steps after the first `skip` (allocator warm-up, first kernels, compilation). Step figures
    are averages over a logging interval (the trainer reads the device once per interval): skip whole intervals."""
    steady = metrics[skip:] or metrics
    median = lambda key: statistics.median(m[key] for m in steady) if steady[0].get(key) is not None else None  # noqa: E731
    return {"steps_measured": len(steady), "sequences_per_s": median("samples_per_s"), "tokens_per_s": median("tokens_per_s"),
            "model_tflops": median("model_tflops"), "mfu": median("mfu"), "padded_mfu": median("padded_mfu"), "final_loss": metrics[-1]["loss"],
            "peak_memory_gb": max((m.get("gpu_memory_gb") or 0.0) for m in metrics) or None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, a few steps: rehearse every step.")
    parser.add_argument("--compile", action="store_true", help="also train base and large with train.compile (torch.compile; a few minutes more)")
    args = parser.parse_args()
    out = args.out
    shutil.rmtree(out / "runs", ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --dry-run to rehearse on CPU", file=sys.stderr)
        return 2
    report: dict = {"dry_run": dry, "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else "cpu"}
    try:
        import deepspeed

        report["deepspeed"] = deepspeed.__version__
    except ImportError as exc:
        print(f"gpu_check: deepspeed is not importable ({exc}); gpu_check.sh installs it from the bundle", file=sys.stderr)
        return 2
    common = ["--data.shards", str(args.shards)]
    if dry:  # the tiny model on CPU, every step read back
        common += ["--model.preset", "tiny", "--train.device", "cpu", "--data.micro_batch_size", "8", "--data.num_workers", "0",
                   "--log.interval", "1"]
        fp16, steps, skip = ["--force-fp16-on-cpu"], 6, 2
    else:  # four logging intervals of 10 steps; the first (warm-up, compilation) is not measured
        common += ["--train.peak_tflops_per_device", str(H200_PEAK_TFLOPS), "--log.interval", "10"]
        fp16, steps, skip = [], 40, 10
    base, large = "configs/train/bert_base_zero2_fp16.yaml", "configs/train/bert_large_zero2_bf16.yaml"
    print(f"gpu_check: {report['device']}, torch {report['torch']}, deepspeed {report['deepspeed']}{' (dry run)' if dry else ''}", flush=True)
    started = time.perf_counter()

    # 1. BERT-base, ZeRO-2, fp16: throughput; it checkpoints at steps-1 and steps (for 3).
    stop = steps
    metrics = train("base_zero2_fp16", out, base, [*common, "--train.max_steps", str(steps + 10), "--checkpoint.interval", str(stop - 1),
                                                   "--stop-after", str(stop)], fp16)
    report["base_zero2_fp16"] = {"preset": "tiny" if dry else "base", "precision": "fp16", "zero_stage": 2, **throughput(metrics, skip)}
    straight_next = metrics[-1]

    # 2. BERT-large, ZeRO-2, bf16: throughput against the targets.
    metrics = train("large_zero2_bf16", out, large, [*common, "--train.max_steps", str(steps), "--checkpoint.interval", "100000"])
    report["large_zero2_bf16"] = {"preset": "tiny" if dry else "large", "precision": "bf16", "zero_stage": 2, **throughput(metrics, skip)}

    # 3. Resume on the GPU: drop the last checkpoint so a new process resumes from the one before it and
    #    trains the same next step: its loss must be identical.
    run = out / "runs" / "base_zero2_fp16"
    last = run / "checkpoints" / f"step{stop:08d}"
    shutil.rmtree(last)
    resumed = train("base_zero2_fp16", out, base, [*common, "--train.max_steps", str(steps + 10), "--checkpoint.interval", "100000",
                                                   "--stop-after", str(stop)], fp16)
    report["resume"] = {"checkpoint_step": stop - 1, "next_step": stop, "loss_before": straight_next["loss"],
                        "loss_after_resume": resumed[-1]["loss"], "identical": straight_next["loss"] == resumed[-1]["loss"]}

    # 4. fp16 overflow: an inf gradient in the 3rd backward pass → that step is skipped, the scale halves.
    metrics = train("base_fp16_overflow", out, base, [*common, "--train.max_steps", "6", "--checkpoint.interval", "100000",
                                                      "--train.initial_scale_power", "16", "--train.hysteresis", "1", "--log.interval", "1"],
                    [*fp16, "--inject-inf-at", "3"])
    trace = [{"step": m["step"], "loss_scale": m["loss_scale"], "skipped_steps": m["skipped_steps"], "lr": m["lr"]} for m in metrics]
    report["fp16_overflow"] = {"trace": trace, "skipped": trace[-1]["skipped_steps"],
                               "scale_halved": trace[1]["loss_scale"] == trace[2]["loss_scale"] * 2}

    # 5. Optional: the same two runs with torch.compile (inductor on the GPU, the eager backend in the dry run).
    if args.compile:
        compiled = ["--train.compile", "true", "--train.compile_backend", "eager" if dry else "inductor"]
        for name, config, precision, stage in (("base_zero2_fp16_compiled", base, "fp16", 2), ("large_zero2_bf16_compiled", large, "bf16", 2)):
            metrics = train(name, out, config, [*common, *compiled, "--train.max_steps", str(steps), "--checkpoint.interval", "100000"],
                            fp16 if precision == "fp16" else [])
            report[name] = {"preset": "tiny" if dry else name.split("_")[0], "precision": precision, "zero_stage": stage,
                            "compiled": True, **throughput(metrics, skip)}

    large_figures = report["large_zero2_bf16"]
    report["targets"] = {**TARGETS, "met": None if dry else bool(
        large_figures["sequences_per_s"] >= TARGETS["large_sequences_per_s"] and (large_figures["mfu"] or 0) >= TARGETS["large_mfu"])}
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("fp16_overflow",)}, indent=2))
    print(f"fp16 overflow trace (step: scale, skipped): {[(t['step'], t['loss_scale'], t['skipped_steps']) for t in trace]}")
    print(f"gpu_check: wrote {out / 'gpu_check.json'} in {report['seconds']} s")
    ok = report["resume"]["identical"] and report["fp16_overflow"]["skipped"] == 1 and report["fp16_overflow"]["scale_halved"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
