"""Forward + backward time per batch: bertline's BertForPreTraining against HuggingFace's
(attn_implementation="sdpa"), same config and weights, batch 32, sequence 128, 15% of tokens masked,
on CPU, interleaved in one process. Prints our time ÷ HF's for each preset (target ≤ 0.8).

    .venv/bin/python bench/model.py [--presets tiny small base] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402

from model import IGNORE_INDEX, BertConfig, BertForPreTraining  # noqa: E402
from model.hf import hf_config, to_hf_state_dict  # noqa: E402

VOCAB, BATCH, SEQ, PREDICTIONS = 30522, 32, 128, 20


def inputs(generator: torch.Generator):
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    types = torch.zeros_like(ids)
    types[:, SEQ // 2:] = 1
    mask = torch.ones_like(ids)
    positions = torch.stack([torch.randperm(SEQ - 2, generator=generator)[:PREDICTIONS].sort().values + 1 for _ in range(BATCH)])
    labels = torch.gather(ids, 1, positions)
    dense_labels = torch.full_like(ids, IGNORE_INDEX).scatter(1, positions, labels)
    nsp = torch.randint(0, 2, (BATCH,), generator=generator)
    return ids, types, mask, positions, labels, dense_labels, nsp


def step_ours(model, batch) -> float:
    ids, types, mask, positions, labels, _, nsp = batch
    started = time.perf_counter()
    model(ids, types, mask, positions, labels, nsp).loss.backward()
    elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def step_hf(model, batch) -> float:
    ids, types, mask, _, _, dense_labels, nsp = batch
    started = time.perf_counter()
    model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=dense_labels, next_sentence_label=nsp).loss.backward()
    elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import transformers

    print(f"bench/model.py: forward+backward, batch {BATCH}, sequence {SEQ}, {PREDICTIONS} masked per sequence (15%), "
          f"vocab {VOCAB}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print("preset | ours s/batch (median) | HF sdpa s/batch (median) | ours ÷ HF")
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        ours = BertForPreTraining(BertConfig.preset(preset, VOCAB, max_position_embeddings=512)).train()
        values = {k: v for k, v in hf_config(ours.config, "BertForPreTraining").items() if k not in ("architectures", "model_type")}
        theirs = transformers.BertForPreTraining._from_config(transformers.BertConfig(**values), attn_implementation="sdpa")
        theirs.load_state_dict(to_hf_state_dict(ours), strict=False)
        theirs.train()
        batch = inputs(torch.Generator().manual_seed(1))
        step_ours(ours, batch), step_hf(theirs, batch)  # warm-up
        mine, reference = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            mine.append(step_ours(ours, batch))
            reference.append(step_hf(theirs, batch))
        ours_s, hf_s = statistics.median(mine), statistics.median(reference)
        print(f"{preset} | {ours_s:.3f} | {hf_s:.3f} | {ours_s / hf_s:.2f}")
        rows.append({"preset": preset, "ours_s": ours_s, "hf_s": hf_s, "ratio": ours_s / hf_s})
    record({"what": "encoder forward+backward vs HuggingFace BertForPreTraining (sdpa), s/batch, CPU",
            "rows": rows, "ratio": rows[-1]["ratio"], "ratio_of": rows[-1]["preset"], "higher_is_better": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
