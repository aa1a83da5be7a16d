"""Preprocessing throughput and memory, against the tokenizer's own speed measured in the same run.

For each corpus (English, Chinese from ../shared/corpora): run `bertline prepare` on FnApiRunner with one
worker (max_seq_length 128, dupe_factor 5) in a child process, and report
  - end-to-end words/s per core (words / CPU seconds of the job, Beam start-up and SentencePiece training
    included) and per wall second,
  - the ceiling: SentencePiece encoding alone over the same sentences, with the model the job trained,
    single-threaded, in this process: words/s,
  - their ratio (end to end ÷ ceiling),
  - the job's peak RSS on the corpus at 1× and 4× its size with a given tokenizer (the corpus-dependent
    part), and with the tokenizer trained in the job (SentencePiece's trainer adds memory that grows with
    its sample, up to tokenizer.sample_sentences, then stays flat).
Words are whitespace-separated tokens; in Chinese, where words are not spaced, each CJK character counts
as one word (the pipeline's own unit for whole-word masking).

    .venv/bin/python bench/prep.py [--quick] [--json bench/results/prep.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
SETTINGS = ["--pairs.max_seq_length", "128", "--pairs.dupe_factor", "5", "--output.num_shards", "8",
            "--output.validation_fraction", "0"]


def count_words(text: str) -> int:
    cjk = len(CJK.findall(text))
    return cjk + len(CJK.sub(" ", text).split())


def run_job(corpus: Path, output: Path, extra: list[str]) -> dict:
    """One `bertline prepare` in a child process: wall time, CPU time and peak RSS of that child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # A fresh interpreter per job so peak RSS (ru_maxrss of the child) belongs to that job alone.
    code = (
        "import sys, resource; from pipeline.__main__ import main; rc = main(sys.argv[1:]); "
        "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--input", str(corpus), "--output", str(output), "--overwrite", *SETTINGS, *extra],
        capture_output=True, text=True, cwd=ROOT,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"bench: the job failed on {corpus}:\n{result.stderr[-3000:]}")
    rss_kb = int(re.search(r"MAXRSS_KB (\d+)", result.stderr).group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_kb / 1024}


def tokenizer_ceiling(corpus: Path, model: Path, nfkc: bool, repeats: int) -> dict:
    """SentencePiece alone over the job's sentences (normalized and split beforehand, untimed)."""
    import sentencepiece

    from pipeline.read import plan_inputs, read_documents
    from pipeline.segment import normalize_line, split_sentences

    sentences: list[str] = []
    ranges, _ = plan_inputs([str(corpus)], 1 << 40)
    for document in read_documents(ranges[0], "utf-8", "text", "text", print):
        for line in document.lines:
            sentences.extend(split_sentences(normalize_line(line, nfkc), 2000))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        sp.encode(sentences, out_type=int, num_threads=1)
        best = min(best, time.process_time() - started)
    return {"cpu_s": best, "sentences": len(sentences)}


