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
