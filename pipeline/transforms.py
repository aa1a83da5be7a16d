"""The Beam side of the pipeline: thin DoFns around the pure functions, grouped into composite transforms.

Everything here is built from Create, ParDo, GroupByKey and Flatten, the subset that Beam's DaskRunner
translates faithfully (docs/runners.md), plus one CombinePerKey (Top), which it expands into those. In particular there are no side inputs: the DaskRunner
evaluates a side input inside every task that reads it, and duplicates its elements when it has several
partitions. Data that a step needs from another branch is joined instead: both are keyed alike, flattened
and grouped. No ReadFromText, no tagged outputs, no finish_bundle outputs, no fileio sinks; shards and the
manifest are written by DoFns.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from bertline.errors import UserError
from pipeline import masking, pairs, read, rng, schema, segment, tokenizer, write
from pipeline.config import PrepareConfig

NAMESPACE = "bertline"
log = logging.getLogger("bertline.pipeline")


class Tagged(NamedTuple):
    """One side of a join: records of different kinds keyed alike, flattened and grouped together."""

    kind: str  # "range" | "tokenizer" | "plan" | "samples"
    value: Any


class TokenizedDoc(NamedTuple):
    """A document on its way to its bucket: ids of all sentences back to back, and each sentence's length."""

    key: str
    flat: np.ndarray
    lengths: np.ndarray
    tokenizer_sha256: str


class PlanRecord(NamedTuple):
    """A provisional shard's balance plan, with the split's total for the manifest."""

    plan: write.ShardPlan
    split_total: int


class PlannedPart(NamedTuple):
    """Samples on their way to a final shard, with the split's total for the manifest."""

    ref: write.SpillRef
    split_total: int


def _only(records: list[Tagged], kind: str):
    return next((record.value for record in records if record.kind == kind), None)


def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """What the driver decided before the job starts, shipped to every worker with the DoFns."""

    config: PrepareConfig
    output: str
    num_buckets: int
    total_input_bytes: int
    tokenizer_kind: str  # "sentencepiece" or "wordpiece"
    tokenizer_file: str  # its name in the output folder: spm.model or vocab.txt
    inputs: tuple[dict, ...]
    code_revision: str
    show_progress: bool


class DocumentReader:
    """Reads one input range and yields (key, sentences) per non-empty document, counting what it meets.

    Shared by the DoFns that read: the tokenizer's sampling pass and the tokenizing pass.
    """

    def __init__(self, plan: JobPlan, show_progress: bool):
        self.plan = plan
        self.show_progress = show_progress and plan.show_progress
        self._progress = None
        self.documents = _counter("documents_read")
        self.chars = _counter("input_chars")
        self.bad_json = _counter("jsonl_lines_skipped")
        self.empty = _counter("documents_empty")
        self.nul = _counter("nul_characters_removed")
        self.replaced = _counter("replacement_characters")
        self.split = _counter("documents_split")
        self.sentence_count = _counter("sentences")

    def _bad_line(self, message: str) -> None:
        self.bad_json.inc()
        log.warning("skipped malformed JSON line: %s", message)

    def _advance(self, chars: int) -> None:
        if self.show_progress and self._progress is None:
            from tqdm import tqdm

            self._progress = tqdm(total=self.plan.total_input_bytes, unit="B", unit_scale=True, desc="reading", leave=False)
        if self._progress is not None:
            self._progress.update(chars)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def documents_of(self, input_range: read.InputRange):
        cfg, normalize = self.plan.config.input, self.plan.config.normalize
        documents = read.read_documents(
            input_range, cfg.encoding, cfg.text_field, cfg.text_column, self._bad_line,
            max_document_chars=cfg.max_document_chars, on_split=self.split.inc,
        )
        for document in documents:
            chars = sum(len(line) for line in document.lines)
            self.documents.inc()
            self.chars.inc(chars)
            self._advance(chars)
            sentences: list[str] = []
            for line in document.lines:
                if "\x00" in line:
                    self.nul.inc(line.count("\x00"))
                if "\ufffd" in line:
                    self.replaced.inc(line.count("\ufffd"))
                sentences.extend(segment.split_sentences(segment.normalize_line(line, normalize.nfkc), normalize.max_sentence_chars))
            if not sentences:
                self.empty.inc()
                continue
            self.sentence_count.inc(len(sentences))
            yield document.key, sentences


