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


# ---------------------------------------------------------------- the work actually done (MFU)

def test_mean_causal_keys_counts_the_mask():
    """Mean keys per query = the attended entries of the real causal (windowed) mask / queries."""
    from pretrain.model.flops import mean_causal_keys
    from pretrain.model.layers import window_mask

    for n, window in [(1, 0), (8, 0), (37, 0), (64, 5), (64, 64), (64, 100), (10, 1)]:
        mask = (window_mask(n, n, window, torch.device("cpu")) if 0 < window < n
                else torch.ones(n, n, dtype=torch.bool).tril())
        assert mean_causal_keys(n, window) == pytest.approx(mask.sum().item() / n), (n, window)


def test_executed_count_halves_causal_attention_and_keeps_the_rest():
    """Executed = the paper's count with each attention term at the real mean key count:
    the byte Transformer's (T + 1) / 2 (or its window), MEGABYTE's (K + 1) / 2 globally and
    (P + 1) / 2 (+ r for cross-patch keys, absent in the first patch) locally; the projection,
    head and conv terms are the same in both counts."""
    from pretrain.model.flops import executed_flops_per_byte, flops_breakdown

    def attention(dim: int, keys: float, layers: int) -> float:
        return 3 * layers * 2 * 2 * dim * keys  # training, per position

    tf = tiny_model_config("transformer", seq_len=64)
    D, L = tf.global_model.dim, tf.global_model.layers
    saved = flops_per_byte(tf, 256, training=True) - executed_flops_per_byte(tf, 256, training=True)
    assert saved == pytest.approx(attention(D, 64 - 65 / 2, L))
    win = tiny_model_config("transformer", seq_len=64, attention_window=16)
    saved = flops_per_byte(win, 256, training=True) - executed_flops_per_byte(win, 256, training=True)
    assert saved == pytest.approx(attention(D, 16 - (16 * 17 / 2 + 48 * 16) / 64, L))
    for r, conv in [(0, False), (2, True)]:
        mb = tiny_model_config(seq_len=64, patch_size=4, cross_patch_window=r, conv_encoder=conv)
        K, P = 16, 4
        paper = flops_breakdown(mb, 256, training=True, count="paper")
        done = flops_breakdown(mb, 256, training=True, count="executed")
        g, loc = mb.global_model, mb.local_model
        assert paper["global"] - done["global"] == pytest.approx(
            attention(g.dim, K - (K + 1) / 2, g.layers) / P)
        assert paper["local"] - done["local"] == pytest.approx(
            attention(loc.dim, P + r - ((P + 1) / 2 + r * (K - 1) / K), loc.layers))
        assert paper["rest"] == done["rest"] and sum(paper.values()) == flops_per_byte(mb, 256, training=True)
    with pytest.raises(ValueError, match="unknown FLOP count 'full'"):
        flops_breakdown(mb, count="full")


def test_compute_matching_stays_on_the_papers_count():
    """pretrain.comparison.matching pairs models by the paper's count (unchanged by MFU's)."""
    import inspect

    from pretrain.comparison import matching

    source = inspect.getsource(matching)
    assert "flops_per_byte(" in source and "executed_flops_per_byte" not in source


# ---------------------------------------------------------------- the shared peak

def test_mfu_never_exceeds_one_by_construction():
    """A step faster than the probe raises the peak to it (MFU exactly 1, not more), later
    steps are measured against the raised peak, and the description says where it came from."""
    from pretrain.runtime.perf import MFUMeter

    meter = MFUMeter(probe=100e9)
    assert meter.mfu(50e9) == 0.5 and "peak 100 GFLOP/s (fp32 matmul, measured)" == meter.describe()
    assert meter.mfu(125.7e9) == 1.0  # the busy-machine case of issue 16: was "mfu 1.257"
    assert meter.peak == 125.7e9 and "above the matmul probe" in meter.describe()
    assert meter.mfu(100e9) == pytest.approx(100 / 125.7)
    for achieved in (1e6, 3e11, 2e11, 5e12):
        assert 0 < meter.mfu(achieved) <= 1


def test_shared_peak_is_measured_once_per_process(monkeypatch):
    from pretrain.runtime import perf

    calls = []
    monkeypatch.setattr(perf, "_PEAK_CACHE", {})
    monkeypatch.setattr(perf, "matmul_peak", lambda device, dtype: calls.append(dtype) or 7e9)
    cpu = torch.device("cpu")
    assert perf.shared_peak(cpu) == perf.shared_peak(cpu) == 7e9 and calls == [torch.float32]
    assert perf.shared_peak(cpu, torch.bfloat16) == 7e9 and calls == [torch.float32, torch.bfloat16]


def test_matmul_probe_is_the_best_of_its_sizes():
    from pretrain.runtime.perf import matmul_peak, probe_sizes

    cpu = torch.device("cpu")
    assert probe_sizes(cpu) == (1024, 2048)
    state = torch.get_rng_state()
    small = matmul_peak(cpu, sizes=(64,), repeats=2)
    assert small > 0 and torch.equal(torch.get_rng_state(), state)  # global RNG untouched


def _peak_rank(rank: int, port: int, out) -> None:
    """One gloo rank: a probe that would give rank-dependent peaks; the shared one is rank 0's."""
    import torch.distributed as dist

    from pretrain.runtime import perf

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    perf.matmul_peak = lambda device, dtype: 1e9 * (rank + 1)
    out.put((rank, perf.shared_peak(torch.device("cpu"))))
    dist.destroy_process_group()


def test_shared_peak_is_rank_zeros_on_every_rank():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_peak_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert got == {0: 1e9, 1: 1e9}
