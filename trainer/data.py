"""The training loader: shards → collated BERT batches, in a global order that survives restarts and
changes of world size.

The order rule (elastic): an epoch is a permutation of every sample of the split that depends only on
(seed, epoch): shards in a shuffled order, and each shard's samples shuffled within it. The loader's
position is (epoch, samples consumed globally). Global batch k of an epoch covers samples
[position + k·G, position + (k+1)·G) with G = micro_batch_size × world_size; rank r takes the r-th
micro-batch-sized slice of it. A resumed run, with any world size or micro batch, continues from the saved
position, so within an epoch no sample is seen twice and none is skipped. The last samples of an epoch
that cannot fill a global batch (< G) are dropped, so every rank gets exactly the same number of batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import random
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bertline.errors import UserError
from model.heads import IGNORE_INDEX  # the label of a padding slot, as the model's losses expect it
from pipeline import schema
from pipeline.masking import MaskingSpec, mask_sequence
from pipeline.rng import stable_hash

log = logging.getLogger("bertline.trainer")


# ---------------------------------------------------------------- pure order and partition functions

def shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The epoch's shard permutation."""
    return np.random.default_rng(stable_hash(seed, "shards", epoch)).permutation(num_shards)


def sample_order(seed: int, epoch: int, shard: int, samples: int) -> np.ndarray:
    """The permutation of one shard's samples in this epoch."""
    return np.random.default_rng(stable_hash(seed, "samples", epoch, shard)).permutation(samples)


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


# ---------------------------------------------------------------- shards

@dataclasses.dataclass(frozen=True)
class ShardSet:
    """A verified-complete shard folder's split: shard paths and their manifest entries."""

    folder: Path
    split: str
    shards: tuple[dict, ...]
    samples_per_shard: int
    tokenizer: dict
    max_seq_length: int
    max_predictions_per_seq: int

    @property
    def total_samples(self) -> int:
        return len(self.shards) * self.samples_per_shard

    @classmethod
    def open(cls, folder: str | Path, split: str = "train") -> "ShardSet":
        folder = Path(folder)
        if not (folder / "COMPLETED").exists():
            raise UserError(f"shard folder {folder} has no COMPLETED marker; it is missing or its `bertline prepare` did not finish")
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"shard folder {folder} has no readable manifest.json ({exc.__class__.__name__}); re-run bertline prepare") from None
        if manifest.get("format") != schema.FORMAT or manifest.get("schema_version") != schema.SCHEMA_VERSION:
            raise UserError(
                f"shard folder {folder} holds {manifest.get('format')} v{manifest.get('schema_version')}, "
                f"but this trainer reads {schema.FORMAT} v{schema.SCHEMA_VERSION}; re-run bertline prepare"
            )
        shards = tuple(s for s in manifest["shards"] if s["split"] == split)
        if not shards:
            raise UserError(f"shard folder {folder} has no {split} shards")
        for shard in shards:
            path = folder / shard["path"]
            if not path.exists():
                raise UserError(f"shard {path} is listed in the manifest but missing; restore it or re-run bertline prepare")
            if path.stat().st_size != shard["bytes"]:
                raise UserError(
                    f"shard {path} has {path.stat().st_size} bytes but the manifest says {shard['bytes']}: it is truncated "
                    f"or was replaced; restore it or re-run bertline prepare"
                )
        config = manifest["config"]
        return cls(
            folder, split, shards, manifest["splits"][split]["samples_per_shard"], manifest["tokenizer"],
            config["pairs"]["max_seq_length"], config["masking"]["max_predictions_per_seq"],
        )


def read_shard(path: Path, entry: dict) -> schema.SampleBatch:
    """One shard's samples, after checking its bytes against the manifest's sha256. Never unpickles."""
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"shard {path} does not match its manifest sha256: it is corrupt or truncated; restore it or re-run bertline prepare")
    records: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                records.setdefault(key, {})[extension] = tar.extractfile(member).read()
        batch = schema.SampleBatch.concat([schema.SampleBatch.from_members(records[key]) for key in sorted(records)])
    except (tarfile.TarError, ValueError) as exc:
        raise UserError(f"shard {path} cannot be decoded ({exc}); re-run bertline prepare") from None
    if len(batch) != entry["samples"]:
        raise UserError(f"shard {path} holds {len(batch)} samples but the manifest says {entry['samples']}; re-run bertline prepare")
    return batch


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
    masked positions and labels (IGNORE_INDEX in padding slots), NSP labels and global sample indices."""
    n = len(batch)
    lengths = batch.samples[:, 0].astype(np.int64)
    segment_a = batch.samples[:, 1].astype(np.int64)
    counts = batch.samples[:, 3].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mask_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    column = np.arange(length)[None, :]
    valid = column < lengths[:, None]  # (batch, length)
    source = np.where(valid, starts[:, None] + column, 0)
    tokens = batch.tokens.astype(np.int64)
    input_ids = np.where(valid, tokens[source] if len(tokens) else 0, pad_id)
    labels = np.full((n, max_predictions), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((n, max_predictions), dtype=np.int64)
    slot = np.arange(max_predictions)[None, :]
    used = slot < counts[:, None]
    flat = np.where(used, mask_starts[:, None] + slot, 0)
    if len(batch.masked_lm_positions):
        positions = np.where(used, batch.masked_lm_positions.astype(np.int64)[flat], 0)
        rows = np.broadcast_to(np.arange(n)[:, None], positions.shape)
        labels = np.where(used, input_ids[rows, positions], IGNORE_INDEX)
        input_ids[rows[used], positions[used]] = batch.masked_input_ids.astype(np.int64)[flat[used]]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy((column >= segment_a[:, None]) & valid).long(),
        "attention_mask": torch.from_numpy(valid.astype(np.int64)),
        "masked_lm_positions": torch.from_numpy(positions),
        "masked_lm_labels": torch.from_numpy(labels),
        "next_sentence_labels": torch.from_numpy(batch.samples[:, 2].astype(np.int64)),
        "sample_index": torch.from_numpy(np.asarray(sample_index, dtype=np.int64)),
    }


BOOKKEEPING = ("sample_index", "sample_id")  # batch entries that say which samples these are; not model inputs


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A collated batch as the model's keyword arguments, on `device`."""
    return {k: v.to(device) for k, v in batch.items() if k not in BOOKKEEPING}


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
    return schema.SampleBatch(batch.keys, samples, batch.tokens, np.asarray(positions, dtype=np.uint16),
                              np.asarray(ids, dtype=batch.tokens.dtype))