def bench_corpus(name: str, source: Path, extra: list[str], nfkc: bool, scratch: Path, quick: bool) -> dict:
    text = source.read_text(encoding="utf-8")
    if quick:  # about 1.5 MB of whole documents
        kept, size = [], 0
        for document in text.split("\n\n"):
            kept.append(document)
            size += len(document)
            if size > 1_500_000 and len(kept) > 2:
                break
        text = "\n\n".join(kept).rstrip("\n") + "\n"
    one = scratch / f"{name}-1x.txt"
    one.write_text(text, encoding="utf-8")
    four = scratch / f"{name}-4x.txt"
    four.write_text("\n\n".join([text.rstrip("\n")] * 4) + "\n", encoding="utf-8")
    words = count_words(text)

    trained = scratch / f"{name}-out-1x"
    job = run_job(one, trained, extra)
    given = [*extra, "--tokenizer.kind", "sentencepiece", "--tokenizer.path", str(trained / "spm.model")]
    job_given = run_job(one, scratch / f"{name}-out-1x-given", given)
    job4_given = run_job(four, scratch / f"{name}-out-4x-given", given)
    job4 = None if quick else run_job(four, scratch / f"{name}-out-4x", extra)
    ceiling = tokenizer_ceiling(one, trained / "spm.model", nfkc, repeats=1 if quick else 3)
    manifest = json.loads((trained / "manifest.json").read_text())
    samples = sum(split["samples"] for split in manifest["splits"].values())
    row = {
        "corpus": name,
        "mb": len(text.encode()) / 1e6,
        "words": words,
        "samples": samples,
        "end_to_end_words_per_cpu_s": words / job["cpu_s"],
        "end_to_end_words_per_wall_s": words / job["wall_s"],
        "given_tokenizer_words_per_cpu_s": words / job_given["cpu_s"],
        "given_tokenizer_4x_words_per_cpu_s": 4 * words / job4_given["cpu_s"],
        "tokenizer_only_words_per_cpu_s": words / ceiling["cpu_s"],
        "peak_rss_mb_1x_given": job_given["peak_rss_mb"],
        "peak_rss_mb_4x_given": job4_given["peak_rss_mb"],
        "peak_rss_mb_1x_trained": job["peak_rss_mb"],
        "peak_rss_mb_4x_trained": job4["peak_rss_mb"] if job4 else None,
        "end_to_end_4x_words_per_cpu_s": 4 * words / job4["cpu_s"] if job4 else None,
    }
    row["ratio_to_tokenizer"] = row["end_to_end_words_per_cpu_s"] / row["tokenizer_only_words_per_cpu_s"]
    row["given_ratio_to_tokenizer"] = row["given_tokenizer_words_per_cpu_s"] / row["tokenizer_only_words_per_cpu_s"]
    row["rss_ratio_4x_to_1x_given"] = row["peak_rss_mb_4x_given"] / row["peak_rss_mb_1x_given"]
    return row


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 1.5 MB of each corpus, one timing repeat")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if not (CORPORA / "README.md").exists():
        print(f"bench/prep.py: skipped, the shared corpora are not at {CORPORA}")
        return 0
    cases = [
        ("en_gutenberg+speeches", [CORPORA / "en_gutenberg" / "docs.txt", CORPORA / "en_speeches" / "docs.txt"], [], False),
        ("zh_novels", [CORPORA / "zh_novels" / "docs.txt"], ["--config", str(ROOT / "configs/pipeline/chinese.yaml")], True),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bertline-bench-") as scratch:
        for name, sources, extra, nfkc in cases:
            merged = Path(scratch) / f"{name}-source.txt"
            merged.write_text("\n\n".join(p.read_text(encoding="utf-8").rstrip("\n") for p in sources) + "\n", encoding="utf-8")
            rows.append(bench_corpus(name, merged, extra, nfkc, Path(scratch), args.quick))
    print(f"bench/prep.py{' --quick' if args.quick else ''}: FnApiRunner, 1 worker, max_seq_length 128, dupe_factor 5, "
          f"host {os.uname().nodename}, {os.cpu_count()} cores")
    print("Throughput, words per CPU-second of the job (start-up included):")
    print("corpus | MB | words | e2e, trains tokenizer | e2e, given tokenizer | e2e 4×, given | e2e 4×, trains | "
          "tokenizer alone | e2e ÷ tokenizer (trains / given)")
    for r in rows:
        print(" | ".join([
            r["corpus"], f"{r['mb']:.1f}", f"{r['words']:,}", f"{r['end_to_end_words_per_cpu_s']:,.0f}",
            f"{r['given_tokenizer_words_per_cpu_s']:,.0f}", f"{r['given_tokenizer_4x_words_per_cpu_s']:,.0f}",
            _fmt(r["end_to_end_4x_words_per_cpu_s"], ",.0f"), f"{r['tokenizer_only_words_per_cpu_s']:,.0f}",
            f"{r['ratio_to_tokenizer']:.3f} / {r['given_ratio_to_tokenizer']:.3f}",
        ]))
    print("Peak RSS of the job:")
    print("corpus | 1×, given tokenizer | 4×, given tokenizer | 4× ÷ 1× | 1×, trains tokenizer | 4×, trains tokenizer")
    for r in rows:
        print(" | ".join([
            r["corpus"], f"{r['peak_rss_mb_1x_given']:.0f} MB", f"{r['peak_rss_mb_4x_given']:.0f} MB",
            f"{r['rss_ratio_4x_to_1x_given']:.2f}", f"{r['peak_rss_mb_1x_trained']:.0f} MB",
            _fmt(r["peak_rss_mb_4x_trained"], ".0f") + " MB",
        ]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    worst = max(r["rss_ratio_4x_to_1x_given"] for r in rows)
    record({"what": "Beam job: peak RSS on a 4× corpus ÷ on 1× (given tokenizer; memory must not grow with the corpus)",
            "rows": rows, "ratio": worst, "target": "<= 1.5", "met": worst <= 1.5, "higher_is_better": False,
            "words_per_cpu_s": {r["corpus"]: r["given_tokenizer_words_per_cpu_s"] for r in rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
