"""The Beam side of the pipeline: thin DoFns around the pure functions, grouped into composite transforms.

Everything here stays inside Create, ParDo, GroupByKey, Flatten and CombinePerKey plus AsList side inputs,
the subset that Beam's DaskRunner translates faithfully (see docs/runners.md): no ReadFromText, no tagged
outputs, no finish_bundle outputs, no fileio sinks. Shards and the manifest are written by DoFns.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging

import apache_beam as beam
import numpy as np
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
    """The bounded sample → a trained SentencePiece model's bytes (one element)."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        _, scored = element
        cfg = self.plan.config.tokenizer
        sentences = [sentence for _, sentence in sorted(scored)]
        _counter("tokenizer_training_sentences").inc(len(sentences))
        yield tokenizer.train_sentencepiece(
            sentences, vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage
        )


class _WithTokenizer(beam.DoFn):
    """Builds the tokenizer once per worker from the side input's bytes."""

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self._tokenizer = None
        self._word_starts = None

    def tokenizer(self, files: list[bytes]):
        if self._tokenizer is None:
            self._tokenizer = tokenizer.load_tokenizer(self.plan.tokenizer_kind, files[0], self.plan.config.tokenizer.lowercase)
            self._word_starts = self._tokenizer.word_starts()
        return self._tokenizer


class TokenizeFn(_WithTokenizer):
    """(key, sentences) → ("split/bucket", (key, flat token ids, sentence lengths))."""

    def process(self, element, tokenizer_files):
        key, sentences = element
        tok = self.tokenizer(tokenizer_files)
        ids = tok.encode(sentences)
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int32, count=len(ids))
        flat = np.fromiter((t for s in ids for t in s), dtype=schema.token_dtype(tok.vocab_size), count=int(lengths.sum()))
        seed = self.plan.config.seed
        split = "validation" if rng.unit_interval(seed, "split", key) < self.plan.config.output.validation_fraction else "train"
        bucket = rng.stable_hash(seed, "bucket", key) % self.plan.num_buckets
        _counter("tokens").inc(len(flat))
        yield f"{split}/{bucket}", (key, flat, lengths)


class CreateSamplesFn(_WithTokenizer):
    """A bucket of documents → sentence pairs with masks, as one SampleBatch per provisional shard."""

    def process(self, element, tokenizer_files):
        bucket_key, documents = element
        split = bucket_key.split("/", 1)[0]
        cfg = self.plan.config
        tok = self.tokenizer(tokenizer_files)
        special = tok.special_ids
        spec = masking.MaskingSpec(
            masked_lm_prob=cfg.masking.masked_lm_prob,
            max_predictions_per_seq=cfg.masking.max_predictions_per_seq,
            mask_token_prob=cfg.masking.mask_token_prob,
            random_token_prob=cfg.masking.random_token_prob,
            whole_word=cfg.masking.whole_word,
            mask_id=special["[MASK]"],
            vocab_size=tok.vocab_size,
            never_mask=frozenset((special["[CLS]"], special["[SEP]"], special["[PAD]"])),
            special_ids=frozenset(special.values()),
        )
        documents = sorted(documents, key=lambda d: d[0])
        bucket = [np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else [] for _, flat, lengths in documents]
        bucket = [[sentence.tolist() for sentence in doc] for doc in bucket]
        num_shards = cfg.output.num_shards if split == "train" else cfg.output.validation_shards
        by_shard: dict[int, list] = {}
        cls_id, sep_id = special["[CLS]"], special["[SEP]"]
        word_starts = self._word_starts if cfg.masking.whole_word else None
        for index, (key, _, _) in enumerate(documents):
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
                    starts = [word_starts[t] for t in tokens] if word_starts is not None else None
                    masked = masking.mask_sequence(tokens, draw, spec, starts)
                    sample_key = draw.getrandbits(64)
                    columns = by_shard.setdefault(sample_key % num_shards, ([], [], [], [], []))
                    columns[0].append(sample_key)
                    columns[1].append((len(tokens), len(pair.tokens_a) + 2, int(pair.is_random_next), len(masked.positions)))
                    columns[2].append(tokens)
                    columns[3].append(masked.positions)
                    columns[4].append(masked.input_ids)
        dtype = schema.token_dtype(tok.vocab_size)
        for shard in sorted(by_shard):
            batch = schema.SampleBatch.from_lists(*by_shard[shard], dtype=dtype)
            _counter(f"{split}_samples_created").inc(len(batch))
            yield (split, shard), batch


