"""Sliding-window attention for the byte Transformer (``model.attention_window``): the mask, the
model, its FLOPs, its KV cache, its config checks and its place in the compare plan."""

from __future__ import annotations

import math

import pytest
import torch

from data_prep.vocab import ByteVocab
from pretrain.comparison.matching import (
    MATCH_TOLERANCE,
    SIZES,
    match_transformer,
    megabyte_model,
    plan_models,
    window_size,
)
from pretrain.config import ConfigError, load_config
from pretrain.model import build_model, flops_per_byte, flops_per_token, layers
from pretrain.model.layers import Attention, window_mask
from tests.conftest import tiny_model_config
from tests.test_generation import check_cache

VOCAB = ByteVocab()


def make(**kw) -> torch.nn.Module:
    cfg = tiny_model_config("transformer", **kw)
    return build_model(cfg, VOCAB.vocab_size, VOCAB.pad_id, VOCAB.bos_id).eval()


def loop_attention(attn: Attention, x: torch.Tensor, window: int) -> torch.Tensor:
    """Brute force: every query i, every head, softmax over keys j with i - window < j <= i."""
    N, L, D = x.shape
    hd = attn.head_dim
    qkv = attn.qkv(x).view(N, L, -1, 3, hd)  # (N, L, H, 3, hd)
    out = torch.zeros(N, L, qkv.shape[2], hd, dtype=torch.float64)
    for n in range(N):
        for h in range(qkv.shape[2]):
            for i in range(L):
                js = [j for j in range(L) if i - window < j <= i]
                q = qkv[n, i, h, 0].double()
                scores = torch.stack([q @ qkv[n, j, h, 1].double() for j in js]) / math.sqrt(hd)
                w = torch.softmax(scores, 0)
                out[n, i, h] = sum(w[a] * qkv[n, j, h, 2].double() for a, j in enumerate(js))
    return attn.proj(out.reshape(N, L, -1).to(x.dtype))


@pytest.mark.parametrize("window", [1, 2, 5, 11])
def test_window_attention_equals_an_explicit_loop(window):
    torch.manual_seed(0)
    attn = Attention(16, 2, 0.0, window=window).eval()
    x = torch.randn(2, 11, 16)
    y, _ = attn(x)
    assert torch.allclose(y, loop_attention(attn, x, window), atol=1e-5)


@pytest.mark.parametrize("N,H,L,W", [(2, 2, 11, 2), (2, 3, 100, 16), (1, 4, 96, 32),
                                     (2, 2, 70, 20), (1, 2, 33, 1), (2, 2, 40, 20)])
