import hashlib
import random
from collections import Counter

import pytest

from shardformat.masking import MaskingSpec, mask_sequence
from pipeline.pairs import create_pairs, truncate_pair
from shardformat.rng import rng_for, stable_hash, unit_interval


def test_stable_hash_is_fixed_across_processes():
    # A literal: Python's salted hash() would change this between runs.
    assert stable_hash(12345, "doc", 0) == stable_hash(12345, "doc", 0)
    assert stable_hash(12345, "doc", 0) != stable_hash(12345, "doc", 1)
    assert stable_hash("a") == 3405396810240292928 == int.from_bytes(hashlib.blake2b(b"a", digest_size=8).digest(), "little")
    assert 0 <= unit_interval("x") < 1
    assert rng_for(1, "a").random() == rng_for(1, "a").random()


def _bucket(num_docs=6, sentences=12, length=9):
    counter = iter(range(10**6))
    return [[[next(counter) for _ in range(length)] for _ in range(sentences)] for _ in range(num_docs)]


PAIR_ARGS = dict(max_seq_length=32, short_seq_prob=0.1, random_next_prob=0.5)


def test_pairs_fit_the_length_and_actual_next_continues_the_document():
    bucket = _bucket()
    own = {t for s in bucket[2] for t in s}
    pairs = create_pairs(bucket, 2, random.Random(0), **PAIR_ARGS)
    assert pairs
    for pair in pairs:
        assert len(pair.tokens_a) + len(pair.tokens_b) <= 32 - 3
        assert pair.tokens_a and pair.tokens_b
        assert set(pair.tokens_a) <= own
        if pair.is_random_next:
            assert not set(pair.tokens_b) & own
        else:
            assert set(pair.tokens_b) <= own
            # B continues A: its first token follows A's last in the document (modulo truncation)
            assert min(pair.tokens_b) > max(pair.tokens_a) - 29


def test_random_next_rate_is_about_half():
    bucket = _bucket(num_docs=20, sentences=40)
    labels = [p.is_random_next for i in range(20) for p in create_pairs(bucket, i, random.Random(i), **PAIR_ARGS)]
    share = sum(labels) / len(labels)
    assert 0.4 < share < 0.6, share


def test_same_rng_same_pairs():
    bucket = _bucket()
    assert create_pairs(bucket, 1, rng_for(7, "d", 0), **PAIR_ARGS) == create_pairs(bucket, 1, rng_for(7, "d", 0), **PAIR_ARGS)


def test_a_single_sentence_document_gives_both_labels_and_keeps_its_text():
    bucket = _bucket(num_docs=8, sentences=12, length=9)
    bucket[0] = [list(range(5000, 5020))]  # one sentence of 20 tokens
    labels, own_in_a = [], set()
    for seed in range(400):
        for pair in create_pairs(bucket, 0, random.Random(seed), **PAIR_ARGS):
            labels.append(pair.is_random_next)
            own_in_a |= set(pair.tokens_a)
            if not pair.is_random_next:  # A and B are the sentence (or what is left of it) cut in two, in order
                joined = pair.tokens_a + pair.tokens_b
                assert joined == list(range(joined[0], joined[0] + len(joined))) and pair.tokens_a and pair.tokens_b
    assert 0.45 < sum(labels) / len(labels) < 0.55
    assert own_in_a == set(range(5000, 5019))  # every token but the last starts some segment A
    google = [p.is_random_next for seed in range(50)
              for p in create_pairs(bucket, 0, random.Random(seed), **{**PAIR_ARGS, "lone_sentences": "random_next"})]
    assert google and all(google)


def test_the_label_does_not_follow_document_length():
    """Short documents (Wikipedia leads) and long ones give random-next at the same rate."""
    draw = random.Random(5)
    counter = iter(range(10**7))
    bucket = [[[next(counter) for _ in range(draw.randint(4, 30))] for _ in range(draw.choice([1, 2, 3, 40]))] for _ in range(300)]
    by_length = {"short": [], "long": []}
    for index, document in enumerate(bucket):
        for pair in create_pairs(bucket, index, random.Random(index), **{**PAIR_ARGS, "max_seq_length": 128}):
            by_length["short" if len(document) <= 3 else "long"].append(pair.is_random_next)
    for labels in by_length.values():
        assert 0.45 < sum(labels) / len(labels) < 0.55, {k: sum(v) / len(v) for k, v in by_length.items()}


