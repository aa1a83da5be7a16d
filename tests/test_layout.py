"""The house's shape, checked: data flows corpus → pipeline/ → shards → trainer/, and the two sides meet only
in shardformat/ (the format: schema, writer, reader, masking, hashing); model/ imports only torch."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package,forbidden", [
    ("pipeline", {"trainer", "model", "cluster", "deepspeed", "torch"}),
    ("trainer", {"pipeline"}),
    ("shardformat", {"pipeline", "trainer", "model", "cluster", "apache_beam", "torch", "deepspeed"}),
    ("model", {"pipeline", "trainer", "shardformat", "cluster", "bertline", "deepspeed", "numpy"}),
    # fine-tuning tokenizes as the job did (pipeline's tokenizer and clean-up) and reads checkpoints as export does
    ("finetune", {"cluster", "apache_beam", "deepspeed"}),
])
def test_packages_meet_only_through_the_format(package, forbidden):
    assert not (_imports(package) & forbidden), f"{package}/ imports {sorted(_imports(package) & forbidden)}"
