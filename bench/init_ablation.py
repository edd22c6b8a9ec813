"""Issue 12 ablation: held-out bits per byte early in training for MEGABYTE init recipes.

``python -m bench.init_ablation --data PREPARED --out DIR [--variants paper,scaled] [--stop 800]``

``PREPARED`` is a directory made by ``python -m data_prep.prepare`` (as ``pretrain.compare``
prepares it). The configs are exactly compare's ``tiny`` ones (``pretrain.compare.plan_models``:
same shapes, LR, warmup, schedule, batch, data loader) with ``model.init=VARIANT``, plus the
FLOP-matched byte Transformer as compare builds it (``--variants ...,transformer_bytes``).
``--stop N`` ends a run after N updates of the *same* (full-length) LR schedule. Validation is
basic-mode bits per byte on the same ``data.val_bytes`` held-out bytes compare scores
(``OUT/heldout.bin``); their byte-unigram entropy is printed beside. One JSON line per run on
stdout; the per-step numbers also go to ``OUT/VARIANT.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List

import sentencepiece as spm
import torch

from pretrain.comparison.matching import bytes_per_token, plan_models
from pretrain.comparison.report import unigram_entropy
from pretrain.config import derive
from pretrain.training.trainer import Trainer




def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.init_ablation", description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default="paper,scaled,transformer_bytes")
    ap.add_argument("--stop", type=int, default=0, help="stop after this many updates (0: all)")
    ap.add_argument("--evals", default="25,50,100,150,200,300,400,500,600,700,800")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bpt = bytes_per_token(json.loads((args.data / "tokens" / "manifest.json").read_text()))
    sp_vocab = spm.SentencePieceProcessor(
        model_file=str(args.data / "tokenizer.model")).get_piece_size()
    evals = {int(s) for s in args.evals.split(",")}
    for variant in args.variants.split(","):
        arch = "transformer_bytes" if variant == "transformer_bytes" else "megabyte"
        extra = [f"train.seed={args.seed}", "logging.tensorboard=false",
                 "logging.progress_bar=false"] + list(args.overrides)
        if arch == "megabyte":
            extra.append(f"model.init={variant}")
        plans = plan_models("tiny", args.data, args.out, None, None, bpt, sp_vocab, extra)
        plan = next(p for p in plans if p.name == arch)
        cfg = plan.cfg
        cfg.run_dir = str(args.out / "runs" / variant)
        trainer = Trainer(cfg, derive(cfg, 1))
        trainer.maybe_resume()  # a run stopped by --stop continues exactly (same schedule)
        saved = args.out / f"{variant}.json"
        curve = [c for c in json.loads(saved.read_text())["curve"] if c["step"] <= trainer.step
                 ] if saved.is_file() and trainer.step else []
        val = trainer.val_text
        h1 = unigram_entropy(val)
        stop = args.stop or cfg.train.max_steps
        t0 = time.perf_counter()
        while trainer.step < stop:
            stats = trainer.train_step()
            if trainer.step in evals or trainer.step == stop:
                bpb = trainer.evaluate()["bpb"]
                curve.append({"step": trainer.step, "val_bpb": bpb, "train_bpb": stats["bpb"],
                              "seconds": time.perf_counter() - t0})
                print(f"[{variant}] step {trainer.step}: val {bpb:.4f} bpb (train {stats['bpb']:.3f}"
                      f", unigram {h1:.4f}) {time.perf_counter() - t0:.0f}s", flush=True)
        trainer.save()
        record = {"variant": variant, "arch": arch, "data": str(args.data), "val_bytes": len(val),
                  "unigram_entropy": h1, "max_steps": cfg.train.max_steps,
                  "lr": cfg.optim.lr, "warmup": cfg.optim.warmup_steps,
                  "train_flops_per_byte": plan.train_flops_per_byte, "params": plan.params,
                  "curve": curve}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{variant}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "curve"}
                         | {"bpb": {c["step"]: round(c["val_bpb"], 4) for c in curve}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
