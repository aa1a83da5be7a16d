"""BERT model configuration and size presets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Literal

PRESETS: dict[str, dict[str, int]] = {
    # name: layers / hidden / heads (intermediate is 4 × hidden, as in BERT)
    "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2},
    "mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4},
    "small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12},
    "large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The encoder's shape and regularisation; field names follow HuggingFace's BertConfig."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    position_embedding_type: Literal["learned", "sinusoidal"] = "learned"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0  # None: no padding row (HF's pad_token_id null)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}; "
                f"pick sizes that divide"
            )
        if self.position_embedding_type not in ("learned", "sinusoidal"):
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r}; use 'learned' or 'sinusoidal'")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary of {self.vocab_size}")

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> "BertConfig":
        """A named size (tiny, mini, small, base, large) for a tokenizer's vocabulary."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = {**PRESETS[name], **overrides}
        values.setdefault("intermediate_size", 4 * values["hidden_size"])
        return cls(vocab_size=vocab_size, **values)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def training_flops_per_sequence(self, seq_length: int, predictions: int) -> float:
        """Model FLOPs of one training step (forward + backward) per sequence: 6 × encoder parameters per
        token, attention scores and context (12 · layers · seq · hidden per token), and the sparse MLM head
        at the predicted positions only. Embedding lookups, pooler and NSP are negligible and left out."""
        h, layers = self.hidden_size, self.num_hidden_layers
        encoder = layers * (4 * h * h + 2 * h * self.intermediate_size)
        per_token = 6 * encoder + 12 * layers * seq_length * h
        head = 6 * predictions * (h * h + h * self.vocab_size)
        return float(per_token * seq_length + head)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BertConfig keys {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    def fingerprint(self) -> str:
        """A stable hash of the fields that shape the weights, for checkpoints to refuse a different model.
        Dropout and initialisation are left out: changing them must not orphan a checkpoint."""
        shape = {k: v for k, v in self.to_dict().items()
                 if k not in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
