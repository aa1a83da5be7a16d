"""Test helpers: run `bertline prepare` in-process and read what it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import webdataset

from pipeline.__main__ import main
from pipeline.schema import SampleBatch


def prepare(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def read_split(folder: Path, split: str) -> list[SampleBatch]:
    """Every record of a split through stock WebDataset (default decoders: .npy with allow_pickle=False)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        data = (folder / shard["path"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
        records = list(webdataset.WebDataset(str(folder / shard["path"]), shardshuffle=False).decode())
        batches = [
            SampleBatch(np.zeros(len(r["samples.npy"]), np.uint64), r["samples.npy"], r["tokens.npy"],
                        r["masked_lm_positions.npy"], r["masked_input_ids.npy"])
            for r in records
        ]
        assert sum(len(b) for b in batches) == shard["samples"]
        out.append(SampleBatch.concat(batches))
    return out
