"""Seeds from a stable hash of names: the same (seed, document, pass) gives the same stream on any machine.

Never Python's hash() (salted per process) and never the global `random` (shared, order-dependent).
"""

from __future__ import annotations

import hashlib
import random


def stable_hash(*parts: object) -> int:
    """An unsigned 64-bit hash of the parts' text; identical across processes, runs and platforms."""
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def unit_interval(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) for the parts (used for splits and sampling)."""
    return stable_hash(*parts) / 2.0**64


def rng_for(*parts: object) -> random.Random:
    """A private random.Random seeded from the parts; scalar draws are ~20× cheaper than numpy's here."""
    return random.Random(stable_hash(*parts))


def is_held_out(seed: int, text: str, fraction: float) -> bool:
    """Does a document with this text go to the validation split?

    Decided by a hash of the text, not of where the document sits: adding, removing or editing other files
    cannot move a document between splits, and exact duplicates always share a split (no leak).
    """
    return unit_interval(seed, "split", text) < fraction
