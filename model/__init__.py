"""The BERT encoder and its heads, in plain PyTorch. Imports only torch (model.hf imports transformers and
safetensors lazily, inside its functions)."""

from model.bert import BertModel, EncoderOutput, encode_long
from model.config import PRESETS, BertConfig
from model.heads import (
    IGNORE_INDEX,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    ClassificationOutput,
    PreTrainingOutput,
)

__all__ = [
    "PRESETS", "BertConfig", "BertModel", "EncoderOutput", "encode_long", "IGNORE_INDEX", "BertForPreTraining",
    "BertForSequenceClassification", "BertForTokenClassification", "ClassificationOutput", "PreTrainingOutput",
]
