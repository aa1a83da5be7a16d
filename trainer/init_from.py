"""`model.init_from`: start a run from trained weights — a step folder of a bertline run (two-phase
pretraining) or a HuggingFace BERT folder (domain adaptation of a released model).

Only weights travel. The optimizer state, LR schedule, loader position and step count start fresh, the
architecture is the source's (the config's preset gives way), and the shards must be tokenized with the
source's own tokenizer file, checked by sha256 before anything trains. A learned position table is extended
by repeating it (Longformer's recipe) when model.max_position_embeddings asks for more positions; a shorter
table is refused, because cutting a trained table is rarely what was meant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from bertline.errors import UserError
from model import BertConfig, BertForPreTraining
from trainer import checkpoint

log = logging.getLogger("bertline.trainer")

POSITIONS_OURS = "bert.embeddings.position_embeddings.weight"
POSITIONS_HF = "embeddings.position_embeddings.weight"  # with or without the "bert." prefix
# model_config.json keys that describe the run rather than the encoder
RUN_KEYS = ("shards", "tokenizer_file", "tokenizer_sha256", "tokenizer_kind", "tokenizer_lowercase", "tokenizer_nfkc", "init_from")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the weights come from, what they are, and which tokenizer file they were trained with."""

    path: Path
    kind: str  # "run" (a bertline step folder) or "huggingface"
    config: BertConfig
    tokenizer_file: Path | None  # the run's tokenizer copy, or the HF folder's vocab.txt
    tokenizer_sha256: str | None
    tokenizer_kind: str | None  # "sentencepiece" | "wordpiece"
    lowercase: bool | None  # WordPiece: uncased (True) or cased (False), when the source says

    def describe(self) -> str:
        c = self.config
        return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, intermediate "
                f"{c.intermediate_size}, vocabulary {c.vocab_size}, {c.max_position_embeddings} {c.position_embedding_type} positions")


def run_model_config(described: dict) -> BertConfig:
    """The encoder config a run recorded in <run_dir>/model_config.json."""
    return BertConfig.from_dict({k: v for k, v in described.items() if k not in RUN_KEYS})


def run_description(step_folder: Path, what: str) -> dict:
    """The <run_dir>/model_config.json a checkpoint's run recorded; one sentence when the step folder was moved out of
    its run (the weights alone do not say the model's shape or its tokenizer)."""
    described_path = step_folder.parent.parent / "model_config.json"
    if not described_path.exists():
        raise UserError(f"{what} {step_folder} is a checkpoint but {described_path} is missing; pass a step folder "
                        f"inside a bertline run folder (<run_dir>/checkpoints/stepNNNNNNNN)")
    return json.loads(described_path.read_text())


def open_source(path: str | Path) -> Source:
    """A step folder (it has the COMPLETE marker) or a HuggingFace BERT folder (config.json + weights)."""
    from model.hf import WEIGHT_FILES, config_from_hf
    from trainer.export import run_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model.init_from {path} does not exist; pass <run_dir>/checkpoints/stepNNNNNNNN of a bertline run "
                        f"or a HuggingFace BERT folder (config.json and model.safetensors or pytorch_model.bin)")
    if (path / checkpoint.MARKER).exists():
        described = run_description(path, "model.init_from")
        tokenizer_file, sha256 = run_tokenizer(path.parent.parent, described)
        return Source(path, "run", run_model_config(described), tokenizer_file, sha256,
                      described.get("tokenizer_kind"), described.get("tokenizer_lowercase"))
    if (path / "config.json").exists():
        if not any((path / name).exists() for name in WEIGHT_FILES):
            raise UserError(f"model.init_from {path} has a config.json but no model.safetensors or pytorch_model.bin (nor a "
                            f"sharded index of them); pass a HuggingFace folder with its PyTorch weights")
        try:
            config = config_from_hf(json.loads((path / "config.json").read_text()), str(path / "config.json"))
        except ValueError as exc:
            raise UserError(f"model.init_from {path} is not a BERT bertline can continue: {exc}") from None
        vocab = path / "vocab.txt"
        if not vocab.exists():
            raise UserError(f"model.init_from {path} has no vocab.txt; bertline continues BERT models with their WordPiece "
                            f"vocab.txt (save it with the model's tokenizer: tokenizer.save_pretrained('{path}'))")
        return Source(path, "huggingface", config, vocab, hashlib.sha256(vocab.read_bytes()).hexdigest(), "wordpiece",
                      hf_lowercase(path))
    raise UserError(f"model.init_from {path} is neither a complete bertline checkpoint (no {checkpoint.MARKER} marker) nor a "
                    f"HuggingFace BERT folder (no config.json); pass <run_dir>/checkpoints/stepNNNNNNNN or such a folder")


