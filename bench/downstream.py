"""What pretraining buys on a real task, and whether our fine-tuning is right: Chinese review sentiment.

    .venv/bin/python bench/downstream.py [--quick] [--pretrain-steps N --pretrain-lr LR --dupe-factor K] [--seeds S] [--epochs E] [--device cuda]
    .venv/bin/python bench/downstream.py --pretrained RUN/checkpoints/stepNNNNNNNN [--seeds S] [--epochs E]
    # needs the bench extra (accelerate): make bench installs it

With --pretrained, steps 1 and 2 are skipped: the step folder of a longer run (on a GPU, or hours on CPU) is exported
and compared instead; the random twin takes that run's architecture and tokenizer.

1. `bertline prepare` on `../shared/corpora/zh_novels` with configs/pipeline/chinese.yaml (SentencePiece trained in
   the job with Chinese in single characters, NFKC, jieba whole-word masking), sequence 128.
2. `bertline train`: the `mini` preset (4 × 256) on CPU, 1 rank, DeepSpeed ZeRO-2; `bertline export` of its last step.
3. `bertline finetune` on `../shared/downstream/zh_reviews` (14,025 train / 3,336 test) from that export, and from a
   folder of the same architecture and tokenizer with random weights; the same hyper-parameters and seed (one
   epoch, 64 tokens, batch 32, LR 2e-4, 10% warmup then linear decay, weight decay 0.01).
4. HuggingFace `Trainer` + `BertForSequenceClassification.from_pretrained(export)` with the same hyper-parameters
   (AdamW, linear warmup/decay, weight decay, clipping, batch, epochs, max length) on the same token ids: a check
   that our fine-tuning is right.
Accuracy of the best epoch on test.jsonl, with its standard error sqrt(p(1-p)/n); with --seeds S, the mean of S
fine-tuning seeds per side, its standard error adding the seeds' variance / S. Targets: pretrained beats random
init by ≥ 3 standard errors of the difference; ours within 1 point of HF's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record, run_logged as run  # noqa: E402
from trainer.checkpoint import MARKER, tag  # noqa: E402

SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpora" / "zh_novels" / "docs.txt"
TASK = SHARED / "downstream" / "zh_reviews"


def random_twin(export: Path, folder: Path) -> Path:
    """The exported architecture and tokenizer with fresh random weights."""
    import torch

    from model import BertModel
    from model.hf import config_from_hf, save_pretrained

    torch.manual_seed(0)
    config = config_from_hf(json.loads((export / "config.json").read_text()))
    settings = json.loads((export / "bertline_tokenizer.json").read_text())
    save_pretrained(BertModel(config), folder, tokenizer_files=(export / settings["file"], export / "bertline_tokenizer.json"))
    return folder


def summarise(side: list[dict], n: int) -> dict:
    """Mean accuracy over fine-tuning seeds, with its standard error: the test set's sampling error p(1-p)/n, which
    more seeds on the same test set do not shrink, plus the seeds' variance over their number."""
    accuracies = [r["eval_accuracy"] for r in side]
    mean = statistics.fmean(accuracies)
    seed_var = statistics.variance(accuracies) if len(accuracies) > 1 else 0.0
    return {"eval_accuracy": mean, "eval_loss": statistics.fmean(r["eval_loss"] for r in side), "se": math.sqrt(mean * (1 - mean) / n + seed_var / len(side)),
            "seeds": accuracies, "epochs": side[0]["epochs"], "seconds": round(statistics.fmean(r["seconds"] for r in side), 1)}


def linear_probe(model: Path, train: Path, test: Path, max_length: int) -> float:
    """Test accuracy of an L2-regularised logistic regression on the frozen encoder's mean-pooled last layer
    (standardised on the train set, full-batch L-BFGS): what the weights already hold, without fine-tuning's
    seed noise. Deterministic for a folder."""
    import torch

    from finetune import data, source

    encoder, tokenizer = source.load(model)
    encoder.eval()
    labels = data.LabelMap(("0", "1"))
    pad = tokenizer.special_ids["[PAD]"]

    def features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = data.encode_classification(data.read_rows(path), path, tokenizer.encode, tokenizer.special_ids, labels,
                                             max_length, "text", None, "label")
        pooled = []
        for start in range(0, len(encoded), 256):
            batch = {k: torch.from_numpy(v) for k, v in data.collate(encoded, range(start, min(start + 256, len(encoded))), pad).items()}
            with torch.no_grad():
                hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.cat(pooled), torch.as_tensor(encoded.labels)

    (x_train, y_train), (x_test, y_test) = features(train), features(test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x_train.shape[1], 2, requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ weight + bias, y_train) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(((x_test @ weight + bias).argmax(1) == y_test).float().mean())


