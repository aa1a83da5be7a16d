"""The preprocessing config tree: `configs/pipeline/*.yaml` plus dotted overrides (`--pairs.dupe_factor 5`)."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bertline.config import Section


class InputConfig(Section):
    """How input files are read. Format comes from the extension: .txt, .jsonl, .parquet, each optionally .gz."""

    text_field: str = Field("text", description="Field holding a document's text in .jsonl input.")
    text_column: str = Field("text", description="Column holding a document's text in .parquet input.")
    encoding: str = Field("utf-8", description="Text encoding of .txt/.jsonl input (ASCII-compatible); bad bytes become U+FFFD and are counted.")
    split_bytes: int = Field(
        8 << 20, ge=1 << 16,
        description="Uncompressed .txt/.jsonl files larger than this are read as several byte ranges in parallel.",
    )
    max_document_chars: int = Field(
        1 << 24, ge=1 << 10,
        description="A document longer than this (e.g. a .txt file without blank lines) is cut into parts at line boundaries, counted as documents_split.",
    )

    @field_validator("encoding")
    @classmethod
    def _line_oriented_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        if "\n".encode(value) != b"\n":
            raise ValueError(f"{value} is not ASCII-compatible (lines are split on the byte \\n); convert the input to UTF-8")
        return value


class NormalizeConfig(Section):
    """Text clean-up and sentence splitting, before tokenization."""

    nfkc: bool = Field(False, description="Apply Unicode NFKC normalization (folds full-width forms, ligatures).")
    max_sentence_chars: int = Field(
        2000, ge=16,
        description="A sentence longer than this (e.g. a line without punctuation) is cut into chunks of at most this many characters.",
    )


class TokenizerConfig(Section):
    """Which tokenizer turns sentences into ids."""

    kind: Literal["sentencepiece_train", "sentencepiece", "wordpiece"] = Field(
        "sentencepiece_train",
        description="Train SentencePiece inside the job, use a given SentencePiece model, or a given BERT WordPiece vocab.txt.",
    )
    model_type: Literal["unigram", "bpe"] = Field("unigram", description="SentencePiece algorithm when training.")
    vocab_size: int = Field(8000, ge=64, le=1 << 20, description="Vocabulary size when training SentencePiece (special tokens included).")
    character_coverage: float = Field(
        0.9995, gt=0.0, le=1.0,
        description="Share of characters SentencePiece must cover when training (0.9995 for CJK-heavy text, 1.0 for small alphabets).",
    )
    byte_fallback: bool = Field(
        True,
        description="When training SentencePiece: spell characters outside the vocabulary as UTF-8 byte pieces (256 of the "
        "vocabulary's entries) instead of [UNK], so no text becomes [UNK] (symbols, accents, rare CJK characters).",
    )
    cjk_characters: bool = Field(
        False,
        description="When training SentencePiece (unigram): every Chinese ideograph is a piece of its own, as in Google's "
        "Chinese BERT, instead of pieces spanning several; masking.whole_word with cjk_words=jieba still masks words whole. "
        "Character pieces carry over to text of another domain or period (word pieces learnt on novels split reviews "
        "oddly), and the vocabulary becomes the corpus's characters plus pieces of other scripts, up to vocab_size.",
    )
    sample_sentences: int = Field(
        300_000, ge=100, description="At most this many sentences (a deterministic hash sample of the corpus) train SentencePiece."
    )
    training_threads: int = Field(
        1, ge=1, le=256,
        description="Threads SentencePiece trains with. The model's bytes depend on this number (not on the machine), so keep it fixed across runs you compare.",
    )
    path: str | None = Field(None, description="The SentencePiece .model (kind=sentencepiece) or WordPiece vocab.txt (kind=wordpiece).")
    lowercase: bool = Field(True, description="WordPiece only: lower-case and strip accents (uncased BERT); false for cased vocabularies.")

    @model_validator(mode="after")
    def _path_matches_kind(self) -> "TokenizerConfig":
        if self.kind != "sentencepiece_train" and not self.path:
            raise ValueError(f"tokenizer.kind={self.kind} needs tokenizer.path (the model or vocab file)")
        if self.cjk_characters and (self.kind != "sentencepiece_train" or self.model_type != "unigram"):
            raise ValueError("tokenizer.cjk_characters shapes a SentencePiece vocabulary the job trains with model_type "
                             "unigram; set tokenizer.kind=sentencepiece_train and tokenizer.model_type=unigram, or drop it")
        return self


class PairsConfig(Section):
    """Sentence pairs for Next Sentence Prediction, as in Google's create_pretraining_data.py."""

    max_seq_length: int = Field(128, ge=8, le=65535, description="Tokens per sample including [CLS] and two [SEP].")
    short_seq_prob: float = Field(0.1, ge=0.0, le=1.0, description="Probability that a sample targets a random shorter length.")
    random_next_prob: float = Field(0.5, ge=0.0, le=1.0, description="Probability that segment B comes from another document.")
    dupe_factor: int = Field(5, ge=1, le=1000, description="Passes over each document, each with its own pairs and masks.")
    bucket_bytes: int = Field(
        16 << 20, ge=1 << 10,
        description="Documents are hashed into buckets of about this many input bytes; random-next segments come from the same bucket.",
    )
    single_sentence_documents: Literal["split", "random_next", "drop"] = Field(
        "split",
        description="A one-sentence document (or chunk): split it at a token boundary so it gives either NSP label, and keep "
        "each bucket's random-next share on target (split); Google's rules: always pair it with a random segment, plain "
        "coins elsewhere, which skews NSP towards random-next on short documents (random_next); or drop the document, "
        "and its text with it (drop, counted).",
    )