def hf_lowercase(folder: Path) -> bool | None:
    """do_lower_case from tokenizer_config.json (BertTokenizer's default is True when the key is absent)."""
    settings = folder / "tokenizer_config.json"
    if not settings.exists():
        return None
    return bool(json.loads(settings.read_text()).get("do_lower_case", True))


def check_vocabulary(source: Source, shards_folder: str | Path, shards_tokenizer: dict) -> None:
    """The shards must be tokenized with the source's tokenizer file (and case setting): one sentence otherwise,
    with the prepare command that makes such shards."""
    same_file = source.tokenizer_sha256 is None or source.tokenizer_sha256 == shards_tokenizer["sha256"]
    same_case = (source.lowercase is None or shards_tokenizer.get("kind") != "wordpiece"
                 or shards_tokenizer.get("lowercase") is None or shards_tokenizer["lowercase"] == source.lowercase)
    if same_file and same_case and shards_tokenizer["vocab_size"] <= source.config.vocab_size:
        if source.kind == "huggingface" and source.lowercase is None:
            log.warning("model.init_from %s has no tokenizer_config.json, so its case setting cannot be checked: the shards were "
                        "prepared with tokenizer.lowercase %s; make sure the model is %s", source.path,
                        shards_tokenizer.get("lowercase"), "uncased" if shards_tokenizer.get("lowercase") else "cased")
        return
    theirs = f"{shards_folder}/{shards_tokenizer['file']} ({shards_tokenizer['kind']}, sha256 {shards_tokenizer['sha256'][:12]}"
    theirs += f", lowercase {shards_tokenizer['lowercase']})" if shards_tokenizer.get("lowercase") is not None else ")"
    mine = f"{source.tokenizer_file} (sha256 {(source.tokenizer_sha256 or '')[:12]}"
    mine += f", lowercase {source.lowercase})" if source.lowercase is not None else ")"
    if not same_file:
        what = f"the shards were tokenized with {theirs} but model.init_from {source.path} was trained with {mine}"
    elif not same_case:
        what = (f"the shards were tokenized with lowercase {shards_tokenizer['lowercase']} but model.init_from {source.path} "
                f"is {'uncased' if source.lowercase else 'cased'} (its tokenizer_config.json)")
    else:
        what = (f"the shards' vocabulary has {shards_tokenizer['vocab_size']} entries but model.init_from {source.path} has "
                f"{source.config.vocab_size} embedding rows")
    raise UserError(f"{what}; prepare the shards with its tokenizer: {prepare_command(source)}")


def prepare_command(source: Source) -> str:
    """The `bertline prepare` flags that tokenize a corpus the way `source` was trained."""
    if source.tokenizer_kind == "wordpiece" or source.kind == "huggingface":
        case = "" if source.lowercase is None else f" --tokenizer.lowercase {str(source.lowercase).lower()}"
        return f"bertline prepare --input CORPUS --output SHARDS --tokenizer.kind wordpiece --tokenizer.path {source.tokenizer_file}{case}"
    return f"bertline prepare --input CORPUS --output SHARDS --tokenizer.kind sentencepiece --tokenizer.path {source.tokenizer_file}"


