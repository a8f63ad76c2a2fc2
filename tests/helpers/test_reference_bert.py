"""The NumPy reference BERT forward pass matches torch and exposes the documented quantization points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tests.helpers.reference_bert import LAYER_POINTS, bert_forward


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config).eval()
    assert model.config._attn_implementation == "eager"
    state = {name: tensor.detach().numpy().astype(np.float32) for name, tensor in model.state_dict().items()}
    return model, state


def make_feeds(batch: int, seq: int, lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids; row i attends to its first lengths[i] tokens; token types split each row in two."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, 100, size=(batch, seq), dtype=np.int64)
    attention_mask = np.zeros((batch, seq), dtype=np.int64)
    token_type_ids = np.zeros((batch, seq), dtype=np.int64)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 2 : length] = 1
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def torch_logits(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{name: torch.from_numpy(array) for name, array in feeds.items()}).logits.numpy()


@pytest.mark.parametrize(
    ("seq", "lengths"),
    [(5, [5, 3, 1]), (9, [9, 9]), (16, [16, 4, 11, 7]), (1, [1])],
)
def test_matches_torch_logits(tiny_model, seq, lengths):
    model, state = tiny_model
    feeds = make_feeds(len(lengths), seq, lengths, seed=seq)
    logits = bert_forward(state, model.config, feeds)
    assert logits.dtype == np.float32
    assert logits.shape == (len(lengths), 2)
    np.testing.assert_allclose(logits, torch_logits(model, feeds), atol=1e-4, rtol=0)


def test_hook_points_names_order_and_shapes(tiny_model):
    model, state = tiny_model
    batch, seq, hidden, heads, inner = 3, 6, 32, 4, 64
    feeds = make_feeds(batch, seq, [6, 2, 4])
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str, x: np.ndarray) -> np.ndarray:
        seen.append((name, x.shape))
        return x

    plain = bert_forward(state, model.config, feeds)
    hooked = bert_forward(state, model.config, feeds, fake_quant=record)
    np.testing.assert_array_equal(plain, hooked)

    per_layer_shapes = {
        "attention.probs": (batch, heads, seq, seq),
        "ffn.intermediate": (batch, seq, inner),
        "ffn.activation": (batch, seq, inner),
    }
    expected = [("embeddings.sum", (batch, seq, hidden)), ("embeddings.output", (batch, seq, hidden))]
    for layer in range(2):
        expected += [
            (f"layer.{layer}.{point}", per_layer_shapes.get(point, (batch, seq, hidden))) for point in LAYER_POINTS
        ]
    expected += [("pooler.input", (batch, hidden)), ("classifier.input", (batch, hidden))]
    assert seen == expected


def test_weight_quant_sees_projection_weights_and_embedding_tables(tiny_model):
    model, state = tiny_model
    feeds = make_feeds(2, 4, [4, 2])
    seen: list[str] = []

    def record(name: str, weight: np.ndarray) -> np.ndarray:
        assert weight.shape == state[name].shape
        seen.append(name)
        return weight

    bert_forward(state, model.config, feeds, weight_quant=record)
    expected = {name for name in state if name.endswith(".weight") and "LayerNorm" not in name}
    assert set(seen) == expected
    assert len(seen) == len(expected)

    halved = bert_forward(state, model.config, feeds, weight_quant=lambda _name, w: w * np.float32(0.5))
    assert not np.allclose(halved, bert_forward(state, model.config, feeds))


def test_single_point_hook_changes_output(tiny_model):
    model, state = tiny_model
    feeds = make_feeds(2, 5, [5, 3])

    def coarse_probs(name: str, x: np.ndarray) -> np.ndarray:
        return np.round(x * 4) / 4 if name == "layer.1.attention.probs" else x

    baseline = bert_forward(state, model.config, feeds)
    hooked = bert_forward(state, model.config, feeds, fake_quant=coarse_probs)
    assert np.abs(hooked - baseline).max() > 1e-6  # random-init logits are ~1e-3, so the change is small


@pytest.mark.parametrize(
    ("point", "module_path"),
    [
        ("embeddings.output", "bert.embeddings"),
        ("layer.0.attention.layernorm", "bert.encoder.layer.0.attention.output"),
    ],
)
def test_hooked_tensor_feeds_all_consumers(tiny_model, point, module_path):
    """Perturbing a point in NumPy equals replacing the same module output in torch (all consumers see it)."""
    model, state = tiny_model
    feeds = make_feeds(3, 7, [7, 5, 2])
    shift = np.linspace(-0.3, 0.3, 32, dtype=np.float32)

    def perturb(name: str, x: np.ndarray) -> np.ndarray:
        return x + shift if name == point else x

    handle = model.get_submodule(module_path).register_forward_hook(
        lambda _module, _inputs, output: output + torch.from_numpy(shift)
    )
    try:
        expected = torch_logits(model, feeds)
    finally:
        handle.remove()
    np.testing.assert_allclose(bert_forward(state, model.config, feeds, fake_quant=perturb), expected, atol=1e-4)
    assert not np.allclose(expected, torch_logits(model, feeds), atol=1e-4)
