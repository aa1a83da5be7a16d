"""The data card on real corpora: bertline's samples against Google's rules, measured in the same run.

    .venv/bin/python bench/corpora.py [--quick] [--json FILE]

For each corpus in ../shared/corpora (English and Chinese; Chinese with configs/pipeline/chinese.yaml), two
`bertline prepare` runs on the same text (max_seq_length 128, dupe_factor 5, one worker):
  - **bertline**: the defaults (one-sentence chunks cut and balanced, byte fallback, jieba words for Chinese);
  - **Google's rules**: one-sentence chunks always random-next (`--pairs.single_sentence_documents
    random_next`), a SentencePiece vocabulary without byte fallback (`--tokenizer.byte_fallback false`), and
    for Chinese one word per character (`--masking.cjk_words characters`), as create_pretraining_data.py does.
Each prints its data card (`bertline inspect --json`): random-next share per split, [UNK] per 1,000 tokens,
masks per sample, padding at 128, text truncated. The target: random-next 0.50 ± 0.01 on every corpus and
no [UNK] with the trained tokenizer. --quick takes about 1 MB of each corpus.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
COMMON = ["--pairs.max_seq_length", "128", "--pairs.dupe_factor", "5"]
GOOGLE = ["--pairs.single_sentence_documents", "random_next", "--tokenizer.byte_fallback", "false"]


def corpus_file(name: str, scratch: Path, quick: bool) -> Path:
    source = CORPORA / name / "docs.txt"
    if not quick:
        return source
    kept, size = [], 0
    for document in source.read_text(encoding="utf-8").split("\n\n"):
        kept.append(document.strip("\n"))
        size += len(document.encode())
        if size >= 1_000_000:
            break
    path = scratch / f"{name}.txt"
    path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return path


def card(corpus: Path, output: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "prepare", "--input", str(corpus), "--output", str(output),
                             "--overwrite", *COMMON, *extra], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1]}
    seconds = time.perf_counter() - started
    shown = subprocess.run([sys.executable, "-m", "bertline.cli", "inspect", str(output), "--json"], capture_output=True, text=True, cwd=ROOT)
    data = json.loads(shown.stdout)
    return {"seconds": seconds, "splits": data["splits"], "counters": data["counters"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 1 MB of each corpus")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (CORPORA / "README.md").exists():
        print(f"bench/corpora.py: skipped, the shared corpora are not at {CORPORA}")
        return 0
    names = sorted(p.name for p in CORPORA.iterdir() if (p / "docs.txt").exists())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bertline-corpora-") as scratch:
        for name in names:
            corpus = corpus_file(name, Path(scratch), args.quick)
            chinese = name.startswith("zh")
            size = corpus.stat().st_size
            ours_extra = ["--config", str(ROOT / "configs/pipeline/chinese.yaml")] if chinese else []
            google_extra = [*ours_extra, *GOOGLE, *(["--masking.cjk_words", "characters"] if chinese else [])]
            if size < 100_000:  # a tiny sample: too few documents for a validation set, and a small vocabulary
                ours_extra += ["--output.validation_fraction", "0", "--tokenizer.vocab_size", "400"]
                google_extra += ["--output.validation_fraction", "0", "--tokenizer.vocab_size", "400"]
            rows.append({"corpus": name, "mb": size / 1e6,
                         "bertline": card(corpus, Path(scratch) / f"{name}-ours", ours_extra),
                         "google_rules": card(corpus, Path(scratch) / f"{name}-google", google_extra)})
    print(f"bench/corpora.py{' --quick' if args.quick else ''}: max_seq_length 128, dupe_factor 5; random-next share (train / "
          "validation), [UNK] per 1k tokens, masks per sample, padding at 128, own tokens truncated")
    print("corpus | MB | rules | samples | random-next | [UNK]/1k | masks/sample | padding | truncated | s")
    worst, unk = 0.0, 0.0
    for row in rows:
        for rules in ("bertline", "google_rules"):
            figures = row[rules]
            if "error" in figures:
                print(f"{row['corpus']} | {row['mb']:.1f} | {rules} | failed: {figures['error']}")
                continue
            train, validation = figures["splits"]["train"], figures["splits"].get("validation")
            share = f"{train['nsp_random_next_fraction']:.3f}" + (f" / {validation['nsp_random_next_fraction']:.3f}" if validation else "")
            print(f"{row['corpus']} | {row['mb']:.1f} | {rules} | {train['samples']:,} | {share} | {train['unk_per_1k_tokens']:.2f} | "
                  f"{train['masked_per_sample']:.1f} | {train['padding_fraction']:.3f} | {figures['counters'].get('tokens_truncated', 0):,} | "
                  f"{figures['seconds']:.0f}")
            if rules == "bertline":
                shares = [s["nsp_random_next_fraction"] for s in figures["splits"].values()]
                worst = max(worst, *(abs(s - 0.5) for s in shares))
                unk = max(unk, *(s["unk_per_1k_tokens"] for s in figures["splits"].values()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"worst |random-next − 0.5| over corpora and splits: {worst:.4f} (target ≤ 0.01); largest [UNK]/1k: {unk:.3f} (target 0)")
    record({"what": "real corpora: worst |random-next share − 0.5| over corpora and splits (and [UNK] per 1k tokens, target 0)",
            "ratio": worst, "target": "<= 0.01 and no [UNK]", "met": worst <= 0.01 and unk == 0, "higher_is_better": False,
            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
