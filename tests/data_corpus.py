"""A small mixed corpus for the data tests: text, nested directories, binary, a document larger
than the sample limit, JSONL and gzipped JSONL, with every document's expected bytes."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Dict

from data_prep.sources import stdlib_dir

SOURCES = ("textwrap.py", "argparse.py", "html/entities.py", "codecs.py")


def real_text() -> bytes:
    return b"".join((stdlib_dir() / name).read_bytes() for name in SOURCES)


def make_corpus(root: Path, n_text: int = 40, seed: int = 0) -> Dict[str, bytes]:
    """Write the corpus under ``root``; return {document id: bytes} as data_prep.bytes names them."""
    rng = random.Random(seed)
    text = real_text()
    expected: Dict[str, bytes] = {}

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = data

    for i in range(n_text):
        start = rng.randrange(0, len(text) - 7000)
        body = text[start:start + rng.randrange(300, 6000)]
        put(f"docs/{'sub/' if i % 3 == 0 else ''}doc{i:03d}.py",
            f"# document {i} caf\u00e9 \u4e2d\u6587\n".encode() + body)
    put("bin/blob.bin", bytes(range(256)) * 12 + b"\x00" * 100 + b"\xff\xfe")
    put("big.txt", b"".join(f"line {k}: ".encode() + text[k * 50:k * 50 + 90] + b"\n" for k in range(300)))
    lines = []
    for k in range(15):
        piece = text[k * 400:k * 400 + 200 + k * 37].decode("utf-8", "replace")
        t = f"json doc {k} \u00fcber \U0001f600 " + piece
        lines.append(json.dumps({"text": t, "n": k}))
        expected[f"data.jsonl:{len(lines)}"] = t.encode("utf-8")
        if k == 7:
            lines.append("")  # a blank line: counted, not a document
    (root / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    gz_lines = []
    for k in range(10):
        t = f"gz doc {k}\n\tcontrol \x01\x1f end " + "x" * (k * 91)
        gz_lines.append(json.dumps({"text": t}))
        expected[f"more.jsonl.gz:{k + 1}"] = t.encode("utf-8")
    with gzip.open(root / "more.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(gz_lines) + "\n")
    return expected
