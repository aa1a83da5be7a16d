"""bertline: pretrain BERT-style encoders.

This package holds what the pipeline, trainer and cluster halves share: the command-line entry point,
the user-error type and the YAML-plus-dotted-overrides config loader.
"""

__version__ = "0.1.0"
