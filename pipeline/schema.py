"""The shard sample schema, declared once: the Beam writer and the trainer's reader both import this module.

A shard is a WebDataset tar. Each *record* (one tar key) packs up to `samples_per_record` samples as four
`.npy` members, columnar, so a reader pays per-member costs once per record instead of once per sample:

    <key>.samples.npy               int32 (n, 4): seq_length, segment_a_length, is_random_next, num_masked
    <key>.tokens.npy                uint16 or int32 (sum seq_length,): the ORIGINAL token ids, [CLS] A [SEP] B [SEP]
    <key>.masked_lm_positions.npy   uint16 (sum num_masked,): positions chosen for prediction, ascending per sample
    <key>.masked_input_ids.npy      same dtype as tokens (sum num_masked,): the id placed at each position
                                    ([MASK], a random id, or the original)

Sample i's tokens are tokens[offset_i : offset_i + seq_length_i]; its input ids are those tokens with
masked_input_ids written at masked_lm_positions; its labels are the original tokens at those positions.
token_type_ids are 0 for the first segment_a_length tokens ([CLS] A [SEP]) and 1 after. Keeping the
original tokens lets a loader re-mask dynamically. `.npy` decodes with numpy's allow_pickle=False.
"""

from __future__ import annotations

import dataclasses
import io
import itertools

import numpy as np

SCHEMA_VERSION = 1
FORMAT = "bertline-webdataset"

SAMPLE_COLUMNS = ("seq_length", "segment_a_length", "is_random_next", "num_masked")
MEMBERS = ("samples.npy", "tokens.npy", "masked_lm_positions.npy", "masked_input_ids.npy")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 up to 65,536 entries, int32 beyond."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:  # truncated, not .npy, or an object array (which would need pickle)
        raise ValueError(f"member {name} is not a plain .npy array ({exc})") from None


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclasses.dataclass
class SampleBatch:
    """Columnar samples. `keys` (stable 64-bit hashes) order samples inside shards; they are not stored."""

    keys: np.ndarray  # (n,) uint64
    samples: np.ndarray  # (n, 4) int32, columns SAMPLE_COLUMNS
    tokens: np.ndarray  # (sum seq_length,)
    masked_lm_positions: np.ndarray  # (sum num_masked,) uint16
    masked_input_ids: np.ndarray  # (sum num_masked,)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_lists(cls, keys, samples, tokens, positions, masked_ids, dtype: np.dtype) -> "SampleBatch":
        """Build from per-sample Python lists (as the pair maker produces them)."""
        flat_tokens = np.fromiter(itertools.chain.from_iterable(tokens), dtype=dtype)
        flat_positions = np.fromiter(itertools.chain.from_iterable(positions), dtype=np.uint16)
        flat_ids = np.fromiter(itertools.chain.from_iterable(masked_ids), dtype=dtype)
        return cls(
            keys=np.asarray(keys, dtype=np.uint64),
            samples=np.asarray(samples, dtype=np.int32).reshape(-1, len(SAMPLE_COLUMNS)),
            tokens=flat_tokens,
            masked_lm_positions=flat_positions,
            masked_input_ids=flat_ids,
        )

    @classmethod
    def concat(cls, batches: list["SampleBatch"]) -> "SampleBatch":
        return cls(
            keys=np.concatenate([b.keys for b in batches]),
            samples=np.concatenate([b.samples for b in batches]),
            tokens=np.concatenate([b.tokens for b in batches]),
            masked_lm_positions=np.concatenate([b.masked_lm_positions for b in batches]),
            masked_input_ids=np.concatenate([b.masked_input_ids for b in batches]),
        )

    def take(self, index: np.ndarray) -> "SampleBatch":
        """The samples at `index`, in that order (used to sort by key and to slice records)."""
        index = np.asarray(index, dtype=np.int64)
        token_offsets = _offsets(self.samples[:, 0])
        mask_offsets = _offsets(self.samples[:, 3])
        token_index = _ranges(token_offsets, index)
        mask_index = _ranges(mask_offsets, index)
        return SampleBatch(
            keys=self.keys[index],
            samples=self.samples[index],
            tokens=self.tokens[token_index],
            masked_lm_positions=self.masked_lm_positions[mask_index],
            masked_input_ids=self.masked_input_ids[mask_index],
        )

    def sorted_by_key(self) -> "SampleBatch":
        return self.take(np.argsort(self.keys, kind="stable"))

    def to_members(self) -> dict[str, bytes]:
        """The record's tar members (extension → bytes), in MEMBERS order."""
        arrays = (self.samples, self.tokens, self.masked_lm_positions, self.masked_input_ids)
        return {name: _npy(array) for name, array in zip(MEMBERS, arrays)}

    @classmethod
    def from_members(cls, members: dict[str, bytes]) -> "SampleBatch":
        """Decode one record; `members` maps extension → bytes. Checks that the columns agree."""
        missing = [name for name in MEMBERS if name not in members]
        if missing:
            raise ValueError(f"record lacks members {missing}")
        samples, tokens, positions, masked_ids = (_load_npy(members[name], name) for name in MEMBERS)
        if samples.ndim != 2 or samples.shape[1] != len(SAMPLE_COLUMNS):
            raise ValueError(f"samples.npy has shape {samples.shape}, expected (n, {len(SAMPLE_COLUMNS)})")
        if (int(samples[:, 0].sum()) != len(tokens) or int(samples[:, 3].sum()) != len(positions)
                or len(positions) != len(masked_ids)):
            raise ValueError("record columns disagree: token or mask counts do not match samples.npy")
        return cls(np.zeros(len(samples), np.uint64), samples, tokens, positions, masked_ids)


def _ranges(offsets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Concatenated [offsets[i], offsets[i+1]) for i in index, vectorized."""
    starts = offsets[index]
    lengths = offsets[index + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # position within the output minus the output start of its run, plus the run's source start
    run_starts = np.repeat(starts - _offsets(lengths)[:-1], lengths)
    return np.arange(total, dtype=np.int64) + run_starts