class ReadSentencesFn(beam.DoFn):
    """InputRange → (key, sentences) for each non-empty document (the tokenizer's sampling pass)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def setup(self):
        self.reader = DocumentReader(self.plan, show_progress=False)

    def process(self, input_range: read.InputRange):
        yield from self.reader.documents_of(input_range)


class SampleSentencesFn(beam.DoFn):
    """(key, sentences) → (None, (score, sentence)): candidates for the K sentences with the smallest hash.

    Each bundle keeps its own K smallest scores so far and emits only sentences that enter that set: a
    sentence outside it cannot be among the global K smallest, so the final Top is exact and deterministic
    while only about K·ln(N/K) sentences per bundle leave it.
    """

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._largest_kept: list[float] = []  # max-heap of negated scores

    def start_bundle(self):
        # Per bundle, so a retried bundle cannot meet its own scores in the heap; the Top stays exact.
        self._largest_kept = []

    def process(self, element):
        key, sentences = element
        limit = self.plan.config.tokenizer.sample_sentences
        heap = self._largest_kept
        for index, sentence in enumerate(sentences):
            score = rng.unit_interval(self.plan.config.seed, "tokenizer-sample", key, index)
            if len(heap) < limit:
                heapq.heappush(heap, -score)
            elif score < -heap[0]:
                heapq.heapreplace(heap, -score)
            else:
                continue
            yield None, (score, sentence)


class TrainTokenizerFn(beam.DoFn):
    """The bounded sample → SentencePiece model written into the output folder; emits its (file, sha256)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, scored = element
        cfg = self.plan.config.tokenizer
        sentences = [sentence for _, sentence in sorted(scored)]
        _counter("tokenizer_training_sentences").inc(len(sentences))
        model = tokenizer.train_sentencepiece(
            sentences, vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            threads=cfg.training_threads,
        )
        write.write_atomically(FileSystems.join(self.plan.output, self.plan.tokenizer_file), model)
        yield self.plan.tokenizer_file, tokenizer.file_sha256(model)


def load_output_tokenizer(plan: JobPlan, sha256: str) -> tokenizer.Tokenizer:
    """The tokenizer file in the output folder, checked against the hash its writer announced."""
    with FileSystems.open(FileSystems.join(plan.output, plan.tokenizer_file)) as handle:
        data = handle.read()
    if tokenizer.file_sha256(data) != sha256:
        raise UserError(
            f"{plan.tokenizer_file} in {plan.output} changed while the job ran; another job may be writing "
            f"to the same --output: give each job its own folder"
        )
    return tokenizer.load_tokenizer(plan.tokenizer_kind, data, plan.config.tokenizer.lowercase)


def num_shards(config: PrepareConfig, split: str) -> int:
    return config.output.num_shards if split == "train" else config.output.validation_shards


def splits(config: PrepareConfig) -> tuple[str, ...]:
    return ("train", "validation") if config.output.validation_fraction > 0 else ("train",)


class BroadcastTokenizerFn(beam.DoFn):
    """(file, sha256) → (range index, ("tokenizer", sha256)) for every input range, to join with it."""

    def __init__(self, plan: JobPlan, num_ranges: int):
        self.plan = plan
        self.num_ranges = num_ranges

    def process(self, element):
        _, sha256 = element
        for index in range(self.num_ranges):
            yield index, Tagged("tokenizer", sha256)