def test_long_sentences_are_cut_by_tokens_not_truncated_away():
    """Text without punctuation: one 600-token "sentence" per document. Cut into pieces of half the target,
    it keeps nearly all its tokens; as one segment it would lose most of them to truncation."""
    counter = iter(range(10**7))
    bucket = [[[next(counter) for _ in range(600)]] for _ in range(10)]
    kept = truncated = 0
    for index in range(10):
        for pair in create_pairs(bucket, index, random.Random(index), **{**PAIR_ARGS, "max_seq_length": 128}):
            kept += len(pair.tokens_a) + (0 if pair.is_random_next else len(pair.tokens_b))
            truncated += pair.truncated
    assert truncated < 0.1 * (kept + truncated) and kept > 0.8 * 6000


def test_lone_document_falls_back_to_actual_next():
    pairs = create_pairs(_bucket(num_docs=1), 0, random.Random(3), **{**PAIR_ARGS, "random_next_prob": 1.0})
    assert pairs and not any(p.is_random_next for p in pairs) and all(p.random_next_unavailable for p in pairs)


def test_truncate_pair_trims_the_longer_side():
    a, b = list(range(20)), list(range(5))
    assert truncate_pair(a, b, 12, random.Random(0)) == (13, 0)
    assert len(a) + len(b) == 12 and len(b) == 5


SPEC = MaskingSpec(
    masked_lm_prob=0.15, max_predictions_per_seq=20, mask_token_prob=0.8, random_token_prob=0.1,
    whole_word=False, mask_id=4, vocab_size=1000, never_mask=frozenset({0, 2, 3}), special_ids=frozenset({0, 1, 2, 3, 4}),
)


def test_mask_counts_and_never_masks_cls_sep():
    tokens = [2] + list(range(10, 110)) + [3] + list(range(200, 226)) + [3]
    masked = mask_sequence(tokens, random.Random(0), SPEC)
    assert len(masked.positions) == min(20, round(len(tokens) * 0.15))
    assert masked.positions == sorted(masked.positions)
    assert not {tokens[p] for p in masked.positions} & {2, 3}


def test_mask_ratio_is_80_10_10():
    outcomes = Counter()
    tokens = [2] + list(range(10, 130)) + [3]
    for seed in range(400):
        masked = mask_sequence(tokens, random.Random(seed), SPEC)
        for position, replacement in zip(masked.positions, masked.input_ids):
            outcomes["mask" if replacement == 4 else "kept" if replacement == tokens[position] else "random"] += 1
            assert replacement not in {0, 1, 2, 3} or replacement == 4
    total = sum(outcomes.values())
    assert abs(outcomes["mask"] / total - 0.8) < 0.02
    assert abs(outcomes["kept"] / total - 0.1) < 0.02
    assert abs(outcomes["random"] / total - 0.1) < 0.02


def test_whole_word_masking_takes_every_piece_of_a_word():
    # words: [10 11 12] [13] [14 15] ... built from starts flags
    tokens = [2] + list(range(10, 70)) + [3]
    starts = [True] + [(i % 3 == 0) for i in range(60)] + [True]
    spec = MaskingSpec(**{**SPEC.__dict__, "whole_word": True})
    for seed in range(50):
        chosen = set(mask_sequence(tokens, random.Random(seed), spec, starts).positions)
        for position in chosen:
            word_start = position
            while not starts[word_start]:
                word_start -= 1
            word = {word_start}
            nxt = word_start + 1
            while nxt < len(tokens) and not starts[nxt]:
                word.add(nxt)
                nxt += 1
            assert word <= chosen


@pytest.mark.parametrize("prob,expected", [(0.15, 9), (0.5, 20)])
def test_prediction_count_is_bounded(prob, expected):
    tokens = [2] + list(range(10, 70)) + [3]
    spec = MaskingSpec(**{**SPEC.__dict__, "masked_lm_prob": prob})
    assert len(mask_sequence(tokens, random.Random(1), spec).positions) == expected


def test_truncate_pair_matches_the_token_by_token_reference():
    def reference(a, b, limit, draw):
        while len(a) + len(b) > limit:
            longer = a if len(a) > len(b) else b
            if draw.random() < 0.5:
                del longer[0]
            else:
                longer.pop()

    for seed in range(200):
        source = random.Random(seed)
        a = list(range(source.randint(1, 80)))
        b = list(range(100, 100 + source.randint(1, 300)))
        limit = source.randint(2, 120)
        ours, theirs = (a[:], b[:]), (a[:], b[:])
        truncate_pair(*ours, limit, random.Random(seed))
        reference(*theirs, limit, random.Random(seed))
        assert ours == theirs


def test_held_out_split_depends_on_the_text_only():
    from shardformat.rng import is_held_out

    texts = [f"Document number {i} says something." for i in range(4000)]
    share = sum(is_held_out(1, t, 0.1) for t in texts) / len(texts)
    assert 0.08 < share < 0.12
    assert [is_held_out(1, t, 0.1) for t in texts] == [is_held_out(1, t, 0.1) for t in texts]
    assert not any(is_held_out(1, t, 0.0) for t in texts)
