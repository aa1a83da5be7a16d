"""`bertline finetune`: fine-tune a pretrained encoder (a bertline step folder or a HuggingFace BERT folder) on a
labelled file, evaluate every epoch, keep the best epoch as a HuggingFace folder with its label names.

    bertline finetune --model PATH --train FILE --eval FILE --output DIR [--task classification|token_classification] …

The tokenizer comes with the model. The optimizer is torch's AdamW (decay on matrices only), linear warmup over
--warmup-ratio of the steps then linear decay to 0, gradient clipping at 1.0: transformers.Trainer's defaults,
so the two can be compared on equal terms (bench/downstream.py does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bertline.errors import UserError, run_command
from finetune import data, source

log = logging.getLogger("bertline.finetune")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bertline finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="<run_dir>/checkpoints/stepNNNNNNNN, or a HuggingFace BERT folder.")
    parser.add_argument("--train", required=True, type=Path, help="Training examples: JSON lines (.jsonl) or CSV (.csv/.tsv).")
    parser.add_argument("--eval", required=True, type=Path, help="Evaluation examples, same format and fields.")
    parser.add_argument("--output", required=True, type=Path, help="Folder for metrics.json and the fine-tuned model (a HuggingFace folder).")
    parser.add_argument("--task", choices=("classification", "token_classification"), default="classification")
    parser.add_argument("--text-field", default="text", help="classification: the text (segment A).")
    parser.add_argument("--text-pair-field", default=None, help="classification: segment B of a sentence pair.")
    parser.add_argument("--label-field", default="label", help="classification: integers or strings (mapped, saved in config.json).")
    parser.add_argument("--num-labels", type=int, default=None, help="1: regression on a numeric label (mean squared error), as in transformers.")
    parser.add_argument("--words-field", default="tokens", help="token_classification: the list of words.")
    parser.add_argument("--tags-field", default="tags", help="token_classification: one tag per word.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per example, [CLS] and [SEP] included; longer ones are cut and counted.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 autocast on a GPU, fp32 on CPU.")
    parser.add_argument("--json", action="store_true", help="Make the last line of stdout one JSON object with the best epoch's figures.")
    args = parser.parse_args(argv)
    for name in ("max_length", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.warmup_ratio < 1:
        parser.error("--warmup-ratio must be in [0, 1)")
    return args


def build(args: argparse.Namespace):
    """(model, tokenizer, label map, train data, eval data) for the task."""
    from model import BertForSequenceClassification, BertForTokenClassification

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints while it gathers ZeRO partitions
        encoder, tokenizer = source.load(args.model)
    if args.max_length > encoder.config.max_position_embeddings:
        raise UserError(f"--max-length {args.max_length} exceeds the {encoder.config.max_position_embeddings} positions of {args.model}; lower it")
    train_rows, eval_rows = data.read_rows(args.train), data.read_rows(args.eval)
    if args.task == "classification":
        if args.num_labels == 1:
            labels = data.REGRESSION
        else:
            labels = data.LabelMap.from_values([data.field(r, args.label_field, args.train, "--label-field") for r in train_rows])
            if args.num_labels is not None and args.num_labels != len(labels.names):
                raise UserError(f"--num-labels {args.num_labels} but {args.train} has {len(labels.names)} distinct labels; drop the flag "
                                f"(or 1 for a regression)")
        encode = lambda rows, path: data.encode_classification(  # noqa: E731
            rows, path, tokenizer.encode, tokenizer.special_ids, labels, args.max_length, args.text_field, args.text_pair_field, args.label_field)
        head = BertForSequenceClassification
    else:
        tags = [tag for r in train_rows if isinstance(found := data.field(r, args.tags_field, args.train, "--tags-field"), list) for tag in found]
        if not tags:
            raise UserError(f"{args.train} has no tags in {args.tags_field!r}; pass a file with tagged words")
        labels = data.LabelMap(tuple(sorted({str(t) for t in tags})))
        encode = lambda rows, path: data.encode_tokens(  # noqa: E731
            rows, path, tokenizer.encode, tokenizer.special_ids, labels, args.max_length, args.words_field, args.tags_field)
        head = BertForTokenClassification
    train, evaluation = encode(train_rows, args.train), encode(eval_rows, args.eval)
    torch.manual_seed(args.seed)  # the classifier's initialisation, then dropout
    model = head(encoder.config, num_labels=len(labels.names), bert=encoder)
    return model, tokenizer, labels, train, evaluation


def schedule(step: int, total: int, warmup: int) -> float:
    """transformers' linear schedule with warmup, as a multiplier of the peak LR."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def to_device(batch: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value).to(device) for name, value in batch.items()}


