"""Pure sentence-pair creation for Next Sentence Prediction, after Google's create_pretraining_data.py.

A document is a sequence of sentences, each a list of token ids (any object with len() and indexing that
returns lists will do, so a bucket can keep its documents as compact arrays and convert on access). The differences from Google's script are
deliberate: the short target length is drawn per sample (Google draws it once per document), random-next
segments come from the document's bucket rather than the whole corpus, and a bucket with no other
document falls back to an actual-next pair instead of pairing a document with itself.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

Sentence = Sequence[int]


@dataclasses.dataclass(frozen=True)
class Pair:
    """Segment A and segment B of one sample, and whether B is a random segment (the NSP label 1)."""

    tokens_a: list[int]
    tokens_b: list[int]
    is_random_next: bool


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, from the front or the back at random, until both fit (in place).

    One draw per removed token, as in Google's script; the removals are counted first and applied as
    slices, so a long random segment costs no repeated list shifting.
    """
    length_a, length_b = len(tokens_a), len(tokens_b)
    front_a = back_a = front_b = back_b = 0
    draw = rng.random
    while length_a + length_b > max_num_tokens:
        if length_a > length_b:
            if draw() < 0.5:
                front_a += 1
            else:
                back_a += 1
            length_a -= 1
        else:
            if draw() < 0.5:
                front_b += 1
            else:
                back_b += 1
            length_b -= 1
    if front_a or back_a:
        tokens_a[:] = tokens_a[front_a:len(tokens_a) - back_a]
    if front_b or back_b:
        tokens_b[:] = tokens_b[front_b:len(tokens_b) - back_b]


def _random_segment(
    bucket: Sequence[Sequence[Sentence]], document_index: int, target_length: int, rng: random.Random
) -> list[int] | None:
    """Sentences from a random other document of the bucket, from a random start, up to target_length."""
    others = len(bucket) - 1
    if others < 1:
        return None
    pick = rng.randrange(others)
    other = bucket[pick if pick < document_index else pick + 1]
    if not other:
        return None
    tokens: list[int] = []
    for index in range(rng.randrange(len(other)), len(other)):  # indexed: a lazy document converts only these
        tokens.extend(other[index])
        if len(tokens) >= target_length:
            break
    return tokens


def create_pairs(
    bucket: Sequence[Sequence[Sentence]],
    document_index: int,
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    allow_single_sentence: bool,
) -> list[Pair]:
    """All pairs one pass over bucket[document_index] yields, drawing every choice from `rng`."""
    document = [s for s in bucket[document_index] if len(s) > 0]
    if len(document) < 2 and not allow_single_sentence:
        return []
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]

    def draw_target() -> int:
        return rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens

    pairs: list[Pair] = []
    chunk: list[Sentence] = []
    chunk_length = 0
    target_length = draw_target()
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_length:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for s in chunk[:a_end] for t in s]
            tokens_b: list[int] | None = None
            is_random_next = len(chunk) == 1 or rng.random() < random_next_prob
            if is_random_next:
                tokens_b = _random_segment(bucket, document_index, target_length - len(tokens_a), rng)
                if tokens_b is not None:
                    i -= len(chunk) - a_end  # unused sentences of the chunk start the next sample
            if tokens_b is None or not is_random_next:
                is_random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
            if tokens_a and tokens_b:
                pairs.append(Pair(tokens_a, tokens_b, is_random_next))
            chunk, chunk_length = [], 0
            target_length = draw_target()
        i += 1
    return pairs
