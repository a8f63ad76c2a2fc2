"""What qtool knows about model families: which token inputs a model takes and how a graph's
tokenizer is found. Everything else is read from the model's config or the graph."""

from __future__ import annotations

import inspect
from pathlib import Path

from qtool.errors import QtoolError
from qtool.graph import graph_metadata
from qtool.models.resolve import load_tokenizer

# What QNLI pairs are tokenized into; a model takes the ones its forward() accepts.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_input_names(model, tokenizer=None) -> tuple[str, ...]:
    """The token inputs a transformers `model` takes, by keyword, in its forward() order.

    `token_type_ids` only when the model has a segment table to read them with (RoBERTa's holds one
    row, DistilBERT and MPNet have none) and the tokenizer, when given, produces them.
    """
    accepted = list(inspect.signature(model.forward).parameters)
    names = [name for name in TOKEN_INPUTS if name in accepted]
    segments = getattr(model.config, "type_vocab_size", 0) or 0
    produced = getattr(tokenizer, "model_input_names", TOKEN_INPUTS) if tokenizer is not None else TOKEN_INPUTS
    if "token_type_ids" in names and (segments < 2 or "token_type_ids" not in produced):
        names.remove("token_type_ids")
    if "input_ids" not in names:
        raise QtoolError(f"{type(model).__name__}.forward takes no input_ids by keyword; qtool feeds BERT-family models")
    return tuple(sorted(names, key=accepted.index))



def tokenizer_for(model_path: Path, tokenizer_path: Path | None = None):
    """The tokenizer exported beside the graph, unless one is given explicitly."""
    if tokenizer_path is None:
        relative = graph_metadata(model_path).get("tokenizer")
        if relative is None:
            raise QtoolError(
                f"{model_path} was not exported by qtool, so no tokenizer folder is recorded in it; export the "
                "model with `qtool export` (eval also takes --tokenizer FOLDER)"
            )
        tokenizer_path = Path(model_path).parent / relative
    if not Path(tokenizer_path).is_dir():
        raise QtoolError(
            f"tokenizer folder {tokenizer_path} (recorded in {Path(model_path).name}) is missing; keep the exported "
            "tokenizer folder there, re-export the model, or pass --tokenizer FOLDER (qtool eval, qtool bench)"
        )
    return load_tokenizer(tokenizer_path)
