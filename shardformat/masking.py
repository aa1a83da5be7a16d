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

    @classmethod
    def for_tokenizer(
        cls, special_ids: dict[str, int], vocab_size: int, *, masked_lm_prob: float, max_predictions_per_seq: int,
        mask_token_prob: float = 0.8, random_token_prob: float = 0.1, whole_word: bool = False,
    ) -> "MaskingSpec":
        """The spec for a tokenizer's special ids ("[PAD]", "[CLS]", "[SEP]", "[MASK]", … → id)."""
        return cls(
            masked_lm_prob=masked_lm_prob, max_predictions_per_seq=max_predictions_per_seq,
            mask_token_prob=mask_token_prob, random_token_prob=random_token_prob, whole_word=whole_word,
            mask_id=special_ids["[MASK]"], vocab_size=vocab_size,
            never_mask=frozenset((special_ids["[CLS]"], special_ids["[SEP]"], special_ids["[PAD]"])),
            special_ids=frozenset(special_ids.values()),
        )


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
    tokens: list[int], rng: random.Random, spec: MaskingSpec, word_start: Sequence[bool] | None = None
) -> Masked:
    """Choose about masked_lm_prob of the tokens (whole words if spec.whole_word) and pick replacements.

    `word_start[i]` says token i begins a word; it is needed only for whole-word masking. Draws use
    int(rng.random() * n), a C call, rather than randrange (a Python function several times slower); the
    bias of a 53-bit float scaled to n < 2**20 is below 1e-9. A sample costs draws for the tokens it
    masks, not for every token.
    """
    num_to_predict = min(spec.max_predictions_per_seq, max(1, int(round(len(tokens) * spec.masked_lm_prob))))
    draw = rng.random
    chosen: list[int]
    if spec.whole_word and word_start is not None:
        groups = _word_groups(tokens, word_start, spec.never_mask)
        chosen = []
        remaining = len(groups)
        for i in range(remaining):  # a Fisher-Yates shuffle that stops once enough are chosen
            if len(chosen) >= num_to_predict:
                break
            j = i + int(draw() * (remaining - i))
            groups[i], groups[j] = groups[j], groups[i]
            if len(chosen) + len(groups[i]) <= num_to_predict:
                chosen.extend(groups[i])
            # else: a whole word that would overshoot is skipped, as in Google's script
    else:
        n = len(tokens)
        never = spec.never_mask
        wanted = min(num_to_predict, n - sum(tokens.count(t) for t in never))
        chosen, seen = [], set()
        while len(chosen) < wanted:  # uniform positions without replacement, skipping special tokens
            position = int(draw() * n)
            if position in seen:
                continue
            seen.add(position)
            if tokens[position] not in never:
                chosen.append(position)
    chosen.sort()
    input_ids: list[int] = []
    mask_below = spec.mask_token_prob
    random_below = spec.mask_token_prob + spec.random_token_prob
    for position in chosen:
        value = draw()
        if value < mask_below:
            input_ids.append(spec.mask_id)
        elif value < random_below:
            replacement = int(draw() * spec.vocab_size)
            while replacement in spec.special_ids:
                replacement = int(draw() * spec.vocab_size)
            input_ids.append(replacement)
        else:
            input_ids.append(tokens[position])
    return Masked(chosen, input_ids)
