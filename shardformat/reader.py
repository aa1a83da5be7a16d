"""Read a shard folder: refuse what is incomplete or of another format, fetch single records by their index,
check each record's hash on the way, and verify whole folders (`bertline verify`).

A reader holds, per open shard, its index (24 bytes per record) and a file descriptor; records are read with
one `pread` each, so memory does not depend on shard or corpus size and a rank reads only its records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from bertline.errors import UserError
from shardformat.schema import FORMAT, INDEX_DTYPE, RECORD_EXTENSION, SCHEMA_VERSION, SampleBatch, decode_record, record_hash

MANIFEST = "manifest.json"
COMPLETED = "COMPLETED"
SPLITS = ("train", "validation")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tar"


def index_name(shard_path: str) -> str:
    """The index beside a shard: train-00003.tar → train-00003.idx.npy."""
    return shard_path.removesuffix(".tar") + ".idx.npy"


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete folder of this format version, or one sentence saying what is wrong."""
    folder = Path(folder)
    if not (folder / COMPLETED).exists():
        raise UserError(f"shard folder {folder} has no COMPLETED marker; it is missing or its `bertline prepare` did not finish")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"shard folder {folder} has no readable manifest.json ({exc.__class__.__name__}); re-run bertline prepare") from None
    if manifest.get("format") != FORMAT or manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"shard folder {folder} holds {manifest.get('format')} format v{manifest.get('schema_version')}, but this bertline reads "
            f"{FORMAT} v{SCHEMA_VERSION} (indexed records); re-run `bertline prepare` with this version into a new --output"
        )
    return manifest


