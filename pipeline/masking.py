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


def _word_groups(tokens: Sequence[int], word_start: Sequence[bool] | None, spec: MaskingSpec) -> list[list[int]]:
    groups: list[list[int]] = []
    for position, token in enumerate(tokens):
        if token in spec.never_mask:
            continue
        continues_word = (
            spec.whole_word and word_start is not None and not word_start[position]
            and groups and groups[-1][-1] == position - 1
        )
        if continues_word:
            groups[-1].append(position)
        else:
            groups.append([position])
    return groups


def mask_sequence(
    tokens: Sequence[int], rng: random.Random, spec: MaskingSpec, word_start: Sequence[bool] | None = None
) -> Masked:
    """Choose about masked_lm_prob of the tokens (whole words if spec.whole_word) and pick replacements.

    `word_start[i]` says token i begins a word; it is needed only for whole-word masking.
    """
    groups = _word_groups(tokens, word_start, spec)
    num_to_predict = min(spec.max_predictions_per_seq, max(1, int(round(len(tokens) * spec.masked_lm_prob))))
    rng.shuffle(groups)
    chosen: list[int] = []
    for group in groups:
        if len(chosen) >= num_to_predict:
            break
        if len(chosen) + len(group) > num_to_predict:
            continue  # a whole word that would overshoot is skipped, as in Google's script
        chosen.extend(group)
    chosen.sort()
    input_ids: list[int] = []
    for position in chosen:
        draw = rng.random()
        if draw < spec.mask_token_prob:
            input_ids.append(spec.mask_id)
        elif draw < spec.mask_token_prob + spec.random_token_prob:
            replacement = rng.randrange(spec.vocab_size)
            while replacement in spec.special_ids:
                replacement = rng.randrange(spec.vocab_size)
            input_ids.append(replacement)
        else:
            input_ids.append(tokens[position])
    return Masked(chosen, input_ids)
