"""The BERT encoder: embeddings, post-LN transformer layers with SDPA attention, pooler.

Numerics follow HuggingFace's BertModel (erf GELU, LayerNorm eps 1e-12, post-LN) so weights move both
ways; the structure does not: query, key and value are one fused projection (one matmul instead of three).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BertConfig


@dataclasses.dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (batch, seq, hidden)
    pooler_output: torch.Tensor  # (batch, hidden): tanh(dense([CLS]))


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    position = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.float()


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.register_buffer("sinusoidal", sinusoidal_table(config.max_position_embeddings, config.hidden_size), persistent=False)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_table(self) -> torch.Tensor:
        if hasattr(self, "position_embeddings"):
            return self.position_embeddings.weight
        return self.sinusoidal

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_table()[:seq].unsqueeze(0)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.layer_norm(embeddings))


class BertLayer(nn.Module):
    """Self-attention then feed-forward, each followed by dropout, residual and LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, width = hidden.shape
        # (batch, seq, 3, heads, head_dim) → three (batch, heads, seq, head_dim)
        query, key, value = self.qkv(hidden).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        context = context.transpose(1, 2).reshape(batch, seq, width)  # (batch, seq, hidden)
        hidden = self.attention_layer_norm(hidden + self.dropout(self.attention_output(context)))
        feed_forward = self.output(F.gelu(self.intermediate(hidden)))
        return self.output_layer_norm(hidden + self.dropout(feed_forward))


class BertModel(nn.Module):
    """Embeddings, `num_hidden_layers` BertLayers and the [CLS] pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # The value checks read tensors back to the host: free on CPU, a device sync per forward on a GPU (and a graph
    # break under torch.compile). Tensors on an accelerator are checked only with debug_checks; the trainer checks
    # its first batch on the host instead.
    debug_checks: bool = False

    def reads_values(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu" or self.debug_checks

    def check_inputs(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """One sentence per mistake, instead of an index error from deep inside torch."""
        config = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq); got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings={config.max_position_embeddings}; "
                f"truncate it or use model.encode_long"
            )
        for name, other in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
            if other is not None and other.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(other.shape)} but input_ids has {tuple(input_ids.shape)}; they must match")
        if torch.compiler.is_compiling() or not self.reads_values(input_ids):
            return
        if input_ids.numel():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= config.vocab_size:
                raise ValueError(
                    f"token id {high if high >= config.vocab_size else low} is outside the vocabulary of {config.vocab_size}; "
                    f"the tokenizer and the model config disagree"
                )
        if token_type_ids is not None and token_type_ids.numel():
            low, high = int(token_type_ids.min()), int(token_type_ids.max())
            if low < 0 or high >= config.type_vocab_size:
                raise ValueError(f"token_type_ids span {low}..{high} but type_vocab_size={config.type_vocab_size}")

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """input_ids, token_type_ids, attention_mask: (batch, seq); attention_mask is 1 for real tokens, 0 for padding."""
        self.check_inputs(input_ids, token_type_ids, attention_mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq): True where a key may be attended
        hidden = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return EncoderOutput(hidden, torch.tanh(self.pooler(hidden[:, 0])))


def encode_long(
    model: BertModel, input_ids: torch.Tensor, max_length: int | None = None, stride: int | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden states (length, hidden) for a 1-D id sequence longer than the model's positions.

    Windows of `max_length` start every `stride` tokens and run as one padded batch; each token takes its
    output from the window where it sits most centrally, so every token sees as much context on both
    sides as the windows allow.
    """
    max_length = max_length or model.config.max_position_embeddings
    stride = stride or max(1, max_length // 2)
    if input_ids.dim() != 1:
        raise ValueError(f"encode_long takes one sequence (length,); got shape {tuple(input_ids.shape)}")
    if not 0 < stride <= max_length <= model.config.max_position_embeddings:
        raise ValueError(
            f"need 0 < stride ({stride}) <= max_length ({max_length}) <= max_position_embeddings ({model.config.max_position_embeddings})"
        )
    if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
        raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids has {tuple(input_ids.shape)}")
    length = input_ids.shape[0]
    starts = [0]
    while starts[-1] + max_length < length:
        starts.append(starts[-1] + stride)
    # The last window ends at the sequence's end, so every window is full and "most central" is a fair
    # comparison (a short tail window would win tokens for which a full window has more context).
    starts[-1] = max(0, min(starts[-1], length - max_length))
    starts = sorted(set(starts))
    types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0  # masked out either way
    batch_ids = torch.full((len(starts), max_length), pad, dtype=input_ids.dtype, device=input_ids.device)
    batch_types = torch.zeros_like(batch_ids)
    mask = torch.zeros_like(batch_ids)
    for row, start in enumerate(starts):
        window = input_ids[start:start + max_length]
        batch_ids[row, : len(window)] = window
        batch_types[row, : len(window)] = types[start:start + max_length]
        mask[row, : len(window)] = 1
    hidden = model(batch_ids, batch_types, mask).last_hidden_state  # (windows, max_length, hidden)
    positions = torch.arange(length, device=input_ids.device)
    starts_t = torch.tensor(starts, device=input_ids.device)
    ends_t = torch.clamp(starts_t + max_length, max=length)
    inside = (positions[:, None] >= starts_t[None, :]) & (positions[:, None] < ends_t[None, :])  # (length, windows)
    centre = (starts_t + ends_t - 1).float() / 2
    distance = torch.where(inside, (positions[:, None].float() - centre[None, :]).abs(), torch.tensor(float("inf")))
    best = distance.argmin(dim=1)  # the window where each token is most central
    return hidden[best, positions - starts_t[best]]
