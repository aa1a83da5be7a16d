"""The data path at scale: what a rank reads and holds as the world grows, and whether memory follows shard size.

    .venv/bin/python bench/scale.py [--quick] [--samples N] [--keep DIR]

1. **Reading** (`--samples`, default 5.5M samples ≈ 2.1 GB): a shard folder written by the real writer
   (`shardformat.writer.ShardWriter`, 256 MiB shards, 16 samples per record) from synthetic token ids of
   BERT-like lengths (90% at 128 tokens, 15% masked), read by simulated ranks of worlds W = 1, 8 and 64 (the
   first and last rank of each, each in its own process, a whole epoch, micro batch 32, collated tensors):
   per-rank peak RSS, bytes read ÷ (total ÷ W), samples/s per core (CPU time).
2. **Memory against shard size**: `bertline prepare` of one ~1 MB English corpus into one train shard at
   dupe_factor d and 8·d (so the shard is 8× larger), peak RSS of each job; then `bertline train` (debug CPU
   config, 5 steps) on each folder, peak RSS of each.

Targets: bytes read per rank ≤ 1.25 × total/W; ≥ 100k samples/s per core; RSS 8×/1× ≤ 1.5 for prepare and
≤ 1.2 for train. Every figure is measured in this run; the baselines are the same measurement at W = 1 and
at 1× shard size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
MICRO = 32
SEQ = 128
RECORD = 16


# ---------------------------------------------------------------- 1. a large folder from the real writer

def synthetic_batch(rng: np.random.Generator, n: int):
    """n samples shaped like BERT's at sequence 128: most full length, short ones (short_seq_prob) below."""
    from shardformat.schema import SampleBatch

    lengths = np.where(rng.random(n) < 0.9, SEQ, rng.integers(16, SEQ, n)).astype(np.int32)
    masked = np.minimum(20, np.maximum(1, np.round(0.15 * lengths))).astype(np.int32)
    segment_a = (lengths * rng.uniform(0.2, 0.8, n)).astype(np.int32)
    samples = np.stack([lengths, segment_a, rng.integers(0, 2, n, dtype=np.int32), masked], axis=1).astype(np.int32)
    tokens = rng.integers(5, 30000, int(lengths.sum()), dtype=np.uint16)
    # ascending, distinct positions in [1, length - 1): one per stratum of the sequence
    starts = np.repeat(np.arange(n), masked)
    slot = np.arange(len(starts)) - np.repeat(np.cumsum(masked) - masked, masked)
    stride = (lengths[starts] - 2) / masked[starts]
    positions = (1 + np.floor((slot + rng.random(len(starts))) * stride)).astype(np.uint16)
    masked_ids = np.full(len(starts), 4, dtype=np.uint16)
    return SampleBatch(samples, tokens, positions, masked_ids)


def make_folder(folder: Path, total: int, seed: int = 0) -> dict:
    """A complete v2 shard folder of `total` train samples (rounded to whole records per shard)."""
    from pipeline.write import atomic_output, build_manifest, estimated_bytes, samples_per_shard, shard_count, shard_entry, split_summary
    from shardformat.reader import COMPLETED, MANIFEST, index_name, shard_name
    from shardformat.schema import sample_bytes
    from shardformat.writer import ShardWriter

    rng = np.random.default_rng(seed)
    probe = synthetic_batch(rng, 10_000)
    payload = int(sample_bytes(probe.samples, 2).mean() * total)
    shards = shard_count(total, payload, RECORD, shard_mb=256, num_shards=None)
    n = samples_per_shard(total, shards, RECORD)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in range(shards):
        name = shard_name("train", shard)
        with atomic_output(str(folder / name)) as stream:
            writer = ShardWriter(stream, f"train-{shard:05d}", RECORD, unk_id=1)
            for start in range(0, n, 65_536):
                writer.write(synthetic_batch(rng, min(65_536, n - start)))
            written = writer.finish()
        (folder / index_name(name)).write_bytes(written.index)
        entries.append(shard_entry(name, "train", written))
    tokenizer = {"kind": "sentencepiece", "file": "spm.model", "sha256": "0" * 64, "vocab_size": 30000,
                 "special_ids": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}, "lowercase": None, "token_dtype": "uint16"}
    config = {"pairs": {"max_seq_length": SEQ}, "masking": {"max_predictions_per_seq": 20}, "output": {"samples_per_record": RECORD}}
    manifest = build_manifest(entries, {"train": split_summary(entries, shards * n, RECORD, SEQ)}, config, tokenizer, [], "bench", {})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (folder / COMPLETED).write_text("")
    return {"shards": shards, "samples": shards * n, "bytes": sum(e["bytes"] + e["index"]["bytes"] for e in entries),
            "estimated_bytes": estimated_bytes(total, payload, RECORD)}


