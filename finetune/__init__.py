"""`bertline finetune`: a pretrained encoder + a labelled file → a fine-tuned HuggingFace folder and its metrics."""
