"""Generate bytes (or subword text) from a checkpoint with the hierarchical KV cache.

``python -m pretrain.generate --checkpoint RUN_DIR --prompt "def main(" [key=value ...]``

The continuation is printed on stdout (decoded as UTF-8; bytes that are not valid UTF-8 are
shown as \\xNN escapes). Speed (bytes per second) goes to stderr, or everything as one JSON
object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from pretrain.config import ConfigError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.generate",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="run directory (uses checkpoints/latest) or checkpoint directory")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", default=None,
                     help="prompt text (repeat for a batch of prompts); default: empty prompt")
    src.add_argument("--prompt-file", type=Path, action="append",
                     help="read a prompt from a file as raw bytes (repeatable)")
    parser.add_argument("--max-new", type=int, default=256, help="ids to generate (default 256)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0 = off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.device=cpu")
    args = parser.parse_args(argv)

    from pretrain.inference.generation import Sampling, generate
    from pretrain.inference.loading import load_for_inference

    try:
        if args.prompt_file:
            prompts = [p.read_bytes() for p in args.prompt_file]
        else:
            prompts = [p.encode("utf-8") for p in (args.prompt or [""])]
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
        cfg, model, vocab = load_for_inference(args.checkpoint, args.overrides)
        encoded = [vocab.encode(p) for p in prompts]
        out = generate(model, encoded, args.max_new, sampling, seed=args.seed,
                       eos_id=vocab.eos_id, banned=[vocab.pad_id, vocab.bos_id])
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    texts = [vocab.decode(ids) for ids in out["outputs"]]
    n_bytes = sum(len(t) for t in texts)
    speed = n_bytes / max(out["seconds"], 1e-9)
    if args.json:
        print(json.dumps({"outputs": [t.decode("utf-8", errors="backslashreplace") for t in texts],
                          "bytes": n_bytes, "seconds": out["seconds"], "bytes_per_s": speed}))
    else:
        for prompt, text in zip(prompts, texts):
            sys.stdout.write((prompt + text).decode("utf-8", errors="backslashreplace") + "\n")
        print(f"generated {n_bytes} bytes in {out['seconds']:.2f}s ({speed:.1f} bytes/s)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
