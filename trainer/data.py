"""The training loader: shards → collated BERT batches, in a global order that survives restarts and
changes of world size.

The order rule (elastic): an epoch is a permutation of every sample of the split that depends only on
(seed, epoch): shards in a shuffled order, each shard's records (blocks of samples_per_record samples, each
block a random draw from the corpus: the pipeline files samples by a random key) shuffled within it. The loader's
position is (epoch, samples consumed globally). Global batch k of an epoch covers samples
[position + k·G, position + (k+1)·G) with G = micro_batch_size × world_size; rank r takes the r-th
micro-batch-sized slice of it. A resumed run, with any world size or micro batch, continues from the saved
position, so within an epoch no sample is seen twice and none is skipped. The last samples of an epoch
that cannot fill a global batch (< G) are dropped, so every rank gets exactly the same number of batches.

What a rank reads: only the records that hold its samples, one `pread` each, checked against the shard's
index hash. With a micro batch that is a multiple of the record size, a rank reads total ÷ world size bytes
per epoch; memory per loader (or worker) is a few records plus the open shards' indexes and record orders.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import random
import threading
from typing import Iterator

import numpy as np
import torch

from bertline.errors import UserError
from model.heads import IGNORE_INDEX  # the label of a padding slot, as the model's losses expect it
from shardformat import schema
from shardformat.masking import MaskingSpec, mask_sequence
from shardformat.reader import CorruptRecord, ShardFile, ShardSet
from shardformat.rng import stable_hash

log = logging.getLogger("bertline.trainer")
__all__ = ["ShardSet", "LoaderSpec", "PretrainingBatches", "collate", "model_inputs", "IGNORE_INDEX"]


# ---------------------------------------------------------------- pure order and partition functions

def shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The epoch's shard permutation."""
    return np.random.default_rng(stable_hash(seed, "shards", epoch)).permutation(num_shards)


def record_order(seed: int, epoch: int, shard: int, samples: int, samples_per_record: int) -> np.ndarray:
    """The permutation of one shard's records in this epoch: its full records shuffled, a partial last record
    (only in a shard smaller than one record) last. Computed once per (epoch, shard), not per batch."""
    full = samples // samples_per_record
    order = np.random.default_rng(stable_hash(seed, "records", epoch, shard)).permutation(full)
    return np.append(order, full) if samples % samples_per_record else order


def batches_per_epoch(total_samples: int, position: int, global_batch: int) -> int:
    """Global batches left in an epoch from `position` (samples consumed); the tail < global_batch is dropped."""
    return max(0, (total_samples - position) // global_batch)


def rank_slice(position: int, batch: int, micro_batch_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Global sample indices [start, stop) that `rank` reads for global batch `batch` counted from `position`."""
    start = position + batch * micro_batch_size * world_size + rank * micro_batch_size
    return start, start + micro_batch_size


def worker_batches(batches: int, worker: int, num_workers: int) -> range:
    """The batch numbers a loader worker builds; DataLoader's round-robin over workers restores the order."""
    return range(worker, batches, num_workers)


# ---------------------------------------------------------------- collation

@dataclasses.dataclass(frozen=True)
class LoaderSpec:
    """What the loader needs besides the shards; built by the trainer from its config."""

    micro_batch_size: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    masking: str = "static"  # or "dynamic": re-mask every epoch from the original tokens
    masked_lm_prob: float = 0.15
    pad_to_multiple_of: int = 8
    fixed_length: bool = False  # pad every batch to max_seq_length instead of its longest sequence
    skip_corrupt_shards: bool = False


def collate(batch: schema.SampleBatch, sample_index: np.ndarray, max_predictions: int, pad_id: int,
            length: int) -> dict[str, torch.Tensor]:
    """Samples → padded tensors, vectorized: input ids with the masks applied, type ids, attention mask,
    masked positions and labels (IGNORE_INDEX in padding slots), NSP labels and global sample indices.

    The flat columns are laid out sample after sample, and a boolean mask assigns in row-major order, so
    `padded[valid] = flat` places every sample's tokens (and masks) in its row without an index array."""
    n = len(batch)
    lengths, counts = batch.samples[:, 0], batch.samples[:, 3]
    valid = np.arange(length) < lengths[:, None]  # (batch, length)
    input_ids = np.full((n, length), pad_id, dtype=np.int64)
    input_ids[valid] = batch.tokens
    used = np.arange(max_predictions) < counts[:, None]  # (batch, max_predictions)
    positions = np.zeros((n, max_predictions), dtype=np.int64)
    positions[used] = batch.masked_lm_positions
    labels = np.full((n, max_predictions), IGNORE_INDEX, dtype=np.int64)
    rows = np.nonzero(used)[0]
    masked_at = positions[used]
    labels[used] = input_ids[rows, masked_at]
    input_ids[rows, masked_at] = batch.masked_input_ids
    token_type_ids = (np.arange(length) >= batch.samples[:, 1:2]) & valid
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids.astype(np.int64)),
        "attention_mask": torch.from_numpy(valid.astype(np.int64)),
        "masked_lm_positions": torch.from_numpy(positions),
        "masked_lm_labels": torch.from_numpy(labels),
        "next_sentence_labels": torch.from_numpy(batch.samples[:, 2].astype(np.int64)),
        "sample_index": torch.from_numpy(np.asarray(sample_index, dtype=np.int64)),
    }


