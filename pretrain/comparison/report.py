"""The comparison's outputs: gzip / xz reference points, word perplexity where the held-out
bytes read like words, ``report.md`` and the two plots."""

from __future__ import annotations

import gzip
import json
import lzma
import math
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pretrain.comparison.corpus import CorpusKind
from pretrain.comparison.matching import MatchedRun
from pretrain.config import atomic_write_text
from pretrain.model.losses import word_perplexity


def unigram_entropy(data: bytes) -> float:
    """Empirical byte-unigram entropy of ``data`` in bits per byte: what a model that ignores
    all context scores at best (a MEGABYTE stuck at it has not started using the previous byte)."""
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def compressor_bpb(data: bytes) -> Dict[str, float]:
    """gzip -9 and xz -6 sizes of ``data`` in bits per byte."""
    return {"gzip -9": 8 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data),
            "xz -6": 8 * len(lzma.compress(data, preset=6)) / len(data)}


MAX_BYTES_PER_WORD = 8.0  # prose is ~5-6 (PG-19: 5.93); source code and binary data are far above


def bytes_per_word(text: bytes) -> Optional[float]:
    """Bytes per whitespace-separated word, when the text reads like words (UTF-8, at most
    ``MAX_BYTES_PER_WORD``); None otherwise, where word perplexity would mean nothing."""
    try:
        words = len(text.decode("utf-8").split())
    except UnicodeDecodeError:
        return None
    if not words or len(text) / words > MAX_BYTES_PER_WORD:
        return None
    return len(text) / words


# ------------------------------------------------------------------------------ report


# Forward passes per scored byte of each evaluation mode, relative to basic (consecutive windows).
EVAL_COST = {"basic": 1, "sliding": 2, "strided": 2, "sliding_strided": 4}


def corpus_notes(kind: CorpusKind, subword: bool, byte_dataset: Path) -> List[str]:
    """Report lines on what the bytes are: the text rule's measurement and decision, and for
    images that bits per byte are bits per dimension."""
    from data_prep.shards import read_manifest

    notes = [f"Corpus: {kind.describe(has_tokens=subword or not kind.is_text)}."]
    media = read_manifest(byte_dataset).get("media") or {}
    if media.get("kind") == "image":
        size = media.get("image_size")
        notes.append(f"Images: {size} x {size} x 3 bytes each ({media.get('pixel_order')} order), "
                     "one byte per colour channel of a pixel, so bits per byte are bits per "
                     "dimension (the paper's ImageNet 64 figure is 3.40).")
    elif media.get("kind") == "audio":
        notes.append(f"Audio: {media.get('audio_format')} samples at {media.get('sample_rate')} Hz, "
                     f"{media.get('bytes_per_sample')} byte(s) per sample.")
    return notes