class RebalanceFn(beam.DoFn):
    """(split, provisional shard) → its samples, kept or sent to the shard that lacks them."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element, shard_counts):
        (split, shard), batches = element
        num_shards = self.plan.config.output.num_shards if split == "train" else self.plan.config.output.validation_shards
        counts = {s: c for (sp, s), c in shard_counts if sp == split}
        n = write.samples_per_shard(counts, num_shards)
        if n == 0:
            setting = "output.num_shards" if split == "train" else "output.validation_shards"
            raise UserError(
                f"the {split} split has only {sum(counts.values())} samples, fewer than its {num_shards} shards; "
                f"lower {setting} or give more input"
            )
        batch = schema.SampleBatch.concat(list(batches)).sorted_by_key()
        keep = min(len(batch), n)
        if keep:
            yield (split, shard), batch.take(np.arange(keep))
        destinations = write.excess_destinations(counts, num_shards, shard)
        by_destination: dict[int, list[int]] = {}
        for offset, destination in enumerate(destinations):
            if destination is None:
                _counter(f"{split}_samples_dropped_remainder").inc()
            else:
                by_destination.setdefault(destination, []).append(keep + offset)
        for destination, index in sorted(by_destination.items()):
            yield (split, destination), batch.take(np.asarray(index))


class WriteShardFn(beam.DoFn):
    """(split, shard) → the shard's samples, written as one tar; emits its manifest entry."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element):
        (split, shard), batches = element
        info = write.write_shard(
            self.plan.output, split, shard, schema.SampleBatch.concat(list(batches)),
            self.plan.config.output.samples_per_record,
        )
        _counter("shards_written").inc()
        _counter("shard_bytes").inc(info["bytes"])
        yield None, info


class WriteManifestFn(beam.DoFn):
    """All shard entries → tokenizer file, manifest.json, then the COMPLETED marker, in that order."""

    def __init__(self, plan: JobPlan):
        self.plan = plan

    def process(self, element, shard_counts, tokenizer_files):
        from apache_beam.io.filesystems import FileSystems

        _, entries = element
        shards = [entry for entry in entries if entry is not None]  # None: the seed that makes this step run
        cfg = self.plan.config
        totals: dict[str, int] = {}
        for (split, _), count in shard_counts:
            totals[split] = totals.get(split, 0) + count
        expected = {"train": cfg.output.num_shards}
        if cfg.output.validation_fraction > 0:
            expected["validation"] = cfg.output.validation_shards
        for split in expected:
            if split not in totals:
                raise UserError(
                    f"the {split} split received no samples; "
                    + ("the input holds no document of two or more sentences (see the counters): give more input"
                       if split == "train" else
                       "no held-out document formed a pair: raise output.validation_fraction, or set it to 0 for no validation set")
                )
        tok = tokenizer.load_tokenizer(self.plan.tokenizer_kind, tokenizer_files[0], cfg.tokenizer.lowercase)
        write.write_atomically(FileSystems.join(self.plan.output, tok.file_name), tok.file_bytes)
        tokenizer_entry = {
            "kind": tok.kind,
            "file": tok.file_name,
            "sha256": tokenizer.file_sha256(tok.file_bytes),
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids,
            "lowercase": cfg.tokenizer.lowercase if tok.kind == "wordpiece" else None,
            "token_dtype": schema.token_dtype(tok.vocab_size).name,
        }
        manifest = write.build_manifest(
            list(shards), totals, expected, cfg.model_dump(mode="json"), tokenizer_entry,
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
    """InputRanges → a one-element PCollection holding the trained SentencePiece model's bytes.

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
    """(key, sentences) → ((split, provisional shard), SampleBatch)."""

    def __init__(self, plan: JobPlan, tokenizer_files):
        super().__init__()
        self.plan = plan
        self.tokenizer_files = tokenizer_files

    def expand(self, documents):
        return (
            documents
            | "Tokenize" >> beam.ParDo(TokenizeFn(self.plan), self.tokenizer_files)
            # ("split/bucket", (key, flat ids, sentence lengths))
            | "GroupBuckets" >> beam.GroupByKey()
            | "PairAndMask" >> beam.ParDo(CreateSamplesFn(self.plan), self.tokenizer_files)
        )


class WriteShards(beam.PTransform):
    """((split, provisional shard), SampleBatch) → balanced shards on disk, then manifest and COMPLETED."""

    def __init__(self, plan: JobPlan, tokenizer_files):
        super().__init__()
        self.plan = plan
        self.tokenizer_files = tokenizer_files

    def expand(self, batches):
        counts = beam.pvalue.AsList(
            batches
            | "CountSamples" >> beam.Map(lambda kv: (kv[0], len(kv[1])))
            | "SumCounts" >> beam.CombinePerKey(sum)
        )
        entries = (
            batches
            | "GroupProvisional" >> beam.GroupByKey()
            | "Rebalance" >> beam.ParDo(RebalanceFn(self.plan), counts)
            # ((split, final shard), SampleBatch)
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
            | "WriteManifest" >> beam.ParDo(WriteManifestFn(self.plan), counts, self.tokenizer_files)
        )
