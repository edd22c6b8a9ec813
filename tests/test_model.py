"""MEGABYTE as the paper defines it, and the baselines: causality, no lag, every byte scored."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from data_prep.vocab import ByteVocab
from pretrain.model import Megabyte, TransformerLM, build_model, count_params
from pretrain.model.losses import IGNORE, lm_loss, targets_for, token_nll
from tests.conftest import ROOT, tiny_model_config

VOCAB = ByteVocab()
# name -> model config: all three models and both paper options (and both together).
VARIANTS = {
    "megabyte": tiny_model_config(),
    "megabyte_cross_patch": tiny_model_config(cross_patch_window=2),
    "megabyte_conv": tiny_model_config(conv_encoder=True),
    "megabyte_both": tiny_model_config(cross_patch_window=4, conv_encoder=True),
    "transformer_bytes": tiny_model_config("transformer"),
    "transformer_window": tiny_model_config("transformer", attention_window=6),
}


def make(cfg, vocab_size: int = VOCAB.vocab_size):
    torch.manual_seed(0)
    return build_model(cfg, vocab_size, VOCAB.pad_id, VOCAB.bos_id).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shapes_and_any_length(name):
    model = make(VARIANTS[name])
    for L in (1, 3, 4, 37, 64):
        ids = torch.randint(0, 256, (2, L))
        assert model(ids).shape == (2, L, VOCAB.vocab_size)
    with pytest.raises(ValueError, match="exceeds the model context"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("t", [0, 2, 3, 4, 5, 7, 8, 20, 35])  # P=4: before, at, after boundaries
def test_causality(name, t):
    """Changing byte t changes no logit at positions <= t (logits[t] predicts byte t)."""
    model = make(VARIANTS[name])
    ids = torch.randint(0, 256, (2, 37))
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1]) or torch.allclose(
        a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    # ... and it does change the very next prediction.
    assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", [n for n in VARIANTS if n.startswith("megabyte")])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_no_lag_global_context_is_up_to_date(name, k):
    """The first byte of patch k sees the last byte of patch k-1 (no 1..P lag as in some ports)."""
    model = make(VARIANTS[name])
    P = model.P
    ids = torch.randint(0, 256, (1, 32))
    changed = ids.clone()
    changed[0, k * P - 1] = (changed[0, k * P - 1] + 7) % 256
    diff = (model(ids)[0, k * P] - model(changed)[0, k * P]).abs().max()
    assert diff > 1e-4


def test_megabyte_structure_matches_the_paper():
    cfg = tiny_model_config()
    m = make(cfg)
    P, D = cfg.patch_size, cfg.global_model.dim
    D_G, D_L = D // P, cfg.local_model.dim
    assert isinstance(m, Megabyte)
    assert m.global_embed.weight.shape == (VOCAB.vocab_size, D_G)
    assert m.global_pos.weight.shape == (cfg.seq_len, D_G)  # one position per byte
    assert m.global_pad.shape == (P * D_G,)  # trainable pad patch
    assert m.global_to_local.weight.shape == (D_L, D_G)  # one shared w_GL
    assert m.local_pad.shape == (D_L,)
    # Output tied to the local *input* embedding: no separate head parameter.
    names = [n for n, _ in m.named_parameters()]
    assert not any("head" in n or "lm_out" in n for n in names)
    block = m.global_model.blocks[0]
    # TP-friendly shapes: QKV / fc1 split by output, proj / fc2 by input features.
    assert block.attn.qkv.weight.shape == (3 * D, D)
    assert block.attn.proj.weight.shape == (D, D)
    assert block.mlp.fc1.weight.shape == (cfg.mlp_ratio * D, D)
    assert block.mlp.fc2.weight.shape == (D, cfg.mlp_ratio * D)


def test_tied_output_embedding_is_used():
    """Perturbing the local input embedding of byte 65 changes the logit of byte 65."""
    m = make(tiny_model_config())
    ids = torch.randint(0, 256, (1, 16))
    before = m(ids)[0, :, 65].clone()
    with torch.no_grad():
        # Not a constant shift: the final LayerNorm output sums to zero over features.
        m.local_embed.weight[65] += torch.randn(m.D_L)
    assert (m(ids)[0, :, 65] - before).abs().max() > 1e-3


def test_paper_init():
    cfg = tiny_model_config(init_std=0.006)
    m = make(cfg)
    for name, p in m.named_parameters():
        if p.dim() >= 2 or name.endswith("_pad"):
            assert p.abs().max() <= 2 * 0.006 + 1e-7, name
    big = make(tiny_model_config(init_std=0.006, global_model=tiny_model_config().global_model))
    w = big.global_model.blocks[0].mlp.fc1.weight
    # A N(0, 0.006) truncated at 2 std has std 0.006 * 0.88.
    assert 0.0045 < w.std().item() < 0.0058


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_byte_value_contributes_to_the_loss(name):
    """All 256 byte values, NUL included, are targets: none is treated as padding."""
    model = make(VARIANTS[name])
    model.train()
    ids = torch.randperm(256)[:64].view(1, 64)
    ids[0, 10] = 0  # a NUL byte somewhere in the middle
    ids = torch.cat([torch.arange(0, 64).view(1, 64), torch.arange(64, 128).view(1, 64),
                     torch.arange(128, 192).view(1, 64), torch.arange(192, 256).view(1, 64)])
    logits = model(ids)
    logits.retain_grad()
    loss = lm_loss(logits, ids)
    assert torch.allclose(loss, token_nll(logits, ids).mean())
    loss.backward()
    # Every position, including the one whose target is NUL (id 0), gets a gradient.
    per_position = logits.grad.abs().sum(-1)
    assert (per_position > 0).all()
    assert VOCAB.pad_id >= 256 and VOCAB.bos_id >= 256 and VOCAB.eos_id >= 256
    assert VOCAB.decode(VOCAB.encode(bytes(range(256)))) == bytes(range(256))


def test_ignored_targets_contribute_nothing_to_the_loss():
    """``lm_loss`` is the mean NLL over the non-IGNORE targets only: changing the logits at an
    ignored position changes neither the loss nor any gradient, and the value equals the mean of
    -log softmax(logits)[target] over the other positions, computed here by hand."""
    V = VOCAB.vocab_size
    logits = torch.randn(2, 6, V, dtype=torch.float64)
    targets = torch.tensor([[5, IGNORE, 0, 255, IGNORE, 17], [IGNORE, 3, 3, 200, 1, IGNORE]])
    keep = targets != IGNORE
    assert int(keep.sum()) == 8
    by_hand = torch.stack([logits[b, t].logsumexp(-1) - logits[b, t, targets[b, t]]
                           for b, t in keep.nonzero().tolist()]).mean()
    loss = lm_loss(logits, targets)
    assert torch.allclose(loss.double(), by_hand, rtol=1e-6, atol=0), (loss, by_hand)
    # The same number from token_nll over the kept positions (gather needs real ids there).
    nll = token_nll(logits, targets.masked_fill(~keep, 0))
    assert torch.allclose(loss, nll[keep].mean(), rtol=1e-6, atol=0)

    changed = logits.clone()
    changed[~keep] = 50 * torch.randn(int((~keep).sum()), V, dtype=torch.float64)
    changed.requires_grad_(True)
    loss2 = lm_loss(changed, targets)
    # (Averaged over every position, these logits would give a very different number.)
    all_positions = token_nll(changed.detach(), targets.masked_fill(~keep, 0)).mean()
    assert (all_positions - loss).abs() > 1.0
    assert torch.allclose(loss2, loss, rtol=1e-6, atol=0)
    loss2.backward()
    assert changed.grad[~keep].abs().max() == 0
    assert (changed.grad[keep].abs().sum(-1) > 0).all()
    # Changing a kept position does change the loss.
    moved = logits.clone()
    moved[0, 0, 5] -= 3.0
    assert lm_loss(moved, targets) > loss + 1e-3
    # Pads become IGNORE targets; no byte value (0..255) does.
    ids = torch.tensor([[0, 255, VOCAB.pad_id, 65]])
    assert targets_for(ids, VOCAB.pad_id).tolist() == [[0, 255, IGNORE, 65]]


def test_transformer_baseline_is_shifted_internally():
    m = make(tiny_model_config("transformer"))
    assert isinstance(m, TransformerLM)
    ids = torch.randint(0, 256, (1, 10))
    # Position 0 is predicted from BOS only, so it ignores every byte of the sequence.
    a = m(ids)[0, 0]
    ids[0, 0] = (ids[0, 0] + 1) % 256
    assert torch.allclose(a, m(ids)[0, 0])


def _stack_params(dim: int, layers: int, mlp_ratio: int = 4) -> int:
    """Per block: two LayerNorms (weight + bias), qkv (3 D^2) and proj (D^2) without bias,
    fc1 / fc2 (r D^2 each) without bias; then one final LayerNorm."""
    per_block = 2 * (2 * dim) + 4 * dim * dim + 2 * mlp_ratio * dim * dim
    return layers * per_block + 2 * dim


# The tiny config: V = 259, T = 64, P = 4, global D = 32 (D_G = 8) x 2 layers, local D_L = 16 x 2.
V, T, P, D, D_G, D_L = 259, 64, 4, 32, 8, 16
MEGABYTE_TINY = (V * D_G + T * D_G  # global byte embedding + per-byte positions
                 + D  # trainable global pad patch
                 + D_G * D_L  # shared w_GL, no bias
                 + V * D_L  # local embedding, also the tied output head (counted once)
                 + D_L  # local pad
                 + _stack_params(D, 2) + _stack_params(D_L, 2))
CONV = sum(D_G * D_G * k + D_G for k in (3, 5, 7))  # Conv1d(D_G, D_G, k) with bias, k = 3, 5, 7


@pytest.mark.parametrize("name, expected", [
    ("megabyte", MEGABYTE_TINY),
    ("megabyte_cross_patch", MEGABYTE_TINY),  # rotary tables are not parameters
    ("megabyte_conv", MEGABYTE_TINY + CONV),
    ("transformer_bytes", V * D + T * D + _stack_params(D, 2)),  # tied head: no extra V x D
])
def test_count_params_matches_the_architecture_formula(name, expected):
    assert V == VOCAB.vocab_size and MEGABYTE_TINY == 38104 and CONV == 984  # evaluated by hand
    assert count_params(make(VARIANTS[name])) == expected


def test_model_package_has_no_distributed_code():
    for path in (ROOT / "pretrain" / "model").glob("*.py"):
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any("distributed" in n or "deepspeed" in n for n in names), path
            if isinstance(node, ast.Attribute):
                assert node.attr != "distributed", path


def test_attention_split_by_unbind_is_bitwise_the_indexed_split():
    """The q/k/v split (``unbind``, one stacked gradient instead of three zero-filled ones, a
    speed change of issue 16) gives bit-identical outputs and gradients to indexing each part."""
    import torch.nn.functional as F

    from pretrain.model.layers import Attention

    attn = Attention(dim=32, heads=4, dropout=0.0)
    x = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(0))

    def indexed(x: torch.Tensor) -> torch.Tensor:  # the split as it was before
        qkv = attn.qkv(x).view(3, 16, -1, 3, 8)
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn.proj(y.transpose(1, 2).reshape(3, 16, -1))

    for new, old in zip(*(outputs_and_grads(attn, fn, x) for fn in (lambda t: attn(t)[0], indexed))):
        assert torch.equal(new, old)


def outputs_and_grads(attn, fn, x: torch.Tensor):
    """(output, grad of x, grad of the qkv weight, grad of the proj weight) of ``fn(x)`` under
    the loss sum(out^2), for an :class:`Attention` module ``attn``."""
    xi = x.clone().requires_grad_(True)
    attn.zero_grad(set_to_none=True)
    out = fn(xi)
    out.pow(2).sum().backward()
    return out.detach(), xi.grad, attn.qkv.weight.grad, attn.proj.weight.grad


@pytest.mark.parametrize("L,heads", [(8, 4), (4, 2), (1, 4)])
def test_folded_short_attention_matches_per_head_attention(L, heads):
    """Short causal self-attention on CPU (L * H <= 32, MEGABYTE's local model) runs with the
    heads folded into one masked sequence; outputs and gradients equal the per-head causal
    attention to float rounding, and the folded path is the one taken."""
    import torch.nn.functional as F

    from pretrain.model import layers
    from pretrain.model.layers import Attention

    hd = 8
    attn = Attention(dim=heads * hd, heads=heads, dropout=0.0)
    x = torch.randn(6, L, heads * hd, generator=torch.Generator().manual_seed(0))
    assert layers.fold_heads(x.device, L, heads)

    def per_head(x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in attn.qkv(x).view(6, L, heads, 3, hd).unbind(3))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn.proj(y.transpose(1, 2).reshape(6, L, -1))

    calls = []
    original = layers.folded_causal_attention
    layers.folded_causal_attention = lambda *a: calls.append(1) or original(*a)
    try:
        results = [outputs_and_grads(attn, fn, x) for fn in (lambda t: attn(t)[0], per_head)]
    finally:
        layers.folded_causal_attention = original
    assert calls == [1]
    for new, ref in zip(*results):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv", [False, True])
def test_in_place_relu_gives_out_of_place_values_and_gradients(conv):
    """The eager ReLU overwrites its input (the output of fc1 or of a convolution; a speed change
    of issue 16): MEGABYTE's logits and every parameter's gradient are bit-identical to the same
    model with ``F.relu``, conv encoder included, and the hidden tensor really is reused."""
    import torch.nn.functional as F

    from pretrain.model.layers import MLP

    cfg = tiny_model_config("megabyte", conv_encoder=conv)
    ids = torch.randint(0, 256, (2, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    results = []
    for act in ("in place", "F.relu"):
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB.vocab_size, VOCAB.pad_id, VOCAB.bos_id).double()
        if act == "F.relu":
            for module in model.modules():
                if hasattr(module, "act"):
                    module.act = F.relu
        logits = model(ids)
        lm_loss(logits, ids).backward()
        results.append([logits.detach()] + [p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    mlp = MLP(8, 32, "relu")
    hidden = {}
    mlp.fc1.register_forward_hook(lambda m, i, out: hidden.update(fc1=out))
    mlp.fc2.register_forward_hook(lambda m, i, out: hidden.update(act=i[0]))
    mlp(torch.randn(4, 8, requires_grad=True)).sum().backward()
    assert hidden["act"].data_ptr() == hidden["fc1"].data_ptr()