class TokenizeRangeFn(beam.DoFn):
    """(range index, [its InputRange, the tokenizer's sha256]) → every document of the range, tokenized and
    keyed by its held-out split and hash bucket: ((split, bucket), (key, flat ids, sentence lengths, sha256))."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._tokenizers: dict[str, tokenizer.Tokenizer] = {}  # by file sha256; one entry in practice

    def setup(self):
        self.reader = DocumentReader(self.plan, show_progress=True)

    def teardown(self):
        self.reader.close()

    def process(self, element):
        _, records = element
        records = list(records)
        input_range, sha256 = _only(records, "range"), _only(records, "tokenizer")
        if sha256 is None:
            # No tokenizer was trained because no sentence was sampled: the whole input is empty, and the
            # manifest step says so. A range that does hold text means the runner lost the join.
            if next(iter(self.reader.documents_of(input_range)), None) is not None:
                raise UserError(f"input range {input_range.path}@{input_range.start} arrived without its tokenizer; the runner lost the join (see docs/runners.md)")
            return
        if sha256 not in self._tokenizers:
            self._tokenizers[sha256] = load_output_tokenizer(self.plan, sha256)
        tok = self._tokenizers[sha256]
        dtype = schema.token_dtype(tok.vocab_size)
        seed, fraction = self.plan.config.seed, self.plan.config.output.validation_fraction
        tokens = _counter("tokens")
        for key, sentences in self.reader.documents_of(input_range):
            ids = tok.encode(sentences)
            lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
            tokens.inc(len(flat))
            split = "validation" if rng.is_held_out(seed, "\n".join(sentences), fraction) else "train"
            bucket = rng.stable_hash(seed, "bucket", key) % self.plan.num_buckets
            yield (split, bucket), TokenizedDoc(key, flat, lengths, sha256)


def _masking_spec(config: PrepareConfig, tok: tokenizer.Tokenizer) -> masking.MaskingSpec:
    cfg = config.masking
    return masking.MaskingSpec.for_tokenizer(
        tok.special_ids, tok.vocab_size, masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
        mask_token_prob=cfg.mask_token_prob, random_token_prob=cfg.random_token_prob, whole_word=cfg.whole_word,
    )


class TokenizedDocument:
    """A document's sentences as one flat id array plus offsets; sentence j converts to a list on access,
    so a bucket costs its ids' bytes, not a Python int object per token."""

    __slots__ = ("flat", "offsets")

    def __init__(self, flat: np.ndarray, lengths: np.ndarray):
        self.flat = flat
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        return self.flat[self.offsets[index]:self.offsets[index + 1]].tolist()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _ShardAccumulator:
    """Samples of one bucket grouped by provisional shard; Python lists are packed into SampleBatch chunks
    every `flush_every` samples so a large bucket stays compact."""

    def __init__(self, dtype: np.dtype, flush_every: int = 8192):
        self.dtype, self.flush_every = dtype, flush_every
        self.pending: dict[int, tuple[list, ...]] = {}
        self.pending_count = 0
        self.chunks: dict[int, list[schema.SampleBatch]] = {}

    def add(self, shard: int, key: int, row: tuple, tokens: list[int], masked: masking.Masked) -> None:
        columns = self.pending.setdefault(shard, ([], [], [], [], []))
        columns[0].append(key)
        columns[1].append(row)
        columns[2].append(tokens)
        columns[3].append(masked.positions)
        columns[4].append(masked.input_ids)
        self.pending_count += 1
        if self.pending_count >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for shard, columns in self.pending.items():
            self.chunks.setdefault(shard, []).append(schema.SampleBatch.from_lists(*columns, dtype=self.dtype))
        self.pending, self.pending_count = {}, 0

    def batches(self) -> dict[int, schema.SampleBatch]:
        self.flush()
        return {shard: schema.SampleBatch.concat(chunks) for shard, chunks in sorted(self.chunks.items())}


class CreateSamplesFn(beam.DoFn):
    """A bucket of tokenized documents → sentence pairs with masks, spilled to one file in the output's
    scratch folder; emits a small reference per provisional shard: ((split, shard), ("samples", ref))."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._tokenizers: dict[str, tokenizer.Tokenizer] = {}  # by file sha256; one entry in practice
        self._word_starts: dict[str, list[bool]] = {}

    def process(self, element):
        (split, bucket), documents = element
        documents = sorted(documents, key=lambda document: document.key)
        sha256 = documents[0].tokenizer_sha256
        if sha256 not in self._tokenizers:
            self._tokenizers[sha256] = load_output_tokenizer(self.plan, sha256)
            self._word_starts[sha256] = self._tokenizers[sha256].word_starts()
        tok, word_starts = self._tokenizers[sha256], self._word_starts[sha256]
        cfg = self.plan.config
        spec = _masking_spec(cfg, tok)
        bucket_documents = [TokenizedDocument(document.flat, document.lengths) for document in documents]
        shards = num_shards(cfg, split)
        accumulator = _ShardAccumulator(schema.token_dtype(tok.vocab_size))
        cls_id, sep_id = tok.special_ids["[CLS]"], tok.special_ids["[SEP]"]
        starts_table = word_starts if cfg.masking.whole_word else None
        for index, document in enumerate(documents):
            key = document.key
            if int((document.lengths > 0).sum()) < 2:
                _counter("single_sentence_documents").inc()
            # The document being paired is read on every pass: convert it once, put it back afterwards.
            compact = bucket_documents[index]
            bucket_documents[index] = list(compact)
            for dupe in range(cfg.pairs.dupe_factor):
                draw = rng.rng_for(cfg.seed, "pairs", key, dupe)
                made = pairs.create_pairs(
                    bucket_documents, index, draw,
                    max_seq_length=cfg.pairs.max_seq_length,
                    short_seq_prob=cfg.pairs.short_seq_prob,
                    random_next_prob=cfg.pairs.random_next_prob,
                    allow_single_sentence=cfg.pairs.single_sentence_documents == "random_next",
                )
                for pair in made:
                    tokens = [cls_id, *pair.tokens_a, sep_id, *pair.tokens_b, sep_id]
                    starts = [starts_table[t] for t in tokens] if starts_table is not None else None
                    masked = masking.mask_sequence(tokens, draw, spec, starts)
                    sample_key = draw.getrandbits(64)
                    row = (len(tokens), len(pair.tokens_a) + 2, int(pair.is_random_next), len(masked.positions))
                    accumulator.add(sample_key % shards, sample_key, row, tokens, masked)
            bucket_documents[index] = compact
        by_shard = accumulator.batches()
        if not by_shard:
            return
        _counter(f"{split}_samples_created").inc(sum(len(b) for b in by_shard.values()))
        name = f"{split}-bucket-{bucket:06d}.spill"
        for shard, ref in zip(by_shard, write.spill(self.plan.output, name, list(by_shard.values()))):
            yield (split, shard), Tagged("samples", ref)


class PlanBalanceFn(beam.DoFn):
    """(split, [(provisional shard, count)]) → ((split, shard), ("plan", plan)) for every shard of the split."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        split, shard_counts = element
        counts: dict[int, int] = {}
        for shard, count in shard_counts:
            counts[shard] = counts.get(shard, 0) + count
        total, shards = sum(counts.values()), num_shards(self.plan.config, split)
        if write.samples_per_shard(counts, shards) == 0:
            setting = "output.num_shards" if split == "train" else "output.validation_shards"
            raise UserError(f"the {split} split has only {total} samples, fewer than its {shards} shards; lower {setting} or give more input")
        for shard, shard_plan in write.balance_plan(counts, shards).items():
            yield (split, shard), Tagged("plan", PlanRecord(shard_plan, total))


