"""Loader throughput: bertline's PretrainingBatches (collated, masked micro batches) against a stock
per-sample `webdataset.WebDataset(...).decode()` pipeline batched by WebDataset, over the same samples,
one process, CPU time. Target (issue #4): ≥ 20k samples/s per core and ≥ 3× stock.

    .venv/bin/python bench/loader.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import webdataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

from bench.read_shards import per_sample_copy, timed  # noqa: E402
from pipeline.__main__ import main as prepare  # noqa: E402
from trainer.data import LoaderSpec, PretrainingBatches, ShardSet  # noqa: E402

MICRO = 64


def ours(folder: Path) -> int:
    samples = 0
    for batch in PretrainingBatches(ShardSet.open(folder), LoaderSpec(micro_batch_size=MICRO, seed=0)):
        samples += len(batch["input_ids"])
    return samples


def pad_batch(samples: list) -> tuple:
    """What a per-sample pipeline has to do to batch variable-length samples: pad them one by one."""
    import numpy as np

    width = max(len(s[0]) for s in samples)
    ids = np.zeros((len(samples), width), dtype=np.int64)
    for row, (tokens, positions, masked, _) in enumerate(samples):
        ids[row, : len(tokens)] = tokens
        ids[row, positions.astype(np.int64)] = masked
    return (ids,)


def stock(paths: list[Path]) -> int:
    samples = 0
    pipeline = webdataset.WebDataset([str(p) for p in paths], shardshuffle=False).decode().to_tuple(
        "input_ids.npy", "masked_lm_positions.npy", "masked_input_ids.npy", "meta.npy"
    ).batched(MICRO, collation_fn=pad_batch, partial=False)
    for batch in pipeline:
        samples += len(batch[0])
    return samples


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bertline-loader-") as scratch:
        folder = Path(scratch) / "shards"
        if prepare(["--output", str(folder), "--config", str(ROOT / "configs/pipeline/demo.yaml"),
                    "--pairs.dupe_factor", "10", "--output.validation_fraction", "0"]) != 0:
            return 1
        per_sample = []
        for path in sorted(folder.glob("train-*.tar")):
            per_sample.append(Path(scratch) / f"per-sample-{path.name}")
            per_sample_copy(path, per_sample[-1])
        n_ours, t_ours = timed(ours, folder)
        n_stock, t_stock = timed(stock, per_sample)
    print(f"bench/loader.py: micro batch {MICRO}, 1 core, CPU time, best of 3")
    print("loader | samples | samples/s per core")
    print(f"bertline PretrainingBatches (collated tensors) | {n_ours:,} | {n_ours / t_ours:,.0f}")
    print(f"stock webdataset .decode().batched() | {n_stock:,} | {n_stock / t_stock:,.0f}")
    print(f"ratio | | {(n_ours / t_ours) / (n_stock / t_stock):.1f}")
    record({"what": "training loader vs stock webdataset .decode().batched() (samples/s per core)", "ours": n_ours / t_ours,
            "baseline": n_stock / t_stock, "ratio": (n_ours / t_ours) / (n_stock / t_stock), "target": ">= 3 (and >= 20k/s)",
            "met": (n_ours / t_ours) / (n_stock / t_stock) >= 3 and n_ours / t_ours >= 20_000, "higher_is_better": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
