"""Samples → balanced shards, streaming: spilled runs, a pure shard plan, the writes, the manifest and the marker.

How samples reach shards, every step deterministic whatever the runner or worker count:

1. **Spill.** A bucket's samples (pipeline.transforms.CreateSamplesFn) are written to one scratch file in
   *runs* of at most RUN_BYTES. Inside a run, each sample goes to one of KEY_GROUPS groups by its random
   64-bit key (`key_group`) and the group's samples are sorted by key; each group is stored as chunks of
   CHUNK_SAMPLES samples, and a footer lists every chunk. The task emits only counts (`BucketSummary`).
2. **Plan** (`plan_shards`, pure). A split's samples are ordered by (group, bucket, run, key). Knowing every
   piece's count and bytes, the shard count follows from `output.shard_mb` (or is `output.num_shards`),
   every shard gets exactly n samples (a multiple of the record size where that drops at most 1% of them),
   shard s takes positions [s·n, (s+1)·n) and the tail, fewer than shards × (record size + 1), is dropped.
3. **Write.** One task per shard streams its slices of the scratch files through a `ShardWriter`: memory is
   one chunk and one record, whatever the shard size.

Groups spread each bucket over every shard region (a document's dupe_factor copies get independent keys, so
they land in different shards), and keep a shard's pieces few: about buckets × KEY_GROUPS ÷ shards each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from shardformat.reader import COMPLETED, MANIFEST, SPLITS, index_name, shard_name  # noqa: F401 (the job's names for them)
from shardformat.schema import FORMAT, SCHEMA_VERSION, SampleBatch, decode_record, encode_record, sample_bytes
from shardformat.writer import ShardWriter, WrittenShard

SCRATCH = "_scratch"  # spilled samples between the job's steps; removed before COMPLETED is written
STAGING = "_staging"  # the job writes here; the finished folder then replaces the output's previous contents
KEY_GROUPS = 64
CHUNK_SAMPLES = 256
RUN_BYTES = 16 << 20  # a bucket's samples are spilled whenever this many bytes wait (bounds the task's memory)
RECORD_OVERHEAD = 512 + 256 + 8  # a tar header, half a block of padding on average, the record header

_OUTPUT_NAME = re.compile(
    r"^((train|validation)-\d{5}\.(tar|idx\.npy)|manifest\.json|COMPLETED|spm\.model|vocab\.txt|_scratch|_staging|\.bertline-write-probe)"
    r"(\.tmp-[0-9a-f]+)?$"
)
_CHUNK_DTYPE = np.dtype([("run", "<u4"), ("group", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("samples", "<u4")])


def is_output_name(name: str) -> bool:
    """Is this a file (or temporary file) that `bertline prepare` writes into its output folder?"""
    return bool(_OUTPUT_NAME.match(name))


# ---------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_output(path: str) -> Iterator:
    """A binary stream whose bytes appear at `path` only once the block ends without error.

    Locally the data is fsynced before os.replace, so after a crash a file is either whole or absent and
    COMPLETED (written last) never outlives the shards. Object stores have no rename that replaces, so
    there the old object is deleted first; their writes are atomic per object anyway.
    """
    temporary = f"{path}.tmp-{secrets.token_hex(6)}"
    local = "://" not in path
    if local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(temporary, "wb") if local else FileSystems.create(temporary)
    try:
        with handle:
            yield handle
            if local:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(Exception):
            FileSystems.delete([temporary])
        raise
    if local:
        os.replace(temporary, path)
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def write_atomically(path: str, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def remove_scratch(output: str) -> None:
    scratch = FileSystems.join(output, SCRATCH)
    files = [m.path for m in FileSystems.match([FileSystems.join(scratch, "*")])[0].metadata_list]
    if files:
        FileSystems.delete(files)
    if "://" not in output and FileSystems.exists(scratch):
        FileSystems.delete([scratch])


# ---------------------------------------------------------------- 1. spill

def key_group(keys: np.ndarray) -> np.ndarray:
    """The group of each 64-bit key: its top log2(KEY_GROUPS) bits, so groups are contiguous key ranges."""
    return (np.asarray(keys, dtype=np.uint64) >> np.uint64(64 - int(math.log2(KEY_GROUPS)))).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class BucketSummary:
    """What a bucket spilled: per (run, group), the samples and their bytes; and the tokenizer's [UNK] id."""

    bucket: int
    counts: np.ndarray  # (runs, KEY_GROUPS) int64
    payload_bytes: np.ndarray  # (runs, KEY_GROUPS) int64
    unk_id: int


def spill_name(split: str, bucket: int) -> str:
    return f"{split}-bucket-{bucket:06d}.spill"


