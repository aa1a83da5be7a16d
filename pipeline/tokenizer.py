"""SentencePiece (trained in the job, or given) and BERT WordPiece behind one small interface."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from typing import Protocol

from bertline.errors import UserError
from shardformat.schema import SPECIAL_TOKENS

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Ideographs as Google's BERT tokenizer counts them (_is_chinese_char): the unified blocks, their extensions and the
# compatibility blocks; kana and Hangul are not among them, as they spell words.
_IDEOGRAPH = re.compile("([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f])")
# A private-use character marks piece boundaries for SentencePiece's trainer; one already in the text only adds a
# boundary there, and the trainer removes it.
_BOUNDARY = "\ue000"


class Tokenizer(Protocol):
    """What the pipeline (and later the trainer's loader) needs from a tokenizer."""

    kind: str
    file_name: str  # the name the tokenizer file gets next to the shards
    file_bytes: bytes
    vocab_size: int
    special_ids: dict[str, int]  # "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" → id

    def encode(self, sentences: list[str]) -> list[list[int]]: ...

    def word_starts(self) -> list[bool]:
        """For each id: does a token with this id begin a word (for whole-word masking)?"""
        ...

    def encode_words(self, sentences: list[str], cjk_words: str) -> list[tuple[list[int], list[bool]]]:
        """Ids and, per token, whether it begins a word: by the vocabulary outside CJK text; inside it, by jieba's
        segmentation of the sentence (cjk_words="jieba") or one word per CJK piece ("characters")."""
        ...


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SentencePieceTokenizer:
    kind = "sentencepiece"
    file_name = "spm.model"

    def __init__(self, model: bytes, source: str = "the SentencePiece model"):
        import sentencepiece

        self.file_bytes = model
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model)
        except (RuntimeError, OSError) as exc:
            raise UserError(f"{source} is not a SentencePiece model ({exc}); pass a .model file written by spm_train") from None
        self.vocab_size = self._sp.get_piece_size()
        unk = self._sp.unk_id()
        ids = {"[UNK]": unk}
        for piece in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
            found = self._sp.piece_to_id(piece)
            if found == unk and piece != self._sp.id_to_piece(unk):
                alias = {"[PAD]": "<pad>"}.get(piece)
                found = self._sp.piece_to_id(alias) if alias else unk
                if found == unk:
                    raise UserError(
                        f"{source} lacks the special token {piece}; train it with control_symbols=[CLS],[SEP],[MASK] "
                        f"and pad_piece=[PAD], or let bertline train one (tokenizer.kind=sentencepiece_train)"
                    )
            ids[piece] = found
        self.special_ids = {name: ids[name] for name in SPECIAL_TOKENS}

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return self._sp.encode(sentences, out_type=int, num_threads=1)

    def word_starts(self) -> list[bool]:
        starts = []
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            starts.append(piece.startswith("\u2581") or bool(_CJK.search(piece)) or self._sp.is_control(i))
        return starts

    def encode_words(self, sentences: list[str], cjk_words: str) -> list[tuple[list[int], list[bool]]]:
        table = self._table if hasattr(self, "_table") else self.__dict__.setdefault("_table", self.word_starts())
        out = []
        for sentence, proto in zip(sentences, self._sp.encode(sentences, return_type="proto", num_threads=1)):
            ids = [piece.id for piece in proto.pieces]
            starts = [table[i] for i in ids]
            if cjk_words == "jieba" and _CJK.search(sentence):
                raw = sentence.encode("utf-8")
                boundaries = jieba_starts(sentence, in_bytes=True)
                previous = -1
                for k, piece in enumerate(proto.pieces):
                    # byte-fallback pieces of one character share its offset: only the first can begin a word
                    if piece.begin == previous:
                        starts[k] = False
                    elif _CJK.match(raw[piece.begin:piece.begin + 4].decode("utf-8", errors="ignore")[:1]):
                        starts[k] = piece.begin in boundaries
                    previous = piece.begin
            out.append((ids, starts))
        return out


