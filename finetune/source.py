"""The model to fine-tune and the tokenizer that comes with it: a bertline step folder (the run's own tokenizer
copy and text normalization), a folder `bertline export` wrote (bertline_tokenizer.json says how), or any
HuggingFace BERT folder (its vocab.txt, cased or not by its tokenizer_config.json)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from bertline.errors import UserError
from pipeline.segment import normalize_line
from pipeline.tokenizer import Tokenizer, load_tokenizer
from trainer import checkpoint
from trainer.export import TOKENIZER_SETTINGS, save_tokenizer
from trainer.init_from import hf_lowercase


@dataclasses.dataclass
class TextTokenizer:
    """Text → ids exactly as the pretraining shards were made: the same clean-up (and NFKC), the same tokenizer."""

    tokenizer: Tokenizer
    settings: dict  # kind, file, lowercase, nfkc (bertline_tokenizer.json)
    file: Path

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode([normalize_line(text, self.settings.get("nfkc", False)) for text in texts])

    @property
    def special_ids(self) -> dict[str, int]:
        return self.tokenizer.special_ids

    def save(self, folder: Path, max_length: int) -> None:
        save_tokenizer(folder, self.file, self.settings, max_length)


def _tokenizer(file: Path, settings: dict) -> TextTokenizer:
    data = file.read_bytes()
    tokenizer = load_tokenizer(settings["kind"], data, settings.get("lowercase") is not False, source=f"tokenizer file {file}")
    return TextTokenizer(tokenizer, {**settings, "file": file.name, "sha256": hashlib.sha256(data).hexdigest()}, file)


def load(path: str | Path):
    """(encoder as a model.BertModel, TextTokenizer) from a step folder or a HuggingFace folder."""
    from model.hf import from_pretrained
    from trainer.export import load_step

    path = Path(path)
    if (path / checkpoint.MARKER).exists():
        trained = load_step(path)
        if trained.tokenizer_file is None or trained.tokenizer_settings is None:
            raise UserError(f"the run of {path} recorded no tokenizer; fine-tune an exported folder that has one")
        return trained.model.bert, _tokenizer(trained.tokenizer_file, trained.tokenizer_settings)
    if not (path / "config.json").exists():
        raise UserError(f"--model {path} is neither a complete bertline checkpoint (no {checkpoint.MARKER} marker) nor a "
                        f"HuggingFace BERT folder (no config.json); pass <run_dir>/checkpoints/stepNNNNNNNN or such a folder")
    if (path / TOKENIZER_SETTINGS).exists():
        settings = json.loads((path / TOKENIZER_SETTINGS).read_text())
        file = path / settings["file"]
    elif (path / "vocab.txt").exists():
        lowercase = hf_lowercase(path) is not False  # BertTokenizer is uncased unless its config says otherwise
        settings, file = {"kind": "wordpiece", "lowercase": lowercase, "nfkc": False}, path / "vocab.txt"
    else:
        raise UserError(f"--model {path} has no vocab.txt and no {TOKENIZER_SETTINGS}; bertline fine-tunes HuggingFace BERT "
                        f"folders with their WordPiece vocab.txt, or folders written by bertline export")
    if not file.exists():
        raise UserError(f"--model {path}: its {TOKENIZER_SETTINGS} names {file.name}, which is missing; copy the tokenizer file back")
    try:
        encoder = from_pretrained(path, with_heads=False)
    except ValueError as exc:
        raise UserError(f"--model {path}: {exc}") from None
    return encoder, _tokenizer(file, settings)
