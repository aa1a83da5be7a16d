"""Rank-0 run records: metrics.jsonl (one line per optimizer step), TensorBoard scalars, and at the end a
report (Markdown + a PNG of loss, accuracy and throughput against the step)."""

from __future__ import annotations

import json
from pathlib import Path

SCALARS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "lr", "loss_scale", "skipped_steps",
           "samples_per_s", "tokens_per_s", "model_tflops", "mfu", "eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy")


class RunLog:
    """Appends metrics to <run_dir>/metrics.jsonl and TensorBoard (<run_dir>/tensorboard)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, metrics: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self._writer is not None:
            for name in SCALARS:
                if metrics.get(name) is not None:
                    self._writer.add_scalar(f"train/{name}" if not name.startswith("eval_") else f"eval/{name[5:]}", metrics[name], metrics["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def write_report(run_dir: Path) -> Path:
    """report.md and report.png from metrics.jsonl (all of it, across resumed sessions)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_mlm_loss" in r]
    try:
        plotted = _plot(rows, evals, run_dir / "report.png")
    except ImportError:  # a bare GPU image without matplotlib (bench/gpu_check.sh): the report, without its plot
        plotted = False
    last = rows[-1]
    lines = [f"# Run report: {run_dir}", "", f"- steps: {last['step']}, samples: {last['samples']:,}",
             f"- final train loss {last['loss']:.4f} (MLM {last['mlm_loss']:.4f}, accuracy {last['mlm_accuracy']:.3f}; "
             f"NSP accuracy {last['nsp_accuracy']:.3f})",
             f"- median throughput {sorted(r['samples_per_s'] for r in rows)[len(rows) // 2]:,.1f} samples/s",
             f"- skipped (fp16 overflow) steps: {last['skipped_steps']}"]
    if evals:
        lines.append(f"- validation at step {evals[-1]['step']}: MLM loss {evals[-1]['eval_mlm_loss']:.4f}, "
                     f"MLM accuracy {evals[-1]['eval_mlm_accuracy']:.3f}, NSP accuracy {evals[-1]['eval_nsp_accuracy']:.3f}")
    lines += ["", "![loss, accuracy and throughput](report.png)" if plotted else "(no plot: matplotlib is not installed)", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return run_dir / "report.md"


def _plot(rows: list[dict], evals: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss"] for r in rows], label="train loss")
    axes[0].plot(steps, [r["mlm_loss"] for r in rows], label="train MLM loss")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["eval_mlm_loss"] for r in evals], "o-", label="validation MLM loss")
    axes[0].set_title("loss")
    axes[1].plot(steps, [r["mlm_accuracy"] for r in rows], label="MLM accuracy")
    axes[1].plot(steps, [r["nsp_accuracy"] for r in rows], label="NSP accuracy", alpha=0.5)
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["eval_mlm_accuracy"] for r in evals], "o-", label="validation MLM accuracy")
    axes[1].set_title("accuracy")
    axes[2].plot(steps, [r["samples_per_s"] for r in rows], label="samples/s")
    axes[2].set_title("throughput")
    for axis in axes:
        axis.set_xlabel("optimizer step")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
