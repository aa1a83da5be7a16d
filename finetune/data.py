"""Labelled files → padded batches for fine-tuning: reading JSON lines or CSV, label maps, encoding with
truncation, and the epoch order. Pure functions of their inputs (the tokenizer is passed in), no torch state."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from bertline.errors import UserError
from shardformat.rng import stable_hash

IGNORE_INDEX = -100  # model.IGNORE_INDEX: positions without a label
_INTEGER = re.compile(r"^-?\d+$")


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line (JSON lines) or record (CSV, after the header) in its file, for messages
    values: dict


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a .jsonl/.json (one object per line), .csv or .tsv file; one sentence for a bad or empty file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a JSON lines or CSV file")
    rows: list[Row] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = [Row(number, dict(record)) for number, record in enumerate(reader, start=2)]
    else:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path} line {number} is not JSON; write one JSON object per line (or pass a .csv)") from None
                if not isinstance(value, dict):
                    raise UserError(f"{path} line {number} is a JSON {type(value).__name__}, not an object with named fields")
                rows.append(Row(number, value))
    if not rows:
        raise UserError(f"{path} has no rows; pass a file with one labelled example per line")
    return rows


def field(row: Row, name: str, path: str | Path, flag: str):
    if name not in row.values or row.values[name] is None:
        raise UserError(f"{path} line {row.line} has no field {name!r} (it has {', '.join(map(repr, row.values)) or 'none'}); "
                        f"name the right one with {flag}")
    return row.values[name]


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Label names in id order. Integer labels keep their numeric order (0..K-1 stay as they are); other labels
    are sorted by name. One name, "score", means regression."""

    names: tuple[str, ...]

    @classmethod
    def from_values(cls, values: list) -> "LabelMap":
        distinct = {str(v) for v in values}
        if all(_INTEGER.match(v) for v in distinct):
            return cls(tuple(str(v) for v in sorted(int(v) for v in distinct)))
        return cls(tuple(sorted(distinct)))

    @property
    def regression(self) -> bool:
        return self.names == ("score",)

    def id(self, value, path: str | Path, line: int) -> int:
        name = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() else str(value)
        try:
            return self.names.index(name)
        except ValueError:
            raise UserError(f"{path} line {line} has label {value!r}, which the training file does not have (its labels: "
                            f"{', '.join(self.names[:20])}); fix the label or add examples of it to the training file") from None


REGRESSION = LabelMap(("score",))