class WordPieceTokenizer:
    kind = "wordpiece"
    file_name = "vocab.txt"

    def __init__(self, vocab: bytes, lowercase: bool, source: str = "the WordPiece vocab"):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, normalizers, pre_tokenizers

        self.file_bytes = vocab
        try:
            tokens = vocab.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{source} is not UTF-8 text; pass a BERT vocab.txt (one token per line)") from None
        self._tokens = [t.rstrip("\r") for t in tokens]
        index = {token: i for i, token in enumerate(self._tokens)}
        missing = [name for name in SPECIAL_TOKENS if name not in index]
        if missing:
            raise UserError(f"{source} lacks the special tokens {', '.join(missing)}; add them as lines of the vocab or use a BERT vocab.txt")
        self.vocab_size = len(self._tokens)
        self.special_ids = {name: index[name] for name in SPECIAL_TOKENS}
        self._hf = HFTokenizer(models.WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
        self._hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
        )
        self._hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._hf.encode_batch(sentences, add_special_tokens=False)]

    def word_starts(self) -> list[bool]:
        return [not token.startswith("##") for token in self._tokens]

    def encode_words(self, sentences: list[str], cjk_words: str) -> list[tuple[list[int], list[bool]]]:
        table = self._table if hasattr(self, "_table") else self.__dict__.setdefault("_table", self.word_starts())
        out = []
        for sentence, encoding in zip(sentences, self._hf.encode_batch(sentences, add_special_tokens=False)):
            starts = [table[i] for i in encoding.ids]
            if cjk_words == "jieba" and _CJK.search(sentence):
                boundaries = jieba_starts(sentence, in_bytes=False)
                for k, (begin, _) in enumerate(encoding.offsets):
                    if _CJK.match(sentence[begin:begin + 1]):
                        starts[k] = begin in boundaries
            out.append((encoding.ids, starts))
        return out


def jieba_starts(sentence: str, in_bytes: bool) -> set[int]:
    """Offsets (characters, or UTF-8 bytes) where jieba's segmentation of the sentence starts a word. jieba's
    dictionary ships inside its package; it is loaded once per process."""
    import jieba

    if not getattr(jieba_starts, "ready", False):
        jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict…" lines say nothing to a bertline user
        jieba.initialize()
        jieba_starts.ready = True
    starts, offset = set(), 0
    for word in jieba.cut(sentence, HMM=True):
        starts.add(offset)
        offset += len(word.encode("utf-8")) if in_bytes else len(word)
    return starts


def load_tokenizer(kind: str, data: bytes, lowercase: bool = True, source: str | None = None) -> Tokenizer:
    """A tokenizer from its file's bytes; kind is 'sentencepiece' (given or trained) or 'wordpiece'."""
    if kind == "wordpiece":
        return WordPieceTokenizer(data, lowercase, source or "the WordPiece vocab")
    return SentencePieceTokenizer(data, source or "the SentencePiece model")


def train_sentencepiece(
    sentences: list[str], *, vocab_size: int, model_type: str, character_coverage: float, threads: int = 1,
    byte_fallback: bool = True, cjk_characters: bool = False,
) -> bytes:
    """Train SentencePiece with BERT's special tokens on `sentences` (already a bounded, ordered sample).

    No input shuffling, and a fixed thread count: SentencePiece's result depends on how many threads
    split the work (measured: 1 and 2 threads give different models, each reproducible), so the count is a
    setting, not the machine's core count.

    cjk_characters: no piece spans two ideographs (SentencePiece's pretokenization_delimiter, unigram only), so
    Chinese is spelled in characters as in Google's Chinese BERT; the vocabulary may then come out smaller than
    vocab_size, as a corpus has only so many characters.
    """
    import sentencepiece

    if not sentences:
        raise UserError("no sentences reached the SentencePiece trainer; check that --input holds text")
    extra = {}
    if cjk_characters:
        sentences = [_IDEOGRAPH.sub(f"{_BOUNDARY}\\1{_BOUNDARY}", sentence) for sentence in sentences]
        extra = {"pretokenization_delimiter": _BOUNDARY, "hard_vocab_limit": False}
    writer = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0, pad_piece="[PAD]",
            unk_id=1, unk_piece="[UNK]",
            bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            num_threads=threads,
            byte_fallback=byte_fallback,  # characters outside the vocabulary become UTF-8 byte pieces, not [UNK]
            minloglevel=2,
            **extra,
        )
    except RuntimeError as exc:
        # SentencePiece's text is "INTERNAL: file.cc(line) [check] Explanation."; keep the explanation.
        text = str(exc).strip() or exc.__class__.__name__
        explanation = text.rsplit("] ", 1)[-1].rstrip(".")
        if "smaller than required_chars" in text:
            advice = ("raise tokenizer.vocab_size (byte fallback takes 256 entries) or lower tokenizer.character_coverage"
                      if byte_fallback else "raise tokenizer.vocab_size or lower tokenizer.character_coverage")
        else:
            advice = "lower tokenizer.vocab_size or give more input"
        raise UserError(
            f"SentencePiece could not train a {vocab_size}-piece vocabulary on {len(sentences)} sampled sentences "
            f"({explanation}); {advice}"
        ) from None
    return writer.getvalue()
