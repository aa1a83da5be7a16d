"""Pure Masked-LM masking (80% [MASK] / 10% random / 10% kept by default), shared by the pipeline's
static masks and the trainer loader's dynamic re-masking."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know beyond the tokens: probabilities and the tokenizer's ids."""

    masked_lm_prob: float
    max_predictions_per_seq: int
    mask_token_prob: float
    random_token_prob: float
    whole_word: bool
    mask_id: int
    vocab_size: int
    never_mask: frozenset[int]  # [CLS], [SEP], [PAD]: never predicted
    special_ids: frozenset[int]  # never drawn as a random replacement


@dataclasses.dataclass(frozen=True)
class Masked:
    """Chosen positions (ascending) and the id written at each in the model input."""

    positions: list[int]
    input_ids: list[int]


def _word_groups(tokens: Sequence[int], word_start: Sequence[bool], never_mask: frozenset[int]) -> list[list[int]]:
    """Positions grouped into words: a piece that does not start a word joins the word before it."""
    groups: list[list[int]] = []
    previous = -2
    for position, token in enumerate(tokens):
        if token in never_mask:
            continue
        if not word_start[position] and groups and previous == position - 1:
            groups[-1].append(position)
        else:
            groups.append([position])
        previous = position
    return groups


def mask_sequence(
    tokens: Sequence[int], rng: random.Random, spec: MaskingSpec, word_start: Sequence[bool] | None = None
) -> Masked:
    """Choose about masked_lm_prob of the tokens (whole words if spec.whole_word) and pick replacements.

    `word_start[i]` says token i begins a word; it is needed only for whole-word masking. Candidates are
    visited in a random order drawn lazily (a Fisher-Yates shuffle that stops once enough are chosen), so a
    sample costs draws for the tokens it masks, not for every token.
    """
    num_to_predict = min(spec.max_predictions_per_seq, max(1, int(round(len(tokens) * spec.masked_lm_prob))))
    whole_word = spec.whole_word and word_start is not None
    candidates: list = (
        _word_groups(tokens, word_start, spec.never_mask) if whole_word
        else [position for position, token in enumerate(tokens) if token not in spec.never_mask]
    )
    chosen: list[int] = []
    remaining = len(candidates)
    for i in range(remaining):
        if len(chosen) >= num_to_predict:
            break
        j = i + rng.randrange(remaining - i)
        candidates[i], candidates[j] = candidates[j], candidates[i]
        if not whole_word:
            chosen.append(candidates[i])
        elif len(chosen) + len(candidates[i]) <= num_to_predict:
            chosen.extend(candidates[i])
        # else: a whole word that would overshoot is skipped, as in Google's script
    chosen.sort()
    input_ids: list[int] = []
    mask_below = spec.mask_token_prob
    random_below = spec.mask_token_prob + spec.random_token_prob
    for position in chosen:
        draw = rng.random()
        if draw < mask_below:
            input_ids.append(spec.mask_id)
        elif draw < random_below:
            replacement = rng.randrange(spec.vocab_size)
            while replacement in spec.special_ids:
                replacement = rng.randrange(spec.vocab_size)
            input_ids.append(replacement)
        else:
            input_ids.append(tokens[position])
    return Masked(chosen, input_ids)