def evaluate(model, evaluation: data.Encoded, args, device: str, pad_id: int, regression: bool) -> dict[str, float]:
    model.eval()
    losses, weights, predicted, gold = [], [], [], []
    with torch.no_grad(), autocast(args, device):
        for start in range(0, len(evaluation), args.batch_size):
            batch = to_device(data.collate(evaluation, range(start, min(start + args.batch_size, len(evaluation))), pad_id), device)
            out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["labels"])
            logits, labels = out.logits.float(), batch["labels"]
            if regression:
                predicted.append(logits.squeeze(-1).cpu().numpy())
                gold.append(labels.float().cpu().numpy())
                weights.append(len(labels))
            else:
                keep = labels != data.IGNORE_INDEX  # token classification: first pieces only
                predicted.append(logits.argmax(-1)[keep].cpu().numpy())
                gold.append(labels[keep].cpu().numpy())
                weights.append(int(keep.sum()))
            losses.append(float(out.loss))
    model.train()
    predicted_all, gold_all = np.concatenate(predicted), np.concatenate(gold)
    figures = data.regression_figures(predicted_all, gold_all) if regression else data.classification_figures(predicted_all, gold_all)
    return {"loss": float(np.average(losses, weights=weights)), **figures}


def autocast(args, device: str):
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device == "cuda")
    return torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train(args: argparse.Namespace) -> dict:
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    model, tokenizer, labels, train_data, evaluation = build(args)
    model.to(device).train()
    pad_id = tokenizer.special_ids["[PAD]"]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and LayerNorm weights, as everywhere in bertline
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    per_epoch = -(-len(train_data) // args.batch_size)
    total = per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total, int(args.warmup_ratio * total)))
    history, best, best_state = [], None, None
    key = "loss" if labels.regression else "accuracy"
    for epoch in range(args.epochs):
        started, seen_loss = time.perf_counter(), []
        order = data.epoch_order(len(train_data), args.seed, epoch)
        progress = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=not sys.stderr.isatty())
        for number in progress:
            batch = to_device(data.collate(train_data, order[number * args.batch_size:(number + 1) * args.batch_size], pad_id), device)
            with autocast(args, device):
                loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen_loss.append(loss.detach())
            if number % 20 == 0:
                progress.set_postfix(loss=f"{float(loss.detach()):.4f}")
        figures = evaluate(model, evaluation, args, device, pad_id, labels.regression)
        record = {"epoch": epoch + 1, "train_loss": float(torch.stack(seen_loss).float().mean()),
                  **{f"eval_{name}": value for name, value in figures.items()}, "seconds": round(time.perf_counter() - started, 1)}
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("eval_", "train_"))))
        better = best is None or (figures[key] < best[f"eval_{key}"] if labels.regression else figures[key] > best[f"eval_{key}"])
        if better:
            best = record
            best_state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    model.load_state_dict(best_state)
    return save(args, model.to("cpu"), tokenizer, labels, history, best, train_data, evaluation)


def save(args, model, tokenizer: source.TextTokenizer, labels: data.LabelMap, history: list, best: dict,
         train_data: data.Encoded, evaluation: data.Encoded) -> dict:
    from model.hf import save_pretrained

    save_pretrained(model, args.output, labels=list(labels.names))
    tokenizer.save(args.output, args.max_length)
    summary = {
        "task": args.task if not labels.regression else "regression", "model": str(args.model), "labels": list(labels.names),
        "train_examples": len(train_data), "eval_examples": len(evaluation),
        "train_truncated": train_data.truncated, "eval_truncated": evaluation.truncated, "max_length": args.max_length,
        "hyperparameters": {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "warmup_ratio", "weight_decay", "seed", "precision")},
        "epochs": history, "best_epoch": best["epoch"], "best": best,
    }
    (args.output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    def body() -> int:
        summary = train(args)
        best = summary["best"]
        cut = f"; cut to {args.max_length} tokens: {summary['train_truncated']} train, {summary['eval_truncated']} eval examples"
        figures = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in best.items() if k.startswith("eval_"))
        print(f"best epoch {best['epoch']}/{args.epochs}: {figures}{cut if summary['train_truncated'] or summary['eval_truncated'] else ''}")
        print(f"model:   {args.output} (transformers.{'BertForTokenClassification' if args.task == 'token_classification' else 'BertForSequenceClassification'}"
              f".from_pretrained)\nmetrics: {args.output / 'metrics.json'}")
        if args.json:
            print(json.dumps({**best, "best_epoch": best["epoch"], "train_truncated": summary["train_truncated"],
                              "eval_truncated": summary["eval_truncated"], "labels": summary["labels"]}))
        return 0

    return run_command("bertline finetune", body)


if __name__ == "__main__":
    sys.exit(main())
