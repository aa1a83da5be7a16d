"""Test helpers: run `bertline prepare` in-process and read what it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import webdataset

from pipeline.__main__ import main
from shardformat.schema import RECORD_EXTENSION, SampleBatch, decode_record


def prepare(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def read_split(folder: Path, split: str) -> list[SampleBatch]:
    """Every record of a split through stock WebDataset (no decoding there: records are bytes, decoded by the format module)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        data = (folder / shard["path"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
        records = list(webdataset.WebDataset(str(folder / shard["path"]), shardshuffle=False))
        batches = [decode_record(r[RECORD_EXTENSION]) for r in records]
        assert sum(len(b) for b in batches) == shard["samples"]
        out.append(SampleBatch.concat(batches))
    return out