# Batch entries that are not model inputs: which samples these are, and the corrupt shards and records the loader
# (or worker) that built the batch has skipped so far (shard index; shard × records_per_shard + record).
BOOKKEEPING = ("sample_index", "sample_id", "skipped_shards", "skipped_records")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A collated batch as the model's keyword arguments, on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in BOOKKEEPING}  # async from pinned memory


def remask(batch: schema.SampleBatch, sample_index: np.ndarray, seed: int, epoch: int, spec: MaskingSpec) -> schema.SampleBatch:
    """Fresh masks from the original tokens, seeded per (seed, epoch, global sample index)."""
    offsets = np.concatenate([[0], np.cumsum(batch.samples[:, 0])])
    samples = batch.samples.copy()
    positions, ids = [], []
    for i, index in enumerate(sample_index):
        tokens = batch.tokens[offsets[i]:offsets[i + 1]].tolist()
        masked = mask_sequence(tokens, random.Random(stable_hash(seed, "remask", epoch, int(index))), spec)
        samples[i, 3] = len(masked.positions)
        positions.extend(masked.positions)
        ids.extend(masked.input_ids)
    return schema.SampleBatch(samples, batch.tokens, np.asarray(positions, dtype=np.uint16),
                              np.asarray(ids, dtype=batch.tokens.dtype))


# ---------------------------------------------------------------- the dataset

