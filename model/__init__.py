"""The BERT encoder and its heads, in plain PyTorch (built in issue #3). Imports only torch."""
