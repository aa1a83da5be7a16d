import io

import pytest
import sentencepiece

from bertline.errors import UserError
from pipeline.tokenizer import load_tokenizer, train_sentencepiece

TEXT = [
    "The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.",
    "Fellow citizens of the Senate and of the House of Representatives.", "曹操曰吾欲取之。", "玄德大惊。",
] * 40


def test_wordpiece_matches_bert_base_uncased_ids(bert_vocab):
    tok = load_tokenizer("wordpiece", bert_vocab.read_bytes(), lowercase=True)
    assert tok.special_ids == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    assert tok.vocab_size == 30522
    # bert-base-uncased: hello=7592 ,=1010 world=2088 !=999 ; "unaffable" → un ##aff ##able
    assert tok.encode(["Hello, WORLD!"]) == [[7592, 1010, 2088, 999]]
    pieces = tok.encode(["unaffable"])[0]
    starts = tok.word_starts()
    assert [starts[i] for i in pieces] == [True, False, False]


def test_vocab_without_special_tokens_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"lacks the special tokens \[CLS\], \[SEP\], \[MASK\]"):
        load_tokenizer("wordpiece", b"[PAD]\n[UNK]\nhello\nworld\n", source="tokenizer file v.txt")


def test_trained_sentencepiece_has_bert_specials_and_is_deterministic():
    first = train_sentencepiece(TEXT, vocab_size=60, model_type="unigram", character_coverage=1.0, byte_fallback=False)
    assert first == train_sentencepiece(TEXT, vocab_size=60, model_type="unigram", character_coverage=1.0, byte_fallback=False)
    tok = load_tokenizer("sentencepiece", first)
    assert tok.special_ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    starts = tok.word_starts()
    ids = tok.encode(["玄德大惊。"])[0]
    # No spaces in Chinese: every CJK piece must count as a word start, or whole-word masking would take
    # the whole sentence as one word.
    assert ids and all(starts[i] for i in ids[:-1])
    bpe = train_sentencepiece(TEXT, vocab_size=60, model_type="bpe", character_coverage=1.0, byte_fallback=False)
    assert load_tokenizer("sentencepiece", bpe).special_ids["[MASK]"] == 4


def test_sentencepiece_model_without_bert_specials_is_refused():
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_writer=writer, vocab_size=60, minloglevel=2)
    with pytest.raises(UserError, match=r"lacks the special token \[PAD\]|lacks the special token \[CLS\]"):
        load_tokenizer("sentencepiece", writer.getvalue(), source="tokenizer file m.model")


def test_garbage_sentencepiece_file_is_one_sentence():
    with pytest.raises(UserError, match="is not a SentencePiece model"):
        load_tokenizer("sentencepiece", b"definitely not a model", source="tokenizer file m.model")


def test_vocabulary_too_large_for_the_sample_is_one_sentence():
    with pytest.raises(UserError, match="lower tokenizer.vocab_size"):
        train_sentencepiece(TEXT[:5], vocab_size=5000, model_type="unigram", character_coverage=1.0)


def test_vocabulary_smaller_than_the_alphabet_says_what_to_raise():
    chars = ["".join(chr(0x4E00 + (i * 7 + j) % 600) for j in range(12)) + "。" for i in range(300)]
    with pytest.raises(UserError, match=r"raise tokenizer.vocab_size \(byte fallback takes 256 entries\) or lower tokenizer.character_coverage$"):
        train_sentencepiece(chars, vocab_size=100, model_type="unigram", character_coverage=1.0)


def test_cjk_characters_spells_chinese_in_single_ideographs_and_keeps_latin_pieces():
    def ideographs(piece: str) -> int:
        return sum(0x3400 <= ord(c) <= 0x9FFF or 0x20000 <= ord(c) <= 0x2FA1F for c in piece)

    text = TEXT + ["曹操曰吾欲取之，玄德大惊曰：曹操又来矣。"] * 40
    words = load_tokenizer("sentencepiece", train_sentencepiece(text, vocab_size=70, model_type="unigram", character_coverage=1.0, byte_fallback=False))
    pieces = [words._sp.id_to_piece(i) for i in range(words.vocab_size)]
    assert any(ideographs(p) > 1 for p in pieces)  # without the option the trainer learns 曹操-like pieces

    model = train_sentencepiece(text, vocab_size=120, model_type="unigram", character_coverage=1.0, byte_fallback=False, cjk_characters=True)
    assert model == train_sentencepiece(text, vocab_size=120, model_type="unigram", character_coverage=1.0, byte_fallback=False, cjk_characters=True)
    chars = load_tokenizer("sentencepiece", model)
    pieces = [chars._sp.id_to_piece(i) for i in range(chars.vocab_size)]
    assert max(ideographs(p) for p in pieces) == 1
    assert not any(p.startswith("\u2581") and ideographs(p) for p in pieces)  # one id per character, wherever it stands
    sentence = "曹操曰吾欲取之。 The quick brown fox."
    ids = chars.encode([sentence])[0]
    assert [chars._sp.id_to_piece(i) for i in ids][:8] == ["\u2581", "曹", "操", "曰", "吾", "欲", "取", "之"]
    assert chars._sp.decode(ids) == sentence
    # Latin words still get multi-letter pieces: only ideographs are split.
    assert any(len(chars._sp.id_to_piece(i).strip("\u2581")) > 1 for i in chars.encode(["The quick brown fox."])[0])