class RebalanceFn(beam.DoFn):
    """A provisional shard's sample references and its plan → references keyed by final shard:
    ((split, final shard), (ref, split total)). The samples move through the scratch folder."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        (split, shard), records = element
        records = list(records)
        plan, total = _only(records, "plan")
        refs = sorted((r.value for r in records if r.kind == "samples"), key=lambda ref: (ref.path, ref.offset))
        if not refs:
            return
        batch = schema.SampleBatch.concat([write.unspill(self.plan.output, ref) for ref in refs]).sorted_by_key()
        moves = ([write.Move(shard, plan.keep)] if plan.keep else []) + list(plan.moves)
        pieces, start = [], 0
        for move in moves:
            pieces.append(batch.take(np.arange(start, start + move.count)))
            start += move.count
        if plan.dropped:
            _counter(f"{split}_samples_dropped_remainder").inc(plan.dropped)
        spilled = write.spill(self.plan.output, f"{split}-provisional-{shard:05d}.spill", pieces)
        for move, ref in zip(moves, spilled):
            yield (split, move.destination), PlannedPart(ref, total)


class WriteShardFn(beam.DoFn):
    """(split, shard) → its sample references, read, sorted and written as one tar; emits (None, entry)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        (split, shard), parts = element
        parts = sorted(parts, key=lambda part: (part.ref.path, part.ref.offset))
        batch = schema.SampleBatch.concat([write.unspill(self.plan.output, part.ref) for part in parts])
        info = write.write_shard(self.plan.output, split, shard, batch, self.plan.config.output.samples_per_record)
        _counter("shards_written").inc()
        _counter("shard_bytes").inc(info["bytes"])
        yield None, {**info, "split_total": parts[0].split_total}


