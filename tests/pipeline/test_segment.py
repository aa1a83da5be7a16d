import time

from pipeline.segment import normalize_line, split_sentences


def test_normalize_removes_bom_nul_controls_and_folds_space():
    assert normalize_line("\ufeffHello\x00 wo\x07rld\r\n\t again ") == "Hello wo rld again"


def test_nfkc_is_optional():
    assert normalize_line("ｆｕｌｌ　ｗｉｄｔｈ") == "ｆｕｌｌ ｗｉｄｔｈ"
    assert normalize_line("ｆｕｌｌ　ｗｉｄｔｈ", nfkc=True) == "full width"


def test_english_sentences_respect_abbreviations_initials_and_decimals():
    text = 'Mr. Smith paid $3.50 at 5 p.m. today! Did he? "Yes," she said. J. R. R. Tolkien wrote it.'
    assert split_sentences(text) == [
        "Mr. Smith paid $3.50 at 5 p.m. today!",
        "Did he?",
        '"Yes," she said.',
        "J. R. R. Tolkien wrote it.",
    ]


def test_closing_quotes_stay_with_their_sentence():
    assert split_sentences('He said "go." Then he left.') == ['He said "go."', "Then he left."]


def test_chinese_splits_without_spaces_and_keeps_closing_brackets():
    assert split_sentences("曹操曰：「吾欲取之。」玄德大惊！众人皆笑？然后去了") == [
        "曹操曰：「吾欲取之。」", "玄德大惊！", "众人皆笑？", "然后去了",
    ]


def test_japanese_splits_on_full_stop():
    assert split_sentences("今日は晴れです。明日は雨でしょう。") == ["今日は晴れです。", "明日は雨でしょう。"]


def test_long_line_without_punctuation_is_chunked_at_spaces():
    chunks = split_sentences("word " * 1000, max_chars=100)
    assert all(len(chunk) <= 100 for chunk in chunks)
    assert " ".join(chunks).split() == ["word"] * 1000


def test_long_line_without_spaces_is_cut_hard():
    chunks = split_sentences("字" * 1050, max_chars=100)
    assert [len(c) for c in chunks] == [100] * 10 + [50]


def test_splitting_is_linear_on_a_huge_unpunctuated_line():
    small, large = "abc " * 50_000, "abc " * 500_000
    started = time.perf_counter()
    split_sentences(small, 2000)
    small_time = time.perf_counter() - started
    started = time.perf_counter()
    chunks = split_sentences(large, 2000)
    large_time = time.perf_counter() - started
    assert sum(len(c) for c in chunks) >= 1_999_000 - len(chunks)
    # 10× the input must not cost anywhere near 100× (quadratic); generous for a noisy machine.
    assert large_time < 40 * max(small_time, 1e-3)


def test_sentence_ends_the_splitter_used_to_miss():
    assert split_sentences("They sold apples, pears, etc. The market closed.") == [
        "They sold apples, pears, etc.", "The market closed."]
    assert split_sentences("He said no. It was over. See No. 5 and vol. 2 here.") == [
        "He said no.", "It was over.", "See No. 5 and vol. 2 here."]
    assert split_sentences("他走了……我哭了。") == ["他走了……", "我哭了。"]
