"""Pure text clean-up and sentence splitting, for space-separated scripts and for Chinese/Japanese."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters (tab, newline and carriage return become spaces via _SPACES), NUL included,
# and the byte-order mark wherever a concatenation left it.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SPACES = re.compile(r"\s+")

# A candidate sentence end: terminators, then closing quotes/brackets, then the following whitespace.
_END = re.compile(r"([。！？!?]+|\.{1,3}|…+)([\"'”’」』）)\]》〉]*)(\s*)")
_CJK_TERMINATORS = frozenset("。！？")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\uff00]")
# "etc." is left out: before a capital it ends a sentence far more often than not ("…, etc. The next").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs e.g i.e inc ltd co corp gen col lt sgt capt rev hon mt ft "
    "jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m".split()
)
# Abbreviations only before a number: "No. 5", "vol. 2", but "said no. It" ends a sentence.
_NUMBER_ABBREVIATIONS = frozenset("no nos vol vols fig figs pp art sec ch".split())
_WORD_BEFORE = re.compile(r"([\w.]+)$")


def normalize_line(line: str, nfkc: bool = False) -> str:
    """Drop control characters and BOMs, optionally NFKC, fold whitespace runs to one space, strip."""
    line = _CONTROL.sub(" ", line)
    if nfkc:
        line = unicodedata.normalize("NFKC", line)
    return _SPACES.sub(" ", line).strip()


def _is_abbreviation(text: str, dot_index: int, following: str) -> bool:
    # Look back a bounded window only: scanning from 0 would make long paragraphs quadratic.
    match = _WORD_BEFORE.search(text, max(0, dot_index - 16), dot_index)
    if not match:
        return False
    word = match.group(1).lower().rstrip(".")
    if word in _NUMBER_ABBREVIATIONS:
        return following.isdigit()
    # One capital letter before a dot is an initial ("J. R. R. Tolkien"), not a sentence end.
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _chunks(sentence: str, max_chars: int) -> list[str]:
    """Cut an over-long sentence at the last space of each window (or hard), in linear time."""
    out: list[str] = []
    start = 0
    while len(sentence) - start > max_chars:
        window_end = start + max_chars
        cut = sentence.rfind(" ", start + max_chars // 2, window_end)
        end = cut if cut != -1 else window_end
        out.append(sentence[start:end].strip())
        start = end
    tail = sentence[start:].strip()
    if tail:
        out.append(tail)
    return [chunk for chunk in out if chunk]


def split_sentences(text: str, max_chars: int = 2000) -> list[str]:
    """Split a normalized paragraph into sentences; each is at most `max_chars` characters.

    CJK terminators (。！？) end a sentence with or without a following space; Latin ones (. ! ? …) only
    before whitespace and a character that is not lower-case, and not after a known abbreviation or initial.
    """
    sentences: list[str] = []
    start = 0
    for match in _END.finditer(text):
        terminator, _, space = match.groups()
        boundary = match.end(2)
        following = text[match.end():match.end() + 1]
        if terminator[0] in _CJK_TERMINATORS or (terminator[0] == "…" and _CJK.match(following)):
            pass  # CJK text needs no space after a terminator; "……" before a CJK character ends a sentence too
        elif not space and following:
            continue  # "3.14", "e.g.x", "Hello!World": no break without whitespace
        elif following and following.islower():
            continue
        elif terminator == "." and _is_abbreviation(text, match.start(1), following):
            continue
        sentence = text[start:boundary].strip()
        if sentence:
            sentences.extend(_chunks(sentence, max_chars))
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.extend(_chunks(tail, max_chars))
    return sentences