def test_banded_window_attention_equals_the_masked_window(N, H, L, W, monkeypatch):
    """Block by block (only the keys of each block's own and previous window) gives the outputs
    and gradients of the full attention under the window mask, whole blocks or not; the layer
    takes that path whenever the sequence spans three windows (below, the mask is faster)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(N, H, L, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    banded = layers.banded_window_attention(q, k, v, W, 0.0)
    masked = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=window_mask(L, L, W, q.device))
    g = torch.randn_like(masked)
    for a, b in zip(torch.autograd.grad(banded, (q, k, v), g),
                    torch.autograd.grad(masked, (q, k, v), g)):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(banded, masked, atol=1e-12)
    calls = []
    monkeypatch.setattr(layers, "banded_window_attention",
                        lambda *a: calls.append(a[3]) or masked.transpose(1, 2).float())
    Attention(H * 8, H, 0.0, window=W)(torch.randn(N, L, H * 8))
    assert calls == ([W] if L >= 3 * W else [])


def test_window_mask_is_exactly_the_window():
    m = window_mask(3, 7, 3, torch.device("cpu"))  # queries are positions 4, 5, 6
    expect = torch.tensor([[0, 0, 1, 1, 1, 0, 0],
                           [0, 0, 0, 1, 1, 1, 0],
                           [0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expect)
    assert window_mask(3, 7, 3, torch.device("cpu")) is m  # built once per shape


@pytest.mark.parametrize("window", [64, 100])
def test_window_covering_the_context_is_full_attention_exactly(window):
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 64))
    full, win = make(), make(attention_window=window)
    assert torch.equal(full(ids), win(ids))


def test_a_small_window_changes_the_logits_only_past_the_window():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 40))
    full, win = make()(ids), make(attention_window=6)(ids)
    # Positions < W see the same keys (to rounding: the windowed model computes its first block
    # as a causal attention of W positions, the full model over all 40).
    assert torch.allclose(full[:, :6], win[:, :6], atol=1e-5)
    assert (full[:, 6:] - win[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("t", [0, 5, 17])
def test_receptive_field_is_layers_times_window(t):
    """Byte t is the input of position t + 1; through 2 layers of window 4 it reaches positions
    t + 1 .. t + 1 + 2 * 3 and no further."""
    torch.manual_seed(0)
    model = make(attention_window=4)
    ids = torch.randint(0, 256, (2, 40))
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    a, b = model(ids), model(changed)
    reach = t + 1 + 2 * 3
    assert (a[:, reach] - b[:, reach]).abs().max() > 1e-4
    assert torch.allclose(a[:, reach + 1:], b[:, reach + 1:], atol=1e-6, rtol=0)
    assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6, rtol=0)


def test_flops_count_the_window():
    cfg = tiny_model_config("transformer", attention_window=10)
    D, L, T = cfg.global_model.dim, cfg.global_model.layers, cfg.seq_len
    hand = L * 2 * (12 * D * D + 2 * D * 10) + 2 * D * 256
    assert flops_per_token(cfg) == hand
    assert flops_per_byte(cfg, training=True) == 3 * hand
    full = L * 2 * (12 * D * D + 2 * D * T) + 2 * D * 256
    assert flops_per_token(tiny_model_config("transformer")) == full
    assert flops_per_token(tiny_model_config("transformer", attention_window=T + 50)) == full


@pytest.mark.parametrize("window", [1, 5, 12])
@pytest.mark.parametrize("prompt_len", [0, 3, 11, 20])  # shorter and longer than the window
def test_windowed_cache_equals_uncached(window, prompt_len):
    torch.manual_seed(1)
    model = make(attention_window=window)
    ids = torch.randint(0, 256, (2, 45))  # decoding runs far past the window
    assert check_cache(model, ids, prompt_len) <= 1e-4


def test_windowed_cache_keeps_only_the_window():
    model = make(attention_window=5)
    state = model.new_decode_state(1, torch.device("cpu"))
    model.next_logits(state, torch.randint(0, 256, (1, 20)))
    for i in range(10):
        model.next_logits(state, torch.tensor([[i]]))
    assert len(state.cache) == 4 and state.done == 31
    assert all(kv[0].shape[2] == 4 for kv in state.cache.layers)


KEY = "config error: model.attention_window: "


@pytest.mark.parametrize("overrides,expected", [
    (["model.arch=transformer", "model.attention_window=-1"], KEY + "must be >= 0"),
    (["model.attention_window=8"], KEY + "sliding-window attention is for model.arch=transformer"),
])
def test_bad_window_is_a_one_line_config_error(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_window_config_loads():
    cfg = load_config(None, ["model.arch=transformer", "model.attention_window=64"])
    assert cfg.model.attention_window == 64


@pytest.mark.parametrize("size", list(SIZES))
def test_windowed_match_within_tolerance(size):
    mb = megabyte_model(size)
    target = flops_per_byte(mb, 259, training=True)
    W = window_size(size)
    assert 0 < W < mb.seq_len
    tf = match_transformer(target, mb.seq_len, "bytes", None, 259, 1.0, 2 * mb.global_model.dim, W)
    assert tf.seq_len == mb.seq_len and tf.attention_window == W
    assert abs(flops_per_byte(tf, 259, training=True) / target - 1) <= MATCH_TOLERANCE


def test_plan_has_the_windowed_run_with_equal_budgets(tmp_path, monkeypatch):
    """The tiny plan on a stand-in data directory (the configs only check that these exist)."""
    import pretrain.comparison.matching as matching

    for sub in ("bytes", "tokens"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "manifest.json").write_text("{}")
    (tmp_path / "tokenizer.model").write_bytes(b"")
    monkeypatch.setattr(matching, "_count_params", lambda cfg: 0)  # would load the tokenizer
    plans = plan_models("tiny", tmp_path, tmp_path / "out", None, None, 3.0, 1000, [], 1)
    by_name = {p.name: p for p in plans}
    assert list(by_name) == ["megabyte", "transformer_bytes", "transformer_window",
                             "transformer_subword"]
    mb, win = by_name["megabyte"], by_name["transformer_window"]
    assert win.cfg.model.seq_len == mb.cfg.model.seq_len
    assert 0 < win.cfg.model.attention_window < win.cfg.model.seq_len
    assert abs(win.train_flops_per_byte / mb.train_flops_per_byte - 1) <= MATCH_TOLERANCE
    batch_bytes = mb.cfg.train.micro_batch_size * mb.cfg.model.seq_len
    for p in (win, by_name["transformer_bytes"]):
        assert p.cfg.train.micro_batch_size * p.cfg.model.seq_len == batch_bytes
        assert p.cfg.train.max_steps == mb.cfg.train.max_steps
