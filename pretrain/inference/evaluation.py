"""Bits per byte over every byte of a text, in the paper's three inference modes.

* ``basic``: consecutive non-overlapping windows of T.
* ``sliding``: windows every ``stride`` positions; each window scores only its last ``stride``
  positions (the first window scores all), so every position has >= T - stride context.
* ``strided`` (MEGABYTE only, §1 "strided inference"): loss rises towards the end of a patch, so
  two passes are run, the second offset by P/2, and each keeps only the first P/2 positions of
  every patch. Combined with ``stride < T`` it is the paper's sliding + strided mode.

Every position is scored exactly once in every mode (:func:`plan_windows` is tested for it).
For the subword baseline positions are tokens, and the divisor is still the exact byte count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from pretrain.model.losses import bits_per_byte, token_nll
from pretrain.runtime.compile import compile_model

MODES = ("basic", "sliding", "strided", "sliding_strided")


@dataclass
class Window:
    """One forward pass: ids[start:start+length], scoring in-window positions ``keep``."""

    start: int
    length: int
    keep: np.ndarray  # int64 in-window positions to score


def plan_windows(n: int, seq_len: int, stride: Optional[int] = None,
                 patch_size: Optional[int] = None) -> List[Window]:
    """Windows that score each of ``n`` positions exactly once.

    ``stride`` < seq_len gives sliding windows; ``patch_size`` gives strided inference.
    """
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in (0, {seq_len}], got {stride}")
    offsets = [0]
    if patch_size:
        if patch_size % 2 or stride % patch_size:
            raise ValueError(f"strided inference needs an even patch size dividing the stride "
                             f"(patch {patch_size}, stride {stride})")
        offsets = [0, patch_size // 2]
    windows: List[Window] = []
    for offset in offsets:
        start, first = offset, True
        while start < n:
            length = min(seq_len, n - start)
            new_from = 0 if first else seq_len - stride
            if new_from >= length:
                break
            idx = np.arange(new_from, length)
            if patch_size:
                idx = idx[idx % patch_size < patch_size // 2]
            if len(idx):
                windows.append(Window(start, length, idx))
            start, first = start + stride, False
    return windows


def mode_stride(mode: str, seq_len: int, patch_size: Optional[int],
                stride: Optional[int] = None) -> int:
    """The stride a named mode uses: seq_len unless sliding; for sliding ``stride``, which must
    be in (0, seq_len] and, on MEGABYTE, a multiple of the patch size (a given stride is never
    rounded), or by default seq_len / 2 (rounded down to whole patches). ValueError otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; choose from {', '.join(MODES)}")
    if mode in ("strided", "sliding_strided") and not patch_size:
        raise ValueError("strided inference applies to MEGABYTE (a model with patches) only")
    if mode not in ("sliding", "sliding_strided"):
        return seq_len
    if stride is None:
        stride = max(seq_len // 2, patch_size or 1)
        return max(patch_size, stride - stride % patch_size) if patch_size else stride
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in (0, {seq_len}] (the model's context), got {stride}")
    if patch_size and stride % patch_size:
        raise ValueError(f"stride {stride} is not a multiple of the patch size {patch_size}: "
                         "MEGABYTE's windows move by whole patches")
    return stride


def window_plan_for(mode: str, n: int, seq_len: int, patch_size: Optional[int],
                    stride: Optional[int] = None) -> List[Window]:
    """The window plan for a named mode (stride: :func:`mode_stride`)."""
    strided = mode in ("strided", "sliding_strided")
    return plan_windows(n, seq_len, mode_stride(mode, seq_len, patch_size, stride),
                        patch_size if strided else None)


@torch.no_grad()
def score_ids(model: torch.nn.Module, ids: Tensor, windows: Iterable[Window], batch_size: int = 8,
              progress: bool = False, autocast_dtype: Optional[torch.dtype] = None,
              share: Tuple[int, int] = (0, 1)) -> Dict[str, float]:
    """Sum of NLL (nats) over the kept positions of every window; ``ids`` is a 1-D tensor.

    ``share = (k, n)``: score only batches ``k, k + n, ...`` (one data-parallel rank's part; the
    caller sums the parts). Every share runs the same number of forward passes (a short share
    repeats its last batch and discards it), as ZeRO-3's collective parameter gathering needs."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1 window, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = list(windows)
    total, count = 0.0, 0
    # Group windows of equal length into batches.
    groups: Dict[int, List[Window]] = {}
    for w in windows:
        groups.setdefault(w.length, []).append(w)
    batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    k, n = share
    mine = batches[k::n]
    rounds = -(-len(batches) // n)  # forward passes every share runs
    passes = [(b, True) for b in mine] + [(mine[-1] if mine else batches[0], False)] * (rounds - len(mine))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(w.length for w in windows), unit="B", unit_scale=True, desc="eval",
                   leave=False)
    for batch, counted in passes:
        x = torch.stack([ids[w.start:w.start + w.length] for w in batch]).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = model(x)
        if not counted:
            continue
        nll = token_nll(logits, x)  # (b, length)
        for row, w in enumerate(batch):
            keep = torch.from_numpy(w.keep).to(device)
            total += nll[row, keep].double().sum().item()
            count += len(w.keep)
        if bar is not None:
            bar.update(sum(w.length for w in batch))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return {"nats": total, "positions": count}


def evaluate_bytes(model: torch.nn.Module, text: bytes, vocab, seq_len: int, mode: str = "basic",
                   patch_size: Optional[int] = None, stride: Optional[int] = None,
                   batch_size: int = 8, progress: bool = False,
                   autocast_dtype: Optional[torch.dtype] = None, share: Tuple[int, int] = (0, 1),
                   reduce: Optional[Callable[[Dict[str, float]], Dict[str, float]]] = None,
                   compile_backend: Optional[str] = None) -> Dict[str, float]:
    """Bits per byte of ``model`` over every byte of ``text`` in ``mode``.

    The text is encoded with ``vocab`` (identity for bytes, SentencePiece for the subword model);
    the divisor is always ``len(text)`` in bytes; ``stride`` in the result is the one used
    (:func:`mode_stride`). Data-parallel scoring: each rank passes its
    ``share`` (see :func:`score_ids`) and a ``reduce`` that sums ``nats`` and ``positions`` over
    the ranks (the model code stays free of collectives). ``compile_backend`` (e.g. ``inductor``)
    compiles the model's forward in place first, unless it already is (a ``train.compile`` run's
    model): full windows share one graph, a shorter last window adds one; an unknown backend
    is a ValueError.
    """
    if compile_backend is not None and getattr(model, "_compiled_call_impl", None) is None:
        try:
            compile_model(model, next(model.parameters()).device, compile_backend)
        except RuntimeError as err:
            from torch._dynamo.exc import InvalidBackend  # loaded by the attempt

            if not isinstance(err, InvalidBackend):
                raise
            raise ValueError(f"no torch.compile backend named {compile_backend!r} (see "
                             "torch._dynamo.list_backends(); inductor is the default)") from None
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    stride = mode_stride(mode, seq_len, patch_size, stride)
    windows = window_plan_for(mode, len(ids), seq_len, patch_size, stride)
    out = score_ids(model, ids, windows, batch_size, progress, autocast_dtype, share)
    if reduce is not None:
        out = reduce(out)
    if out["positions"] != len(ids):
        raise AssertionError(f"scored {out['positions']} positions of {len(ids)}")
    return {"mode": mode, "bpb": bits_per_byte(out["nats"], len(text)), "bytes": len(text),
            "tokens": len(ids), "nats": out["nats"], "stride": stride,
            "bytes_per_token": len(text) / max(len(ids), 1)}

