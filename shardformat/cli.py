"""`bertline verify SHARDS`: every byte of a shard folder checked against its manifest and indexes."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from bertline.errors import run_command
from shardformat.reader import read_manifest, verify_shard


def verify(folder: Path, progress=None) -> list[str]:
    """All problems of a folder (empty when every shard, index, record and the tokenizer are as the manifest says)."""
    manifest = read_manifest(folder)
    problems = []
    tokenizer = folder / manifest["tokenizer"]["file"]
    if not tokenizer.exists() or hashlib.sha256(tokenizer.read_bytes()).hexdigest() != manifest["tokenizer"]["sha256"]:
        problems.append(f"{tokenizer}: missing or not the tokenizer the manifest names (sha256 {manifest['tokenizer']['sha256'][:12]})")
    for entry in manifest["shards"]:
        found = verify_shard(folder, entry)
        problems += found
        if progress is not None:
            progress(entry, found)
    return problems


def verify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bertline verify",
        description="Check a shard folder completely: the marker, the format version, the tokenizer file, every shard's size and "
        "sha256, every index, every tar member's place and every record's hash and contents. Reads every byte once.",
    )
    parser.add_argument("shards", type=Path, help="A folder written by bertline prepare.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        def report(entry: dict, found: list[str]) -> None:
            print(f"{entry['path']}: {'ok' if not found else f'{len(found)} problem(s)'} ({entry['records']:,} records, {entry['samples']:,} samples)")

        problems = verify(args.shards, report)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{args.shards}: {'every shard verified' if not problems else f'{len(problems)} problem(s); restore the files or re-run bertline prepare'}")
        return 1 if problems else 0

    return run_command("bertline verify", body)


if __name__ == "__main__":
    sys.exit(verify_main())
