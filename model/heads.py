"""Heads on the encoder: pretraining (sparse masked-LM + next sentence), sequence and token classification."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from model.bert import BertModel
from model.config import BertConfig

IGNORE_INDEX = -100  # label of a padding slot in masked_lm_labels and token-classification labels


@dataclasses.dataclass
class PreTrainingOutput:
    mlm_logits: torch.Tensor  # (batch, predictions, vocab): only at masked_lm_positions
    nsp_logits: torch.Tensor  # (batch, 2)
    loss: torch.Tensor | None = None  # mlm_loss + nsp_loss
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    mlm_accuracy: torch.Tensor | None = None  # share of labelled slots predicted right
    nsp_accuracy: torch.Tensor | None = None


@dataclasses.dataclass
class ClassificationOutput:
    logits: torch.Tensor  # (batch, labels) or (batch, seq, labels)
    loss: torch.Tensor | None = None


class MaskedLMHead(nn.Module):
    """dense → GELU → LayerNorm → projection onto the (tied) word embeddings plus an output bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads. The vocabulary projection runs only at the masked
    positions (gathered first), which is where almost all of a dense head's compute would go to waste."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.mlm.apply(self.bert._init_weights)
        self.bert._init_weights(self.nsp)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
        masked_lm_labels: torch.Tensor | None = None,
        next_sentence_labels: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """masked_lm_positions, masked_lm_labels: (batch, predictions), labels IGNORE_INDEX in padding slots;
        next_sentence_labels: (batch,), 1 where segment B is random. Without positions, every position is
        projected (dense head)."""
        encoded = self.bert(input_ids, token_type_ids, attention_mask)
        hidden = encoded.last_hidden_state  # (batch, seq, hidden)
        if masked_lm_positions is None:
            gathered = hidden
        else:
            if masked_lm_positions.dim() != 2 or masked_lm_positions.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"masked_lm_positions must be (batch, predictions) with batch {input_ids.shape[0]}; "
                    f"got {tuple(masked_lm_positions.shape)}"
                )
            if masked_lm_positions.numel() and not torch.compiler.is_compiling() and self.bert.reads_values(masked_lm_positions):
                low, high = int(masked_lm_positions.min()), int(masked_lm_positions.max())
                if low < 0 or high >= input_ids.shape[1]:
                    raise ValueError(f"masked_lm_positions span {low}..{high} in sequences of {input_ids.shape[1]}")
            index = masked_lm_positions.long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            gathered = torch.gather(hidden, 1, index)  # (batch, predictions, hidden)
        mlm_logits = self.mlm(gathered, self.bert.embeddings.word_embeddings.weight)
        nsp_logits = self.nsp(encoded.pooler_output)
        output = PreTrainingOutput(mlm_logits, nsp_logits)
        if masked_lm_labels is not None:
            if masked_lm_labels.shape != mlm_logits.shape[:2]:
                raise ValueError(f"masked_lm_labels has shape {tuple(masked_lm_labels.shape)}, expected {tuple(mlm_logits.shape[:2])}")
            labels = masked_lm_labels.long()
            output.mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
            valid = labels != IGNORE_INDEX
            correct = (mlm_logits.argmax(-1) == labels) & valid
            output.mlm_accuracy = correct.sum() / valid.sum().clamp(min=1)
        if next_sentence_labels is not None:
            output.nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_labels.long())
            output.nsp_accuracy = (nsp_logits.argmax(-1) == next_sentence_labels).float().mean()
        losses = [loss for loss in (output.mlm_loss, output.nsp_loss) if loss is not None]
        if losses:
            output.loss = sum(losses)
        return output


class _FineTuningHead(nn.Module):
    """An encoder (new, or shared with another head) → dropout → linear classifier."""

    def __init__(self, config: BertConfig, num_labels: int, bert: BertModel | None = None):
        super().__init__()
        self.config = config
        self.bert = bert if bert is not None else BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.bert._init_weights(self.classifier)


class BertForSequenceClassification(_FineTuningHead):
    """Pooled [CLS] → dropout → linear: one label per sequence (or one score, with num_labels=1)."""

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> ClassificationOutput:
        """With num_labels == 1 the head is a regression (mean squared error), as in HuggingFace."""
        logits = self.classifier(self.dropout(self.bert(input_ids, token_type_ids, attention_mask).pooler_output))
        loss = None
        if labels is not None and logits.shape[-1] == 1:
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        elif labels is not None:
            loss = F.cross_entropy(logits.float(), labels.long())
        return ClassificationOutput(logits, loss)


class BertForTokenClassification(_FineTuningHead):
    """Each token's hidden state → dropout → linear: one label per token (IGNORE_INDEX where none)."""

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> ClassificationOutput:
        logits = self.classifier(self.dropout(self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.long().flatten(), ignore_index=IGNORE_INDEX)
        return ClassificationOutput(logits, loss)
