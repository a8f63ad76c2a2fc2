"""Model resolution (embedded default, local folders, hub ids) and QNLI fine-tuning."""

from qtool.models.resolve import ModelSource, has_qnli_head, load_tokenizer, resolve_model

__all__ = ["ModelSource", "has_qnli_head", "load_tokenizer", "resolve_model"]
