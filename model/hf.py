"""HuggingFace interop: our models ⇄ `transformers` BERT folders (config.json + model.safetensors).

`transformers` and `safetensors` are imported inside the functions that need them, so the rest of model/
depends on torch alone. Parameter names map one to one except our fused query/key/value projection,
which is split into HF's query, key and value on export and concatenated on import.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from model.bert import BertModel
from model.config import BertConfig
from model.heads import BertForPreTraining, BertForSequenceClassification, BertForTokenClassification

log = logging.getLogger("bertline.model")

_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.layer_norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.layer_norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_LAYER = {
    "attention_output": "attention.output.dense",
    "attention_layer_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_HEADS = {
    "mlm.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm.bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
}


def hf_config(config: BertConfig, architecture: str) -> dict:
    """config.json for transformers.BertConfig (sinusoidal tables are exported as learned embeddings)."""
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def config_from_hf(values: dict, source: str = "config.json") -> BertConfig:
    if values.get("model_type", "bert") != "bert":
        raise ValueError(f"{source} describes a {values.get('model_type')!r} model, not BERT")
    if values.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{source} uses hidden_act={values.get('hidden_act')!r}; bertline's encoder implements BERT's erf GELU only")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source} uses position_embedding_type={values.get('position_embedding_type')!r}; only absolute positions are supported")
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
             "layer_norm_eps", "initializer_range")
    config = {name: values[name] for name in names if values.get(name) is not None}
    if values.get("tie_word_embeddings") is False:
        raise ValueError(f"{source} unties the MLM decoder from the word embeddings; bertline's head is always tied")
    return BertConfig(**config, pad_token_id=values.get("pad_token_id", 0))


def to_hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our parameters under HuggingFace names: BertForPreTraining, BertModel, BertForSequenceClassification or
    BertForTokenClassification (which, as in transformers, has no pooler)."""
    heads = (BertForPreTraining, BertForSequenceClassification, BertForTokenClassification)
    if not isinstance(model, (*heads, BertModel)):
        raise TypeError(f"HuggingFace export takes a BERT model or one of its heads, not {type(model).__name__}")
    bert = model.bert if isinstance(model, heads) else model
    prefix = "bert." if isinstance(model, heads) else ""
    ours = bert.state_dict()
    out: dict[str, torch.Tensor] = {}
    for mine, theirs in _EMBEDDINGS.items():
        if mine.startswith("pooler.") and isinstance(model, BertForTokenClassification):
            continue
        if mine == "embeddings.position_embeddings.weight":
            out[prefix + theirs] = bert.embeddings.position_table().detach().clone()
        else:
            out[prefix + theirs] = ours[mine].detach().clone()
    for i in range(bert.config.num_hidden_layers):
        query, key, value = ours[f"layers.{i}.qkv.weight"].chunk(3)
        query_bias, key_bias, value_bias = ours[f"layers.{i}.qkv.bias"].chunk(3)
        base = f"{prefix}encoder.layer.{i}."
        for name, weight, bias in (("query", query, query_bias), ("key", key, key_bias), ("value", value, value_bias)):
            out[f"{base}attention.self.{name}.weight"] = weight.detach().clone()
            out[f"{base}attention.self.{name}.bias"] = bias.detach().clone()
        for mine, theirs in _LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{base}{theirs}.{kind}"] = ours[f"layers.{i}.{mine}.{kind}"].detach().clone()
    if isinstance(model, BertForPreTraining):
        heads = model.state_dict()
        for mine, theirs in _HEADS.items():
            out[theirs] = heads[mine].detach().clone()
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"].clone()
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    if isinstance(model, (BertForSequenceClassification, BertForTokenClassification)):
        out["classifier.weight"] = model.classifier.weight.detach().clone()
        out["classifier.bias"] = model.classifier.bias.detach().clone()
    return out