def read_as_rank(folder: str, world: int, rank: int) -> None:
    """Child process: one rank's whole epoch, collated; prints its figures as JSON."""
    from trainer.data import LoaderSpec, PretrainingBatches, ShardSet

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loader = PretrainingBatches(ShardSet.open(folder), LoaderSpec(micro_batch_size=MICRO, world_size=world, rank=rank, seed=1))
    started = time.process_time()
    samples = sum(len(batch["input_ids"]) for batch in loader)
    cpu = time.process_time() - started
    print(json.dumps({"samples": samples, "cpu_s": cpu, "bytes_read": loader.bytes_read,
                      "rss_after_imports_mb": baseline_kb / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"bench/scale.py: child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 2. memory against shard size

def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """Run a command (a Python entry point) in a fresh interpreter; (its peak RSS in MB, wall seconds)."""
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "exit_code = 0\ntry:\n    runpy.run_module(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n    exit_code = exc.code or 0\n"
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(exit_code)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"bench/scale.py: {' '.join(command[:3])} … failed:\n{result.stderr[-3000:]}")
    rss = [line for line in result.stderr.splitlines() if line.startswith("MAXRSS_KB")][-1]
    return int(rss.split()[1]) / 1024, time.perf_counter() - started


def english_megabyte(scratch: Path) -> Path:
    """About 1 MB of whole English documents: the shared speeches corpus, or the built-in corpus repeated."""
    source = CORPORA / "en_speeches" / "docs.txt"
    if source.exists():
        documents = source.read_text(encoding="utf-8").split("\n\n")
    else:
        from pipeline.__main__ import default_corpus

        documents = Path(default_corpus()).read_text(encoding="utf-8").split("\n\n") * 3
    kept, size = [], 0
    for document in documents:
        kept.append(document.strip("\n"))
        size += len(document.encode())
        if size >= 1_000_000:
            break
    path = scratch / "english-1mb.txt"
    path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return path


def memory_against_shard_size(scratch: Path, dupe: int) -> list[dict]:
    corpus = english_megabyte(scratch)
    rows = []
    for factor in (1, 8):
        shards = scratch / f"shards-{factor}x"
        prepare_rss, prepare_s = peak_rss_of([
            "pipeline", "--input", str(corpus), "--output", str(shards), "--overwrite", "--pairs.dupe_factor", str(dupe * factor),
            "--output.num_shards", "1", "--output.validation_fraction", "0.02", "--tokenizer.vocab_size", "8000",
        ])
        shard = json.loads((shards / "manifest.json").read_text())["shards"][0]
        train_rss, train_s = peak_rss_of([
            "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
            "--run_dir", str(scratch / f"run-{factor}x"), "--train.max_steps", "5", "--eval.samples", "16", "--tensorboard", "false",
        ])
        rows.append({"factor": factor, "dupe_factor": dupe * factor, "shard_mb": shard["bytes"] / 2**20,
                     "prepare_peak_rss_mb": prepare_rss, "prepare_s": prepare_s, "train_peak_rss_mb": train_rss, "train_s": train_s})
        shutil.rmtree(shards)
    return rows


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400k samples and dupe_factor 10 / 80")
    parser.add_argument("--samples", type=int, default=None, help="samples in the read benchmark's folder (default 5.5M; quick 400k)")
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the large folder here instead of a temporary one")
    parser.add_argument("--child-read", nargs=3, metavar=("FOLDER", "WORLD", "RANK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_read:
        read_as_rank(args.child_read[0], int(args.child_read[1]), int(args.child_read[2]))
        return 0
    total = args.samples or (400_000 if args.quick else 5_500_000)
    dupe = 10 if args.quick else 50
    with tempfile.TemporaryDirectory(prefix="bertline-scale-") as scratch:
        folder = args.keep or Path(scratch) / "large"
        started = time.perf_counter()
        if (folder / "COMPLETED").exists():
            manifest = json.loads((folder / "manifest.json").read_text())
            built = {"shards": manifest["splits"]["train"]["shards"], "samples": manifest["splits"]["train"]["samples"],
                     "bytes": sum(e["bytes"] + e["index"]["bytes"] for e in manifest["shards"])}
        else:
            built = make_folder(folder, total)
        built["write_s"] = time.perf_counter() - started
        reads = []
        for world in (1, 8, 64):
            for rank in sorted({0, world - 1}):
                figures = child(["--child-read", str(folder), str(world), str(rank)])
                figures.update(world=world, rank=rank, share_bytes=built["bytes"] / world)
                figures["read_ratio"] = figures["bytes_read"] / figures["share_bytes"]
                figures["samples_per_cpu_s"] = figures["samples"] / figures["cpu_s"]
                reads.append(figures)
        memory = memory_against_shard_size(Path(scratch), dupe)
    print(f"bench/scale.py{' --quick' if args.quick else ''}: {built['samples']:,} samples in {built['shards']} shards, "
          f"{built['bytes'] / 1e9:.2f} GB (written by ShardWriter in {built['write_s']:.0f} s); micro batch {MICRO}, {RECORD} samples "
          f"per record; host {os.uname().nodename}, {os.cpu_count()} cores")
    print("world | rank | samples | bytes read ÷ (total ÷ W) | samples/s per core | peak RSS (MB) | RSS after imports (MB)")
    for r in reads:
        print(f"{r['world']} | {r['rank']} | {r['samples']:,} | {r['read_ratio']:.3f} | {r['samples_per_cpu_s']:,.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['rss_after_imports_mb']:.0f}")
    print("shard size | dupe_factor | shard MB | prepare peak RSS (MB) | prepare s | train peak RSS (MB) | train s")
    for m in memory:
        print(f"{m['factor']}× | {m['dupe_factor']} | {m['shard_mb']:.0f} | {m['prepare_peak_rss_mb']:.0f} | {m['prepare_s']:.0f} | "
              f"{m['train_peak_rss_mb']:.0f} | {m['train_s']:.0f}")
    one, eight = memory
    prepare_ratio = eight["prepare_peak_rss_mb"] / one["prepare_peak_rss_mb"]
    train_ratio = eight["train_peak_rss_mb"] / one["train_peak_rss_mb"]
    worst_read = max(r["read_ratio"] for r in reads)
    slowest = min(r["samples_per_cpu_s"] for r in reads if r["world"] == 1)
    rss_spread = max(r["peak_rss_mb"] for r in reads) / min(r["peak_rss_mb"] for r in reads)
    print(f"ratios: bytes read per rank ÷ share, worst {worst_read:.3f} (target ≤ 1.25); samples/s per core at W=1 {slowest:,.0f} "
          f"(target ≥ 100,000); rank peak RSS, largest ÷ smallest over W {rss_spread:.2f}; prepare RSS 8×÷1× {prepare_ratio:.2f} "
          f"(target ≤ 1.5); train RSS 8×÷1× {train_ratio:.2f} (target ≤ 1.2)")
    met = worst_read <= 1.25 and slowest >= 100_000 and prepare_ratio <= 1.5 and train_ratio <= 1.2
    record({"what": "data path at scale: bytes read per rank ÷ (total ÷ W), worst of W = 1, 8, 64 (also: samples/s per core, "
                    "prepare and train RSS at 8× shard size ÷ 1×)",
            "ratio": worst_read, "target": "<= 1.25; >= 100k samples/s/core; RSS 8x/1x <= 1.5 prepare, <= 1.2 train", "met": met,
            "higher_is_better": False, "folder": built, "reads": reads, "memory": memory, "prepare_rss_ratio": prepare_ratio,
            "train_rss_ratio": train_ratio, "samples_per_cpu_s_w1": slowest, "rank_rss_spread": rss_spread})
    return 0


if __name__ == "__main__":
    sys.exit(main())
