"""`bertline export <run>/checkpoints/<step> <out>`: a training checkpoint → a HuggingFace BERT folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertline.errors import UserError, run_command
from trainer import checkpoint


def load_step(step_folder: Path):
    """(BertForPreTraining with the step's gathered fp32 weights, the run's shard folder, its tokenizer file name)."""
    from model import BertConfig, BertForPreTraining
    from trainer import engine

    if not (step_folder / checkpoint.MARKER).exists():
        raise UserError(f"{step_folder} is not a complete checkpoint (no {checkpoint.MARKER} marker); pick a finished step")
    described = json.loads((step_folder.parent.parent / "model_config.json").read_text())
    shards, tokenizer_file = Path(described.pop("shards")), described.pop("tokenizer_file")
    model = BertForPreTraining(BertConfig.from_dict(described))
    state = engine.consolidated_state_dict(str(step_folder.parent), step_folder.name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {step_folder} does not match its run's model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, shards, tokenizer_file


def export(step_folder: Path, output: Path) -> Path:
    from model.hf import save_pretrained

    model, shards, tokenizer_file = load_step(step_folder)
    files = [shards / tokenizer_file] if (shards / tokenizer_file).exists() else []
    return save_pretrained(model, output, tokenizer_files=tuple(files))


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
