"""FLOPs per byte reproduce the paper's FLOP-matched arXiv pairing."""

from __future__ import annotations

import pytest
import torch

from data_prep.vocab import ByteVocab
from pretrain.config import CONFIG_DIR, load_config
from pretrain.model import build_model, flops_per_byte, flops_per_token
from tests.conftest import tiny_model_config


def test_paper_pairing_within_one_percent():
    tf = load_config(CONFIG_DIR / "arxiv_transformer.yaml").model
    mb = load_config(CONFIG_DIR / "arxiv_megabyte.yaml").model
    tf_f, mb_f = flops_per_byte(tf, 256), flops_per_byte(mb, 256)
    assert tf_f == pytest.approx(646e6, rel=0.01)
    assert mb_f == pytest.approx(645e6, rel=0.01)
    assert abs(tf_f - mb_f) / tf_f < 0.01
    assert flops_per_byte(mb, 256, training=True) == 3 * mb_f


def test_subword_flops_per_byte_divides_by_bytes_per_token():
    tf = load_config(CONFIG_DIR / "arxiv_transformer.yaml").model
    assert flops_per_byte(tf, 8000, bytes_per_token=3.5) == pytest.approx(
        flops_per_token(tf, 8000) / 3.5)


def test_options_add_their_cost():
    base = flops_per_byte(tiny_model_config())
    assert flops_per_byte(tiny_model_config(cross_patch_window=2)) > base
    assert flops_per_byte(tiny_model_config(conv_encoder=True)) > base


def test_matmul_flops_agree_with_torch_flop_counter():
    """The formula's matmul part matches torch's FLOP counter on the real model (no attention
    scores, which the counter books under SDPA and the formula counts over the full context)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tiny_model_config(seq_len=64, patch_size=8)
    vocab = ByteVocab()
    model = build_model(cfg, vocab.vocab_size, vocab.pad_id, vocab.bos_id).eval()
    ids = torch.randint(0, 256, (1, 64))
    with FlopCounterMode(display=False) as counter:
        model(ids)
    counts = counter.get_flop_counts()["Global"]
    matmul = sum(v for k, v in counts.items() if "mm" in str(k) or "addmm" in str(k))
    P, D, D_L = 8, cfg.global_model.dim, cfg.local_model.dim
    D_G = D // P
    expect = (cfg.global_model.layers * 2 * 12 * D * D / P + 2 * D_G * D_L
              + cfg.local_model.layers * 2 * 12 * D_L * D_L + 2 * D_L * vocab.vocab_size) * 64
    assert matmul == pytest.approx(expect, rel=1e-6)