class MaskingConfig(Section):
    """Static Masked-LM masks stored with each sample (the loader can re-mask dynamically from the original tokens)."""

    masked_lm_prob: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens chosen for prediction.")
    max_predictions_per_seq: int = Field(20, ge=1, description="Upper bound on predicted tokens per sample.")
    mask_token_prob: float = Field(0.8, ge=0.0, le=1.0, description="Of chosen tokens, the share replaced by [MASK].")
    random_token_prob: float = Field(0.1, ge=0.0, le=1.0, description="Of chosen tokens, the share replaced by a random token (the rest stay).")
    whole_word: bool = Field(False, description="Choose whole words: WordPiece ## continuations, SentencePiece ▁ word starts; CJK text by masking.cjk_words.")
    cjk_words: Literal["jieba", "characters"] = Field(
        "jieba",
        description="With whole_word, what a word is in Chinese text, which has no spaces: jieba's segmentation of the sentence "
        "(as Chinese-BERT-wwm does with LTP), or each CJK piece alone (Google's rule, which masks single characters).",
    )

    @model_validator(mode="after")
    def _probabilities_sum(self) -> "MaskingConfig":
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise ValueError("masking.mask_token_prob + masking.random_token_prob must not exceed 1")
        return self


class OutputConfig(Section):
    """The shard sets written to --output."""

    shard_mb: int = Field(
        256, ge=1,
        description="Target shard size in MiB: the shard count follows from the data so that no shard exceeds it (docs/shard-format.md says why 256).",
    )
    num_shards: int | None = Field(None, ge=1, description="Fix the train shard count instead (overrides shard_mb). Any count suits any number of ranks: the trainer orders samples, not shards.")
    validation_shards: int | None = Field(None, ge=1, description="Fix the validation shard count instead (overrides shard_mb).")
    validation_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="Share of documents (by stable hash) held out for validation; 0 writes no validation set.")
    min_validation_documents: int = Field(
        8, ge=1,
        description="On a corpus of up to 64 MiB, hold out at least this many documents, but at most an eighth of them and at "
        "least one (the fraction is raised for it before the job starts); larger corpora hold out validation_fraction.",
    )
    samples_per_record: int = Field(
        16, ge=1, le=1 << 16,
        description="Samples per tar record, the unit a rank reads and checks. A micro batch that is a multiple of it reads no byte it does not use.",
    )


class SlurmWorkersConfig(Section):
    """The Dask workers `bertline prepare --slurm-workers K` starts as Slurm jobs (dask-jobqueue's SLURMCluster)."""

    cores: int = Field(1, ge=1, description="CPU cores per worker job (one Dask worker process, this many threads).")
    memory: str = Field("4GB", description="Memory per worker job, in Dask's notation (4GB, 500MB).")
    walltime: str = Field("04:00:00", description="Time limit of each worker job; the whole job must finish within it.")
    partition: str | None = Field(None, description="Slurm partition of the worker jobs (default: the cluster's default).")
    account: str | None = Field(None, description="Slurm account of the worker jobs.")
    interface: str | None = Field(None, description="Network interface the scheduler and workers talk over (e.g. ib0); default: the host's address.")
    start_timeout_s: int = Field(900, ge=10, description="How long to wait for every worker job to start and join.")
    log_directory: str = Field("~/.cache/bertline/dask-slurm-logs", description="Where the worker jobs' Slurm logs go (on a filesystem the nodes share).")
    job_extra_directives: list[str] = Field(default_factory=list, description="Extra #SBATCH lines for the worker jobs, e.g. ['--constraint=cpu'].")


class PrepareConfig(Section):
    """Everything `bertline prepare` needs besides --input/--output and the Beam runner flags."""

    seed: int = Field(12345, description="Global seed; every random choice derives from it and a stable hash of its document.")
    input: InputConfig = InputConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pairs: PairsConfig = PairsConfig()
    masking: MaskingConfig = MaskingConfig()
    output: OutputConfig = OutputConfig()
    dask_slurm: SlurmWorkersConfig = SlurmWorkersConfig()
