"""The Beam side of the pipeline: thin DoFns around the pure functions, grouped into composite transforms.

Everything here is built from Create, ParDo, GroupByKey and Flatten, the subset that Beam's DaskRunner
translates faithfully (docs/runners.md), plus one CombinePerKey (Top), which it expands into those. In particular there are no side inputs: the DaskRunner
evaluates a side input inside every task that reads it, and duplicates its elements when it has several
partitions. Data that a step needs from another branch is joined instead: both are keyed alike, flattened
and grouped. No ReadFromText, no tagged outputs, no finish_bundle outputs, no fileio sinks; shards and the
manifest are written by DoFns.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import logging
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from bertline.errors import UserError
from pipeline import pairs, read, segment, tokenizer, write
from shardformat import masking, rng, schema
from pipeline.config import PrepareConfig

NAMESPACE = "bertline"
log = logging.getLogger("bertline.pipeline")


class Tagged(NamedTuple):
    """One side of a join: records of different kinds keyed alike, flattened and grouped together."""

    kind: str  # "range" | "tokenizer"
    value: Any


class TokenizedDoc(NamedTuple):
    """A document on its way to its bucket: ids of all sentences back to back, and each sentence's length;
    with whole-word masking, one flag per token: does it begin a word?"""

    key: str
    flat: np.ndarray
    lengths: np.ndarray
    tokenizer_sha256: str
    word_starts: np.ndarray | None = None  # (Σ lengths,) uint8


WORD_START = 1 << 30  # whole-word masking: a token's word-start flag rides on its id through pairing
ID_BITS = WORD_START - 1


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
    validation_fraction: float  # output.validation_fraction, raised on a small corpus to hold out enough documents
    inputs: tuple[dict, ...]
    code_revision: str
    show_progress: bool


class Counts:
    """One element's counters. Beam metrics show them live (where the runner reports metrics); the counting
    steps also save them into the scratch folder under the element's name when it is done, so the manifest
    sums each element exactly once on any runner, retries included (a retry rewrites the same file)."""

    def __init__(self, mirror: bool = True):
        self.values: collections.Counter = collections.Counter()
        self.mirror = mirror

    def inc(self, name: str, amount: int = 1) -> None:
        if amount:
            self.values[name] += amount
            if self.mirror:
                _counter(name).inc(amount)

    def save(self, output: str, name: str) -> None:
        write.write_atomically(FileSystems.join(output, write.SCRATCH, "counters", f"{name}.json"),
                               json.dumps(dict(sorted(self.values.items()))).encode())


class DocumentReader:
    """Reads one input range and yields (key, sentences) per non-empty document, counting what it meets.

    Shared by the DoFns that read: the tokenizer's sampling pass (quiet: it reads the input a second time)
    and the tokenizing pass, whose counts are the job's.
    """

    def __init__(self, plan: JobPlan, show_progress: bool, quiet: bool = False):
        self.plan = plan
        self.show_progress = show_progress and plan.show_progress
        self.quiet = quiet
        self._progress = None

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

    def documents_of(self, input_range: read.InputRange, counts: Counts):
        cfg, normalize = self.plan.config.input, self.plan.config.normalize

        def bad_line(message: str) -> None:
            counts.inc("jsonl_lines_skipped")
            if not self.quiet:
                log.warning("skipped malformed JSON line: %s", message)

        documents = read.read_documents(
            input_range, cfg.encoding, cfg.text_field, cfg.text_column, bad_line,
            max_document_chars=cfg.max_document_chars, on_split=lambda: counts.inc("documents_split"),
        )
        for document in documents:
            chars = sum(len(line) for line in document.lines)
            counts.inc("documents_read")
            counts.inc("input_chars", chars)
            self._advance(chars)
            sentences: list[str] = []
            for line in document.lines:
                if "\x00" in line:
                    counts.inc("nul_characters_removed", line.count("\x00"))
                if "\ufffd" in line:
                    counts.inc("replacement_characters", line.count("\ufffd"))
                sentences.extend(segment.split_sentences(segment.normalize_line(line, normalize.nfkc), normalize.max_sentence_chars))
            if not sentences:
                counts.inc("documents_empty")
                continue
            counts.inc("sentences", len(sentences))
            yield document.key, sentences


class ReadSentencesFn(beam.DoFn):
    """InputRange → (key, sentences) for each non-empty document (the tokenizer's sampling pass)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def setup(self):
        self.reader = DocumentReader(self.plan, show_progress=False, quiet=True)

    def process(self, input_range: read.InputRange):
        yield from self.reader.documents_of(input_range, Counts(mirror=False))


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
        counts = Counts()
        counts.inc("tokenizer_training_sentences", len(sentences))
        counts.save(self.plan.output, "tokenizer")
        model = tokenizer.train_sentencepiece(
            sentences, vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            threads=cfg.training_threads, byte_fallback=cfg.byte_fallback,
            cjk_characters=cfg.cjk_characters,
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


def num_shards(config: PrepareConfig, split: str) -> int | None:
    """The split's shard count if the config fixes it; None: it follows from output.shard_mb."""
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
        index, records = element
        records = list(records)
        input_range, sha256 = _only(records, "range"), _only(records, "tokenizer")
        counts = Counts()
        if sha256 is None:
            # No tokenizer was trained because no sentence was sampled: the whole input is empty, and the
            # manifest step says so. A range that does hold text means the runner lost the join.
            if next(iter(self.reader.documents_of(input_range, counts)), None) is not None:
                raise UserError(f"input range {input_range.path}@{input_range.start} arrived without its tokenizer; the runner lost the join (see docs/runners.md)")
            return
        if sha256 not in self._tokenizers:
            self._tokenizers[sha256] = load_output_tokenizer(self.plan, sha256)
        tok = self._tokenizers[sha256]
        dtype = schema.token_dtype(tok.vocab_size)
        seed, fraction = self.plan.config.seed, self.plan.validation_fraction
        masking = self.plan.config.masking
        for key, sentences in self.reader.documents_of(input_range, counts):
            starts = None
            if masking.whole_word:
                encoded = tok.encode_words(sentences, masking.cjk_words)
                ids = [pair[0] for pair in encoded]
                starts = np.fromiter(itertools.chain.from_iterable(pair[1] for pair in encoded), dtype=np.uint8)
            else:
                ids = tok.encode(sentences)
            lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
            counts.inc("tokens", len(flat))
            split = "validation" if rng.is_held_out(seed, "\n".join(sentences), fraction) else "train"
            bucket = rng.stable_hash(seed, "bucket", key) % self.plan.num_buckets
            yield (split, bucket), TokenizedDoc(key, flat, lengths, sha256, starts)
        counts.save(self.plan.output, f"range-{index:06d}")


def _masking_spec(config: PrepareConfig, tok: tokenizer.Tokenizer) -> masking.MaskingSpec:
    cfg = config.masking
    return masking.MaskingSpec.for_tokenizer(
        tok.special_ids, tok.vocab_size, masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
        mask_token_prob=cfg.mask_token_prob, random_token_prob=cfg.random_token_prob, whole_word=cfg.whole_word,
    )


class TokenizedDocument:
    """A document's sentences as one flat id array plus offsets; sentence j converts to a list on access,
    so a bucket costs its ids' bytes, not a Python int object per token. With word-start flags, each id
    carries its flag as WORD_START."""

    __slots__ = ("flat", "offsets")

    def __init__(self, flat: np.ndarray, lengths: np.ndarray, word_starts: np.ndarray | None = None):
        self.flat = flat if word_starts is None else flat.astype(np.int64) | (word_starts.astype(np.int64) << 30)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        return self.flat[self.offsets[index]:self.offsets[index + 1]].tolist()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _RunAccumulator:
    """A bucket's samples since the last spill: Python lists packed into SampleBatch chunks every
    `pack_every` samples (compact), with their keys and a running byte count."""

    def __init__(self, dtype: np.dtype, pack_every: int = 1024):
        self.dtype, self.pack_every = dtype, pack_every
        self.pending: tuple[list, ...] = ([], [], [], [])
        self.keys: list[int] = []
        self.chunks: list[schema.SampleBatch] = []
        self.bytes = 0

    def add(self, key: int, row: tuple, tokens: list[int], masked: masking.Masked) -> None:
        for column, value in zip(self.pending, (row, tokens, masked.positions, masked.input_ids)):
            column.append(value)
        self.keys.append(key)
        self.bytes += 16 + len(tokens) * self.dtype.itemsize + len(masked.positions) * (self.dtype.itemsize + 2)
        if len(self.pending[0]) >= self.pack_every:
            self._pack()

    def _pack(self) -> None:
        if self.pending[0]:
            self.chunks.append(schema.SampleBatch.from_lists(*self.pending, dtype=self.dtype))
            self.pending = ([], [], [], [])

    def take(self) -> tuple[np.ndarray, schema.SampleBatch] | None:
        """Everything accumulated (keys, samples), and a fresh start; None when empty."""
        self._pack()
        if not self.chunks:
            return None
        keys, batch = np.array(self.keys, dtype=np.uint64), schema.SampleBatch.concat(self.chunks)
        self.keys, self.chunks, self.bytes = [], [], 0
        return keys, batch


def document_parts(document: TokenizedDoc, part_tokens: int) -> list[TokenizedDocument]:
    """A document as parts of about part_tokens tokens, cut at sentence boundaries. Parts act as documents for
    pairing: a long document (a book, a file without blank lines) gives random-next pairs from its own other
    parts when its bucket holds nothing else, instead of none at all."""
    lengths, starts = document.lengths, document.word_starts
    ends = np.cumsum(lengths)
    parts, start, sentence = [], 0, 0
    while sentence < len(lengths):
        stop = max(sentence + 1, int(np.searchsorted(ends, (ends[sentence - 1] if sentence else 0) + part_tokens, side="right")))
        stop = min(stop, len(lengths))
        end = int(ends[stop - 1])
        parts.append(TokenizedDocument(document.flat[start:end], lengths[sentence:stop], None if starts is None else starts[start:end]))
        start, sentence = end, stop
    return parts


class CreateSamplesFn(beam.DoFn):
    """A bucket of tokenized documents → sentence pairs with masks, spilled in runs to one file in the output's
    scratch folder; emits the counts only: (split, BucketSummary)."""

    PART_SEQUENCES = 16  # documents are paired in parts of this many × max_seq_length tokens

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._tokenizers: dict[str, tokenizer.Tokenizer] = {}  # by file sha256; one entry in practice

    def process(self, element):
        (split, bucket), documents = element
        documents = sorted(documents, key=lambda document: document.key)
        sha256 = documents[0].tokenizer_sha256
        if sha256 not in self._tokenizers:
            self._tokenizers[sha256] = load_output_tokenizer(self.plan, sha256)
        tok = self._tokenizers[sha256]
        cfg, counts = self.plan.config, Counts()
        spec = _masking_spec(cfg, tok)
        keys, parts = [], []
        for document in documents:
            if int((document.lengths > 0).sum()) < 2:
                counts.inc("single_sentence_documents")
                if cfg.pairs.single_sentence_documents == "drop":
                    counts.inc("single_sentence_documents_dropped")
                    counts.inc("tokens_dropped", int(document.lengths.sum()))
                    continue
            for number, part in enumerate(document_parts(document, self.PART_SEQUENCES * cfg.pairs.max_seq_length)):
                keys.append(f"{document.key}#{number}" if number else document.key)
                parts.append(part)
        accumulator = _RunAccumulator(schema.token_dtype(tok.vocab_size))
        cls_id, sep_id = tok.special_ids["[CLS]"], tok.special_ids["[SEP]"]
        whole_word = cfg.masking.whole_word
        lone = "random_next" if cfg.pairs.single_sentence_documents == "random_next" else "split"
        # The bucket's random-next share, kept on target; Google's rules (random_next) flip plain coins.
        balance = pairs.NspBalance(cfg.pairs.random_next_prob, correct=lone == "split")
        with write.atomic_output(FileSystems.join(self.plan.output, write.SCRATCH, write.spill_name(split, bucket))) as stream:
            spill = write.SpillWriter(stream)
            for index, key in enumerate(keys):
                # The part being paired is read on every pass: convert it once, put it back afterwards.
                compact = parts[index]
                parts[index] = list(compact)
                for dupe in range(cfg.pairs.dupe_factor):
                    draw = rng.rng_for(cfg.seed, "pairs", key, dupe)
                    made = pairs.create_pairs(
                        parts, index, draw,
                        max_seq_length=cfg.pairs.max_seq_length,
                        short_seq_prob=cfg.pairs.short_seq_prob,
                        random_next_prob=cfg.pairs.random_next_prob,
                        lone_sentences=lone,
                        balance=balance,
                    )
                    for pair in made:
                        tokens = [cls_id, *pair.tokens_a, sep_id, *pair.tokens_b, sep_id]
                        starts = None
                        if whole_word:  # the flags that rode on the ids through pairing
                            starts = [t >= WORD_START for t in tokens]
                            tokens = [t & ID_BITS for t in tokens]
                        masked = masking.mask_sequence(tokens, draw, spec, starts)
                        row = (len(tokens), len(pair.tokens_a) + 2, int(pair.is_random_next), len(masked.positions))
                        accumulator.add(draw.getrandbits(64), row, tokens, masked)
                        counts.inc("tokens_truncated", pair.truncated)
                        counts.inc("random_next_unavailable", int(pair.random_next_unavailable))
                    counts.inc(f"{split}_samples_created", len(made))
                    if accumulator.bytes >= write.RUN_BYTES:
                        spill.add_run(*accumulator.take())
                parts[index] = compact
            taken = accumulator.take()
            if taken is not None:
                spill.add_run(*taken)
            shape, payload = spill.finish()
        counts.save(self.plan.output, f"{split}-bucket-{bucket:06d}")
        if shape.sum():
            yield split, write.BucketSummary(bucket, shape, payload, tok.special_ids["[UNK]"])


class PlanShardsFn(beam.DoFn):
    """(split, [BucketSummary]) → ((split, shard), ShardSlices) for every shard of the split."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        split, summaries = element
        output = self.plan.config.output
        plans = write.plan_shards(list(summaries), split, output.samples_per_record, output.shard_mb, num_shards(self.plan.config, split))
        if not plans:
            total = sum(int(summary.counts.sum()) for summary in summaries)
            setting = "output.num_shards" if split == "train" else "output.validation_shards"
            raise UserError(f"the {split} split has only {total} samples, fewer than its {num_shards(self.plan.config, split)} shards; "
                            f"lower {setting} (or leave it unset: shards then follow output.shard_mb) or give more input")
        for shard_plan in plans:
            yield (split, shard_plan.shard), shard_plan


class WriteShardFn(beam.DoFn):
    """((split, shard), [ShardSlices]) → the shard's tar and index, streamed from the scratch files; emits (None, entry)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, (shard_plan,) = element
        entry = write.write_shard(self.plan.output, shard_plan, self.plan.config.output.samples_per_record)
        yield None, {**entry, "split_total": shard_plan.split_total}


def read_counters(output: str) -> dict[str, int]:
    """The sum of every counting element's saved counters (empty before any element finished)."""
    totals: collections.Counter = collections.Counter()
    pattern = FileSystems.join(output, write.SCRATCH, "counters", "*.json")
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        if ".tmp-" in metadata.path:
            continue
        with FileSystems.open(metadata.path) as handle:
            totals.update(json.loads(handle.read()))
    return dict(sorted(totals.items()))


class WriteManifestFn(beam.DoFn):
    """Every shard entry → manifest.json, the scratch folder removed, then the COMPLETED marker."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, entries = element
        entries = [entry for entry in entries if entry is not None]  # None: the seed that makes this step run
        cfg = self.plan.config
        totals = {entry["split"]: entry.pop("split_total") for entry in entries}
        for split in splits(cfg):
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
        summaries = {
            split: write.split_summary([e for e in entries if e["split"] == split], totals[split],
                                       cfg.output.samples_per_record, cfg.pairs.max_seq_length)
            for split in write.SPLITS if split in totals
        }
        counters = {**dict.fromkeys(schema.TEXT_COUNTERS, 0), **read_counters(self.plan.output)}
        for split, summary in summaries.items():
            counters[f"{split}_samples_dropped_remainder"] = summary["dropped_remainder"]
        counters["shards_written"] = len(entries)
        config = cfg.model_dump(mode="json", exclude={"dask_slurm"})
        config["output"]["validation_fraction_effective"] = self.plan.validation_fraction
        manifest = write.build_manifest(
            entries, summaries, config, tokenizer_entry, list(self.plan.inputs), self.plan.code_revision, counters,
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
    """(range index, InputRange) and the tokenizer's (file, sha256) → (split, BucketSummary) per bucket, the
    samples themselves spilled to the scratch folder."""

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
    """(split, BucketSummary) → balanced shards on disk, then the manifest and COMPLETED; emits the manifest's
    per-split summary."""

    def __init__(self, plan: JobPlan):
        super().__init__()
        self.plan = plan

    def expand(self, summaries):
        entries = (
            summaries
            | "GroupSummaries" >> beam.GroupByKey()
            # (split, [BucketSummary])
            | "PlanShards" >> beam.ParDo(PlanShardsFn(self.plan))
            # ((split, shard), ShardSlices); grouped by shard so that the writes spread over the workers
            | "GroupShardPlans" >> beam.GroupByKey()
            | "WriteTar" >> beam.ParDo(WriteShardFn(self.plan))
        )
        # (None, shard manifest entry), plus one (None, None) so the manifest step runs, and can say
        # what is wrong, even when no sample at all came through
        seed = summaries.pipeline | "ManifestSeed" >> beam.Create([(None, None)], reshuffle=False)
        return (
            (entries, seed)
            | "WithSeed" >> beam.Flatten()
            | "GroupManifest" >> beam.GroupByKey()
            | "WriteManifest" >> beam.ParDo(WriteManifestFn(self.plan))
        )
