"""Model resolution (embedded default, local folders, hub ids) and fine-tuning."""

from qtool.models.resolve import ModelSource, is_classifier, load_tokenizer, resolve_model

__all__ = ["ModelSource", "is_classifier", "load_tokenizer", "resolve_model"]