def folder_identity(manifest: dict) -> dict:
    """What a training run records about its data: a checkpoint resumes only against the same folder contents."""
    config = json.dumps(manifest["config"], sort_keys=True).encode()
    return {
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "samples": {split: info["samples"] for split, info in sorted(manifest["splits"].items())},
        "shards": {split: info["shards"] for split, info in sorted(manifest["splits"].items())},
        "config_sha256": hashlib.sha256(config).hexdigest(),
    }


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """One split of a complete shard folder: its shards' manifest entries and what the reader needs to know."""

    folder: Path
    split: str
    shards: tuple[dict, ...]
    samples_per_shard: int
    samples_per_record: int
    tokenizer: dict
    max_seq_length: int
    max_predictions_per_seq: int
    identity: dict
    nfkc: bool = False  # the job's text normalization before tokenizing: fine-tuning text must get the same

    @property
    def total_samples(self) -> int:
        return len(self.shards) * self.samples_per_shard

    @property
    def records_per_shard(self) -> int:
        return -(-self.samples_per_shard // self.samples_per_record)

    @classmethod
    def open(cls, folder: str | Path, split: str = "train") -> "ShardSet":
        """Check the folder (marker, manifest, format, every shard's and index's presence and size); no shard is read."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        shards = tuple(s for s in manifest["shards"] if s["split"] == split)
        if not shards:
            raise UserError(f"shard folder {folder} has no {split} shards")
        for shard in shards:
            for name, size in ((shard["path"], shard["bytes"]), (shard["index"]["path"], shard["index"]["bytes"])):
                path = folder / name
                if not path.exists():
                    raise UserError(f"shard file {path} is listed in the manifest but missing; restore it or re-run bertline prepare")
                if path.stat().st_size != size:
                    raise UserError(
                        f"shard file {path} has {path.stat().st_size} bytes but the manifest says {size}: it is truncated "
                        f"or was replaced; restore it or re-run bertline prepare"
                    )
        info, config = manifest["splits"][split], manifest["config"]
        return cls(
            folder, split, shards, info["samples_per_shard"], info["samples_per_record"], manifest["tokenizer"],
            config["pairs"]["max_seq_length"], config["masking"]["max_predictions_per_seq"], folder_identity(manifest),
            bool(config.get("normalize", {}).get("nfkc", False)),
        )


class ShardFile:
    """One shard opened for record reads: a descriptor on the tar and one on its index, whose rows are read one
    at a time (24 bytes each) as records are needed, so a rank's index reads follow its records, not the shard.

    Each record is checked against its index hash when read; a damaged index row shows up there too (the
    record's bytes then cannot match). The index's own sha256 is `bertline verify`'s to check: it would
    cost every rank the whole index of every shard it touches."""

    _fd = _index_fd = -1

    def __init__(self, folder: Path, entry: dict):
        self.path = folder / entry["path"]
        self.index_path = folder / entry["index"]["path"]
        self.entry = entry
        self._index_fd = os.open(self.index_path, os.O_RDONLY)
        header = os.pread(self._index_fd, 4096, 0)
        self._rows_at = _index_data_offset(header, self.index_path, entry["records"])
        self._fd = os.open(self.path, os.O_RDONLY)
        self.bytes_read = self._rows_at

    def index_row(self, number: int) -> tuple[int, int, int, int]:
        """(offset, size, samples, sha256) of record `number`."""
        row = os.pread(self._index_fd, INDEX_DTYPE.itemsize, self._rows_at + number * INDEX_DTYPE.itemsize)
        self.bytes_read += len(row)
        if len(row) != INDEX_DTYPE.itemsize:
            raise CorruptRecord(f"shard index {self.index_path} ends before record {number}; restore it or re-run bertline prepare")
        return tuple(np.frombuffer(row, dtype=INDEX_DTYPE)[0].tolist())

    def read_record(self, number: int) -> SampleBatch:
        """Record `number`, checked against its hash; a mismatch names the shard and record."""
        offset, size, samples, expected = self.index_row(number)
        data = os.pread(self._fd, size, offset) if size <= self.entry["bytes"] else b""
        self.bytes_read += len(data)
        if len(data) != size or record_hash(data) != expected:
            raise CorruptRecord(
                f"shard {self.path} record {number} (bytes {offset}-{offset + size}) does not match its index hash: the file "
                f"is corrupt; restore it or re-run bertline prepare (`bertline verify {self.path.parent}` checks every record)"
            )
        try:
            batch = decode_record(data)
        except ValueError as exc:
            raise CorruptRecord(f"shard {self.path} record {number} cannot be decoded ({exc}); re-run bertline prepare") from None
        if len(batch) != samples:
            raise CorruptRecord(f"shard {self.path} record {number} holds {len(batch)} samples but its index says {samples}; re-run bertline prepare")
        return batch

    def close(self) -> None:
        for name in ("_fd", "_index_fd"):
            if getattr(self, name) >= 0:
                os.close(getattr(self, name))
                setattr(self, name, -1)

    def __del__(self):
        self.close()


def _index_data_offset(header: bytes, where: Path, records: int) -> int:
    """Where an index's rows start, after checking its .npy header: the dtype and the record count."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError) as exc:
        raise UserError(f"shard index {where} has no readable .npy header ({exc}); restore it or re-run bertline prepare") from None
    if dtype != INDEX_DTYPE or shape != (records,) or fortran:
        raise UserError(f"shard index {where} holds {shape} {dtype}, expected ({records},) {INDEX_DTYPE}; restore it or re-run bertline prepare")
    return stream.tell()


def read_shard(folder: Path, entry: dict) -> SampleBatch:
    """A whole shard's samples in file order, every record checked (for tools and small shards; the trainer
    reads single records)."""
    shard = ShardFile(Path(folder), entry)
    try:
        return SampleBatch.concat([shard.read_record(number) for number in range(entry["records"])])
    finally:
        shard.close()


class CorruptRecord(UserError):
    """A record whose bytes do not match the shard's index."""


def load_index(data: bytes, where: Path | str) -> np.ndarray:
    try:
        index = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"shard index {where} is not a .npy array ({exc}); re-run bertline prepare") from None
    if index.dtype != INDEX_DTYPE or index.ndim != 1:
        raise UserError(f"shard index {where} has dtype {index.dtype}, expected {INDEX_DTYPE}; re-run bertline prepare")
    return index


def verify_shard(folder: Path, entry: dict) -> list[str]:
    """Every check on one shard: size and sha256 of the file and its index, every tar member against the index,
    every record's hash and decoding, the sample count. Returns the problems found (empty: the shard is good)."""
    path, index_path, problems = folder / entry["path"], folder / entry["index"]["path"], []
    for file, size, sha256 in ((path, entry["bytes"], entry["sha256"]), (index_path, entry["index"]["bytes"], entry["index"]["sha256"])):
        if not file.exists():
            return problems + [f"{file}: missing"]
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if file.stat().st_size != size or digest.hexdigest() != sha256:
            problems.append(f"{file}: {file.stat().st_size} bytes, sha256 {digest.hexdigest()[:12]}; the manifest says "
                            f"{size} bytes, sha256 {sha256[:12]}")
    try:
        index = load_index(index_path.read_bytes(), index_path)
        shard = ShardFile(folder, entry)
    except UserError as exc:
        return problems + [str(exc)]
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = [m for m in tar if m.isfile()]
    except tarfile.TarError as exc:
        problems.append(f"{path}: not a readable tar ({exc})")
        members = []
    if members and [(m.offset_data, m.size) for m in members] != [(int(o), int(s)) for o, s in index[["offset", "size"]].tolist()]:
        problems.append(f"{path}: its tar members do not sit where its index says")
    if members and any(not m.name.endswith(f".{RECORD_EXTENSION}") for m in members):
        problems.append(f"{path}: holds members other than .{RECORD_EXTENSION} records")
    samples = 0
    for number in range(len(index)):
        try:
            samples += len(shard.read_record(number))
        except (UserError, ValueError) as exc:
            problems.append(str(exc))
    shard.close()
    if samples != entry["samples"] and not problems:
        problems.append(f"{path}: {samples} samples, the manifest says {entry['samples']}")
    return problems
