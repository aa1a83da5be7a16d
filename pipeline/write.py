"""Balanced shards: pure assignment functions, the deterministic tar writer, the manifest and the marker.

Balancing in two steps, both pure: every sample first lands in a provisional shard (its key modulo the
shard count); then, knowing every provisional shard's count, each shard keeps its first n = total // shards
samples (by key) and its excess fills the other shards' deficits in a fixed order. The last
total - shards × n excess samples (fewer than the shard count) are dropped and counted as the remainder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import webdataset

from apache_beam.io.filesystems import FileSystems

from pipeline.schema import FORMAT, SCHEMA_VERSION, SampleBatch

MANIFEST = "manifest.json"
COMPLETED = "COMPLETED"
SCRATCH = "_scratch"  # samples between the job's steps; removed before COMPLETED is written
SPLITS = ("train", "validation")


_OUTPUT_NAME = re.compile(r"^((train|validation)-\d{5}\.tar|manifest\.json|COMPLETED|spm\.model|vocab\.txt|_scratch|\.bertline-write-probe)(\.tmp-[0-9a-f]+)?$")


def is_output_name(name: str) -> bool:
    """Is this a file (or temporary file) that `bertline prepare` writes into its output folder?"""
    return bool(_OUTPUT_NAME.match(name))


def samples_per_shard(counts: dict[int, int], num_shards: int) -> int:
    """n: every one of num_shards shards gets exactly this many samples."""
    return sum(counts.values()) // num_shards


@dataclasses.dataclass(frozen=True)
class Move:
    """`count` samples go to shard `destination`."""

    destination: int
    count: int


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What a provisional shard does with its samples, in key order: keep the first `keep`, pass the next
    ones on as `moves` (in order), and drop the last `dropped` (the split's remainder)."""

    keep: int
    moves: tuple[Move, ...]
    dropped: int


@dataclasses.dataclass(frozen=True)
class SpillRef:
    """Where a batch of spilled samples lies: scratch file name, byte offset, sample count."""

    path: str
    offset: int
    count: int


def balance_plan(counts: dict[int, int], num_shards: int) -> dict[int, ShardPlan]:
    """For every provisional shard: how many of its samples (in key order) it keeps, and where the rest go.

    `counts` maps provisional shard → samples it received (missing shards received none).
    """
    n = samples_per_shard(counts, num_shards)
    excess = [max(0, counts.get(s, 0) - n) for s in range(num_shards)]
    # Deficit slots in shard order, as runs: [(shard, how many it lacks)]
    deficits = [(s, n - counts.get(s, 0)) for s in range(num_shards) if counts.get(s, 0) < n]
    plans: dict[int, dict] = {}
    run, used = 0, 0  # position in `deficits`, and slots of that run already filled
    for shard in range(num_shards):
        moves: list[Move] = []
        left = excess[shard]
        while left and run < len(deficits):
            destination, lacking = deficits[run]
            take = min(left, lacking - used)
            moves.append(Move(destination, take))
            left -= take
            used += take
            if used == lacking:
                run, used = run + 1, 0
        plans[shard] = ShardPlan(keep=min(counts.get(shard, 0), n), moves=tuple(moves), dropped=left)
    return plans


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tar"


def tar_bytes(batch: SampleBatch, split: str, shard: int, samples_per_record: int) -> bytes:
    """The shard's tar, identical bytes for identical samples: fixed mtime, owner and mode on every member."""
    buffer = io.BytesIO()
    with webdataset.TarWriter(buffer, user="bertline", group="bertline", mode=0o444, mtime=0, encoder=False) as tar:
        for record, start in enumerate(range(0, len(batch), samples_per_record)):
            part = batch.take(np.arange(start, min(start + samples_per_record, len(batch))))
            tar.write({"__key__": f"{split}-{shard:05d}-{record:06d}", **part.to_members()})
    return buffer.getvalue()


