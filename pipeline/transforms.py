"""The Beam side of the pipeline: thin DoFns around the pure functions, grouped into composite transforms.

Everything here is built from Create, ParDo, GroupByKey and Flatten alone, the subset that Beam's
DaskRunner translates faithfully (docs/runners.md). In particular there are no side inputs: the DaskRunner
evaluates a side input inside every task that reads it, and duplicates its elements when it has several
partitions. Data that a step needs from another branch is joined instead: both are keyed alike, flattened
and grouped. No ReadFromText, no tagged outputs, no finish_bundle outputs, no fileio sinks; shards and the
manifest are written by DoFns.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from bertline.errors import UserError
from pipeline import masking, pairs, read, rng, schema, segment, tokenizer, write
from pipeline.config import PrepareConfig

NAMESPACE = "bertline"
log = logging.getLogger("bertline.pipeline")


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


class ReadDocumentsFn(beam.DoFn):
    """InputRange → (document key, raw lines), streaming one range."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self.documents = _counter("documents_read")
        self.bad_json = _counter("jsonl_lines_skipped")
        self.bytes = _counter("input_chars")
        self._progress = None

    def setup(self):
        if self.plan.show_progress:
            from tqdm import tqdm

            self._progress = tqdm(total=self.plan.total_input_bytes, unit="B", unit_scale=True, desc="reading", leave=False)

    def teardown(self):
        if self._progress is not None:
            self._progress.close()

    def _bad_line(self, message: str) -> None:
        self.bad_json.inc()
        log.warning("skipped malformed JSON line: %s", message)

    def process(self, input_range: read.InputRange):
        cfg = self.plan.config.input
        for document in read.read_documents(input_range, cfg.encoding, cfg.text_field, cfg.text_column, self._bad_line):
            chars = sum(len(line) for line in document.lines)
            self.documents.inc()
            self.bytes.inc(chars)
            if self._progress is not None:
                self._progress.update(chars)
            yield document.key, document.lines


class SplitSentencesFn(beam.DoFn):
    """(key, raw lines) → (key, sentences): clean-up and sentence splitting; empty documents are counted."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self.empty = _counter("documents_empty")
        self.nul = _counter("nul_characters_removed")
        self.replaced = _counter("undecodable_bytes_replaced")
        self.sentences = _counter("sentences")

    def process(self, element):
        key, lines = element
        cfg = self.plan.config.normalize
        sentences: list[str] = []
        for line in lines:
            if "\x00" in line:
                self.nul.inc(line.count("\x00"))
            if "\ufffd" in line:
                self.replaced.inc(line.count("\ufffd"))
            sentences.extend(segment.split_sentences(segment.normalize_line(line, cfg.nfkc), cfg.max_sentence_chars))
        if not sentences:
            self.empty.inc()
            return
        self.sentences.inc(len(sentences))
        yield key, sentences


class SampleSentencesFn(beam.DoFn):
    """(key, sentences) → (None, (score, sentence)): candidates for the K sentences with the smallest hash.

    Each worker keeps its own K smallest scores so far and emits only sentences that enter that set: a
    sentence outside it cannot be among the global K smallest, so the final Top is exact and deterministic
    while only about K·ln(N/K) sentences per worker leave it.
    """

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._largest_kept: list[float] = []  # max-heap of negated scores

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
            sentences, vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage
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


class AssignBucketFn(beam.DoFn):
    """(key, sentences) → ((split, bucket), ("document", key, sentences)): held-out split and bucket by hash."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        key, sentences = element
        seed = self.plan.config.seed
        split = "validation" if rng.unit_interval(seed, "split", key) < self.plan.config.output.validation_fraction else "train"
        bucket = rng.stable_hash(seed, "bucket", key) % self.plan.num_buckets
        yield (split, bucket), ("document", key, sentences)