def model_config(source: Source, section) -> BertConfig:
    """The source's architecture with this run's dropout; positions as many as model.max_position_embeddings asks
    (default: the source's), never fewer than the source has."""
    wanted = section.max_position_embeddings
    have = source.config.max_position_embeddings
    if wanted is not None and wanted < have:
        raise UserError(f"model.max_position_embeddings={wanted} is below the {have} positions of model.init_from {source.path}; "
                        f"a trained position table is not cut: remove the key (it then defaults to {have}) or set it to {have} or more")
    if section.position_embedding_type != source.config.position_embedding_type and "position_embedding_type" in section.model_fields_set:
        log.info("model.position_embedding_type=%s gives way to model.init_from's %s positions", section.position_embedding_type,
                 source.config.position_embedding_type)
    log.info("model.init_from %s (%s): the architecture comes from it (%s); model.preset=%s is not used", source.path, source.kind,
             source.describe(), section.preset)
    values = {**source.config.to_dict(), "max_position_embeddings": wanted or have,
              "hidden_dropout_prob": section.hidden_dropout_prob, "attention_probs_dropout_prob": section.attention_probs_dropout_prob}
    return BertConfig(**values)


def check_positions(max_seq_length: int, config: BertConfig, from_source: bool) -> None:
    """The model must take the shards' longest sequence (trainer and `bertline submit` alike)."""
    if max_seq_length > config.max_position_embeddings:
        raise UserError(
            f"the shards hold sequences of {max_seq_length} tokens but the model takes {config.max_position_embeddings} positions; "
            f"set model.max_position_embeddings to {max_seq_length} or more"
            + (" (model.init_from's learned table is then extended by repeating it)" if from_source else "")
        )


def extend_positions(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A learned position table repeated to `rows` rows (Longformer's initialisation: row i is row i mod n),
    so every new position starts from a trained embedding instead of noise."""
    repeats = -(-rows // table.shape[0])
    return table.repeat(repeats, 1)[:rows].clone()


def load_weights(source: Source, model: BertForPreTraining) -> None:
    """Copy the source's weights into `model` (built with model_config(source, …)); heads the source lacks keep
    their fresh (seeded) initialisation and are logged."""
    from model.hf import load_hf_state_dict, read_state
    from trainer import engine

    config = model.config
    if source.kind == "run":
        state = engine.consolidated_state_dict(str(source.path.parent), source.path.name)
        positions = POSITIONS_OURS
    else:
        state = read_state(source.path)
        positions = next((name for name in (f"bert.{POSITIONS_HF}", POSITIONS_HF) if name in state), None)
    if config.position_embedding_type == "learned" and positions in state and state[positions].shape[0] < config.max_position_embeddings:
        log.info("model.init_from %s: position table extended from %d to %d rows by repeating it", source.path,
                 state[positions].shape[0], config.max_position_embeddings)
        state[positions] = extend_positions(state[positions], config.max_position_embeddings)
    elif config.position_embedding_type == "sinusoidal" and source.config.max_position_embeddings != config.max_position_embeddings:
        log.info("model.init_from %s: sinusoidal positions regenerated for %d positions", source.path, config.max_position_embeddings)
    if source.kind == "run":
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"model.init_from {source.path} does not hold the model its run's model_config.json describes "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); pass another step folder")
        return
    try:
        fresh = load_hf_state_dict(model, state, str(source.path))
    except ValueError as exc:
        raise UserError(f"model.init_from {source.path}: {exc}") from None
    if fresh:
        heads = sorted({name.split(".")[0] for name in fresh})  # mlm, nsp, pooler
        log.warning("model.init_from %s has no weights for %s (%d tensors: %s); they start from a fresh initialisation",
                    source.path, ", ".join(heads), len(fresh), ", ".join(fresh[:6]))
