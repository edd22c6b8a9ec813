"""MEGABYTE vs a byte Transformer vs a subword Transformer at matched compute, on your data.

``python -m pretrain.compare [--stdlib | CORPUS ... | --data PREPARED] [--size tiny] [--budget-bytes N]``

1. Data: a raw corpus (default: Python's standard library source) is prepared once with
   ``python -m data_prep.prepare`` (byte shards, a SentencePiece model, token shards), or
   ``--data`` names an already prepared directory.
2. Configs: MEGABYTE of the size class, then a byte Transformer and a subword Transformer whose
   *training FLOPs per byte* match MEGABYTE's within 5% (the paper's formulas,
   ``pretrain.model.flops``); every model gets the same global batch in bytes and the same
   training bytes (``--budget-bytes``, or ``--budget-flops`` / FLOPs per byte).
3. Training through the engine (``pretrain.train``; ``--nproc N`` runs it under torchrun), each in
   its own run directory; finished runs are skipped and interrupted ones resume. ``--slurm``
   submits them as one job array instead (``launch.slurm --sweep``); the same command run again
   after the jobs finished evaluates and reports.
4. Evaluation of all three on the *same* held-out bytes (``OUT/heldout.bin``) in basic, sliding
   and strided (MEGABYTE only) modes, exactly as ``python -m pretrain.evaluate --files
   OUT/heldout.bin`` reports them; gzip -9 and xz -6 on the same bytes as reference points.
5. ``OUT/report.md`` (table), ``OUT/val_bpb_vs_flops.png`` and ``OUT/loss_curves.png``, and one
   JSON object on stdout. Running the command again continues where it stopped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pretrain.config import (
    Config,
    ConfigError,
    ModelConfig,
    StackConfig,
    atomic_write_text,
    load_config,
    to_yaml,
)
from pretrain.losses import word_perplexity
from pretrain.model.flops import flops_per_byte

MATCH_TOLERANCE = 0.05
# Interleaved streams of the shard loader: consecutive sequences of a batch come from different
# parts of the corpus (with one stream a micro-batch would be one stretch of one file).
LANES = 16

# MEGABYTE per size class: (context T, patch P, global (D, L, H), local (D, L, H), micro-batch).
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(T=512, P=8, g=(256, 4, 4), l=(128, 2, 4), micro=8, lr=2e-3, budget=3_276_800),
    "small": dict(T=2048, P=8, g=(512, 6, 8), l=(256, 4, 4), micro=8, lr=1e-3, budget=200_000_000),
    "base": dict(T=8192, P=8, g=(1024, 12, 16), l=(512, 8, 8), micro=8, lr=6e-4,
                 budget=5_000_000_000),
    "arxiv": dict(T=8192, P=8, g=(2048, 14, 16), l=(1024, 18, 16), micro=1, lr=2e-4,
                  budget=80_000_000_000),
}


@dataclass
class Plan:
    """One model of the comparison."""

    name: str
    cfg: Config
    train_flops_per_byte: float
    params: int


def megabyte_model(size: str) -> ModelConfig:
    s = SIZES[size]
    return ModelConfig(arch="megabyte", seq_len=s["T"], patch_size=s["P"],
                       global_model=StackConfig(*s["g"]), local_model=StackConfig(*s["l"]),
                       dropout=0.0)


def transformer_context(size: str) -> int:
    """Byte context of the Transformers: T/8 as in the paper's pairing, at least 512 bytes."""
    T = SIZES[size]["T"]
    return min(T, max(T // 8, 512))


def match_transformer(target: float, seq_len: int, vocab: str, tokenizer: Optional[str],
                      vocab_size: int, bytes_per_token: float, max_dim: int) -> ModelConfig:
    """The Transformer shape whose training FLOPs per byte are closest to ``target``.

    Candidates have widths in steps of 32 (head size 32 below 512, 64 from 512) and a usual
    aspect ratio (32 <= width / layers <= 128) when one of those is within tolerance.
    """
    best: List[Tuple[int, float, int, ModelConfig]] = []
    for dim in range(64, max_dim + 1, 32):
        head = 32 if dim < 512 else 64
        if dim % head:
            continue
        for layers in range(1, 65):
            cfg = ModelConfig(arch="transformer", vocab=vocab, tokenizer=tokenizer, seq_len=seq_len,
                              global_model=StackConfig(dim, layers, dim // head), dropout=0.0)
            f = flops_per_byte(cfg, vocab_size, bytes_per_token, training=True)
            rel = abs(f - target) / target
            usual = 32 <= dim / layers <= 128
            rank = 0 if rel <= MATCH_TOLERANCE and usual else 1 if rel <= MATCH_TOLERANCE else 2
            best.append((rank, rel, -dim * dim * layers, cfg))
    best.sort(key=lambda x: x[:3])
    return best[0][3]


def plan_models(size: str, data_dir: Path, out: Path, budget_bytes: Optional[int],
                budget_flops: Optional[float], bytes_per_token: float, sp_vocab: int,
                extra: List[str]) -> List[Plan]:
    """Configs for the three models at matched training FLOPs per byte and equal budgets."""
    s = SIZES[size]
    mb = megabyte_model(size)
    target = flops_per_byte(mb, 259, training=True)
    ctx = transformer_context(size)
    tok_ctx = max(8, int(round(ctx / bytes_per_token / 8)) * 8)
    models = {
        "megabyte": mb,
        "transformer_bytes": match_transformer(target, ctx, "bytes", None, 259, 1.0,
                                               2 * mb.global_model.dim),
        "transformer_subword": match_transformer(
            target, tok_ctx, "sentencepiece", str(data_dir / "tokenizer.model"), sp_vocab + 3,
            bytes_per_token, 2 * mb.global_model.dim),
    }
    batch_bytes = s["micro"] * s["T"]
    budget = budget_bytes or (int(budget_flops / target) if budget_flops else s["budget"])
    steps = max(1, math.ceil(budget / batch_bytes))
    plans = []
    for name, model in models.items():
        seq_bytes = model.seq_len * (bytes_per_token if model.vocab == "sentencepiece" else 1.0)
        micro = max(1, int(round(batch_bytes / seq_bytes)))
        datasets = data_dir / ("tokens" if model.vocab == "sentencepiece" else "bytes")
        overrides = [
            f"run_dir={out / 'runs' / name}", f"model.arch={model.arch}",
            f"model.vocab={model.vocab}", f"model.seq_len={model.seq_len}",
            f"model.patch_size={model.patch_size}", "model.dropout=0.0",
            f"model.global_model.dim={model.global_model.dim}",
            f"model.global_model.layers={model.global_model.layers}",
            f"model.global_model.heads={model.global_model.heads}",
            f"model.local_model.dim={model.local_model.dim}",
            f"model.local_model.layers={model.local_model.layers}",
            f"model.local_model.heads={model.local_model.heads}",
            "data.source=shards", f"data.datasets=[{datasets}]", "data.val_bytes=65536",
            f"data.lanes={LANES}",
            f"optim.lr={s['lr']}", f"optim.warmup_steps={min(500, max(10, steps // 10))}",
            f"train.max_steps={steps}", f"train.micro_batch_size={micro}",
            f"train.eval_interval={max(1, steps // 8)}", "train.sample_bytes=0",
            f"checkpoint.interval={max(1, steps // 8)}", "checkpoint.keep_last=1",
            f"logging.log_interval={max(1, steps // 50)}", "logging.progress_bar=true",
        ]
        if model.tokenizer:
            overrides.append(f"model.tokenizer={model.tokenizer}")
        cfg = load_config(None, overrides + list(extra))
        f = flops_per_byte(cfg.model, 259 if model.vocab == "bytes" else sp_vocab + 3,
                           bytes_per_token if model.vocab == "sentencepiece" else 1.0, training=True)
        plans.append(Plan(name, cfg, f, _count_params(cfg)))
    return plans


def _count_params(cfg: Config) -> int:
    from pretrain.model import build_model, count_params
    from pretrain.vocab import build_vocab

    vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
    return count_params(build_model(cfg.model, vocab.vocab_size, vocab.pad_id, vocab.bos_id))


# ------------------------------------------------------------------------------ steps


def prepare_data(args: argparse.Namespace, out: Path) -> Path:
    """Prepare the corpus once (data_prep.prepare is itself a no-op when up to date)."""
    if args.data:
        return Path(args.data)
    data_dir = out / "data"
    cmd = [sys.executable, "-m", "data_prep.prepare", "--output", str(data_dir),
           "--vocab-size", str(args.vocab_size), "--skip", "empty", "--skip", "invalid_utf8",
           "--max-bytes", str(args.max_corpus_bytes), "--val-fraction", str(args.val_fraction),
           # Many small shards, so that the loader's lanes draw each batch from many streams.
           "--shard-bytes", "512KiB"]
    cmd += [str(p) for p in args.corpus] if args.corpus else ["--stdlib"]
    _log(f"preparing data: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"data preparation failed (exit {proc.returncode})")
    return data_dir


def write_config(plan: Plan, out: Path) -> Path:
    cfg_path = out / "configs" / f"{plan.name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, to_yaml(plan.cfg))
    return cfg_path


def submit_slurm(plans: List[Plan], out: Path, dry_run: bool, slurm: List[str]) -> Dict[str, Any]:
    """Submit the unfinished runs as one Slurm job array (``launch.slurm --sweep``)."""
    runs = [{"config": str(write_config(plan, out)), "overrides": []}
            for plan in plans if not _finished(plan)]
    if not runs:
        return {"submitted": False, "reason": "every run has finished"}
    sweep = out / "sweep.yaml"
    atomic_write_text(sweep, json.dumps({"job_name": "compare", "output_dir": str(out / "launch"),
                                         "overrides": list(slurm), "runs": runs}, indent=2) + "\n")
    cmd = [sys.executable, "-m", "launch.slurm", "--sweep", str(sweep)] + (["--dry-run"] if dry_run
                                                                           else [])
    _log(f"submitting {len(runs)} runs: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"launch.slurm failed (exit {proc.returncode})")
    return {"submitted": not dry_run, "sweep": str(sweep), "launch": proc.stdout.strip()}


def train(plan: Plan, out: Path, nproc: int) -> Dict[str, Any]:
    """Train one model (skipped when its run already finished); returns its results.json."""
    run_dir = Path(plan.cfg.run_dir)
    results = run_dir / "results.json"
    if _finished(plan):
        done = json.loads(results.read_text())
        _log(f"{plan.name}: finished earlier ({done['steps']} steps), skipping")
        return done
    cfg_path = write_config(plan, out)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "pretrain.train", "--config", str(cfg_path)]
    else:
        cmd = [sys.executable, "-m", "pretrain.train", "--config", str(cfg_path)]
    _log(f"{plan.name}: training ({plan.cfg.train.max_steps} steps): {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{plan.name}: training failed (exit {proc.returncode}); rerun to resume")
    return json.loads(results.read_text())


def evaluate(plan: Plan, heldout: Path, modes: List[str], out: Path) -> Dict[str, Any]:
    """Bits per byte of the run's final checkpoint on the held-out bytes, cached per step."""
    from pretrain.evaluation import evaluate_bytes
    from pretrain.loading import load_for_inference

    run_dir = Path(plan.cfg.run_dir)
    cache = out / "eval" / f"{plan.name}.json"
    step = json.loads((run_dir / "results.json").read_text())["steps"]
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("step") == step and old.get("modes") == modes:
            return old
    cfg, model, vocab = load_for_inference(run_dir)
    text = heldout.read_bytes()
    patch = cfg.model.patch_size if cfg.model.arch == "megabyte" else None
    results: Dict[str, Any] = {}
    for mode in modes:
        if "strided" in mode and patch is None:
            continue
        t0 = time.perf_counter()
        r = evaluate_bytes(model, text, vocab, cfg.model.seq_len, mode, patch, None,
                           cfg.train.micro_batch_size, progress=True)
        r["seconds"] = time.perf_counter() - t0
        results[mode] = r
        _log(f"{plan.name}: {mode} {r['bpb']:.4f} bits per byte")
    record = {"name": plan.name, "step": step, "modes": modes, "results": results}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(record, indent=2) + "\n")
    return record


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


def write_report(out: Path, plans: List[Plan], trained: Dict[str, Dict[str, Any]],
                 evals: Dict[str, Dict[str, Any]], refs: Dict[str, float], bpw: Optional[float],
                 heldout_bytes: int, modes: List[str]) -> str:
    head = ["model", "params", "train FLOPs/byte", "training bytes", "wall time", "bytes/s"]
    head += [f"bpb {m}" for m in modes]
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
             "Strided inference applies to MEGABYTE only (n/a for the Transformers)."]
    if bpw:
        notes.append(f"Word perplexity = 2^(bpb x {bpw:.3f} bytes per whitespace-separated word).")
    else:
        notes.append("No word perplexity: the held-out bytes are not word-like text (not UTF-8, "
                     f"or more than {MAX_BYTES_PER_WORD:g} bytes per whitespace-separated word).")
    text = "# Compute-matched comparison\n\n" + table + "\n\n" + "\n".join(
        f"* {n}" for n in notes) + "\n\n![validation](val_bpb_vs_flops.png)\n![loss](loss_curves.png)\n"
    atomic_write_text(out / "report.md", text)
    return table


def plot(out: Path, plans: List[Plan]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for plan in plans:
        run = Path(plan.cfg.run_dir)
        vals = json.loads((run / "validation.json").read_text())
        ax.plot([v["train_flops"] for v in vals], [v["val_bpb"] for v in vals], marker="o",
                label=plan.name)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Validation bits per byte against training compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "val_bpb_vs_flops.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for plan in plans:
        run = Path(plan.cfg.run_dir)
        hist = [h for h in json.loads((run / "history.json").read_text()) if "bpb" in h]
        ax.plot([h["step"] for h in hist], [h["bpb"] for h in hist], label=plan.name)
    ax.set_xlabel("step (equal bytes per step for every model)")
    ax.set_ylabel("training bits per byte")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "loss_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.compare",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("corpus", nargs="*", type=Path, help="raw corpus files or directories")
    ap.add_argument("--stdlib", action="store_true", help="use Python's standard library (default)")
    ap.add_argument("--data", default=None, help="an already prepared data directory")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"), help="output directory")
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, default=None, help="training bytes per model")
    budget.add_argument("--budget-flops", type=float, default=None, help="training FLOPs per model")
    ap.add_argument("--vocab-size", type=int, default=4000, help="SentencePiece vocabulary")
    ap.add_argument("--max-corpus-bytes", type=int, default=16_000_000)
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="share of documents held out (by a hash of their id)")
    ap.add_argument("--eval-bytes", type=int, default=65_536, help="held-out bytes to score")
    ap.add_argument("--modes", default="basic,sliding,strided")
    ap.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun)")
    ap.add_argument("--slurm", action="store_true",
                    help="submit the training runs as one Slurm job array and exit; run the same "
                         "command again once they finished to evaluate and report")
    ap.add_argument("--slurm-dry-run", action="store_true", help="print the job array script only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set train.dtype=bf16")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    t0 = time.perf_counter()
    try:
        data_dir = prepare_data(args, out)
        tokens_manifest = json.loads((data_dir / "tokens" / "manifest.json").read_text())
        bpt = _bytes_per_token(tokens_manifest)
        import sentencepiece as spm

        sp_vocab = spm.SentencePieceProcessor(model_file=str(data_dir / "tokenizer.model")
                                              ).get_piece_size()
        plans = plan_models(args.size, data_dir, out, args.budget_bytes, args.budget_flops, bpt,
                            sp_vocab, overrides)
        base = plans[0].train_flops_per_byte
        for plan in plans:
            m = plan.cfg.model
            _log(f"{plan.name}: {plan.params / 1e6:.2f}M parameters, "
                 f"{plan.train_flops_per_byte / 1e6:.3f} MFLOP/byte training "
                 f"({plan.train_flops_per_byte / base - 1:+.1%} vs MEGABYTE), width "
                 f"{m.global_model.dim} x {m.global_model.layers} layers, context {m.seq_len}")
            if abs(plan.train_flops_per_byte / base - 1) > MATCH_TOLERANCE:
                raise RuntimeError(f"{plan.name}: no shape within {MATCH_TOLERANCE:.0%} of "
                                   "MEGABYTE's FLOPs per byte")
        from pretrain.data import build_data
        from pretrain.vocab import ByteVocab

        heldout = out / "heldout.bin"
        mb_cfg = load_config(None, ["data.source=shards", f"data.datasets=[{data_dir / 'bytes'}]",
                                    f"data.val_bytes={args.eval_bytes}"])
        text = build_data(mb_cfg, ByteVocab(), 1).val_text
        if not text:
            raise ValueError(f"the validation split of {data_dir / 'bytes'} is empty: raise "
                             "--val-fraction or use a larger corpus")
        if not heldout.is_file() or heldout.read_bytes() != text:
            heldout.write_bytes(text)
        if args.slurm or args.slurm_dry_run:
            pending = [p for p in plans if not _finished(p)]
            if pending:
                submitted = submit_slurm(plans, out, args.slurm_dry_run, [
                    o for o in overrides if o.startswith("slurm.")])
                print(json.dumps(submitted))
                return 0
        trained = {p.name: train(p, out, args.nproc) for p in plans}
        evals = {p.name: evaluate(p, heldout, modes, out) for p in plans}
        refs = compressor_bpb(text)
        bpw = bytes_per_word(text)
        table = write_report(out, plans, trained, evals, refs, bpw, len(text), modes)
        plots = plot(out, plans)
    except (ConfigError, OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n" + table + "\n", file=sys.stderr)
    print(f"report: {out / 'report.md'}; plots: {', '.join(plots)}; "
          f"{(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    summary = {"report": str(out / "report.md"), "plots": plots, "heldout_bytes": len(text),
               "references": refs, "bytes_per_word": bpw,
               "models": {p.name: {"params": p.params, "train_flops_per_byte": p.train_flops_per_byte,
                                   "run_dir": p.cfg.run_dir, "training": trained[p.name],
                                   "eval": evals[p.name]["results"]} for p in plans}}
    print(json.dumps(summary))
    return 0


def _finished(plan: Plan) -> bool:
    """True when the run finished with exactly this config; a run directory trained with another
    config is an error (never silently reused or mixed)."""
    run_dir = Path(plan.cfg.run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file() and to_yaml(load_config(saved)) != to_yaml(plan.cfg):
        raise RuntimeError(f"{run_dir} holds a run with a different config (other data, size or "
                           "budget); choose another --out or delete that directory")
    results = run_dir / "results.json"
    return results.is_file() and json.loads(results.read_text()).get("steps") == \
        plan.cfg.train.max_steps


def _bytes_per_token(manifest: Dict[str, Any]) -> float:
    """Bytes per token of the train split from the token manifest."""
    for key in ("bytes_per_token", "splits"):
        if key in manifest:
            value = manifest[key]
            if isinstance(value, dict) and "train" in value:
                value = value["train"]
            if isinstance(value, dict):
                value = value.get("bytes_per_token", value.get("bytes", 0) / max(value.get("tokens", 1), 1))
            return float(value)
    raise KeyError("the token manifest has no bytes-per-token figure")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
