"""The shard sample schema, declared once: the Beam writer and the trainer's reader both import this module.

A shard is a WebDataset tar. Each tar *record* (one key, one member `<key>.rec`) packs up to
`samples_per_record` samples column-wise in one little-endian binary blob:

    header                  8 bytes: uint32 n (samples), uint8 token itemsize (2 or 4), 3 zero bytes
    samples                 int32 (n, 4): seq_length, segment_a_length, is_random_next, num_masked
    tokens                  uint16 or int32 (Σ seq_length,): the ORIGINAL token ids, [CLS] A [SEP] B [SEP]
    masked_input_ids        same dtype as tokens (Σ num_masked,): the id placed at each masked position
                            ([MASK], a random id, or the original)
    masked_lm_positions     uint16 (Σ num_masked,): positions chosen for prediction, ascending per sample

Every column starts at a multiple of its item size, so decoding is four zero-copy `numpy.frombuffer`
views; nothing is ever unpickled. Sample i's tokens are tokens[offset_i : offset_i + seq_length_i]; its input
ids are those tokens with masked_input_ids written at masked_lm_positions; its labels are the original
tokens at those positions. token_type_ids are 0 for the first segment_a_length tokens ([CLS] A [SEP]) and 1
after. Keeping the original tokens lets a loader re-mask dynamically.

Each shard has an index beside it (`<shard>.idx.npy`, INDEX_DTYPE): every record's byte offset and size in
the tar, its sample count and a 64-bit hash of its bytes, so a reader fetches and checks single records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import struct

import numpy as np

SCHEMA_VERSION = 2
FORMAT = "bertline-webdataset"

SAMPLE_COLUMNS = ("seq_length", "segment_a_length", "is_random_next", "num_masked")
RECORD_EXTENSION = "rec"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_HEADER = struct.Struct("<IB3x")
# Counters every manifest holds (0 when nothing happened): what happened to the text on its way to samples.
TEXT_COUNTERS = ("documents_read", "input_chars", "sentences", "tokens", "documents_empty", "documents_split",
                 "jsonl_lines_skipped", "replacement_characters", "nul_characters_removed", "single_sentence_documents",
                 "single_sentence_documents_dropped", "tokens_dropped", "tokens_truncated", "random_next_unavailable")
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("samples", "<u4"), ("sha256", "<u8")])


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 up to 65,536 entries, int32 beyond."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def record_hash(data: bytes | memoryview) -> int:
    """The 64-bit hash a shard's index keeps for each record: the first 8 bytes of its SHA-256 (hardware-accelerated
    on current CPUs: twice BLAKE2b's speed here), enough to catch any flipped or lost byte."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclasses.dataclass
class SampleBatch:
    """Columnar samples: per-sample rows plus the flat token and mask columns they index into."""

    samples: np.ndarray  # (n, 4) int32, columns SAMPLE_COLUMNS
    tokens: np.ndarray  # (Σ seq_length,)
    masked_lm_positions: np.ndarray  # (Σ num_masked,) uint16
    masked_input_ids: np.ndarray  # (Σ num_masked,), the tokens' dtype

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def from_lists(cls, samples, tokens, positions, masked_ids, dtype: np.dtype) -> "SampleBatch":
        """Build from per-sample Python lists (as the pair maker produces them)."""
        return cls(
            samples=np.asarray(samples, dtype=np.int32).reshape(-1, len(SAMPLE_COLUMNS)),
            tokens=np.fromiter(itertools.chain.from_iterable(tokens), dtype=dtype),
            masked_lm_positions=np.fromiter(itertools.chain.from_iterable(positions), dtype=np.uint16),
            masked_input_ids=np.fromiter(itertools.chain.from_iterable(masked_ids), dtype=dtype),
        )

    @classmethod
    def concat(cls, batches: list["SampleBatch"]) -> "SampleBatch":
        if len(batches) == 1:
            return batches[0]
        return cls(
            samples=np.concatenate([b.samples for b in batches]),
            tokens=np.concatenate([b.tokens for b in batches]),
            masked_lm_positions=np.concatenate([b.masked_lm_positions for b in batches]),
            masked_input_ids=np.concatenate([b.masked_input_ids for b in batches]),
        )

    def take(self, index: np.ndarray) -> "SampleBatch":
        """The samples at `index`, in that order."""
        index = np.asarray(index, dtype=np.int64)
        token_index = _ranges(_offsets(self.samples[:, 0]), index)
        mask_index = _ranges(_offsets(self.samples[:, 3]), index)
        return SampleBatch(
            samples=self.samples[index],
            tokens=self.tokens[token_index],
            masked_lm_positions=self.masked_lm_positions[mask_index],
            masked_input_ids=self.masked_input_ids[mask_index],
        )

    def slice(self, start: int, stop: int) -> "SampleBatch":
        """Samples [start, stop): views, no copy."""
        tokens, masks = _offsets(self.samples[:, 0]), _offsets(self.samples[:, 3])
        return SampleBatch(
            samples=self.samples[start:stop],
            tokens=self.tokens[tokens[start]:tokens[stop]],
            masked_lm_positions=self.masked_lm_positions[masks[start]:masks[stop]],
            masked_input_ids=self.masked_input_ids[masks[start]:masks[stop]],
        )

    def split(self, bounds) -> list["SampleBatch"]:
        """Views of consecutive pieces cut before each sample index in `bounds` (ascending)."""
        bounds = np.asarray(list(bounds), dtype=np.int64)
        tokens, masks = _offsets(self.samples[:, 0]), _offsets(self.samples[:, 3])
        edges = np.concatenate([[0], bounds, [len(self)]])
        return [
            SampleBatch(self.samples[a:b], self.tokens[tokens[a]:tokens[b]], self.masked_lm_positions[masks[a]:masks[b]],
                        self.masked_input_ids[masks[a]:masks[b]])
            for a, b in zip(edges[:-1].tolist(), edges[1:].tolist())
        ]

    def payload_bytes(self) -> int:
        """The size of these samples encoded as one record (header included)."""
        return _HEADER.size + self.samples.nbytes + self.tokens.nbytes + self.masked_input_ids.nbytes + self.masked_lm_positions.nbytes