def _strip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder tensors without the 'bert.' prefix, head tensors) from an HF state dict of either kind.

    Google's original checkpoints name LayerNorm parameters gamma and beta; transformers renames them on
    load, and so does this."""
    encoder, heads = {}, {}
    for name, tensor in state.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        if name.startswith("cls."):
            heads[name] = tensor
        elif name.startswith("bert."):
            encoder[name[len("bert."):]] = tensor
        else:
            encoder[name] = tensor
    return encoder, heads


def _copy(target: torch.Tensor, source: torch.Tensor, name: str, origin: str) -> None:
    if target.shape != source.shape:
        raise ValueError(
            f"{origin}: {name} has shape {tuple(source.shape)} but the model config needs {tuple(target.shape)}; "
            f"the checkpoint and the config describe different models"
        )
    with torch.no_grad():
        target.copy_(source)


def load_hf_state_dict(model: BertForPreTraining | BertModel, state: dict[str, torch.Tensor], origin: str = "checkpoint") -> list[str]:
    """Copy HF-named tensors into our model; returns the names of our parameters left as initialised
    (a missing pooler or missing heads). Tensors the model has no place for are logged, not dropped silently."""
    encoder, heads = _strip(state)
    bert = model.bert if isinstance(model, BertForPreTraining) else model
    ours = dict(bert.named_parameters())
    used: set[str] = set()
    fresh: list[str] = []

    def take(theirs: str, mine: str, required: bool = True) -> None:
        if theirs not in encoder:
            if required:
                raise ValueError(f"{origin} lacks {theirs}; it is not a BERT checkpoint bertline can read")
            fresh.append(mine)
            return
        _copy(ours[mine], encoder[theirs], theirs, origin)
        used.add(theirs)

    for mine, theirs in _EMBEDDINGS.items():
        if mine == "embeddings.position_embeddings.weight" and bert.config.position_embedding_type == "sinusoidal":
            continue  # the table is computed; a stored one is reported as unused below
        # BertForMaskedLM and BertForTokenClassification checkpoints have no pooler.
        take(theirs, mine, required=not mine.startswith("pooler."))
    layers = bert.config.num_hidden_layers
    for i in range(layers):
        base = f"encoder.layer.{i}."
        if f"{base}attention.self.query.weight" not in encoder:
            raise ValueError(f"{origin} has {i} layers but num_hidden_layers={layers}; the config does not match")
        for kind in ("weight", "bias"):
            names = [f"{base}attention.self.{n}.{kind}" for n in ("query", "key", "value")]
            missing = [name for name in names if name not in encoder]
            if missing:
                raise ValueError(f"{origin} lacks {missing[0]}; it is not a BERT checkpoint bertline can read")
            _copy(ours[f"layers.{i}.qkv.{kind}"], torch.cat([encoder[name] for name in names]), f"{base}attention.self.*.{kind}", origin)
            used.update(names)
            for mine, theirs in _LAYER.items():
                take(f"{base}{theirs}.{kind}", f"layers.{i}.{mine}.{kind}")
    if f"encoder.layer.{layers}.attention.self.query.weight" in encoder:
        raise ValueError(f"{origin} has more layers than num_hidden_layers={layers}; the config does not match")
    if isinstance(model, BertForPreTraining):
        params = dict(model.named_parameters())
        for mine, theirs in _HEADS.items():
            if theirs in heads:
                _copy(params[mine], heads[theirs], theirs, origin)
                used.add(theirs)
            else:
                fresh.append(mine)
        decoder = heads.get("cls.predictions.decoder.weight")
        if decoder is not None and not torch.equal(decoder, encoder["embeddings.word_embeddings.weight"]):
            raise ValueError(f"{origin} has an MLM decoder that differs from its word embeddings; bertline's head is always tied")
        used.update(name for name in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias") if name in heads)
    unused = sorted(set(encoder) - used - {"embeddings.position_ids"} | (set(heads) - used))
    if unused and not isinstance(model, BertForPreTraining) and all(name.startswith(("cls.", "classifier.")) for name in unused):
        # An encoder taken from a pretraining or fine-tuned folder: leaving its heads behind is the point.
        log.info("%s: its heads are not part of an encoder and were left out: %s", origin, ", ".join(unused[:8]))
    elif unused:
        log.warning("%s: %d tensors have no place in this model and were not loaded: %s", origin, len(unused), ", ".join(unused[:8]))
    return fresh


def save_pretrained(model, folder: str | Path, tokenizer_files: tuple[str | Path, ...] = (),
                    tokenizer_config: dict | None = None, labels: list[str] | None = None) -> Path:
    """Write config.json, model.safetensors, the tokenizer files and, when given, tokenizer_config.json (a WordPiece
    vocab.txt needs it to say cased or uncased), so transformers loads the folder. A fine-tuned head's `labels`
    (names in id order) become the config's id2label / label2id; one label means regression, as in transformers."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = hf_config(model.config, type(model).__name__)
    if isinstance(model, (BertForSequenceClassification, BertForTokenClassification)):
        names = labels if labels is not None else [f"LABEL_{i}" for i in range(model.classifier.out_features)]
        values.update(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
        if isinstance(model, BertForSequenceClassification):
            values["problem_type"] = "regression" if len(names) == 1 else "single_label_classification"
    (folder / "config.json").write_text(json.dumps(values, indent=2) + "\n")
    state = {name: tensor.contiguous() for name, tensor in to_hf_state_dict(model).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for path in tokenizer_files:
        shutil.copy(path, folder / Path(path).name)
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return folder


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF folder: one safetensors or torch file, or the shards an index.json lists."""
    from safetensors.torch import load_file

    def load(path: Path) -> dict[str, torch.Tensor]:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)

    for name in WEIGHT_FILES:
        path = folder / name
        if not path.exists():
            continue
        if not name.endswith(".index.json"):
            return load(path)
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            state.update(load(folder / shard))
        return state
    raise ValueError(f"{folder} has none of {', '.join(WEIGHT_FILES)}; pass a HuggingFace BERT folder with its weights")


def from_pretrained(folder: str | Path, with_heads: bool = True) -> BertForPreTraining | BertModel:
    """Our model from an HF BERT folder. With heads: a BertForPreTraining; heads missing from the folder
    (a BertModel checkpoint) are freshly initialised and reported in the log."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ValueError(f"{folder} has no config.json; pass a HuggingFace BERT folder")
    config = config_from_hf(json.loads(config_path.read_text()), str(config_path))
    model: BertForPreTraining | BertModel = BertForPreTraining(config) if with_heads else BertModel(config)
    fresh = load_hf_state_dict(model, read_state(folder), str(folder))
    if fresh:
        log.warning("%s lacks some weights; initialised fresh: %s", folder, ", ".join(fresh))
    return model
