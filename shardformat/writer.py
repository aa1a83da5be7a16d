"""Write one shard as samples arrive: records go to the stream as soon as they fill, never a whole shard in memory.

The caller owns the stream (a temporary file it fsyncs and renames, or an object-store upload); this
module owns the bytes: a deterministic POSIX tar (fixed mtime, owner and mode, ustar headers), its index
and the shard's statistics for the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import numpy as np

from shardformat.schema import INDEX_DTYPE, RECORD_EXTENSION, SampleBatch, encode_record, record_hash


class _CountingStream:
    """What tarfile writes to: passes bytes on, counts them and hashes them (the shard's sha256)."""

    def __init__(self, stream):
        self.stream, self.position, self.sha256 = stream, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.stream.write(data)
        self.sha256.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


@dataclasses.dataclass
class ShardStats:
    """What the manifest says about a shard's samples (and sums per split)."""

    samples: int = 0
    tokens: int = 0
    masked_tokens: int = 0
    random_next: int = 0
    unk_tokens: int = 0
    length_counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # samples per seq_length

    def add(self, batch: SampleBatch, unk_id: int | None) -> None:
        lengths = batch.samples[:, 0]
        self.samples += len(batch)
        self.tokens += int(lengths.sum())
        self.masked_tokens += int(batch.samples[:, 3].sum())
        self.random_next += int(batch.samples[:, 2].sum())
        if unk_id is not None:
            self.unk_tokens += int(np.count_nonzero(batch.tokens == unk_id))
        counts = np.bincount(lengths, minlength=len(self.length_counts))
        counts[:len(self.length_counts)] += self.length_counts
        self.length_counts = counts

    def to_json(self) -> dict:
        return {"samples": self.samples, "tokens": self.tokens, "masked_tokens": self.masked_tokens,
                "random_next": self.random_next, "unk_tokens": self.unk_tokens,
                "length_counts": self.length_counts.tolist()}


@dataclasses.dataclass(frozen=True)
class WrittenShard:
    """A finished shard: its size and sha256, its index (bytes of a .npy file) and statistics."""

    bytes: int
    sha256: str
    records: int
    index: bytes
    stats: ShardStats


class ShardWriter:
    """Appends samples to a shard in the order given; every record holds `samples_per_record` samples but the last.

    Memory: at most one record's samples wait here; the index grows by 24 bytes per record.
    """

    def __init__(self, stream, key_prefix: str, samples_per_record: int, unk_id: int | None = None):
        self._out = _CountingStream(stream)
        # ustar headers: no pax extensions, so the bytes depend only on names, sizes and the fixed fields
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.key_prefix, self.samples_per_record, self.unk_id = key_prefix, samples_per_record, unk_id
        self._pending: list[SampleBatch] = []
        self._pending_count = 0
        self._index: list[tuple[int, int, int, int]] = []
        self.stats = ShardStats()

    def write(self, batch: SampleBatch) -> None:
        if not len(batch):
            return
        self.stats.add(batch, self.unk_id)
        self._pending.append(batch)
        self._pending_count += len(batch)
        if self._pending_count >= self.samples_per_record:
            waiting = SampleBatch.concat(self._pending)
            full = len(waiting) - len(waiting) % self.samples_per_record
            pieces = waiting.split(range(self.samples_per_record, len(waiting), self.samples_per_record))
            for piece in pieces[:full // self.samples_per_record]:
                self._record(piece)
            self._pending = pieces[full // self.samples_per_record:]
            self._pending_count = len(waiting) - full

    def _record(self, batch: SampleBatch) -> None:
        data = encode_record(batch)
        member = tarfile.TarInfo(f"{self.key_prefix}-{len(self._index):08d}.{RECORD_EXTENSION}")
        member.size, member.mtime, member.mode = len(data), 0, 0o444
        member.uname = member.gname = "bertline"
        self._tar.addfile(member, io.BytesIO(data))
        # tarfile pads the data to whole 512-byte blocks; the data starts that far before the new end
        data_offset = self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self._index.append((data_offset, len(data), len(batch), record_hash(data)))

    def finish(self) -> WrittenShard:
        if self._pending_count:
            self._record(SampleBatch.concat(self._pending))
            self._pending, self._pending_count = [], 0
        self._tar.close()  # two zero blocks, padded to tarfile's 10 KiB record size
        index = io.BytesIO()
        np.save(index, np.array(self._index, dtype=INDEX_DTYPE), allow_pickle=False)
        return WrittenShard(self._out.position, self._out.sha256.hexdigest(), len(self._index), index.getvalue(), self.stats)
