"""`bertline eval <checkpoint> --shards <folder>`: held-out MLM loss and accuracy and NSP accuracy of any
checkpoint — a training step folder (`<run>/checkpoints/stepNNNNNNNN`) or a HuggingFace BERT folder — on a
shard folder's validation (or train) split, with the shards' static masks, so every model is scored on the
same masked tokens."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Iterable

import torch

from bertline.errors import UserError, run_command
from trainer import checkpoint
from trainer.data import IGNORE_INDEX, LoaderSpec, PretrainingBatches, ShardSet, model_inputs


def load_model(path: Path):
    """(BertForPreTraining, the tokenizer sha256 it was trained with or None) from a step folder or an HF folder."""
    from model.hf import from_pretrained
    from trainer.export import load_step

    if (path / "config.json").exists():
        return from_pretrained(path), None
    if not (path / checkpoint.MARKER).exists():
        raise UserError(f"{path} is neither a complete training checkpoint (no {checkpoint.MARKER} marker) nor a HuggingFace "
                        f"folder (no config.json); pass <run_dir>/checkpoints/stepNNNNNNNN or an exported folder")
    trained = load_step(path)
    return trained.model, trained.tokenizer_sha256


def eval_spans(samples: int, micro_batch_size: int, world_size: int, rank: int) -> list[tuple[int, int, bool]]:
    """What `rank` evaluates: the first `samples` samples of epoch 0's order, cut into micro-batch spans [start, stop)
    dealt round-robin over the ranks, so the set is the same for any world size or micro batch. Every rank runs the
    same number of forwards (ZeRO-3's forward is a collective): a rank short of spans repeats the first one with
    counted=False, and its sums are dropped."""
    spans = [(start, min(samples, start + micro_batch_size)) for start in range(0, samples, micro_batch_size)]
    mine = [(start, stop, True) for start, stop in spans[rank::world_size]]
    return mine + [(*spans[0], False)] * (-(-len(spans) // world_size) - len(mine))


def eval_sums(model, batches: Iterable[tuple[dict, bool]], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sums over (batch, counted) pairs: masked-token MLM loss and hits, masked tokens, NSP hits, sequences. They stay
    on the device and are read back once at the end; sums, so that ranks can add theirs before dividing (eval_figures)."""
    names = ("mlm_loss", "mlm_correct", "masked", "nsp_correct", "sequences")
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch, counted in batches:
            inputs = model_inputs(batch, device)
            out = model(**inputs)
            if not counted:
                continue
            count = (inputs["masked_lm_labels"] != IGNORE_INDEX).sum()
            sequences = len(batch["input_ids"])
            sums += torch.stack([out.mlm_loss.double() * count, out.mlm_accuracy.double() * count, count.double(),
                                 out.nsp_accuracy.double() * sequences, torch.full((), float(sequences), dtype=torch.float64, device=device)])
    model.train(was_training)
    return dict(zip(names, sums.tolist()))


def eval_figures(sums: dict[str, float]) -> dict[str, float]:
    return {"mlm_loss": sums["mlm_loss"] / sums["masked"], "mlm_accuracy": sums["mlm_correct"] / sums["masked"],
            "nsp_accuracy": sums["nsp_correct"] / sums["sequences"]}


def evaluate(model, shards: ShardSet, batch_size: int = 64, max_batches: int | None = None, seed: int = 0) -> dict:
    """Every full batch of the split (or the first max_batches), in the loader's order for `seed`."""
    loader = PretrainingBatches(shards, LoaderSpec(micro_batch_size=batch_size, world_size=1, rank=0, seed=seed))  # static masks
    batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    if batches == 0:
        raise UserError(f"{shards.folder} has {shards.total_samples} {shards.split} samples, fewer than one batch of {batch_size}; "
                        f"lower --batch-size")
    sums = eval_sums(model, ((loader.batch(number, epoch=0, position=0), True) for number in range(batches)))
    return {"split": shards.split, "sequences": int(sums["sequences"]), "masked_tokens": int(sums["masked"]), **eval_figures(sums)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bertline eval", description="Held-out MLM/NSP figures of a checkpoint on a shard folder.")
    parser.add_argument("checkpoint", type=Path, help="<run_dir>/checkpoints/stepNNNNNNNN, or a HuggingFace BERT folder")
    parser.add_argument("--shards", type=Path, required=True, help="A folder written by bertline prepare.")
    parser.add_argument("--split", default="validation", choices=("validation", "train"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int, default=None, help="Score only the first N batches (default: all).")
    parser.add_argument("--seed", type=int, default=0, help="Order of the scored samples (the trainer's in-run eval uses its config seed).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        shards = ShardSet.open(args.shards, split=args.split)
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints while it gathers ZeRO partitions; stdout is the result
            model, trained_on = load_model(args.checkpoint)
        if trained_on is not None and trained_on != shards.tokenizer["sha256"]:
            raise UserError(f"{args.checkpoint} was trained with another tokenizer than {args.shards} uses (sha256 {trained_on[:12]} vs "
                            f"{shards.tokenizer['sha256'][:12]}); score it on shards prepared with its tokenizer")
        if model.config.vocab_size != shards.tokenizer["vocab_size"]:
            raise UserError(f"{args.checkpoint} has a vocabulary of {model.config.vocab_size} but {args.shards} was tokenized with "
                            f"{shards.tokenizer['vocab_size']}; score it on shards prepared with its tokenizer")
        figures = {"checkpoint": str(args.checkpoint), "shards": str(args.shards),
                   **evaluate(model, shards, args.batch_size, args.max_batches, args.seed)}
        if args.json:
            print(json.dumps(figures))
        else:
            print(f"{args.checkpoint} on {args.shards} ({figures['split']}, {figures['sequences']:,} sequences, "
                  f"{figures['masked_tokens']:,} masked tokens): mlm loss {figures['mlm_loss']:.4f}, mlm accuracy "
                  f"{figures['mlm_accuracy']:.4f}, nsp accuracy {figures['nsp_accuracy']:.4f}")
        return 0

    return run_command("bertline eval", body)


if __name__ == "__main__":
    sys.exit(main())