def write_atomically(path: str, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see a partial file.

    Locally the data is fsynced before os.replace, so after a crash a file is either whole or absent and
    COMPLETED (written last) never outlives the shards. Object stores have no rename that replaces, so
    there the old object is deleted first; their writes are atomic per object anyway.
    """
    temporary = f"{path}.tmp-{hashlib.sha256(data).hexdigest()[:12]}"
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return
    with FileSystems.create(temporary) as handle:
        handle.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def write_shard(output: str, split: str, shard: int, batch: SampleBatch, samples_per_record: int) -> dict:
    """Sort the shard's samples by key, write its tar atomically, and describe it for the manifest."""
    batch = batch.sorted_by_key()
    data = tar_bytes(batch, split, shard, samples_per_record)
    name = shard_name(split, shard)
    write_atomically(FileSystems.join(output, name), data)
    return {
        "path": name,
        "split": split,
        "samples": len(batch),
        "records": -(-len(batch) // samples_per_record),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "tokens": int(batch.samples[:, 0].sum()),
        "masked_tokens": int(batch.samples[:, 3].sum()),
        "random_next": int(batch.samples[:, 2].sum()),
    }


def spill(output: str, name: str, batches: list[SampleBatch]) -> list[SpillRef]:
    """Write batches back to back into one scratch file; returns a small reference to each.

    Samples travel between the job's grouping steps through these files, so the runner shuffles only the
    references: no step and no runner buffer ever holds more than one bucket or one shard of samples.
    Each segment is five .npy arrays: keys, then the record members.
    """
    buffer = io.BytesIO()
    refs = []
    for batch in batches:
        refs.append(SpillRef(name, buffer.tell(), len(batch)))
        np.save(buffer, batch.keys, allow_pickle=False)
        for array in (batch.samples, batch.tokens, batch.masked_lm_positions, batch.masked_input_ids):
            np.save(buffer, array, allow_pickle=False)
    write_atomically(FileSystems.join(output, SCRATCH, name), buffer.getvalue())
    return refs


def unspill(output: str, ref: SpillRef) -> SampleBatch:
    """Read back the segment a spill reference points at."""
    with FileSystems.open(FileSystems.join(output, SCRATCH, ref.path)) as handle:
        handle.seek(ref.offset)
        arrays = [np.lib.format.read_array(handle, allow_pickle=False) for _ in range(5)]
    batch = SampleBatch(*arrays)
    if len(batch) != ref.count:
        raise RuntimeError(f"scratch file {ref.path} holds {len(batch)} samples at {ref.offset}, expected {ref.count}")
    return batch


def remove_scratch(output: str) -> None:
    scratch = FileSystems.join(output, SCRATCH)
    files = [m.path for m in FileSystems.match([FileSystems.join(scratch, "*")])[0].metadata_list]
    if files:
        FileSystems.delete(files)
    if "://" not in output and FileSystems.exists(scratch):
        FileSystems.delete([scratch])


def build_manifest(
    shards: Iterable[dict], counts: dict[str, int], num_shards: dict[str, int], config: dict, tokenizer: dict,
    inputs: list[dict], code_revision: str,
) -> dict:
    """The manifest: everything a reader needs to trust and interpret the folder. No timestamps, so two
    runs over the same input and config write identical bytes."""
    shards = sorted(shards, key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    splits = {}
    for split, total in counts.items():
        mine = [s for s in shards if s["split"] == split]
        splits[split] = {
            "shards": num_shards[split],
            "samples_per_shard": mine[0]["samples"] if mine else 0,
            "samples": sum(s["samples"] for s in mine),
            "dropped_remainder": total - sum(s["samples"] for s in mine),
            "tokens": sum(s["tokens"] for s in mine),
            "masked_tokens": sum(s["masked_tokens"] for s in mine),
            "random_next": sum(s["random_next"] for s in mine),
        }
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "code_revision": code_revision,
        "tokenizer": tokenizer,
        "splits": splits,
        "shards": shards,
        "inputs": inputs,
        "config": config,
    }


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
