"""`make bench` / `make bench-quick`: every benchmark, one after another, each printing a ratio against a
baseline measured in the same run; then bench/results/<date>[-quick].json, a ratio chart next to it, and the
table between the markers in bench/README.md.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME …]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- make bench: table begins -->", "<!-- make bench: table ends -->"

# name → (full arguments, quick arguments); each script is bench/<name>.py.
BENCHMARKS = {
    "prep": ([], ["--quick"]),
    "corpora": ([], ["--quick"]),
    "read_shards": ([], []),
    "model": (["--presets", "tiny", "small", "base", "--repeats", "3"], ["--presets", "tiny", "--repeats", "1"]),
    "loader": ([], []),
    "scale": ([], ["--quick"]),
    "trainer": (["--steps", "20"], ["--steps", "4"]),
    "resume": ([], ["--repeats", "1"]),
    "quality": ([], ["--quick"]),
    "init_from": ([], ["--quick"]),
    "downstream": ([], ["--quick"]),
}


def versions() -> dict:
    names = ("torch", "deepspeed", "apache-beam", "webdataset", "transformers", "sentencepiece", "numpy")
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def revision() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run(name: str, arguments: list[str], scratch: Path) -> dict:
    figures_file = scratch / f"{name}.json"
    command = [sys.executable, f"bench/{name}.py", *arguments]
    print(f"== {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "BERTLINE_BENCH_JSON": str(figures_file)})
    seconds = time.perf_counter() - started
    figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    status = "ok" if result.returncode == 0 and figures else ("skipped" if result.returncode == 0 else f"failed ({result.returncode})")
    return {"command": " ".join(command[1:]), "seconds": round(seconds, 1), "status": status, **figures}


def table(results: dict, meta: dict) -> str:
    lines = [f"Last `make bench{' -quick' if meta['quick'] else ''}`: {meta['date']}, host {meta['host']} ({meta['cores']} cores), "
             f"commit {meta['revision']}, {meta['minutes']:.1f} minutes; torch {meta['versions']['torch']}, deepspeed "
             f"{meta['versions']['deepspeed']}, apache-beam {meta['versions']['apache-beam']}, transformers "
             f"{meta['versions']['transformers']}. Figures: [{meta['json']}]({meta['json']}), chart: [{meta['chart']}]({meta['chart']}).",
             "", "| benchmark | what | ratio | target | met | seconds |", "|---|---|---|---|---|---|"]
    for name, row in results.items():
        ratio = f"{row['ratio']:.3g}" if isinstance(row.get("ratio"), (int, float)) else row["status"]
        met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
        lines.append(f"| `{row['command']}` | {row.get('what', '')} | {ratio} | {row.get('target', '')} | {met} | {row['seconds']:.0f} |")
    quality = results.get("quality", {})
    if "ours_eval" in quality:
        downstream = quality["downstream"]
        wins = "yes" if downstream["pretrained"] > downstream["random_init"] else "**no**"
        lines += ["", f"Learning quality ({quality['steps']} steps): held-out MLM accuracy bertline "
                  f"{quality['ours_eval']['mlm_accuracy']:.4f} vs HF {quality['hf_eval']['mlm_accuracy']:.4f}; downstream "
                  f"book classification: pretrained ({downstream.get('pretrain_steps', quality['steps'])} steps) "
                  f"{downstream['pretrained']:.3f} vs random init {downstream['random_init']:.3f} (pretrained wins: {wins}). "
                  f"Loss curves: [{quality['plot']}]({quality['plot'].removeprefix('bench/')})."]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, row) for name, row in results.items() if isinstance(row.get("ratio"), (int, float))]
    # Every bar as "times better than the baseline": higher is better everywhere on the chart.
    values = [row["ratio"] if row.get("higher_is_better") else 1 / row["ratio"] for _, row in rows]
    figure, axis = plt.subplots(figsize=(8, 0.5 + 0.5 * len(rows)))
    # Green: the benchmark's target is met; red: missed; grey: no target (the ratio is the finding).
    colours = [{True: "tab:green", False: "tab:red", None: "tab:grey"}[row.get("met")] for _, row in rows]
    axis.barh([name for name, _ in rows], values, color=colours)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("× better than the baseline measured in the same run (log scale; < 1 is a cost)")
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.2f}×", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bertline-bench-") as scratch:
        for name, (full, quick) in BENCHMARKS.items():
            if args.only is None or name in args.only:
                results[name] = run(name, quick if args.quick else full, Path(scratch))
    date = datetime.date.today().isoformat()
    stem = f"{date}{'-quick' if args.quick else ''}"
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    meta = {"date": date, "quick": args.quick, "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
            "revision": revision(), "versions": versions(), "minutes": (time.perf_counter() - started) / 60,
            "json": f"results/{stem}.json", "chart": f"results/{stem}-ratios.png"}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "benchmarks": results}, indent=2, default=float) + "\n")
    chart(results, out / f"{stem}-ratios.png")
    if args.only is None and not args.quick:  # the README's table holds full runs only
        text = README.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            README.write_text(head + BEGIN + "\n" + table(results, meta) + "\n" + END + rest.split(END, 1)[1])
    print(table(results, meta))
    failed = [name for name, row in results.items() if row["status"].startswith("failed")]
    if failed:
        print(f"bench/run_all.py: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
