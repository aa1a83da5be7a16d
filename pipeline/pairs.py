"""Pure sentence-pair creation for Next Sentence Prediction, after Google's create_pretraining_data.py.

A document is a sequence of sentences, each a list of token ids (any object with len() and indexing that
returns lists will do, so a bucket can keep its documents as compact arrays and convert on access). The
differences from Google's script are deliberate:

- **The label does not follow document length.** Google makes every chunk of a single sentence random-next
  (it cannot split it), so short documents give mostly random-next pairs: 0.62 on Wikipedia leads. Here the
  label is decided first, for every chunk; a chunk of one sentence is cut at a random token boundary, so its
  first part is segment A and, for an actual-next pair, the rest is segment B. Random-next pairs cut the same
  way and put the rest back, so neither label costs text. A bucket's labels are kept at random_next_prob
  by `NspBalance`, so a split's random-next share is on target to within a sample or so per bucket, even on
  a corpus of a few documents, where independent coins would miss it by ±0.05.
- **Cut by tokens, never truncated away**: sentences fill a chunk up to its target length and the sentence
  that crosses it (a long one, or text without punctuation) is cut there, its rest starting the next chunk.
  Google's script instead truncates the overflow, which loses most of an unpunctuated text. A random
  segment B is taken to exactly the length that fills the sample. `Pair.truncated` counts own tokens a
  truncation would still remove (none by construction; it is kept as a check).
- The short target length is drawn per sample (Google draws it once per document); random-next segments come
  from the document's bucket rather than the whole corpus; a bucket with no other document falls back to an
  actual-next pair (`Pair.random_next_unavailable`) instead of pairing a document with itself.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Sequence

Sentence = Sequence[int]


@dataclasses.dataclass(frozen=True)
class Pair:
    """Segment A and segment B of one sample, and whether B is a random segment (the NSP label 1).

    `truncated`: tokens of this document's own text removed to fit (A's, and B's when B is the actual next);
    `random_next_unavailable`: a random B was drawn but the bucket held no other document to take it from."""

    tokens_a: list[int]
    tokens_b: list[int]
    is_random_next: bool
    truncated: int = 0
    random_next_unavailable: bool = False


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> tuple[int, int]:
    """Trim the longer segment, from the front or the back at random, until both fit (in place); returns the
    tokens removed from A and from B.

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
    return front_a + back_a, front_b + back_b


def _random_segment(
    bucket: Sequence[Sequence[Sentence]], document_index: int, target_length: int, rng: random.Random
) -> list[int] | None:
    """target_length tokens (or fewer, at the other document's end) from a random other document of the bucket,
    starting at a random sentence."""
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
    return tokens[:max(1, target_length)]


def create_pairs(
    bucket: Sequence[Sequence[Sentence]],
    document_index: int,
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    random_next_prob: float,
    lone_sentences: str = "split",
    balance: NspBalance | None = None,
) -> list[Pair]:
    """All pairs one pass over bucket[document_index] yields, drawing every choice from `rng`.

    Sentences fill a chunk up to its target length; the sentence that crosses the target is cut there and its
    rest starts the next chunk, so a chunk never overflows and nothing of the document is truncated away.
    `lone_sentences`: "split" (a chunk of one sentence is cut at a token boundary and takes either label) or
    "random_next" (Google's rule: such a chunk always gets a random B). `balance`: the bucket's NspBalance,
    shared by every pass over every document of a bucket (a fresh one, for this pass alone, by default).
    """
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    pending = collections.deque(s for s in bucket[document_index] if len(s) > 0)
    pairs: list[Pair] = []
    balance = balance if balance is not None else NspBalance(random_next_prob)
    fresh = True  # does the next chunk start with text no random-next pair handed back?
    while pending:
        target = rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens
        chunk: list[Sentence] = []
        length = 0
        while pending and length < target:
            chunk.append(pending.popleft())
            length += len(chunk[-1])
        if length > target:  # cut the crossing sentence at the target; its rest starts the next chunk
            last = chunk[-1]
            keep = len(last) - (length - target)
            chunk[-1] = last[:keep]
            pending.appendleft(last[keep:])
        pair, unused = _pair_from_chunk(bucket, document_index, chunk, target, max_num_tokens, balance, fresh, lone_sentences, rng)
        pending.extendleft(reversed(unused))
        fresh = not unused
        if pair is not None and pair.tokens_a and pair.tokens_b:
            pairs.append(pair)
    return pairs


class NspBalance:
    """Keeps a bucket's random-next share at random_next_prob: stateful across the documents and passes of one
    bucket (processed in a fixed order, so the result is deterministic).

    A chunk that starts fresh is random-next with probability p·(n+1) − r clipped to [0, 1] (n decisions and r
    random-next so far): a fair coin while the share is on target, a correction when it is not, so the share
    stays within about one sample of p. That depends only on counts, never on the chunk. A chunk that starts
    with text a random-next pair handed back gets a plain coin instead: tying its label to the correction
    would make "A starts where the last pair's A ended" a cue. Independent coins everywhere would leave the
    share at p only to within sampling noise, ±0.07 on a corpus of 50 samples. `correct=False` is that: plain
    coins, as in Google's script."""

    def __init__(self, random_next_prob: float, correct: bool = True):
        self.random_next_prob, self.correct, self.decisions, self.random = random_next_prob, correct, 0, 0

    def decide(self, rng: random.Random, fresh: bool) -> bool:
        p = self.random_next_prob
        chance = min(1.0, max(0.0, p * (self.decisions + 1) - self.random)) if fresh and self.correct else p
        return rng.random() < chance

    def record(self, is_random_next: bool) -> None:
        self.decisions += 1
        self.random += int(is_random_next)


def _pair_from_chunk(bucket, document_index, chunk, target, max_num_tokens, balance, fresh, lone_sentences, rng):
    """(the pair a chunk gives or None, the chunk's unused text to hand back: a random-next pair uses only
    segment A of the chunk, and the rest starts the next chunk, so neither label costs text)."""
    lone = len(chunk) == 1
    if lone and lone_sentences == "split" and len(chunk[0]) < 2:
        return None, []  # one token cannot be cut; decided before any draw, so no label is favoured
    forced_random = lone and lone_sentences == "random_next"
    is_random_next = forced_random or balance.decide(rng, fresh)
    if not lone:
        a_end = rng.randint(1, len(chunk) - 1)
        tokens_a = [t for s in chunk[:a_end] for t in s]
        rest = list(chunk[a_end:])
    elif forced_random:
        tokens_a, rest = list(chunk[0]), []
    else:  # a lone sentence is cut at a random token boundary: A before, the rest after
        cut = rng.randint(1, len(chunk[0]) - 1)
        tokens_a, rest = list(chunk[0][:cut]), [chunk[0][cut:]]
    unavailable, unused = False, []
    tokens_b = _random_segment(bucket, document_index, target - len(tokens_a), rng) if is_random_next else None
    if is_random_next and tokens_b is None:
        unavailable, is_random_next = True, False
    elif is_random_next:
        unused = rest
    if not is_random_next:
        tokens_b = [t for s in rest for t in s]
    balance.record(is_random_next)
    cut_a, cut_b = truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)  # a no-op unless a segment overflows
    return Pair(tokens_a, tokens_b, is_random_next, cut_a + (0 if is_random_next else cut_b), unavailable), unused
