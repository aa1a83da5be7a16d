"""Shard read speed: bertline's record layout (16 samples per tar key, one member) against one sample per tar key,
both read with stock WebDataset and decoded to arrays, in the same process on the same samples.

    .venv/bin/python bench/read_shards.py

It prepares the built-in corpus (CPython's pydoc topics, dupe_factor 10) into a scratch folder, rewrites the
same samples one per key (four .npy members each, the layout a per-sample writer would produce), then
reads both with `webdataset.WebDataset` on one core and prints samples/s and their ratio. The trainer's
loader needs ≥ 20k samples/s per core (issue #4).
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

from pipeline.__main__ import main as prepare  # noqa: E402
from shardformat.schema import RECORD_EXTENSION, decode_record  # noqa: E402


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def per_sample_copy(source: Path, target: Path) -> int:
    """The same samples, one tar key each, as a per-sample writer would lay them out."""
    count = 0
    with open(target, "wb") as handle, webdataset.TarWriter(handle, encoder=False, mtime=0) as tar:
        for group in webdataset.WebDataset(str(source), shardshuffle=False):
            batch = decode_record(group[RECORD_EXTENSION])
            offsets = np.concatenate([[0], np.cumsum(batch.samples[:, 0])])
            masks = np.concatenate([[0], np.cumsum(batch.samples[:, 3])])
            for i in range(len(batch)):
                tar.write({
                    "__key__": f"s{count:09d}",
                    "input_ids.npy": _npy(batch.tokens[offsets[i]:offsets[i + 1]]),
                    "masked_lm_positions.npy": _npy(batch.masked_lm_positions[masks[i]:masks[i + 1]]),
                    "masked_input_ids.npy": _npy(batch.masked_input_ids[masks[i]:masks[i + 1]]),
                    "meta.npy": _npy(batch.samples[i]),
                })
                count += 1
    return count


def read_records(paths: list[Path]) -> int:
    samples = 0
    for group in webdataset.WebDataset([str(p) for p in paths], shardshuffle=False):
        batch = decode_record(group[RECORD_EXTENSION])
        offsets = np.concatenate([[0], np.cumsum(batch.samples[:, 0])])
        for i in range(len(batch)):  # hand out each sample's tokens, as a loader would
            batch.tokens[offsets[i]:offsets[i + 1]]
        samples += len(batch)
    return samples


def read_per_sample(paths: list[Path]) -> int:
    samples = 0
    for sample in webdataset.WebDataset([str(p) for p in paths], shardshuffle=False).decode():
        sample["input_ids.npy"]
        samples += 1
    return samples


def timed(function, paths) -> tuple[int, float]:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        samples = function(paths)
        best = min(best, time.process_time() - started)
    return samples, best


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bertline-read-") as scratch:
        shards = Path(scratch) / "shards"
        code = prepare(["--output", str(shards), "--config", str(ROOT / "configs/pipeline/demo.yaml"),
                        "--pairs.dupe_factor", "10", "--output.validation_fraction", "0"])
        if code != 0:
            return code
        ours = sorted(shards.glob("train-*.tar"))
        theirs = []
        for path in ours:
            theirs.append(Path(scratch) / f"per-sample-{path.name}")
            per_sample_copy(path, theirs[-1])
        n_ours, t_ours = timed(read_records, ours)
        n_theirs, t_theirs = timed(read_per_sample, theirs)
    assert n_ours == n_theirs, (n_ours, n_theirs)
    print(f"bench/read_shards.py: {n_ours:,} samples, stock webdataset, 1 core (CPU time, best of 3)")
    print("layout | samples/s per core")
    print(f"bertline records (16 samples per key) | {n_ours / t_ours:,.0f}")
    print(f"one sample per key (baseline) | {n_theirs / t_theirs:,.0f}")
    print(f"ratio records ÷ per-sample | {(n_ours / t_ours) / (n_theirs / t_theirs):.1f}")
    record({"what": "shard read speed, records vs one sample per key (stock webdataset, samples/s per core)",
            "ours": n_ours / t_ours, "baseline": n_theirs / t_theirs, "ratio": (n_ours / t_ours) / (n_theirs / t_theirs),
            "higher_is_better": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
