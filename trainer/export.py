"""`bertline export <run>/checkpoints/<step> <out>`: a training checkpoint → a HuggingFace BERT folder."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from bertline.errors import UserError, run_command
from trainer import checkpoint


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A step folder's model with the tokenizer it was trained with (the run's own copy, checked)."""

    model: object  # BertForPreTraining
    tokenizer_file: Path | None
    tokenizer_sha256: str | None
    tokenizer_settings: dict | None = None  # bertline_tokenizer.json: how `bertline finetune` turns text into ids


def run_tokenizer(run_dir: Path, described: dict) -> tuple[Path | None, str | None]:
    """The tokenizer file recorded when the run started, checked against its recorded sha256.

    Runs keep a copy in <run_dir>/tokenizer/; older runs only name their shard folder, whose file is used
    if it still has the recorded hash."""
    name, sha256 = described.get("tokenizer_file"), described.get("tokenizer_sha256")
    candidates = [run_dir / "tokenizer" / name, Path(described["shards"]) / name] if name else []
    for path in candidates:
        if path.exists() and (sha256 is None or hashlib.sha256(path.read_bytes()).hexdigest() == sha256):
            return path, sha256
    if sha256 is not None:
        raise UserError(f"the tokenizer run {run_dir} was trained with ({name}, sha256 {sha256[:12]}) is neither in "
                        f"{run_dir / 'tokenizer'} nor unchanged in {described['shards']}; restore {run_dir / 'tokenizer' / name}")
    return None, None


def load_step(step_folder: Path) -> TrainedModel:
    """A step folder's gathered fp32 weights in a BertForPreTraining, with the run's tokenizer."""
    from model import BertForPreTraining
    from trainer import engine
    from trainer.init_from import run_description, run_model_config

    if not (step_folder / checkpoint.MARKER).exists():
        raise UserError(f"{step_folder} is not a complete checkpoint (no {checkpoint.MARKER} marker); pick a finished step")
    run_dir = step_folder.parent.parent
    described = run_description(step_folder, "step folder")
    tokenizer_file, tokenizer_sha256 = run_tokenizer(run_dir, described)
    model = BertForPreTraining(run_model_config(described))
    state = engine.consolidated_state_dict(str(step_folder.parent), step_folder.name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {step_folder} does not match its run's model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return TrainedModel(model, tokenizer_file, tokenizer_sha256, tokenizer_settings(described))


TOKENIZER_SETTINGS = "bertline_tokenizer.json"


def tokenizer_settings(described: dict) -> dict | None:
    """How text becomes ids for this run (kind, file, case, NFKC), for `bertline finetune` to tokenize as pretraining did.
    Runs that recorded no kind are told apart by the file's name."""
    name = described.get("tokenizer_file")
    if name is None:
        return None
    kind = described.get("tokenizer_kind") or ("wordpiece" if name.endswith(".txt") else "sentencepiece")
    lowercase = described.get("tokenizer_lowercase")
    return {"kind": kind, "file": name, "lowercase": (lowercase is not False) if kind == "wordpiece" else None,
            "nfkc": bool(described.get("tokenizer_nfkc", False)), "sha256": described.get("tokenizer_sha256")}


def save_tokenizer(folder: Path, file: Path, settings: dict, max_length: int) -> None:
    """The tokenizer beside a HuggingFace folder: its file, bertline_tokenizer.json (how `bertline finetune` turns
    text into ids) and, for a WordPiece vocab, the tokenizer_config.json that transformers' AutoTokenizer reads."""
    (folder / file.name).write_bytes(file.read_bytes())
    (folder / TOKENIZER_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    if settings["kind"] == "wordpiece":
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(settings["lowercase"]), "model_max_length": max_length},
            indent=2) + "\n")


def export(step_folder: Path, output: Path) -> Path:
    from model.hf import save_pretrained

    trained = load_step(step_folder)
    folder = save_pretrained(trained.model, output)
    if trained.tokenizer_file is not None:
        save_tokenizer(folder, trained.tokenizer_file, trained.tokenizer_settings, trained.model.config.max_position_embeddings)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bertline export", description="A training checkpoint → a HuggingFace BERT folder.")
    parser.add_argument("checkpoint", type=Path, help="<run_dir>/checkpoints/stepNNNNNNNN")
    parser.add_argument("output", type=Path, help="The folder to write config.json, model.safetensors and the tokenizer file into.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    def body() -> int:
        folder = export(args.checkpoint, args.output)
        print(f"exported {args.checkpoint} → {folder} (loads with transformers.BertForPreTraining.from_pretrained)")
        return 0

    return run_command("bertline export", body)

if __name__ == "__main__":
    sys.exit(main())