class PretrainingBatches(torch.utils.data.IterableDataset):
    """Yields this rank's collated micro batches for one epoch from the current position.

    Stateful: state_dict() is {"epoch", "position"} (position = samples consumed globally); after
    load_state_dict() the next iteration starts exactly there. The trainer advances the position with
    `advance()` after each optimizer micro step, so a checkpoint records what was actually trained on.
    """

    OPEN_SHARDS = 4  # shards kept open (index, file descriptor, record order) per loader or worker
    CACHED_RECORDS = 16  # decoded records kept: a micro batch smaller than a record reuses it

    def __init__(self, shards: ShardSet, spec: LoaderSpec, masking_spec: MaskingSpec | None = None):
        super().__init__()
        self.shards, self.spec, self.masking_spec = shards, spec, masking_spec
        self.epoch, self.position = 0, 0
        self._corrupt: set[int] = set()
        self._skipped_records: set[tuple[int, int]] = set()
        self._files: collections.OrderedDict[int, ShardFile] = collections.OrderedDict()
        self._orders: collections.OrderedDict[tuple[int, int], np.ndarray] = collections.OrderedDict()
        self._records: collections.OrderedDict[tuple[int, int], schema.SampleBatch] = collections.OrderedDict()
        self._bytes_closed = 0
        self._shard_order: tuple[int, np.ndarray | None] = (-1, None)
        if spec.masking == "dynamic" and masking_spec is None:
            raise UserError("masking: dynamic needs a masking spec (tokenizer ids and masked_lm_prob)")

    def __getstate__(self):  # DataLoader workers get a copy without open files or caches
        state = self.__dict__.copy()
        state["_files"], state["_orders"], state["_records"] = (collections.OrderedDict() for _ in range(3))
        return state

    @property
    def global_batch(self) -> int:
        return self.spec.micro_batch_size * self.spec.world_size

    def __len__(self) -> int:
        return batches_per_epoch(self.shards.total_samples, self.position, self.global_batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if position > self.shards.total_samples:
            raise UserError(f"the loader position {position} lies beyond the {self.shards.total_samples} {self.shards.split} samples "
                            f"of {self.shards.folder}: the checkpoint was written on other data; resume on the run's own shards")
        self.epoch, self.position = epoch, position

    def advance(self) -> None:
        """One global batch was trained on: move the position, rolling over to the next epoch at the end."""
        self.position += self.global_batch
        if batches_per_epoch(self.shards.total_samples, self.position, self.global_batch) == 0:
            self.epoch, self.position = self.epoch + 1, 0

    @property
    def bytes_read(self) -> int:
        """Bytes this loader has read from shard and index files (DataLoader workers count their own)."""
        return self._bytes_closed + sum(f.bytes_read for f in self._files.values())

    @property
    def skipped_shards(self) -> list[str]:
        return sorted(self.shards.shards[shard]["path"] for shard in self._corrupt)

    @property
    def skipped_records(self) -> list[tuple[str, int]]:
        return sorted((self.shards.shards[shard]["path"], record) for shard, record in self._skipped_records)

    def _file(self, shard: int) -> ShardFile | None:
        """The open shard (a few kept), or None for a shard whose index is corrupt under skip_corrupt_shards."""
        if shard in self._corrupt:
            return None
        if shard not in self._files:
            try:
                opened = ShardFile(self.shards.folder, self.shards.shards[shard])
            except UserError as exc:
                if not self.spec.skip_corrupt_shards:
                    raise
                log.warning("skipping corrupt shard (skip_corrupt_shards): %s", exc)
                self._corrupt.add(shard)
                return None
            if len(self._files) >= self.OPEN_SHARDS:
                _, closed = self._files.popitem(last=False)
                self._bytes_closed += closed.bytes_read
                closed.close()
            self._files[shard] = opened
        self._files.move_to_end(shard)
        return self._files[shard]

    def _record_order(self, epoch: int, shard: int) -> np.ndarray:
        key = (epoch, shard)
        if key not in self._orders:
            if len(self._orders) >= self.OPEN_SHARDS:
                self._orders.popitem(last=False)
            self._orders[key] = record_order(self.spec.seed, epoch, shard, self.shards.samples_per_shard, self.shards.samples_per_record)
        return self._orders[key]

    def _record(self, shard: int, record: int) -> schema.SampleBatch:
        """A decoded record (a few cached). Under skip_corrupt_shards a corrupt record is served by the next good
        record of its size in its shard, so every rank still gets full batches; it is logged and listed in skipped_records."""
        key = (shard, record)
        if key not in self._records:
            file, records = self._file(shard), self.shards.records_per_shard
            for step in range(records):
                candidate = (record + step) % records
                if (shard, candidate) in self._skipped_records:
                    continue
                try:
                    batch = file.read_record(candidate)
                except CorruptRecord as exc:
                    if not self.spec.skip_corrupt_shards:
                        raise
                    log.warning("skipping corrupt record (skip_corrupt_shards): %s", exc)
                    self._skipped_records.add((shard, candidate))
                    continue
                needed = self._record_size(record)
                if len(batch) >= needed:
                    batch = batch if len(batch) == needed else batch.slice(0, needed)
                    break
            else:
                raise UserError(f"every record of shard {file.path} is corrupt; re-run bertline prepare")
            if len(self._records) >= self.CACHED_RECORDS:
                self._records.popitem(last=False)
            self._records[key] = batch
        return self._records[key]

    def _record_size(self, record: int) -> int:
        """Samples in a shard's record `record`: full, but the last of a shard whose size is not a multiple."""
        per_record = self.shards.samples_per_record
        return min(per_record, self.shards.samples_per_shard - record * per_record)

    def _shard_for_block(self, order: np.ndarray, block: int) -> int:
        # Policy for a shard with a corrupt index (skip_corrupt_shards): its block is served by the next good
        # shard in this epoch's order, so every rank still gets full batches.
        for step in range(len(order)):
            shard = int(order[(block + step) % len(order)])
            if self._file(shard) is not None:
                return shard
        raise UserError(f"every shard in {self.shards.folder} is corrupt; re-run bertline prepare")

    def samples(self, start: int, stop: int, epoch: int | None = None) -> tuple[schema.SampleBatch, np.ndarray, np.ndarray]:
        """Global sample indices [start, stop) of an epoch (the current one by default), in order: the samples,
        their indices (positions in the epoch's order) and their ids (shard × samples per shard + place in the
        shard: which sample it is, whatever the epoch)."""
        epoch = self.epoch if epoch is None else epoch
        per_shard, per_record = self.shards.samples_per_shard, self.shards.samples_per_record
        if self._shard_order[0] != epoch:
            self._shard_order = (epoch, shard_order(self.spec.seed, epoch, len(self.shards.shards)))
        indices = np.arange(start, stop)
        blocks, local = np.divmod(indices, per_shard)
        places, within = np.divmod(local, per_record)
        shards, records = np.empty_like(blocks), np.empty_like(places)
        for block in range(int(blocks[0]), int(blocks[-1]) + 1):  # one block, or two where a batch spans shards
            mine = blocks == block
            shard = self._shard_for_block(self._shard_order[1], block)
            shards[mine] = shard
            records[mine] = self._record_order(epoch, shard)[places[mine]]
        # Samples of one record are consecutive here: read each record once, in order of first use.
        keys = shards * self.shards.records_per_shard + records
        runs = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        parts = [self._record(int(shards[i]), int(records[i])) for i in runs.tolist()]
        data = schema.SampleBatch.concat(parts)
        part_starts = np.cumsum([0] + [len(part) for part in parts[:-1]])
        gather = np.repeat(part_starts, np.append(runs[1:], len(keys)) - runs) + within
        if len(gather) != len(data) or (gather != np.arange(len(data))).any():  # whole records in order need no gather
            data = data.take(gather)
        return data, indices, shards * per_shard + records * per_record + within

    def batch(self, number: int, epoch: int | None = None, position: int | None = None) -> dict[str, torch.Tensor]:
        """This rank's micro batch `number` counted from `position` of `epoch` (default: the current ones), collated."""
        epoch = self.epoch if epoch is None else epoch
        position = self.position if position is None else position
        return self.span(*rank_slice(position, number, self.spec.micro_batch_size, self.spec.world_size, self.spec.rank), epoch)

    def span(self, start: int, stop: int, epoch: int) -> dict[str, torch.Tensor]:
        """Global samples [start, stop) of `epoch`, collated (any count: evaluation's last batch may be short)."""
        data, indices, ids = self.samples(start, stop, epoch)
        if self.spec.masking == "dynamic":
            data = remask(data, indices, self.spec.seed, epoch, self.masking_spec)
        longest = int(data.samples[:, 0].max())
        if self.spec.fixed_length:
            length = self.shards.max_seq_length
        else:  # the batch's longest sequence, rounded up to a multiple (tensor-core friendly), capped
            multiple = self.spec.pad_to_multiple_of
            length = max(longest, min(self.shards.max_seq_length, -(-longest // multiple) * multiple))
        pad = self.shards.tokenizer["special_ids"]["[PAD]"]
        per_shard = self.shards.records_per_shard
        return {**collate(data, indices, self.shards.max_predictions_per_seq, pad, length),
                "sample_id": torch.from_numpy(ids.astype(np.int64)),
                "skipped_shards": torch.tensor(sorted(self._corrupt), dtype=torch.int64),
                "skipped_records": torch.tensor(sorted(shard * per_shard + record for shard, record in self._skipped_records), dtype=torch.int64)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The pass is fixed when it starts: the trainer advances the position of this same object while
        # iterating (in-process loading), and that must not shift the batches of the running pass.
        epoch, position = self.epoch, self.position
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for number in worker_batches(batches_per_epoch(self.shards.total_samples, position, self.global_batch), worker, workers):
            yield self.batch(number, epoch, position)


class Prefetched:
    """Iterates `batches` in a background thread, up to `depth` items ahead, so that reading and collating the
    next micro batches overlaps the model's step (in-process loading; DataLoader workers prefetch by
    themselves). An exception surfaces in the consumer, at the item where it happened."""

    _END = object()

    def __init__(self, batches, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, args=(iter(batches),), daemon=True, name="bertline-prefetch")
        self._thread.start()

    def _fill(self, iterator) -> None:
        try:
            for item in iterator:
                self._queue.put((item, None))
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._queue.put((None, exc))
            return
        self._queue.put((self._END, None))

    def __iter__(self):
        return self

    def __next__(self):
        item, error = self._queue.get()
        if error is not None:
            raise error
        if item is self._END:
            raise StopIteration
        return item
