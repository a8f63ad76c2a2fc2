"""qtool: post-training INT8 quantization of BERT-family classifiers, measured end to end."""

__version__ = "0.1.0"
