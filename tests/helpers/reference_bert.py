"""A NumPy float32 reference forward pass of BertForSequenceClassification with fake-quantization hooks.

Quantization points, in the order they are reached (L = layer index):

- ``embeddings.sum``, ``embeddings.output``
- per layer: ``layer.L.attention.{query,key,value,probs,context,output,residual_sum,layernorm}``,
  then ``layer.L.ffn.{intermediate,activation,output,residual_sum,layernorm}``
- ``pooler.input``, ``classifier.input``

A hooked tensor replaces the original for all of its consumers, except that with
``float_residuals`` the residual Adds read the LayerNorm outputs before their hooks (quantization on
the MatMul/Gemm edges only, scope ``gemm-inputs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

try:
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy is present in the dev venv
    _erf_scalar = np.vectorize(math.erf, otypes=[np.float64])

    def _erf(x: np.ndarray) -> np.ndarray:
        return _erf_scalar(np.asarray(x, dtype=np.float64))


Hook = Callable[[str, np.ndarray], np.ndarray]

F32 = np.float32


# The per-layer quantization point names, in graph order (`layer.N.` + each).
LAYER_POINTS = (
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.probs",
    "attention.context",
    "attention.output",
    "attention.residual_sum",
    "attention.layernorm",
    "ffn.intermediate",
    "ffn.activation",
    "ffn.output",
    "ffn.residual_sum",
    "ffn.layernorm",
)


def _identity(_name: str, x: np.ndarray) -> np.ndarray:
    return x


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch's default ``gelu``."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(F32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(F32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": lambda x: np.maximum(x, F32(0)),
}


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return (centered / np.sqrt(variance + F32(eps)) * weight + bias).astype(F32)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(F32)


def additive_attention_mask(attention_mask: np.ndarray) -> np.ndarray:
    """[batch, 1, 1, seq] float32: 0 where attended, float32 min where padded (transformers' eager mask)."""
    keep = np.asarray(attention_mask)[:, None, None, :].astype(F32)
    return ((F32(1) - keep) * np.finfo(F32).min).astype(F32)


def bert_forward(
    state: dict[str, np.ndarray],
    config,
    feeds: dict[str, np.ndarray],
    fake_quant: Hook | None = None,
    weight_quant: Hook | None = None,
    float_residuals: bool = False,
) -> np.ndarray:
    """Logits [batch, num_labels] of BertForSequenceClassification computed in NumPy float32.

    `state` is the model's state_dict as float32 arrays, `config` its BertConfig, `feeds` the int64
    input_ids / attention_mask / token_type_ids of shape [batch, seq]. `fake_quant(point, x)` is applied at
    each quantization point (see the module docstring); `weight_quant(param_name, W)` to each projection weight
    (torch layout [out, in]) and embedding table before use.
    """
    act_q = fake_quant or _identity
    weight_q = weight_quant or _identity

    def weight(name: str) -> np.ndarray:
        return np.asarray(weight_q(name, np.asarray(state[name], dtype=F32)), dtype=F32)

    def param(name: str) -> np.ndarray:
        return np.asarray(state[name], dtype=F32)

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return (x @ weight(f"{prefix}.weight").T + param(f"{prefix}.bias")).astype(F32)

    def point(name: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(act_q(name, x), dtype=F32)

    try:
        activation = ACTIVATIONS[config.hidden_act]
    except (KeyError, TypeError) as error:
        raise ValueError(f"unsupported hidden_act {config.hidden_act!r}") from error

    input_ids = np.asarray(feeds["input_ids"], dtype=np.int64)
    batch, seq = input_ids.shape
    token_type_ids = np.asarray(feeds.get("token_type_ids", np.zeros_like(input_ids)), dtype=np.int64)
    attention_mask = np.asarray(feeds.get("attention_mask", np.ones_like(input_ids)), dtype=np.int64)
    eps = float(config.layer_norm_eps)
    heads = int(config.num_attention_heads)
    hidden_size = int(config.hidden_size)
    head_dim = hidden_size // heads
    scaling = head_dim**-0.5

    emb = "bert.embeddings"
    summed = (
        weight(f"{emb}.word_embeddings.weight")[input_ids]
        + weight(f"{emb}.token_type_embeddings.weight")[token_type_ids]
        + weight(f"{emb}.position_embeddings.weight")[np.arange(seq)][None, :, :]
    )
    summed = point("embeddings.sum", summed.astype(F32))

    def normalized(name: str, x: np.ndarray, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """(what the next projections read, what the next residual Add reads)."""
        unhooked = _layer_norm(x, param(f"{prefix}.weight"), param(f"{prefix}.bias"), eps)
        hooked = point(name, unhooked)
        return hooked, unhooked if float_residuals else hooked

    hidden, residual = normalized("embeddings.output", summed, f"{emb}.LayerNorm")

    mask = additive_attention_mask(attention_mask)

    def split_heads(x: np.ndarray) -> np.ndarray:
        return x.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

    for layer in range(int(config.num_hidden_layers)):
        prefix = f"bert.encoder.layer.{layer}"
        name = f"layer.{layer}"

        query = point(f"{name}.attention.query", linear(hidden, f"{prefix}.attention.self.query"))
        key = point(f"{name}.attention.key", linear(hidden, f"{prefix}.attention.self.key"))
        value = point(f"{name}.attention.value", linear(hidden, f"{prefix}.attention.self.value"))

        scores = (split_heads(query) @ split_heads(key).transpose(0, 1, 3, 2)) * F32(scaling) + mask
        probs = point(f"{name}.attention.probs", _softmax(scores.astype(F32)))
        context = (probs @ split_heads(value)).transpose(0, 2, 1, 3).reshape(batch, seq, hidden_size)
        context = point(f"{name}.attention.context", context.astype(F32))

        attn_out = point(f"{name}.attention.output", linear(context, f"{prefix}.attention.output.dense"))
        attn_sum = point(f"{name}.attention.residual_sum", (attn_out + residual).astype(F32))
        attn_norm, attn_residual = normalized(
            f"{name}.attention.layernorm", attn_sum, f"{prefix}.attention.output.LayerNorm"
        )

        intermediate = point(f"{name}.ffn.intermediate", linear(attn_norm, f"{prefix}.intermediate.dense"))
        activated = point(f"{name}.ffn.activation", activation(intermediate))
        ffn_out = point(f"{name}.ffn.output", linear(activated, f"{prefix}.output.dense"))
        ffn_sum = point(f"{name}.ffn.residual_sum", (ffn_out + attn_residual).astype(F32))
        hidden, residual = normalized(f"{name}.ffn.layernorm", ffn_sum, f"{prefix}.output.LayerNorm")

    pooled_input = point("pooler.input", hidden[:, 0, :])
    pooled = point("classifier.input", np.tanh(linear(pooled_input, "bert.pooler.dense")).astype(F32))
    return linear(pooled, "classifier")