def sample_bytes(samples: np.ndarray, itemsize: int) -> np.ndarray:
    """Each sample's share of a record's bytes: its row, its tokens, its masked ids and positions."""
    return 16 + samples[:, 0].astype(np.int64) * itemsize + samples[:, 3].astype(np.int64) * (itemsize + 2)


def encode_record(batch: SampleBatch) -> bytes:
    """One record's bytes (layout in the module docstring)."""
    itemsize = batch.tokens.dtype.itemsize
    if itemsize not in (2, 4) or batch.masked_input_ids.dtype != batch.tokens.dtype:
        raise ValueError(f"tokens must be uint16 or int32 and masked ids the same dtype, got {batch.tokens.dtype}, {batch.masked_input_ids.dtype}")
    return b"".join((
        _HEADER.pack(len(batch), itemsize),
        np.ascontiguousarray(batch.samples, dtype="<i4").tobytes(),
        np.ascontiguousarray(batch.tokens).tobytes(),
        np.ascontiguousarray(batch.masked_input_ids).tobytes(),
        np.ascontiguousarray(batch.masked_lm_positions, dtype="<u2").tobytes(),
    ))


def decode_record(data: bytes | memoryview) -> SampleBatch:
    """A record's samples as zero-copy views of `data`; ValueError if its parts do not add up."""
    if len(data) < _HEADER.size:
        raise ValueError(f"record of {len(data)} bytes is shorter than its header")
    n, itemsize = _HEADER.unpack_from(data)
    if itemsize not in (2, 4):
        raise ValueError(f"record header gives token item size {itemsize}, expected 2 or 4")
    at = _HEADER.size
    if at + 16 * n > len(data):
        raise ValueError(f"record declares {n} samples but holds only {len(data)} bytes")
    samples = np.frombuffer(data, dtype="<i4", count=4 * n, offset=at).reshape(n, 4)
    at += 16 * n
    num_tokens, num_masked = int(samples[:, 0].sum()), int(samples[:, 3].sum())
    if (samples < 0).any() or at + num_tokens * itemsize + num_masked * (itemsize + 2) != len(data):
        raise ValueError(f"record columns disagree: {n} samples of {num_tokens} tokens and {num_masked} masks do not fill {len(data)} bytes")
    dtype = np.dtype("<u2") if itemsize == 2 else np.dtype("<i4")
    tokens = np.frombuffer(data, dtype=dtype, count=num_tokens, offset=at)
    at += num_tokens * itemsize
    masked_ids = np.frombuffer(data, dtype=dtype, count=num_masked, offset=at)
    at += num_masked * itemsize
    positions = np.frombuffer(data, dtype="<u2", count=num_masked, offset=at)
    return SampleBatch(samples, tokens, positions, masked_ids)


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
