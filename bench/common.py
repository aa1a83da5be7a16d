"""What every benchmark shares: `record()` hands its figures to `make bench` (bench/run_all.py), which sets
BERTLINE_BENCH_JSON to a file per benchmark; run alone, a benchmark only prints."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(figures: dict) -> None:
    """Write this benchmark's figures (JSON-able; include "ratio" and "target" where the issue sets one)."""
    path = os.environ.get("BERTLINE_BENCH_JSON")
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, default=float) + "\n")


def run_logged(command: list[str], log: Path, cwd: Path = Path(__file__).resolve().parents[1]) -> float:
    """Run a step of a benchmark with its output in `log`; its wall seconds, or exit with the log's end on failure."""
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: {' '.join(command[:5])} … failed; see the end of {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started
