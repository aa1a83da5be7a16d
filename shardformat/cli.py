"""`bertline verify SHARDS` (every byte of a shard folder checked against its manifest and indexes) and
`bertline inspect SHARDS` (the folder's data card, and samples decoded back to text)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

from bertline.errors import run_command
from shardformat.reader import read_manifest, verify_shard
from shardformat.schema import TEXT_COUNTERS


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


STATISTICS = ("samples", "shards", "samples_per_shard", "dropped_remainder", "nsp_random_next_fraction", "unk_per_1k_tokens",
              "masked_per_sample", "padding_fraction", "tokens", "masked_tokens", "random_next", "unk_tokens")


class Pieces:
    """Token ids back to readable text with the masks shown, for the tokenizer a shard folder names."""

    _BYTES = re.compile(r"(?:<0x[0-9A-F]{2}>)+")

    def __init__(self, folder: Path, tokenizer: dict):
        data = (folder / tokenizer["file"]).read_bytes()
        self.kind = tokenizer["kind"]
        if self.kind == "wordpiece":
            self.pieces = data.decode("utf-8").splitlines()
        else:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor()
            processor.LoadFromSerializedProto(data)
            self.pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]

    def _bytes(self, match: re.Match) -> str:
        raw = bytes(int(h, 16) for h in re.findall(r"<0x([0-9A-F]{2})>", match.group(0)))
        return raw.decode("utf-8", errors="replace")

    def _piece(self, token: int) -> str:
        return self.pieces[token] if token < len(self.pieces) else f"<id {token}>"

    def _join(self, shown: list[str]) -> str:
        if self.kind == "wordpiece":
            return " ".join(shown).replace(" ##", "")
        return self._BYTES.sub(self._bytes, "".join(shown)).replace("\u2581", " ").strip()

    def sample(self, tokens, segment_a: int, positions, masked_ids) -> dict:
        """A sample as text: segments A and B, each masked token shown as {what the model sees→the original}."""
        shown = [self._piece(int(t)) for t in tokens]
        for position, seen in zip(positions.tolist(), masked_ids.tolist()):
            original = shown[position]
            lead = "##" if original.startswith("##") else ("\u2581" if original.startswith("\u2581") else "")
            shown[position] = f"{lead}{{{self._join([self._piece(seen)])}→{self._join([original.removeprefix('##')])}}}"
        return {"a": self._join(shown[1:segment_a - 1]), "b": self._join(shown[segment_a:-1])}


def data_card(folder: Path, samples: int = 0, split: str = "train") -> dict:
    """The folder's statistics per split, its text counters, and `samples` decoded samples of `split`."""
    from shardformat.reader import read_shard

    manifest = read_manifest(folder)
    card = {
        "folder": str(folder),
        "tokenizer": {k: manifest["tokenizer"][k] for k in ("kind", "file", "vocab_size", "sha256")},
        "splits": {name: {**{k: info.get(k) for k in STATISTICS}, "sample_length_histogram": info.get("sample_length_histogram")}
                   for name, info in manifest["splits"].items()},
        "counters": manifest.get("counters", {}),
        "config": {"max_seq_length": manifest["config"]["pairs"]["max_seq_length"],
                   "dupe_factor": manifest["config"]["pairs"]["dupe_factor"],
                   "random_next_prob": manifest["config"]["pairs"]["random_next_prob"]},
    }
    if samples:
        pieces, shown = Pieces(folder, manifest["tokenizer"]), []
        for entry in (e for e in manifest["shards"] if e["split"] == split):
            batch = read_shard(folder, entry)
            tokens, masks = np.cumsum(np.r_[0, batch.samples[:, 0]]), np.cumsum(np.r_[0, batch.samples[:, 3]])
            for i in range(min(samples - len(shown), len(batch))):
                length, segment_a, is_random_next, _ = batch.samples[i].tolist()
                shown.append({"shard": entry["path"], "is_random_next": bool(is_random_next), "length": length,
                              **pieces.sample(batch.tokens[tokens[i]:tokens[i + 1]], segment_a,
                                              batch.masked_lm_positions[masks[i]:masks[i + 1]], batch.masked_input_ids[masks[i]:masks[i + 1]])})
            if len(shown) >= samples:
                break
        card["samples"] = shown
    return card


def _figure(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def inspect_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bertline inspect",
        description="A shard folder's data card: per split the sample count, random-next share, [UNK] rate, masks per sample, "
        "padding at max_seq_length and the length histogram; the job's counters (text dropped, truncated, skipped); and, "
        "with --samples N, N samples decoded back to text with their masks.",
    )
    parser.add_argument("shards", type=Path, help="A folder written by bertline prepare.")
    parser.add_argument("--samples", type=int, default=0, metavar="N", help="Decode N samples of --split (default 0).")
    parser.add_argument("--split", default="train", choices=("train", "validation"))
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        card = data_card(args.shards, max(0, args.samples), args.split)
        if args.json:
            print(json.dumps(card, ensure_ascii=False))
            return 0
        tok = card["tokenizer"]
        print(f"{card['folder']}: {tok['kind']} {tok['file']} (vocab {tok['vocab_size']:,}), max_seq_length "
              f"{card['config']['max_seq_length']}, dupe_factor {card['config']['dupe_factor']}")
        names = list(card["splits"])
        print(f"{'':28s}" + "".join(f"{name:>16s}" for name in names))
        for key in STATISTICS:
            print(f"{key:28s}" + "".join(f"{_figure(card['splits'][name].get(key)):>16s}" for name in names))
        for name in names:
            histogram = card["splits"][name]["sample_length_histogram"] or []
            print(f"{name} lengths: " + ", ".join(f"≤{bar['up_to']}: {bar['samples']:,}" for bar in histogram))
        print("text counters: " + ", ".join(f"{k} {card['counters'][k]:,}" for k in TEXT_COUNTERS if k in card["counters"]))
        for number, sample in enumerate(card.get("samples", [])):
            label = "random next" if sample["is_random_next"] else "actual next"
            print(f"\n[{number}] {sample['shard']}, {sample['length']} tokens, {label}\n  A: {sample['a']}\n  B: {sample['b']}")
        return 0

    return run_command("bertline inspect", body)