# ---------------------------------------------------------------- the dataset

class PretrainingBatches(torch.utils.data.IterableDataset):
    """Yields this rank's collated micro batches for one epoch from the current position.

    Stateful: state_dict() is {"epoch", "position"} (position = samples consumed globally); after
    load_state_dict() the next iteration starts exactly there. The trainer advances the position with
    `advance()` after each optimizer micro step, so a checkpoint records what was actually trained on.
    """

    def __init__(self, shards: ShardSet, spec: LoaderSpec, masking_spec: MaskingSpec | None = None):
        super().__init__()
        self.shards, self.spec, self.masking_spec = shards, spec, masking_spec
        self.epoch, self.position = 0, 0
        self._corrupt: set[int] = set()
        self._cache: dict[int, schema.SampleBatch] = {}
        if spec.masking == "dynamic" and masking_spec is None:
            raise UserError("masking: dynamic needs a masking spec (tokenizer ids and masked_lm_prob)")

    @property
    def global_batch(self) -> int:
        return self.spec.micro_batch_size * self.spec.world_size

    def __len__(self) -> int:
        return batches_per_epoch(self.shards.total_samples, self.position, self.global_batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def advance(self) -> None:
        """One global batch was trained on: move the position, rolling over to the next epoch at the end."""
        self.position += self.global_batch
        if batches_per_epoch(self.shards.total_samples, self.position, self.global_batch) == 0:
            self.epoch, self.position = self.epoch + 1, 0

    def _shard(self, shard: int) -> schema.SampleBatch | None:
        """A shard's samples (two kept in memory), or None for a corrupt shard under skip_corrupt_shards."""
        if shard in self._corrupt:
            return None
        if shard not in self._cache:
            entry = self.shards.shards[shard]
            try:
                data = read_shard(self.shards.folder / entry["path"], entry)
            except UserError as exc:
                if not self.spec.skip_corrupt_shards:
                    raise
                log.warning("skipping corrupt shard (skip_corrupt_shards): %s", exc)
                self._corrupt.add(shard)
                return None
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[shard] = data
        return self._cache[shard]

    @property
    def skipped_shards(self) -> list[str]:
        return sorted(self.shards.shards[shard]["path"] for shard in self._corrupt)

    def samples(self, start: int, stop: int, epoch: int | None = None) -> tuple[schema.SampleBatch, np.ndarray, np.ndarray]:
        """Global sample indices [start, stop) of an epoch (the current one by default), in order: the samples,
        their indices (positions in the epoch's order) and their ids (shard × samples per shard + place in the
        shard: which sample it is, whatever the epoch)."""
        epoch = self.epoch if epoch is None else epoch
        per_shard = self.shards.samples_per_shard
        order = shard_order(self.spec.seed, epoch, len(self.shards.shards))
        parts, ids, indices = [], [], np.arange(start, stop)
        for block in np.unique(indices // per_shard):
            local = indices[indices // per_shard == block] % per_shard
            # Policy for a corrupt shard (skip_corrupt_shards): its block is served by the next good shard
            # in this epoch's order, so every rank still gets full batches.
            for step in range(len(order)):
                shard = int(order[(block + step) % len(order)])
                data = self._shard(shard)
                if data is not None:
                    break
            else:
                raise UserError(f"every shard in {self.shards.folder} is corrupt; re-run bertline prepare")
            within = sample_order(self.spec.seed, epoch, shard, per_shard)[local]
            parts.append(data.take(within))
            ids.append(shard * per_shard + within)
        return schema.SampleBatch.concat(parts), indices, np.concatenate(ids) if ids else np.zeros(0, np.int64)

    def batch(self, number: int, epoch: int | None = None, position: int | None = None) -> dict[str, torch.Tensor]:
        """This rank's micro batch `number` counted from `position` of `epoch` (default: the current ones), collated."""
        epoch = self.epoch if epoch is None else epoch
        position = self.position if position is None else position
        start, stop = rank_slice(position, number, self.spec.micro_batch_size, self.spec.world_size, self.spec.rank)
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
        return {**collate(data, indices, self.shards.max_predictions_per_seq, pad, length),
                "sample_id": torch.from_numpy(ids.astype(np.int64))}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The pass is fixed when it starts: the trainer advances the position of this same object while
        # iterating (in-process loading), and that must not shift the batches of the running pass.
        epoch, position = self.epoch, self.position
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for number in worker_batches(batches_per_epoch(self.shards.total_samples, position, self.global_batch), worker, workers):
            yield self.batch(number, epoch, position)