class SpillWriter:
    """Streams a bucket's runs into its scratch file; `finish` writes the chunk table and returns the counts."""

    def __init__(self, stream):
        self.stream, self.position = stream, 0
        self.chunks: list[tuple[int, int, int, int, int]] = []
        self.counts: list[np.ndarray] = []
        self.bytes: list[np.ndarray] = []

    def add_run(self, keys: np.ndarray, batch: SampleBatch) -> None:
        """One run: samples grouped by key range, sorted by key inside each group."""
        run = len(self.counts)
        groups = key_group(keys)
        order = np.lexsort((keys, groups))  # by group, then key
        batch, groups = batch.take(order), groups[order]
        sizes = sample_bytes(batch.samples, batch.tokens.dtype.itemsize)
        bounds = np.searchsorted(groups, np.arange(KEY_GROUPS + 1))
        self.counts.append(np.diff(bounds))
        self.bytes.append(np.add.reduceat(np.append(sizes, 0), bounds[:-1]) * (np.diff(bounds) > 0))
        for group in range(KEY_GROUPS):
            for start in range(bounds[group], bounds[group + 1], CHUNK_SAMPLES):
                data = encode_record(batch.slice(start, min(start + CHUNK_SAMPLES, bounds[group + 1])))
                self.stream.write(data)
                self.chunks.append((run, group, self.position, len(data), min(CHUNK_SAMPLES, bounds[group + 1] - start)))
                self.position += len(data)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        table = io.BytesIO()
        np.save(table, np.array(self.chunks, dtype=_CHUNK_DTYPE), allow_pickle=False)
        self.stream.write(table.getvalue())
        self.stream.write(len(table.getvalue()).to_bytes(8, "little"))
        empty = np.zeros((0, KEY_GROUPS), np.int64)
        return (np.array(self.counts, np.int64) if self.counts else empty), (np.array(self.bytes, np.int64) if self.bytes else empty)


class SpillReader:
    """Reads pieces (run, group) of one bucket's scratch file, from any sample on, a chunk at a time."""

    def __init__(self, path: str):
        self.path = path
        with _open(path) as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            handle.seek(end - 8)
            length = int.from_bytes(handle.read(8), "little")
            handle.seek(end - 8 - length)
            self.chunks = np.load(io.BytesIO(handle.read(length)), allow_pickle=False)

    def read(self, run: int, group: int, start: int, count: int) -> Iterator[SampleBatch]:
        """Samples [start, start + count) of piece (run, group), in order."""
        rows = self.chunks[(self.chunks["run"] == run) & (self.chunks["group"] == group)]
        first = start // CHUNK_SAMPLES  # every chunk of a piece holds CHUNK_SAMPLES samples but the last
        skip, left = start - first * CHUNK_SAMPLES, count
        with _open(self.path) as handle:
            for offset, size in rows[["offset", "size"]][first:].tolist():
                if left <= 0:
                    break
                handle.seek(offset)
                batch = decode_record(handle.read(size))
                take = min(len(batch) - skip, left)
                yield batch.slice(skip, skip + take)
                left -= take
                skip = 0
        if left > 0:
            raise RuntimeError(f"scratch file {self.path} holds fewer samples in piece ({run}, {group}) than its summary said")


# ---------------------------------------------------------------- 2. plan

@dataclasses.dataclass(frozen=True)
class ShardSlices:
    """What one shard holds: slices of spilled pieces, in order, as rows (bucket, run, group, start, count)."""

    split: str
    shard: int
    slices: np.ndarray  # (k, 5) int64
    num_shards: int
    samples_per_shard: int
    split_total: int
    unk_id: int