@dataclasses.dataclass
class Encoded:
    """One file, encoded: per example its ids, token types and labels (one per example, or one per token)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: list  # int or float per example; an int array per example for token classification
    truncated: int = 0  # examples cut to max_length

    def __len__(self) -> int:
        return len(self.input_ids)


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Longest first, one token at a time (BERT's and transformers' rule for pairs)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def encode_classification(rows: list[Row], path: str | Path, encode: Callable[[list[str]], list[list[int]]], specials: dict,
                          labels: LabelMap, max_length: int, text_field: str, pair_field: str | None, label_field: str) -> Encoded:
    """[CLS] A [SEP] (B [SEP]) with token types 0/1, cut to max_length (longest segment first); labels mapped."""
    texts = [str(field(row, text_field, path, "--text-field")) for row in rows]
    pairs = [str(field(row, pair_field, path, "--text-pair-field")) for row in rows] if pair_field else None
    raw_labels = [field(row, label_field, path, "--label-field") for row in rows]
    first = encode(texts)
    second = encode(pairs) if pairs is not None else None
    out = Encoded([], [], [])
    cls, sep = specials["[CLS]"], specials["[SEP]"]
    for k, row in enumerate(rows):
        a, b = first[k], second[k] if second is not None else None
        budget = max_length - (3 if b is not None else 2)
        if len(a) + (len(b) if b is not None else 0) > budget:
            out.truncated += 1
            a, b = _truncate_pair(a, b, budget) if b is not None else (a[:budget], None)
        ids = [cls, *a, sep] + ([*b, sep] if b is not None else [])
        types = [0] * (len(a) + 2) + ([1] * (len(b) + 1) if b is not None else [])
        out.input_ids.append(np.asarray(ids, dtype=np.int64))
        out.token_type_ids.append(np.asarray(types, dtype=np.int64))
        if labels.regression:
            try:
                out.labels.append(float(raw_labels[k]))
            except (TypeError, ValueError):
                raise UserError(f"{path} line {row.line} has label {raw_labels[k]!r}, not a number, but the task is a "
                                f"regression (--num-labels 1)") from None
        else:
            out.labels.append(labels.id(raw_labels[k], path, row.line))
    return out


def encode_tokens(rows: list[Row], path: str | Path, encode: Callable[[list[str]], list[list[int]]], specials: dict,
                  labels: LabelMap, max_length: int, words_field: str, tags_field: str) -> Encoded:
    """Words tokenized one by one; each word's tag goes on its first piece, the other pieces are IGNORE_INDEX.
    Words past max_length are cut (the example counts as truncated and those words are not scored)."""
    out = Encoded([], [], [])
    cls, sep = specials["[CLS]"], specials["[SEP]"]
    for row in rows:
        words, tags = field(row, words_field, path, "--words-field"), field(row, tags_field, path, "--tags-field")
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
            raise UserError(f"{path} line {row.line}: {words_field!r} and {tags_field!r} must be lists of the same length "
                            f"(one tag per word); got {type(words).__name__} of {len(words) if isinstance(words, list) else '?'} "
                            f"and {type(tags).__name__} of {len(tags) if isinstance(tags, list) else '?'}")
        ids, targets = [cls], [IGNORE_INDEX]
        cut = False
        for pieces, tag in zip(encode([str(w) for w in words]) if words else [], tags):
            if len(ids) + len(pieces) > max_length - 1:
                cut = True
                break
            if pieces:  # a word that gives no piece (a lone space) has nothing to carry its tag
                ids += pieces
                targets += [labels.id(tag, path, row.line)] + [IGNORE_INDEX] * (len(pieces) - 1)
        ids.append(sep)
        targets.append(IGNORE_INDEX)
        out.truncated += cut
        out.input_ids.append(np.asarray(ids, dtype=np.int64))
        out.token_type_ids.append(np.zeros(len(ids), dtype=np.int64))
        out.labels.append(np.asarray(targets, dtype=np.int64))
    return out


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in one epoch: a permutation drawn from (seed, epoch), the same on every machine."""
    return np.random.default_rng(stable_hash(seed, "finetune", epoch) % 2**63).permutation(count)


def collate(data: Encoded, indices, pad_id: int, multiple: int = 8) -> dict[str, np.ndarray]:
    """Pad to the batch's longest example, rounded up to `multiple`."""
    length = max(len(data.input_ids[i]) for i in indices)
    length = -(-length // multiple) * multiple
    batch = len(indices)
    ids = np.full((batch, length), pad_id, dtype=np.int64)
    types = np.zeros((batch, length), dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    per_token = isinstance(data.labels[0], np.ndarray)
    labels = np.full((batch, length), IGNORE_INDEX, dtype=np.int64) if per_token else np.asarray([data.labels[i] for i in indices])
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n], types[row, :n], mask[row, :n] = data.input_ids[i], data.token_type_ids[i], 1
        if per_token:
            labels[row, :n] = data.labels[i]
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


def classification_figures(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes that occur in gold or predictions (scikit-learn's macro average)."""
    accuracy = float((predicted == gold).mean()) if len(gold) else 0.0
    scores = []
    for label in np.union1d(predicted, gold):
        tp = float(((predicted == label) & (gold == label)).sum())
        fp, fn = float(((predicted == label) & (gold != label)).sum()), float(((predicted != label) & (gold == label)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": accuracy, "macro_f1": float(np.mean(scores)) if scores else 0.0}


def regression_figures(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    mse = float(np.mean((predicted - gold) ** 2))
    pearson = float(np.corrcoef(predicted, gold)[0, 1]) if len(gold) > 1 and predicted.std() > 0 and gold.std() > 0 else 0.0
    return {"mse": mse, "pearson": pearson}
