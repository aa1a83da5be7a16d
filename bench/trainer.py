"""Trainer overhead: one optimizer step through the DeepSpeed engine (ZeRO-2 and ZeRO-0, fp32, torch AdamW,
clipping 1.0) against a plain PyTorch loop with the same model, batch and optimizer, interleaved in one
process on CPU, 1 rank. Target (issue #4): DeepSpeed ÷ plain ≤ 1.10.

    .venv/bin/python bench/trainer.py [--preset mini] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402

from model import BertConfig, BertForPreTraining  # noqa: E402
from trainer import engine as engine_module  # noqa: E402
from trainer.dist import placement  # noqa: E402

VOCAB, BATCH, SEQ, PREDICTIONS = 8000, 32, 128, 20


def batch(generator: torch.Generator) -> dict:
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    positions = torch.stack([torch.randperm(SEQ - 2, generator=generator)[:PREDICTIONS].sort().values + 1 for _ in range(BATCH)])
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
            "masked_lm_positions": positions, "masked_lm_labels": torch.gather(ids, 1, positions),
            "next_sentence_labels": torch.randint(0, 2, (BATCH,), generator=generator)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    engine_module.init_distributed(placement(os.environ), "cpu")
    torch.manual_seed(0)
    base = BertForPreTraining(BertConfig.preset(args.preset, VOCAB, max_position_embeddings=SEQ))
    data = batch(torch.Generator().manual_seed(1))

    plain = copy.deepcopy(base)
    optimizer = torch.optim.AdamW(engine_module.parameter_groups(plain, 0.01), lr=1e-4, betas=(0.9, 0.999), eps=1e-6)

    def plain_step() -> float:
        started = time.perf_counter()
        plain(**data).loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    engines = {}
    for stage in (0, 2):
        config = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
                  "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "steps_per_print": 10**9,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01, "torch_adam": True}}}
        engines[stage] = engine_module.build_engine(copy.deepcopy(base), config, {"warmup_steps": 0, "total_steps": 10**6, "decay": "constant"}, 0.01)

    def ds_step(stage: int) -> float:
        engine = engines[stage]
        started = time.perf_counter()
        engine.backward(engine(**data).loss)
        engine.step()
        return time.perf_counter() - started

    for _ in range(3):  # warm-up
        plain_step(), ds_step(0), ds_step(2)
    times = {"plain": [], "zero0": [], "zero2": []}
    for _ in range(args.steps):  # interleaved
        times["plain"].append(plain_step())
        times["zero0"].append(ds_step(0))
        times["zero2"].append(ds_step(2))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"bench/trainer.py: {args.preset}, batch {BATCH} × {SEQ}, CPU, {torch.get_num_threads()} threads, median of {args.steps}")
    print("loop | s/step | ÷ plain")
    for name in ("plain", "zero0", "zero2"):
        print(f"{name} | {median[name]:.4f} | {median[name] / median['plain']:.3f}")
    record({"what": f"DeepSpeed step vs a plain PyTorch loop ({args.preset}, CPU, 1 rank), s/step", "ours": median["zero2"],
            "baseline": median["plain"], "ratio": median["zero2"] / median["plain"], "ratio_zero0": median["zero0"] / median["plain"],
            "target": "<= 1.10", "met": median["zero2"] / median["plain"] <= 1.10, "higher_is_better": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
