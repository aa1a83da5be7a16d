"""`bertline train` / `python -m trainer`: pretrain BERT with DeepSpeed on bertline shards.

    bertline train --config configs/train/debug_cpu.yaml [--resume auto|none] [--train.max_steps 100 …]

Launch one process per device with torchrun, deepspeed or srun (trainer/dist.py reads any of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from bertline.config import load_config, parse_overrides
from bertline.errors import TrainingDiverged, UserError, run_command
from shardformat.masking import MaskingSpec
from shardformat.rng import stable_hash
from model import BertConfig, BertForPreTraining
from trainer import checkpoint, dist, init_from, preemption
from trainer.config import TrainConfig, deepspeed_config
from trainer.data import IGNORE_INDEX, LoaderSpec, Prefetched, PretrainingBatches, ShardSet, model_inputs
from trainer.metrics import RunLog, write_report

log = logging.getLogger("bertline.trainer")


class Trainer:
    """Owns the engine, the loader and the run folder; `step()` is one optimizer step."""

    def __init__(self, config: TrainConfig, placement: dist.Placement, resume: str = "auto"):
        from trainer import engine

        self.config, self.placement = config, placement
        self.run_dir = Path(config.run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        # Rank 0 decides which checkpoint to resume and tells the others: ranks listing a shared filesystem
        # on their own can disagree (NFS attribute caches), and then their collectives would not match.
        decision = [checkpoint.newest(self.checkpoints) if resume == "auto" and placement.rank == 0 else None]
        if placement.world_size > 1:
            torch.distributed.broadcast_object_list(decision, src=0)
        self.saved = decision[0]
        shards = ShardSet.open(config.data.shards)
        torch.manual_seed(config.seed)  # the same initial weights on every rank (init_from: the same fresh heads)
        self.model_config, source = self._model_config(shards)
        init_from.check_positions(shards.max_seq_length, self.model_config, from_source=source is not None)
        self.ds_config = deepspeed_config(config, placement.world_size)
        self.load_from = self._checkpoint_to_load() if self.saved else None
        schedule = {**config.schedule.model_dump(), "total_steps": config.train.max_steps}
        model = self.model = BertForPreTraining(self.model_config)  # the bare module, also when the engine compiles it
        if source is not None:
            init_from.load_weights(source, model)  # weights only: the engine below brings a fresh optimizer and schedule
        self.engine = engine.build_engine(model, self.ds_config, schedule, config.optimizer.weight_decay,
                                          config.train.compile_backend if config.train.compile else None)
        torch.manual_seed(stable_hash(config.seed, "dropout", placement.rank) % 2**63)  # each rank its own dropout
        self.on_cuda = torch.device(self.engine.device).type == "cuda"  # pinned host memory, asynchronous copies
        self.pad_multiple = self._pad_multiple(shards)  # the training and the validation batches alike
        masking = MaskingSpec.for_tokenizer(
            shards.tokenizer["special_ids"], shards.tokenizer["vocab_size"],
            masked_lm_prob=config.data.masked_lm_prob, max_predictions_per_seq=shards.max_predictions_per_seq,
        )
        self.loader = PretrainingBatches(shards, LoaderSpec(
            micro_batch_size=config.data.micro_batch_size, world_size=placement.world_size, rank=placement.rank,
            seed=config.seed, masking=config.data.masking, masked_lm_prob=config.data.masked_lm_prob,
            pad_to_multiple_of=self.pad_multiple, fixed_length=config.data.fixed_length,
            skip_corrupt_shards=config.data.skip_corrupt_shards,
        ), masking)
        if shards.total_samples < self.loader.global_batch:
            raise UserError(self._too_small(shards))
        self.data_identity = {"folder": str(Path(config.data.shards).resolve()), **shards.identity}
        self.step_number, self.samples = 0, 0
        self._batches = None
        self._pending: list[tuple[torch.Tensor, dict]] = []  # steps whose figures are still on the device
        self._interval_started, self._checked_inputs = time.perf_counter(), False
        self.skipped_shards, self.skipped_records = set(), set()  # this rank's, as its batches report them
        self.eval_samples, self._eval_batches = 0, None
        self.validation = self._validation_loader(masking)
        if placement.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The tokenizer travels with the run: export and eval use this copy, whatever the shard folder holds later.
            # A resumed run keeps what its first start wrote (resume() refuses other data before anything trains).
            tokenizer_copy = self.run_dir / "tokenizer" / shards.tokenizer["file"]
            described = self.run_dir / "model_config.json"
            if self.saved is None or not described.exists() or not tokenizer_copy.exists():
                tokenizer_copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(Path(config.data.shards) / shards.tokenizer["file"], tokenizer_copy)
                described.write_text(json.dumps(
                    {**self.model_config.to_dict(), "shards": str(Path(config.data.shards).resolve()),
                     "tokenizer_file": shards.tokenizer["file"], "tokenizer_sha256": shards.tokenizer["sha256"],
                     "tokenizer_kind": shards.tokenizer["kind"], "tokenizer_lowercase": shards.tokenizer.get("lowercase"),
                     "tokenizer_nfkc": shards.nfkc,
                     "init_from": None if source is None else {"path": str(source.path.resolve()), "kind": source.kind}}, indent=2) + "\n")
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
            (self.run_dir / "deepspeed.json").write_text(json.dumps(self.ds_config, indent=2) + "\n")

    def _pad_multiple(self, shards: ShardSet) -> int:
        """Batches are padded to their longest sequence rounded up to this. A compiled model gets a new graph for
        every new length, so under train.compile lengths come in four buckets (a quarter of max_seq_length each)."""
        multiple = self.config.data.pad_to_multiple_of
        if self.config.train.compile and not self.config.data.fixed_length:
            bucket = -(-shards.max_seq_length // 4)
            if bucket > multiple:
                log.info("train.compile: padding batches to multiples of %d (at most 4 lengths, so at most 4 compiled graphs)", bucket)
                return bucket
        return multiple

    def _model_config(self, shards: ShardSet) -> tuple[BertConfig, init_from.Source | None]:
        """The preset at the shards' vocabulary; with model.init_from, the source's architecture (and the source, whose
        weights load before the engine is built). A run resuming its own checkpoint takes the architecture its first
        start recorded and does not read the source again (it may be gone; the checkpoint holds the weights)."""
        section = self.config.model
        if section.init_from is None:
            return BertConfig.preset(
                section.preset, shards.tokenizer["vocab_size"], max_position_embeddings=section.max_position_embeddings or 512,
                position_embedding_type=section.position_embedding_type, hidden_dropout_prob=section.hidden_dropout_prob,
                attention_probs_dropout_prob=section.attention_probs_dropout_prob, pad_token_id=shards.tokenizer["special_ids"]["[PAD]"],
            ), None
        described = self.run_dir / "model_config.json"
        if self.saved is not None and described.exists():
            log.info("resuming the run's own checkpoint (step %d); model.init_from %s is not read again", self.saved.step, section.init_from)
            recorded = init_from.run_model_config(json.loads(described.read_text()))
            return dataclasses.replace(recorded, hidden_dropout_prob=section.hidden_dropout_prob,
                                       attention_probs_dropout_prob=section.attention_probs_dropout_prob), None
        source = init_from.open_source(section.init_from)
        init_from.check_vocabulary(source, self.config.data.shards, shards.tokenizer)
        return init_from.model_config(source, section), source

    def _validation_loader(self, masking: MaskingSpec) -> PretrainingBatches | None:
        """The validation split in the order of one rank at the config's seed: eval.samples is then the same set of
        samples for any world size and micro batch (elastic resumes keep one eval curve)."""
        try:
            shards = ShardSet.open(self.config.data.shards, split="validation")
        except UserError:
            log.warning("%s has no validation split: evaluation is off (prepare with --output.validation_fraction above 0 to have one)",
                        self.config.data.shards)
            return None
        self.eval_samples = min(self.config.eval.samples, shards.total_samples)
        if self.eval_samples < self.config.eval.samples and self.placement.rank == 0:
            log.warning("the validation split of %s holds %d samples, fewer than eval.samples=%d: %s", self.config.data.shards,
                        shards.total_samples, self.config.eval.samples, "evaluating on all of them" if self.eval_samples else "evaluation is off")
        spec = LoaderSpec(micro_batch_size=self.config.data.micro_batch_size, world_size=1, rank=0, seed=self.config.seed,
                          pad_to_multiple_of=self.pad_multiple, fixed_length=self.config.data.fixed_length)
        return PretrainingBatches(shards, spec, masking) if self.eval_samples else None

    def evaluate(self) -> dict:
        """MLM loss and accuracy, NSP accuracy over the same validation samples every time (static masks). The batches
        are collated once and kept (pinned on GPUs): a few MB for the default 2,048 samples."""
        from trainer.evaluate import eval_figures, eval_spans, eval_sums

        if self.validation is None:
            return {}
        if self._eval_batches is None:
            spans = eval_spans(self.eval_samples, self.config.data.micro_batch_size, self.placement.world_size, self.placement.rank)
            self._eval_batches = [(self._pinned(self.validation.span(start, stop, epoch=0)), counted) for start, stop, counted in spans]
        total = self._sum_over_ranks(eval_sums(self.engine, self._eval_batches, self.engine.device))
        return {f"eval_{name}": value for name, value in eval_figures(total).items()}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the engine's device without waiting for it (pinned, asynchronous on CUDA)."""
        if self.on_cuda:
            return tensor.pin_memory().to(self.engine.device, non_blocking=True)
        return tensor.to(self.engine.device)

    def _pinned(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.pin_memory() for k, v in batch.items()} if self.on_cuda else batch

    def _too_small(self, shards: ShardSet) -> str:
        config = self.config.data
        return (f"the {shards.split} split of {config.shards} holds {shards.total_samples} samples, fewer than one global batch of "
                f"{self.loader.global_batch} (data.micro_batch_size {config.micro_batch_size} × {self.placement.world_size} ranks): "
                f"lower data.micro_batch_size, use fewer ranks, or prepare more data")

    def _next_batch(self) -> dict[str, torch.Tensor]:
        for _ in range(2):  # the running pass, then at most one fresh one
            if self._batches is None:  # a fresh pass from the loader's current (epoch, position)
                workers = self.config.data.num_workers
                # A private generator: DataLoader draws a base seed when an iterator starts, and drawing it
                # from the global RNG would shift the dropout stream of a resumed run.
                batches = torch.utils.data.DataLoader(
                    self.loader, batch_size=None, num_workers=workers, generator=torch.Generator(),
                    worker_init_fn=preemption.ignore_in_worker, pin_memory=self.on_cuda,
                )
                self._batches = iter(batches) if workers else Prefetched(batches)
            batch = next(self._batches, None)
            if batch is not None:
                return batch
            self._batches = None
        raise UserError(self._too_small(self.loader.shards))  # a fresh pass had nothing: never loop silently

    def step(self) -> None:
        """One optimizer step over gradient_accumulation_steps micro batches. Its figures stay on the device, queued
        for flush(): nothing here waits for the GPU (the host reads below are of the loader's CPU tensors, via numpy,
        which refuses device tensors).

        The MLM loss is a mean over the masked tokens of the whole global batch, not a mean of per-micro-batch
        means: each micro batch's token sum is divided by the global masked count (all-reduced first) and
        multiplied back by the accumulation × world division DeepSpeed applies. So accumulation 4 × micro 2
        makes the same update as micro 8, and the logged loss is the global batch's true mean.
        """
        from trainer import engine as ds

        accumulation, world = self.config.train.gradient_accumulation_steps, self.placement.world_size
        device = self.engine.device
        if not self._pending:
            self._interval_started = time.perf_counter()
        lr = self.engine.get_lr()[0]  # the rate this step trains with (the scheduler moves on inside engine.step)
        micro_batches = [self._next_batch() for _ in range(accumulation)]
        if not self._checked_inputs:  # token ids against the vocabulary, once per session, on the host copy
            first = micro_batches[0]
            self.model.bert.check_inputs(first["input_ids"], first["token_type_ids"], first["attention_mask"])
            self._checked_inputs = True
        for batch in micro_batches:  # what the loader (or its workers) skipped under data.skip_corrupt_shards
            self.skipped_shards.update(batch["skipped_shards"].numpy().tolist())
            self.skipped_records.update(batch["skipped_records"].numpy().tolist())
        # Which samples this rank trained on, as one number (for comparing runs) and, if asked, as a list.
        consumed = np.concatenate([batch["sample_id"].numpy() for batch in micro_batches]).tolist()
        digest = stable_hash(*consumed) if consumed else 0
        if self.config.data.record_samples:
            self._record_samples(consumed)
        labels = [batch["masked_lm_labels"].numpy() != IGNORE_INDEX for batch in micro_batches]
        counts = [int(np.count_nonzero(rows)) for rows in labels]
        # torch.full is a kernel launch; torch.tensor(..., device=cuda) would copy from pageable memory and sync.
        masked = self._all_reduce(torch.full((), float(sum(counts)), dtype=torch.float64, device=device)).clamp(min=1.0)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # mlm loss × count, mlm hits, nsp loss, nsp accuracy
        for batch, count in zip(micro_batches, counts):
            out = self.engine(**model_inputs(batch, device))
            self.engine.backward(out.mlm_loss * (count * accumulation * world / masked).to(out.mlm_loss.dtype) + out.nsp_loss)
            try:
                self.engine.step()
            except Exception as exc:  # DeepSpeed raises a bare Exception on an overflow at the minimum scale
                if "loss scale already at minimum" not in str(exc):
                    raise
                raise TrainingDiverged(
                    f"the fp16 loss scale hit its minimum ({self.config.train.min_loss_scale}) and still overflowed at step "
                    f"{self.step_number + 1}: the loss diverged; training stopped, the newest complete checkpoint in "
                    f"{self.checkpoints} is the last good state (try bf16 or a lower lr)"
                ) from None
            self.loader.advance()
            sums += torch.stack([out.mlm_loss.detach().double() * count, out.mlm_accuracy.detach().double() * count,
                                 out.nsp_loss.detach().double(), out.nsp_accuracy.detach().double()])
        self.step_number += 1
        self.samples += self.ds_config["train_batch_size"]
        # Throughput counts both ways: real tokens (the work a sample needs) and padded positions (the work done).
        lengths = [batch["attention_mask"].numpy().sum(axis=1) for batch in micro_batches]
        padded = sum(batch["input_ids"].shape[0] * self.model_config.training_flops_per_sequence(
            batch["input_ids"].shape[1], batch["masked_lm_positions"].shape[1]) for batch in micro_batches)
        real = sum(self.model_config.training_flops_per_sequence(int(length), int(predicted))
                   for rows, batch_lengths in zip(labels, lengths) for length, predicted in zip(batch_lengths, rows.sum(axis=1)))
        host = self._to_device(torch.tensor([float(sum(int(n.sum()) for n in lengths)), padded, real], dtype=torch.float64))
        self._pending.append((torch.cat([self._all_reduce(torch.cat([sums, host])), masked.view(1)]), {
            "step": self.step_number, "lr": lr, "samples": self.samples, "rank0_samples_digest": digest,
            "loss_scale": ds.loss_scale(self.engine), "skipped_steps": int(self.engine.skipped_steps)}))

    def flush(self) -> list[dict]:
        """The queued steps' figures, one dict per step: the one host read of a logging interval. Throughput is the
        interval's average (a single step's wall time means nothing while the GPU runs ahead of the host)."""
        if not self._pending:
            return []
        rows = torch.stack([figures for figures, _ in self._pending]).tolist()  # waits for the device, once
        seconds = (time.perf_counter() - self._interval_started) / len(rows)
        accumulation_world = self.config.train.gradient_accumulation_steps * self.placement.world_size
        lines = []
        for (_, host), (mlm_sum, mlm_correct, nsp_loss, nsp_accuracy, tokens, padded, real, masked) in zip(self._pending, rows):
            mlm_loss, nsp_loss = mlm_sum / masked, nsp_loss / accumulation_world
            lines.append({**host, "loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                          "mlm_accuracy": mlm_correct / masked, "nsp_accuracy": nsp_accuracy / accumulation_world,
                          "masked_tokens": int(masked), "samples_per_s": self.ds_config["train_batch_size"] / seconds,
                          "tokens_per_s": tokens / seconds, "model_tflops": real / seconds / 1e12,
                          "padded_tflops": padded / seconds / 1e12, "mfu": self._mfu(real / seconds),
                          "padded_mfu": self._mfu(padded / seconds), "skipped_shards": len(self.skipped_shards),
                          "skipped_records": len(self.skipped_records),
                          "gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if self.on_cuda else None})
        self._pending = []
        return lines

    def _from_every_rank(self, value) -> list:
        """Collective: every rank's `value`, in rank order."""
        if self.placement.world_size == 1:
            return [value]
        values = [None] * self.placement.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def _record_samples(self, consumed: list[int]) -> None:
        ranks = self._from_every_rank(consumed)
        if self.placement.rank == 0:
            with open(self.run_dir / "samples.jsonl", "a") as out:
                out.write(json.dumps({"step": self.step_number + 1, "epoch": self.loader.epoch, "sample_ids": ranks}) + "\n")

    def _mfu(self, flops_per_s: float) -> float | None:
        peak = self.config.train.peak_tflops_per_device
        return flops_per_s / (peak * 1e12 * self.placement.world_size) if peak else None

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place, without reading anything back (the tensor is on the engine's device: NCCL
        reduces only CUDA tensors, gloo CPU ones)."""
        if self.placement.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def _sum_over_ranks(self, values: dict) -> dict:
        tensor = self._all_reduce(torch.tensor(list(values.values()), dtype=torch.float64, device=self.engine.device))
        return dict(zip(values, tensor.tolist()))

    def save(self) -> None:
        """DeepSpeed checkpoint with loader position, every rank's RNG, train state and model fingerprint;
        it counts once rank 0 has written the marker, after every rank finished writing."""
        from trainer import engine

        client = {"loader": self.loader.state_dict(), "rng": self._from_every_rank(checkpoint.rng_state()), "train": {"step": self.step_number, "samples": self.samples},
                  "model_fingerprint": self.model_config.fingerprint(), "data": self.data_identity}
        folder = self.checkpoints / checkpoint.tag(self.step_number)
        if self.placement.rank == 0 and folder.exists() and not (folder / checkpoint.MARKER).exists():
            # Half-written by a killed run, perhaps with another world size: its per-rank files must not mix with ours.
            shutil.rmtree(folder)
        if self.placement.world_size > 1:
            torch.distributed.barrier()
        engine.save(self.engine, str(self.checkpoints), checkpoint.tag(self.step_number), client)
        if self.placement.world_size > 1:
            torch.distributed.barrier()
        if self.placement.rank == 0:
            checkpoint.mark_complete(self.checkpoints, self.step_number, self.placement.world_size, self.config.train.zero_stage)
            checkpoint.prune(self.checkpoints, self.config.checkpoint.keep_last)

    def _checkpoint_to_load(self) -> tuple[Path, str]:
        """(folder, tag) for DeepSpeed's load_checkpoint. A checkpoint from another world size or ZeRO stage is
        converted to the universal format first (rank 0; the others wait), and the engine is told to load it."""
        from trainer import engine

        saved, stage, world = self.saved, self.config.train.zero_stage, self.placement.world_size
        step_folder = self.checkpoints / saved.folder_name
        if saved.zero_stage == 0 and stage != 0:
            raise UserError(f"checkpoint {step_folder} was written under ZeRO stage 0, whose optimizer state DeepSpeed cannot "
                            f"re-partition; resume it with --train.zero_stage 0")
        if not checkpoint.needs_universal(saved, world, stage):
            return self.checkpoints, saved.folder_name
        log.info("checkpoint %s was written by %d ranks under ZeRO-%d; this run has %d rank(s) under ZeRO-%d: loading it "
                 "through DeepSpeed's universal checkpoint", step_folder, saved.world_size, saved.zero_stage, world, stage)
        failed = step_folder / checkpoint.UNIVERSAL_FAILED
        if self.placement.rank == 0:
            failed.unlink(missing_ok=True)  # left by an earlier attempt: removed before anyone looks
        if world > 1:
            torch.distributed.barrier()
        # The conversion can outlast the collective timeout (large models, shared file systems): the other ranks
        # wait for its result on the file system, for checkpoint.universal_wait_minutes, not in a barrier.
        if self.placement.rank == 0:
            try:
                engine.to_universal(step_folder)
            except Exception as exc:
                failed.write_text(f"{exc}\n")
                raise
        else:
            checkpoint.wait_for_universal(step_folder, self.config.checkpoint.universal_wait_minutes * 60)
        if world > 1:
            torch.distributed.barrier()
        self.ds_config["checkpoint"] = {"load_universal": True}
        return step_folder, "universal"

    def resume(self) -> None:
        from trainer import engine

        if self.load_from is None:
            start = f"from the weights of model.init_from {self.config.model.init_from}" if self.config.model.init_from else "from scratch"
            log.info("no complete checkpoint in %s: starting %s", self.checkpoints, start)
            return
        folder, tag = self.load_from
        client = engine.load(self.engine, str(folder), tag)
        if client.get("model_fingerprint") != self.model_config.fingerprint():
            raise UserError(f"checkpoint {self.checkpoints / self.saved.folder_name} holds a different model than this config; "
                            f"use the run's own config or another run_dir")
        check_same_data(client.get("data"), self.data_identity, self.checkpoints / self.saved.folder_name)
        self.loader.load_state_dict(client["loader"])
        self.step_number, self.samples = client["train"]["step"], client["train"]["samples"]
        for name in ("metrics.jsonl", "samples.jsonl"):
            records = self.run_dir / name
            if self.placement.rank == 0 and records.exists():
                # Steps after the checkpoint were lost with the killed process; they will be trained again.
                kept = [line for line in records.read_text().splitlines() if json.loads(line)["step"] <= self.step_number]
                records.write_text("".join(line + "\n" for line in kept))
        if len(client["rng"]) == self.placement.world_size:
            checkpoint.set_rng_state(client["rng"][self.placement.rank])
        else:  # another world size: fresh, still deterministic, dropout streams
            torch.manual_seed(stable_hash(self.config.seed, "dropout", self.placement.rank, self.step_number) % 2**63)
        log.info("resumed from step %d (epoch %d, %d samples into it)", self.step_number, client["loader"]["epoch"], client["loader"]["position"])


def check_same_data(saved: dict | None, current: dict, step_folder: Path) -> None:
    """A checkpoint continues only on the shard folder contents it was trained on: its loader position means
    nothing elsewhere (same tokenizer, same counts, same preparation config)."""
    if saved is None:
        return
    differ = [key for key in ("tokenizer_sha256", "samples", "shards", "config_sha256") if saved.get(key) != current.get(key)]
    if differ:
        what = {"tokenizer_sha256": "tokenizer", "samples": "sample counts", "shards": "shard counts", "config_sha256": "preparation config"}
        raise UserError(
            f"checkpoint {step_folder} was trained on {saved.get('folder')} (tokenizer sha256 {str(saved.get('tokenizer_sha256'))[:12]}), "
            f"but data.shards {current['folder']} now holds other data (its {', '.join(what[k] for k in differ)} differ, tokenizer sha256 "
            f"{current['tokenizer_sha256'][:12]}); point data.shards at the run's own shards, or start a new run_dir"
        )


def _at_min(metrics: dict, config: TrainConfig) -> bool:
    scale = metrics.get("loss_scale")
    return scale is not None and scale <= config.train.min_loss_scale


def check_health(metrics: dict, config: TrainConfig, checkpoints: Path, steps_at_min_scale: int) -> None:
    """Stop, in one sentence, on a non-finite loss (fp32/bf16; fp16 skips such steps by itself) or an fp16
    loss scale stuck at its minimum: the newest complete checkpoint stays the last good state."""
    if not math.isfinite(metrics["loss"]) and config.train.precision != "fp16":
        raise TrainingDiverged(f"the loss became {metrics['loss']} at step {metrics['step']} ({config.train.precision}); training stopped, "
                        f"the newest complete checkpoint in {checkpoints} is the last good state")
    if steps_at_min_scale >= config.train.max_steps_at_min_scale:
        raise TrainingDiverged(f"the fp16 loss scale sat at its minimum ({config.train.min_loss_scale}) for {steps_at_min_scale} steps up to "
                        f"step {metrics['step']}: the loss diverged; training stopped, the newest complete checkpoint in "
                        f"{checkpoints} is the last good state (try bf16 or a lower lr)")


def print_summary(trainer: Trainer) -> None:
    """Rank 0, at the end of a session: the report, the last figures and where everything is."""
    metrics_file = trainer.run_dir / "metrics.jsonl"
    if not metrics_file.exists():
        return
    report = write_report(trainer.run_dir)
    last = json.loads(metrics_file.read_text().splitlines()[-1])
    print(f"step {last['step']}/{trainer.config.train.max_steps}: loss {last['loss']:.4f} (mlm {last['mlm_loss']:.4f}, "
          f"accuracy {last['mlm_accuracy']:.3f}; nsp accuracy {last['nsp_accuracy']:.3f}), lr {last['lr']:.2e}")
    if "eval_mlm_loss" in last:
        print(f"validation: mlm loss {last['eval_mlm_loss']:.4f}, mlm accuracy {last['eval_mlm_accuracy']:.3f}, "
              f"nsp accuracy {last['eval_nsp_accuracy']:.3f}")
    newest = max(checkpoint.complete_steps(trainer.checkpoints), default=0)
    print(f"metrics:     {metrics_file} (TensorBoard: {trainer.run_dir / 'tensorboard'})\nreport:      {report}\n"
          f"checkpoints: {trainer.checkpoints} (newest complete: step {newest})")


def train(config: TrainConfig, resume: str, stop_after: int | None = None) -> int:
    # First: a preemption signal during the slow start-up (imports, rendezvous) must not kill the rank.
    signals = preemption.StopSignals(Path(config.run_dir) / preemption.STOP_FILE)
    placement = dist.placement(os.environ)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)  # torchrun's name, deepspeed's
    if local_ranks > 1 and "OMP_NUM_THREADS" not in os.environ:
        # torchrun's rule for every launcher: one intra-op thread per rank unless OMP_NUM_THREADS says otherwise.
        # The deepspeed launcher sets none, and a rank's CPU results depend on its thread count.
        torch.set_num_threads(1)
    device = dist.resolve_device(config.train.device, torch.cuda.is_available())
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would pick CUDA on a GPU node otherwise
    from trainer import engine

    engine.init_distributed(placement, device, config.train.collective_timeout_minutes)
    trainer = Trainer(config, placement, resume)  # the handlers stay to the end: a TERM while winding down must not kill a rank
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    if restarts and placement.rank == 0:
        log.info("requeued Slurm job (SLURM_RESTART_COUNT=%d): %s", restarts,
                 f"resuming from step {trainer.saved.step}" if trainer.saved else "no complete checkpoint, starting over")
    trainer.resume()
    if placement.rank == 0:
        signals.clear_stop_file()
    run_log = RunLog(trainer.run_dir, tensorboard=config.tensorboard) if placement.rank == 0 else None
    at_min_scale, exit_code = 0, 0
    progress = tqdm(total=config.train.max_steps, initial=trainer.step_number, unit="step", dynamic_ncols=True,
                    disable=placement.rank != 0 or not sys.stderr.isatty())
    while trainer.step_number < config.train.max_steps:
        try:
            trainer.step()
        except TrainingDiverged:  # the queued steps are the loss-scale trace that explains it: record them first
            for metrics in trainer.flush() if run_log is not None else ():
                run_log.write(metrics)
            raise
        progress.update(1)
        step = trainer.step_number
        last_step, stopping = step == config.train.max_steps, stop_after is not None and step >= stop_after
        saving = step % config.checkpoint.interval == 0 or last_step or stopping
        evaluating = step % config.eval.interval == 0 or last_step
        if not (saving or evaluating or step % config.log.interval == 0):
            continue  # the device runs ahead; figures, health and stop signals are looked at every log.interval steps
        lines = trainer.flush()
        try:
            for metrics in lines:  # before any checkpoint: a diverged state is never saved
                at_min_scale = at_min_scale + 1 if _at_min(metrics, config) else 0
                check_health(metrics, config, trainer.checkpoints, at_min_scale)
            if evaluating:
                lines[-1].update(trainer.evaluate())
        finally:  # every step read back is recorded, the ones that diverged too
            for metrics in lines if run_log is not None else ():
                run_log.write(metrics)
        progress.set_postfix(loss=f"{lines[-1]['loss']:.3f}", lr=f"{lines[-1]['lr']:.1e}")
        preempted = signals.agreed(placement.world_size, trainer.engine.device, placement.rank)
        if saving or preempted:
            trainer.save()
        if preempted and not last_step:
            log.info("%s received: checkpointed step %d; exiting with code %d so the job is requeued and resumes here",
                     signals.received or "a stop on another rank", step, preemption.REQUEUE_EXIT_CODE)
            exit_code = preemption.REQUEUE_EXIT_CODE
            break
        if stopping:
            log.info("stopping after step %d as asked (--stop-after); resume with --resume auto", step)
            break
    progress.close()
    if run_log is not None:
        run_log.close()
        print_summary(trainer)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    def body() -> int:
        overrides, rest = parse_overrides(argv, TrainConfig)
        parser = argparse.ArgumentParser(prog="bertline train", allow_abbrev=False)
        parser.add_argument("--config", default=None, help="A YAML config (see configs/train/).")
        parser.add_argument("--resume", choices=("auto", "none"), default="auto", help="Continue from the newest complete checkpoint (auto).")
        parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                            help="Checkpoint and exit after this step (a time-sliced job); the schedule still runs to train.max_steps.")
        # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
        parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--print-config", action="store_true",
                            help="Print the resolved config and the DeepSpeed JSON it derives as one JSON object {config, deepspeed}, and exit.")
        parser.add_argument("--world-size", type=int, default=None, metavar="N",
                            help="With --print-config: the ranks to derive the DeepSpeed batch for (default: the launcher's, else 1).")
        args = parser.parse_args(rest)
        config = load_config(TrainConfig, args.config, overrides)
        if args.print_config:
            world = args.world_size or dist.placement(os.environ).world_size
            print(json.dumps({"config": config.model_dump(mode="json"), "deepspeed": deepspeed_config(config, world)}, indent=2))
            return 0
        return train(config, args.resume, args.stop_after)

    return run_command("bertline train", body)

if __name__ == "__main__":
    sys.exit(main())