def estimated_bytes(samples: int, payload: int, samples_per_record: int) -> int:
    """A split's size as shards: record payloads plus a tar header, padding and record header per record."""
    return payload + -(-samples // samples_per_record) * RECORD_OVERHEAD


def shard_count(samples: int, payload: int, samples_per_record: int, shard_mb: int, num_shards: int | None) -> int:
    """output.num_shards if given, else enough shards that none exceeds output.shard_mb (MiB)."""
    if num_shards is not None:
        return num_shards
    return max(1, -(-estimated_bytes(samples, payload, samples_per_record) // (shard_mb << 20)))


def samples_per_shard(total: int, shards: int, samples_per_record: int) -> int:
    """n: every shard gets exactly n samples; a multiple of the record size when that drops at most 1% of them,
    so that every record is full and a micro batch that is a multiple of the record size reads whole records
    (a small shard keeps its samples and ends with a partial record instead)."""
    n = total // shards
    return n - n % samples_per_record if n % samples_per_record <= n // 100 else n


def plan_shards(summaries: list[BucketSummary], split: str, samples_per_record: int, shard_mb: int,
                num_shards: int | None) -> list[ShardSlices]:
    """Every shard's slices of the spilled pieces, in the split's (group, bucket, run, key) order."""
    summaries = sorted(summaries, key=lambda summary: summary.bucket)
    rows = []  # (group, bucket, run, count)
    for summary in summaries:
        runs, groups = np.nonzero(summary.counts)
        rows.extend(zip(groups.tolist(), [summary.bucket] * len(runs), runs.tolist(), summary.counts[runs, groups].tolist()))
    rows.sort()
    counts = np.array([row[3] for row in rows], dtype=np.int64)
    total = int(counts.sum())
    payload = int(sum(int(summary.payload_bytes.sum()) for summary in summaries))
    shards = shard_count(total, payload, samples_per_record, shard_mb, num_shards)
    n = samples_per_shard(total, shards, samples_per_record)
    ends = np.cumsum(counts)
    starts = ends - counts
    unk_id = summaries[0].unk_id if summaries else 0
    plans = []
    for shard in range(shards if n else 0):
        low, high = shard * n, (shard + 1) * n
        first, last = np.searchsorted(ends, low, side="right"), np.searchsorted(starts, high, side="left")
        slices = []
        for i in range(first, last):
            begin, end = max(low, starts[i]), min(high, ends[i])
            group, bucket, run, _ = rows[i]
            slices.append((bucket, run, group, begin - starts[i], end - begin))
        plans.append(ShardSlices(split, shard, np.array(slices, dtype=np.int64).reshape(-1, 5), shards, n, total, unk_id))
    return plans


# ---------------------------------------------------------------- 3. write

def write_shard(output: str, plan: ShardSlices, samples_per_record: int) -> dict:
    """Stream the shard's slices into its tar (temporary name, fsync, rename), then its index; describe both."""
    name = shard_name(plan.split, plan.shard)
    readers: dict[int, SpillReader] = {}
    with atomic_output(FileSystems.join(output, name)) as stream:
        writer = ShardWriter(stream, f"{plan.split}-{plan.shard:05d}", samples_per_record, plan.unk_id)
        for bucket, run, group, start, count in plan.slices.tolist():
            if bucket not in readers:  # the footers of this shard's buckets; a shard touches each bucket once per group
                readers[bucket] = SpillReader(FileSystems.join(output, SCRATCH, spill_name(plan.split, bucket)))
            for batch in readers[bucket].read(run, group, start, count):
                writer.write(batch)
        written = writer.finish()
    write_atomically(FileSystems.join(output, index_name(name)), written.index)
    if written.stats.samples != plan.samples_per_shard:
        raise RuntimeError(f"{name} received {written.stats.samples} samples, its plan said {plan.samples_per_shard}")
    return shard_entry(name, plan.split, written)


def shard_entry(name: str, split: str, written: WrittenShard) -> dict:
    return {
        "path": name, "split": split, "records": written.records, "bytes": written.bytes, "sha256": written.sha256,
        "index": {"path": index_name(name), "bytes": len(written.index), "sha256": hashlib.sha256(written.index).hexdigest()},
        **written.stats.to_json(),
    }


# ---------------------------------------------------------------- manifest

def split_summary(entries: list[dict], total: int, samples_per_record: int, max_seq_length: int) -> dict:
    """A split's line in the manifest: counts and the statistics a careful user checks first."""
    samples = sum(e["samples"] for e in entries)
    tokens = sum(e["tokens"] for e in entries)
    length_counts = np.zeros(max_seq_length + 1, np.int64)
    for entry in entries:
        length_counts[:len(entry["length_counts"])] += entry["length_counts"]
    masked, random_next, unk = (sum(e[key] for e in entries) for key in ("masked_tokens", "random_next", "unk_tokens"))
    edges = sorted({*range(max(1, max_seq_length // 8), max_seq_length, max(1, max_seq_length // 8)), max_seq_length})
    cumulative = np.cumsum(length_counts)[edges]
    histogram = [{"up_to": edge, "samples": int(count)} for edge, count in zip(edges, np.diff(cumulative, prepend=0))]
    return {
        "shards": len(entries),
        "samples_per_shard": entries[0]["samples"] if entries else 0,
        "samples_per_record": samples_per_record,
        "samples": samples,
        "dropped_remainder": total - samples,
        "tokens": tokens,
        "masked_tokens": masked,
        "random_next": random_next,
        "unk_tokens": unk,
        "nsp_random_next_fraction": random_next / samples if samples else None,
        "unk_per_1k_tokens": 1000 * unk / tokens if tokens else None,
        "masked_per_sample": masked / samples if samples else None,
        "padding_fraction": 1 - tokens / (samples * max_seq_length) if samples else None,
        "sample_length_histogram": histogram,
    }


def build_manifest(
    entries: list[dict], splits: dict[str, dict], config: dict, tokenizer: dict, inputs: list[dict], code_revision: str,
    counters: dict[str, int],
) -> dict:
    """The manifest: everything a reader needs to trust and interpret the folder. No timestamps, so two
    runs over the same input and config write identical bytes."""
    shards = sorted(({k: v for k, v in e.items() if k != "length_counts"} for e in entries),
                    key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "code_revision": code_revision,
        "tokenizer": tokenizer,
        "splits": splits,
        "counters": dict(sorted(counters.items())),
        "shards": shards,
        "inputs": inputs,
        "config": config,
    }


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