def write_report(out: Path, plans: List[MatchedRun], trained: Dict[str, Dict[str, Any]],
                 evals: Dict[str, Dict[str, Any]], refs: Dict[str, float], bpw: Optional[float],
                 heldout_bytes: int, modes: List[str], extra_notes: Sequence[str] = (),
                 sections: Sequence[str] = (), images: Sequence[str] = ()) -> str:
    """``report.md``: one row per model and reference, the notes, then ``sections`` (markdown:
    convergence, LR grid, budgets) and ``images`` (file names in OUT); returns the table."""
    head = ["model", "params", "train FLOPs/byte", "training bytes", "wall time", "bytes/s"]
    head += [f"bpb {m} ({EVAL_COST.get(m, '?')}x)" for m in modes]
    if bpw:
        head.append("word ppl (best)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for plan in plans:
        t, e = trained[plan.name], evals[plan.name]["results"]
        row = [plan.name, f"{plan.params / 1e6:.2f}M", f"{plan.train_flops_per_byte / 1e6:.2f}M",
               f"{t['bytes_seen'] / 1e6:.2f}M", f"{t['seconds'] / 60:.1f} min",
               f"{t['bytes_seen'] / max(t['seconds'], 1e-9):.0f}"]
        row += [f"{e[m]['bpb']:.4f}" if m in e else "n/a" for m in modes]
        if bpw:
            best = min(r["bpb"] for r in e.values())
            row.append(f"{word_perplexity(best, bpw):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    for name, bpb in refs.items():
        row = [name, "-", "-", "-", "-", "-"] + [f"{bpb:.4f}"] + ["-"] * (len(modes) - 1)
        if bpw:
            row.append(f"{word_perplexity(bpb, bpw):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    notes = [f"Held-out bytes: {heldout_bytes} (`heldout.bin`), the same for every model.",
             "Training FLOPs per byte follow the paper's formulas (3x forward); budgets and global "
             "batches are equal in bytes.",
             "Strided inference applies to MEGABYTE only (n/a for the Transformers).",
             "Evaluation cost per mode (forward passes per scored byte, relative to basic): "
             + ", ".join(f"{m} {EVAL_COST.get(m, '?')}x" for m in modes) + ".", *extra_notes]
    if bpw:
        notes.append(f"Word perplexity = 2^(bpb x {bpw:.3f} bytes per whitespace-separated word).")
    else:
        notes.append("No word perplexity: the held-out bytes are not word-like text (not UTF-8, "
                     f"or more than {MAX_BYTES_PER_WORD:g} bytes per whitespace-separated word).")
    pictures = ["val_bpb_vs_flops.png", "loss_curves.png", *images]
    text = ("# Compute-matched comparison\n\n" + table + "\n\n"
            + "\n".join(f"* {n}" for n in notes) + "\n\n"
            + "".join(s.rstrip("\n") + "\n\n" for s in sections)
            + "".join(f"![{Path(p).stem}]({p})\n" for p in pictures))
    atomic_write_text(out / "report.md", text)
    return table


def _save(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> str:
    """Label, lay out and write one figure; its path."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot(out: Path, plans: List[MatchedRun]) -> List[str]:
    """``val_bpb_vs_flops.png`` (validation bits per byte against training FLOPs, log x) and
    ``loss_curves.png`` (training bits per byte per step); their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for plan in plans:
        vals = json.loads((Path(plan.cfg.run_dir) / "validation.json").read_text())
        ax.plot([v["train_flops"] for v in vals], [v["val_bpb"] for v in vals], marker="o",
                label=plan.name)
    ax.set_xscale("log")
    paths = [_save(fig, ax, "training FLOPs", "validation bits per byte",
                   "Validation bits per byte against training compute", out / "val_bpb_vs_flops.png")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for plan in plans:
        hist = [h for h in json.loads((Path(plan.cfg.run_dir) / "history.json").read_text())
                if "bpb" in h]
        ax.plot([h["step"] for h in hist], [h["bpb"] for h in hist], label=plan.name)
    paths.append(_save(fig, ax, "step (equal bytes per step for every model)",
                       "training bits per byte", "Training loss", out / "loss_curves.png"))
    return paths


# ------------------------------------------------------------------------------ sweeps


def convergence_section(slopes: Dict[str, Optional[float]], verdict_lines: Sequence[str]) -> str:
    """``## Convergence``: each model's slope and trend, then MEGABYTE against each baseline."""
    from pretrain.comparison.verdict import IMPROVING_SLOPE, describe_trend

    lines = ["## Convergence", "",
             "Slope of validation bits per byte against log2(training FLOPs) over the last doubling "
             f"of training; still improving below {IMPROVING_SLOPE:+.2f} bpb per doubling, getting "
             f"worse above {-IMPROVING_SLOPE:+.2f}, flat between. A leader is declared only when "
             "its advantage exceeds what the trailing model, at its slope, would gain in one more "
             "doubling.", ""]
    lines += [f"* {describe_trend(name, slope)}" for name, slope in slopes.items()]
    lines += [""] + [f"* {line[0].upper() + line[1:]}" for line in verdict_lines]
    return "\n".join(lines)


def lr_grid_section(grid: Dict[str, Dict[float, Optional[float]]], chosen: Dict[str, float],
                    sweep_bytes: int, selection_bytes: int) -> str:
    """``## Learning rates``: model x LR -> selection bits per byte, the choice in bold."""
    lrs = sorted({lr for row in grid.values() for lr in row})
    lines = ["## Learning rates", "",
             f"Each model trained at each LR for {sweep_bytes:,} bytes (same warmup + cosine "
             f"schedule shape), scored on {selection_bytes:,} selection bytes of the validation "
             "split that follow the held-out bytes (not the bytes of the table above); the lowest "
             "wins (**bold**; a tie goes to the smaller LR) and serves every budget.", "",
             "| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|" + "---|" * (len(lrs) + 1)]
    for name, row in grid.items():
        cells = []
        for lr in lrs:
            bpb = row.get(lr)
            cell = "failed" if bpb is None or not math.isfinite(bpb) else f"{bpb:.4f}"
            cells.append(f"**{cell}**" if lr == chosen.get(name) else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    edges = [grid_edge_note(name, row, chosen.get(name)) for name, row in grid.items()]
    edges = [note for note in edges if note]
    return "\n".join(lines + ([""] + edges if edges else []))


def grid_edge_note(name: str, row: Dict[float, Optional[float]], lr: Optional[float]) -> str:
    """A warning when ``lr``, the choice, is the lowest or highest LR tried for ``name``: the best
    LR may lie outside the grid ('' when it is inside, or the grid has one point)."""
    tried = sorted(row)
    if lr is None or len(tried) < 2 or tried[0] < lr < tried[-1]:
        return ""
    side, factor = ("lowest", 0.5) if lr == tried[0] else ("highest", 2.0)
    wider = ",".join(f"{x:g}" for x in sorted(tried + [lr * factor]))
    return (f"* {name}: the choice is the grid's {side} LR ({lr:g}), so its best LR may lie "
            f"beyond the grid; extend it (e.g. --lr-sweep {wider}) before trusting the comparison.")


def budget_section(curves: Dict[str, List[Dict[str, Any]]], mode: str,
                   crossover_lines: Sequence[str]) -> str:
    """``## Budgets``: model x training bytes -> held-out bits per byte, then the crossovers.
    ``curves``: per model, ``{"bytes", "flops", "bpb", "lr"}`` per budget in increasing order."""
    budgets = sorted({p["bytes"] for c in curves.values() for p in c})
    lines = ["## Budgets", "",
             "Each budget is its own run: the cosine schedule decays to the end of training, so a "
             "shorter budget is not a prefix of a longer run (no run is reused across budgets; "
             "the LR sweep's run of the chosen LR is the budget run of the same bytes, when "
             "there is one). "
             f"Held-out bits per byte ({mode} mode):", "",
             "| model | lr | " + " | ".join(f"{b:,} bytes" for b in budgets) + " |",
             "|" + "---|" * (len(budgets) + 2)]
    for name, curve in curves.items():
        at = {p["bytes"]: p["bpb"] for p in curve}
        lr = curve[0]["lr"] if curve else 0.0
        lines.append(f"| {name} | {lr:g} | " + " | ".join(
            f"{at[b]:.4f}" if b in at else "-" for b in budgets) + " |")
    lines += [""] + [f"* {line}" for line in crossover_lines]
    return "\n".join(lines)


def plot_budgets(out: Path, curves: Dict[str, List[Dict[str, Any]]], mode: str) -> str:
    """``bpb_vs_budget.png``: held-out bits per byte against training FLOPs (log x), one line
    per model; its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot([p["flops"] for p in curve], [p["bpb"] for p in curve], marker="o", label=name)
    ax.set_xscale("log")
    return _save(fig, ax, "training FLOPs", f"held-out bits per byte ({mode})",
                 "Held-out bits per byte against training budget", out / "bpb_vs_budget.png")