def subset(path: Path, rows: int | None, out: Path) -> Path:
    if rows is None:
        return path
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def hf_trainer(export: Path, train: Path, test: Path, hp: dict, work: Path, device: str) -> dict:
    """transformers.Trainer on the export, fed the ids our tokenizer gives (the same ids bertline finetune trains on)."""
    import torch
    import transformers

    from finetune import data, source

    _, tokenizer = source.load(export)
    labels = data.LabelMap(("0", "1"))
    encoded = {name: data.encode_classification(data.read_rows(path), path, tokenizer.encode, tokenizer.special_ids, labels,
                                                hp["max_length"], "text", None, "label") for name, path in (("train", train), ("test", test))}
    as_rows = {name: [{"input_ids": e.input_ids[i], "token_type_ids": e.token_type_ids[i], "label": e.labels[i]} for i in range(len(e))]
               for name, e in encoded.items()}
    pad = tokenizer.special_ids["[PAD]"]

    def collate(rows: list[dict]) -> dict:
        batch = data.Encoded([r["input_ids"] for r in rows], [r["token_type_ids"] for r in rows], [r["label"] for r in rows])
        arrays = data.collate(batch, range(len(rows)), pad)
        return {name: torch.from_numpy(value) for name, value in arrays.items()}

    def accuracy(prediction) -> dict:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    total_steps = -(-len(as_rows["train"]) // hp["batch_size"]) * hp["epochs"]
    transformers.set_seed(hp["seed"])
    model = transformers.BertForSequenceClassification.from_pretrained(str(export), num_labels=2)
    arguments = transformers.TrainingArguments(
        output_dir=str(work / "hf"), num_train_epochs=hp["epochs"], per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"], learning_rate=hp["lr"], warmup_steps=int(hp["warmup_ratio"] * total_steps),
        weight_decay=hp["weight_decay"], lr_scheduler_type="linear", max_grad_norm=1.0, adam_epsilon=1e-8, seed=hp["seed"],
        eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to=[], use_cpu=device == "cpu",
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=as_rows["train"], eval_dataset=as_rows["test"],
                                   data_collator=collate, compute_metrics=accuracy)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    best = max(evals, key=lambda entry: entry["eval_accuracy"])
    return {"eval_accuracy": best["eval_accuracy"], "eval_loss": best["eval_loss"], "epochs": [e["eval_accuracy"] for e in evals],
            "seconds": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: a fifth of the corpus, 20 pretraining steps, 1,000 train / 500 test rows.")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Where pretraining and fine-tuning run (cuda: one GPU).")
    parser.add_argument("--seeds", type=int, default=1,
                        help="Fine-tune each side with this many seeds (42, 43, …) and compare means: a single run of each is about ±1 point apart by chance.")
    parser.add_argument("--dupe-factor", type=int, default=2, help="Masked copies of each document in the shards (masks are fixed at prepare time).")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="Skip prepare and pretraining: fine-tune this step folder of a bertline run (RUN/checkpoints/stepNNNNNNNN).")
    parser.add_argument("--epochs", type=int, default=1, help="Fine-tuning epochs, the same on every side (BERT's recipe is 2–4).")
    args = parser.parse_args()
    if args.pretrained is not None and not (args.pretrained / MARKER).exists():
        print(f"bench/downstream.py: --pretrained {args.pretrained} is not a complete step folder of a bertline run "
              f"(no {MARKER} marker); pass RUN/checkpoints/stepNNNNNNNN")
        return 2
    for path in (CORPUS, TASK / "train.jsonl"):
        if not path.exists():
            print(f"bench/downstream.py: skipped: {path} is absent (the team's shared data sits beside the project root)")
            return 0
    steps = args.pretrain_steps or (20 if args.quick else 600)
    # One epoch of 64-token reviews (the median review is 46 characters): three fine-tunings of the whole train set
    # cost about 15 minutes on 2 cores; 128 tokens or 3 epochs would triple that.
    hp = {"epochs": args.epochs, "lr": 2e-4, "batch_size": 32, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_length": 64, "seed": 42}
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bertline-downstream-") as scratch:
        work = Path(scratch)
        shards, run_dir, export = work / "shards", work / "pretrain", work / "export"
        if args.pretrained is None:
            corpus = subset(CORPUS, 3000 if args.quick else None, work / "docs.txt")  # quick: the first chapters
            timing = {"prepare": run([python, "-m", "bertline.cli", "prepare", "--config", "configs/pipeline/chinese.yaml", "--input", str(corpus),
                                      "--output", str(shards), "--pairs.dupe_factor", str(args.dupe_factor)], work / "prepare.log")}
            timing["pretrain"] = run([python, "-m", "trainer", "--config", "configs/train/debug_cpu.yaml", "--model.preset", "mini",
                                      "--data.shards", str(shards), "--run_dir", str(run_dir), "--train.max_steps", str(steps),
                                      "--data.micro_batch_size", "32", "--optimizer.lr", str(args.pretrain_lr), "--schedule.warmup_steps", str(max(1, steps // 20)),
                                      "--train.device", args.device, "--checkpoint.interval", str(steps), "--eval.interval", str(max(1, steps // 5)),
                                      # the whole validation split (1,184 sequences), not debug_cpu.yaml's 80: ±0.01 noise hides the trend
                                      "--eval.samples", "2048", "--tensorboard", "false"], work / "pretrain.log")
            step_folder = run_dir / "checkpoints" / tag(steps)
        else:
            step_folder, timing = args.pretrained, {"prepare": math.nan, "pretrain": math.nan}
            run_dir, steps = step_folder.parent.parent, json.loads((step_folder / MARKER).read_text())["step"]
        run([python, "-m", "bertline.cli", "export", str(step_folder), str(export)], work / "export.log")
        evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval_mlm_accuracy" in line]
        pretrain_eval = ([e for e in evals if e["step"] <= steps] or [{}])[-1]  # the step's own (or latest earlier) held-out figures
        train = subset(TASK / "train.jsonl", 1000 if args.quick else None, work / "train.jsonl")
        test = subset(TASK / "test.jsonl", 500 if args.quick else None, work / "test.jsonl")
        runs = {"pretrained": [], "random init": [], "HuggingFace Trainer": []}
        random = random_twin(export, work / "random")
        for seed in range(hp["seed"], hp["seed"] + args.seeds):
            for name, model in (("pretrained", export), ("random init", random)):
                out = work / f"{name.replace(' ', '-')}-{seed}"
                seconds = run([python, "-m", "bertline.cli", "finetune", "--model", str(model), "--train", str(train), "--eval", str(test),
                               "--output", str(out), "--epochs", str(hp["epochs"]), "--lr", str(hp["lr"]), "--batch-size", str(hp["batch_size"]),
                               "--warmup-ratio", str(hp["warmup_ratio"]), "--weight-decay", str(hp["weight_decay"]),
                               "--max-length", str(hp["max_length"]), "--seed", str(seed), "--device", args.device], work / f"{out.name}.log")
                metrics = json.loads((out / "metrics.json").read_text())
                runs[name].append({**metrics["best"], "epochs": [e["eval_accuracy"] for e in metrics["epochs"]], "seconds": round(seconds, 1)})
            runs["HuggingFace Trainer"].append(hf_trainer(export, train, test, {**hp, "seed": seed}, work / f"hf-{seed}", args.device))
        probe = {"pretrained": linear_probe(export, train, test, hp["max_length"]), "random init": linear_probe(random, train, test, hp["max_length"])}
        n, train_rows = (sum(1 for _ in open(path, encoding="utf-8")) for path in (test, train))
    results = {name: summarise(side, n) for name, side in runs.items()}
    se = {name: r["se"] for name, r in results.items()}
    gain = results["pretrained"]["eval_accuracy"] - results["random init"]["eval_accuracy"]
    gain_se = gain / math.sqrt(se["pretrained"] ** 2 + se["random init"] ** 2)
    vs_hf = results["pretrained"]["eval_accuracy"] - results["HuggingFace Trainer"]["eval_accuracy"]
    origin = (f"{args.pretrained} ({steps} steps" if args.pretrained else
              f"mini pretrained {steps} steps × 32 on zh_novels (prepare {timing['prepare']:.0f} s, pretrain {timing['pretrain']:.0f} s")
    print(f"bench/downstream.py: {origin}; held-out MLM accuracy {pretrain_eval.get('eval_mlm_accuracy', float('nan')):.3f}); zh_reviews "
          f"{train_rows} train / {n} test; {hp}")
    # The eval loss tells two runs apart when their accuracies tie (they are counts out of the test rows).
    print(f"| fine-tuned from | accuracy (best epoch{', mean of seeds' if args.seeds > 1 else ''}) | ± s.e. | eval loss | "
          f"{'per seed' if args.seeds > 1 else 'per epoch'} | wall s |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['eval_accuracy']:.4f} | {se[name]:.4f} | {r['eval_loss']:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in (r['seeds'] if args.seeds > 1 else r['epochs']))} | {r['seconds']:.0f} |")
    print(f"pretrained − random init: {gain * 100:+.2f} points = {gain_se:.1f} s.e. of the difference (target ≥ 3); "
          f"bertline − HF Trainer: {vs_hf * 100:+.2f} points (target within ±1)")
    # Fine-tuning can hide what pretraining left in the weights (or make up for its absence): the probe reads them frozen.
    print(f"linear probe on frozen mean-pooled features: pretrained {probe['pretrained']:.4f}, random init {probe['random init']:.4f}")
    met = gain_se >= 3 and abs(vs_hf) <= 0.01
    record({"what": f"zh_reviews accuracy, mini pretrained {steps} steps vs random init (in s.e. of the difference); vs HF Trainer",
            "ratio": gain_se, "target": "≥ 3 s.e., |ours − HF| ≤ 1 point", "met": met, "higher_is_better": True,
            "results": results, "standard_errors": se, "linear_probe": probe, "pretrain_steps": steps, "fine_tuning_seeds": args.seeds, "hyperparameters": hp, "test_rows": n,
            "seconds": timing, "pretrain_eval": {k: v for k, v in pretrain_eval.items() if k.startswith("eval_")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