class WriteManifestFn(beam.DoFn):
    """Every shard entry → manifest.json, the scratch folder removed, then the COMPLETED marker."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, entries = element
        entries = [entry for entry in entries if entry is not None]  # None: the seed that makes this step run
        cfg = self.plan.config
        totals = {entry["split"]: entry.pop("split_total") for entry in entries}
        expected = {split: num_shards(cfg, split) for split in splits(cfg)}
        for split in expected:
            if split not in totals:
                raise UserError(
                    f"the {split} split received no samples; "
                    + ("the input holds no document of two or more sentences (see the counters): give more input"
                       if split == "train" else
                       "no held-out document formed a pair: raise output.validation_fraction, or set it to 0 for no validation set")
                )
        with FileSystems.open(FileSystems.join(self.plan.output, self.plan.tokenizer_file)) as handle:
            tok = tokenizer.load_tokenizer(self.plan.tokenizer_kind, handle.read(), cfg.tokenizer.lowercase)
        tokenizer_entry = {
            "kind": tok.kind,
            "file": self.plan.tokenizer_file,
            "sha256": tokenizer.file_sha256(tok.file_bytes),
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids,
            "lowercase": cfg.tokenizer.lowercase if tok.kind == "wordpiece" else None,
            "token_dtype": schema.token_dtype(tok.vocab_size).name,
        }
        manifest = write.build_manifest(
            entries, totals, expected, cfg.model_dump(mode="json", exclude={"dask_slurm"}), tokenizer_entry,
            list(self.plan.inputs), self.plan.code_revision,
        )
        write.write_atomically(FileSystems.join(self.plan.output, write.MANIFEST), write.manifest_bytes(manifest))
        write.remove_scratch(self.plan.output)
        write.write_atomically(FileSystems.join(self.plan.output, write.COMPLETED), b"")
        yield manifest["splits"]


class TrainSentencePiece(beam.PTransform):
    """InputRanges → one (file name, sha256) once the trained model is in the output folder.

    It reads the input itself rather than sharing the main branch's documents: tokenization must wait for
    the model, and a shared PCollection would be held (in memory, on the embedded runner) until then.
    Reading twice keeps every step streaming.
    """

    def __init__(self, plan: JobPlan):
        super().__init__()
        self.plan = plan

    def expand(self, ranges):
        return (
            ranges
            | "DropIndex" >> beam.MapTuple(lambda _, input_range: input_range)
            | "ReadSentences" >> beam.ParDo(ReadSentencesFn(self.plan))
            # (key, [sentence])
            | "SampleSentences" >> beam.ParDo(SampleSentencesFn(self.plan))
            # (None, (score, sentence)), candidates for the K smallest scores
            | "KeepSmallest" >> beam.combiners.Top.SmallestPerKey(self.plan.config.tokenizer.sample_sentences)
            # (None, [(score, sentence)]) of at most tokenizer.sample_sentences entries
            | "Train" >> beam.ParDo(TrainTokenizerFn(self.plan))
        )


class MakeSamples(beam.PTransform):
    """(range index, InputRange) and the tokenizer's (file, sha256) → ((split, provisional shard), ("samples", ref))."""

    def __init__(self, plan: JobPlan, tokenizer_ready, num_ranges: int):
        super().__init__()
        self.plan = plan
        self.tokenizer_ready = tokenizer_ready
        self.num_ranges = num_ranges

    def expand(self, ranges):
        tagged = ranges | "TagRanges" >> beam.MapTuple(lambda index, input_range: (index, Tagged("range", input_range)))
        # (range index, ("range", InputRange))
        copies = self.tokenizer_ready | "BroadcastTokenizer" >> beam.ParDo(BroadcastTokenizerFn(self.plan, self.num_ranges))
        # (range index, ("tokenizer", sha256)) for every range
        return (
            (tagged, copies)
            | "JoinTokenizer" >> beam.Flatten()
            | "GroupRanges" >> beam.GroupByKey()
            | "ReadAndTokenize" >> beam.ParDo(TokenizeRangeFn(self.plan))
            # ((split, bucket), (document key, flat ids, sentence lengths, tokenizer sha256))
            | "GroupBuckets" >> beam.GroupByKey()
            | "PairAndMask" >> beam.ParDo(CreateSamplesFn(self.plan))
        )


class WriteShards(beam.PTransform):
    """((split, provisional shard), ("samples", ref)) → balanced shards on disk, then the manifest and
    COMPLETED; emits the manifest's per-split summary."""

    def __init__(self, plan: JobPlan):
        super().__init__()
        self.plan = plan

    def expand(self, refs):
        plans = (
            refs
            | "CountSamples" >> beam.MapTuple(lambda split_shard, tagged: (split_shard[0], (split_shard[1], tagged.value.count)))
            # (split, (provisional shard, samples))
            | "GroupCounts" >> beam.GroupByKey()
            | "PlanBalance" >> beam.ParDo(PlanBalanceFn(self.plan))
        )
        # ((split, provisional shard), ("plan", {keep, moves, dropped, split_total}))
        entries = (
            (refs, plans)
            | "JoinPlans" >> beam.Flatten()
            | "GroupProvisional" >> beam.GroupByKey()
            | "Rebalance" >> beam.ParDo(RebalanceFn(self.plan))
            # ((split, final shard), (ref, split total))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteTar" >> beam.ParDo(WriteShardFn(self.plan))
        )
        # (None, shard manifest entry), plus one (None, None) so the manifest step runs, and can say
        # what is wrong, even when no sample at all came through
        seed = refs.pipeline | "ManifestSeed" >> beam.Create([(None, None)], reshuffle=False)
        return (
            (entries, seed)
            | "WithSeed" >> beam.Flatten()
            | "GroupManifest" >> beam.GroupByKey()
            | "WriteManifest" >> beam.ParDo(WriteManifestFn(self.plan))
        )