class BroadcastTokenizerFn(beam.DoFn):
    """(file, sha256) → one ((split, bucket), ("tokenizer", sha256)) per bucket, to join with its documents."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, sha256 = element
        for split in splits(self.plan.config):
            for bucket in range(self.plan.num_buckets):
                yield (split, bucket), ("tokenizer", sha256)


class CreateSamplesFn(beam.DoFn):
    """A bucket (its documents and the tokenizer's hash) → tokenized sentence pairs with masks, as one
    SampleBatch per provisional shard: ((split, provisional shard), SampleBatch)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._tokenizer: tuple[str, tokenizer.Tokenizer, list[bool]] | None = None

    def _load(self, sha256: str):
        if self._tokenizer is None or self._tokenizer[0] != sha256:
            tok = load_output_tokenizer(self.plan, sha256)
            self._tokenizer = (sha256, tok, tok.word_starts())
        return self._tokenizer[1], self._tokenizer[2]

    def _spec(self, tok: tokenizer.Tokenizer) -> masking.MaskingSpec:
        cfg, special = self.plan.config.masking, tok.special_ids
        return masking.MaskingSpec(
            masked_lm_prob=cfg.masked_lm_prob,
            max_predictions_per_seq=cfg.max_predictions_per_seq,
            mask_token_prob=cfg.mask_token_prob,
            random_token_prob=cfg.random_token_prob,
            whole_word=cfg.whole_word,
            mask_id=special["[MASK]"],
            vocab_size=tok.vocab_size,
            never_mask=frozenset((special["[CLS]"], special["[SEP]"], special["[PAD]"])),
            special_ids=frozenset(special.values()),
        )

    def process(self, element):
        (split, _), records = element
        records = list(records)
        sha256 = next((r[1] for r in records if r[0] == "tokenizer"), None)
        documents = sorted((r[1], r[2]) for r in records if r[0] == "document")
        if not documents:
            return
        if sha256 is None:
            raise UserError("a bucket of documents arrived without its tokenizer; the runner lost the join (see docs/runners.md)")
        tok, word_starts = self._load(sha256)
        cfg = self.plan.config
        spec = self._spec(tok)
        bucket = []
        for _, sentences in documents:
            ids = tok.encode(sentences)
            _counter("tokens").inc(sum(len(s) for s in ids))
            bucket.append(ids)
        shards = num_shards(cfg, split)
        by_shard: dict[int, tuple[list, ...]] = {}
        cls_id, sep_id = tok.special_ids["[CLS]"], tok.special_ids["[SEP]"]
        starts_table = word_starts if cfg.masking.whole_word else None
        for index, (key, _) in enumerate(documents):
            if sum(1 for s in bucket[index] if s) < 2:
                _counter("single_sentence_documents").inc()
            for dupe in range(cfg.pairs.dupe_factor):
                draw = rng.rng_for(cfg.seed, "pairs", key, dupe)
                made = pairs.create_pairs(
                    bucket, index, draw,
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
                    columns = by_shard.setdefault(sample_key % shards, ([], [], [], [], []))
                    columns[0].append(sample_key)
                    columns[1].append((len(tokens), len(pair.tokens_a) + 2, int(pair.is_random_next), len(masked.positions)))
                    columns[2].append(tokens)
                    columns[3].append(masked.positions)
                    columns[4].append(masked.input_ids)
        dtype = schema.token_dtype(tok.vocab_size)
        for shard in sorted(by_shard):
            batch = schema.SampleBatch.from_lists(*by_shard[shard], dtype=dtype)
            _counter(f"{split}_samples_created").inc(len(batch))
            yield (split, shard), ("samples", batch)


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
            yield (split, shard), ("plan", {**shard_plan, "split_total": total})


class RebalanceFn(beam.DoFn):
    """(split, provisional shard) → its samples and its plan → samples keyed by their final shard."""

    def process(self, element):
        (split, shard), records = element
        records = list(records)
        plan = next(r[1] for r in records if r[0] == "plan")
        batches = [r[1] for r in records if r[0] == "samples"]
        if not batches:
            return
        batch = schema.SampleBatch.concat(batches).sorted_by_key()
        total = plan["split_total"]
        if plan["keep"]:
            yield (split, shard), (batch.take(np.arange(plan["keep"])), total)
        start = plan["keep"]
        for destination, count in plan["moves"]:
            yield (split, destination), (batch.take(np.arange(start, start + count)), total)
            start += count
        if plan["dropped"]:
            _counter(f"{split}_samples_dropped_remainder").inc(plan["dropped"])


class WriteShardFn(beam.DoFn):
    """(split, shard) → the shard's samples, written as one tar; emits (None, its manifest entry)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        (split, shard), parts = element
        parts = list(parts)
        info = write.write_shard(
            self.plan.output, split, shard, schema.SampleBatch.concat([batch for batch, _ in parts]),
            self.plan.config.output.samples_per_record,
        )
        _counter("shards_written").inc()
        _counter("shard_bytes").inc(info["bytes"])
        yield None, {**info, "split_total": parts[0][1]}


class WriteManifestFn(beam.DoFn):
    """Every shard entry → manifest.json, then the COMPLETED marker; emits the per-split summary."""

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
            entries, totals, expected, cfg.model_dump(mode="json"), tokenizer_entry,
            list(self.plan.inputs), self.plan.code_revision,
        )
        write.write_atomically(FileSystems.join(self.plan.output, write.MANIFEST), write.manifest_bytes(manifest))
        write.write_atomically(FileSystems.join(self.plan.output, write.COMPLETED), b"")
        yield manifest["splits"]


class ReadCorpus(beam.PTransform):
    """InputRanges → (key, sentences) for every non-empty document."""

    def __init__(self, plan: JobPlan, show_progress: bool = True):
        super().__init__()
        self.plan = dataclasses.replace(plan, show_progress=plan.show_progress and show_progress)

    def expand(self, ranges):
        return (
            ranges
            | "ReadDocuments" >> beam.ParDo(ReadDocumentsFn(self.plan))
            # (key, [raw line])
            | "SplitSentences" >> beam.ParDo(SplitSentencesFn(self.plan))
        )


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
            | "ReadCorpus" >> ReadCorpus(self.plan, show_progress=False)
            # (key, [sentence])
            | "SampleSentences" >> beam.ParDo(SampleSentencesFn(self.plan))
            # (None, (score, sentence)), candidates for the K smallest scores
            | "KeepSmallest" >> beam.combiners.Top.SmallestPerKey(self.plan.config.tokenizer.sample_sentences)
            # (None, [(score, sentence)]) of at most tokenizer.sample_sentences entries
            | "Train" >> beam.ParDo(TrainTokenizerFn(self.plan))
        )


class MakeSamples(beam.PTransform):
    """(key, sentences) and the tokenizer's (file, sha256) → ((split, provisional shard), ("samples", SampleBatch))."""

    def __init__(self, plan: JobPlan, tokenizer_ready):
        super().__init__()
        self.plan = plan
        self.tokenizer_ready = tokenizer_ready

    def expand(self, documents):
        bucketed = documents | "AssignBuckets" >> beam.ParDo(AssignBucketFn(self.plan))
        # ((split, bucket), ("document", key, [sentence]))
        tokenizer_copies = self.tokenizer_ready | "BroadcastTokenizer" >> beam.ParDo(BroadcastTokenizerFn(self.plan))
        # ((split, bucket), ("tokenizer", sha256)) for every bucket
        return (
            (bucketed, tokenizer_copies)
            | "JoinTokenizer" >> beam.Flatten()
            | "GroupBuckets" >> beam.GroupByKey()
            | "PairAndMask" >> beam.ParDo(CreateSamplesFn(self.plan))
        )


class WriteShards(beam.PTransform):
    """((split, provisional shard), ("samples", SampleBatch)) → balanced shards on disk, then the manifest
    and COMPLETED; emits the manifest's per-split summary."""

    def __init__(self, plan: JobPlan):
        super().__init__()
        self.plan = plan

    def expand(self, batches):
        plans = (
            batches
            | "CountSamples" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], len(kv[1][1]))))
            # (split, (provisional shard, samples))
            | "GroupCounts" >> beam.GroupByKey()
            | "PlanBalance" >> beam.ParDo(PlanBalanceFn(self.plan))
        )
        # ((split, provisional shard), ("plan", {keep, moves, dropped, split_total}))
        entries = (
            (batches, plans)
            | "JoinPlans" >> beam.Flatten()
            | "GroupProvisional" >> beam.GroupByKey()
            | "Rebalance" >> beam.ParDo(RebalanceFn())
            # ((split, final shard), (SampleBatch, split total))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteTar" >> beam.ParDo(WriteShardFn(self.plan))
        )
        # (None, shard manifest entry), plus one (None, None) so the manifest step runs, and can say
        # what is wrong, even when no sample at all came through
        seed = batches.pipeline | "ManifestSeed" >> beam.Create([(None, None)], reshuffle=False)
        return (
            (entries, seed)
            | "WithSeed" >> beam.Flatten()
            | "GroupManifest" >> beam.GroupByKey()
            | "WriteManifest" >> beam.ParDo(WriteManifestFn(self.plan))
        )
