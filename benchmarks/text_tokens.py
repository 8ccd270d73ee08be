"""Real English sentences from the Python standard library's docstrings, tokenized for BERT-family encoders.

Offline text for calibration / evaluation of token models (bench only: needs `tokenizers` and
../shared/data/bert_uncased_tokenizer.json). Sentences come from the docstrings of stdlib modules in a
fixed order; `--skip` takes a disjoint slice (e.g. calibration vs evaluation).

    python benchmarks/text_tokens.py -o calib.npz --n 32 --seq 128
    python benchmarks/text_tokens.py -o eval.npz --n 64 --seq 128 --skip 32
"""

from __future__ import annotations

import argparse
import ast
import re
import sysconfig
from pathlib import Path

import numpy as np

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "bert_uncased_tokenizer.json"


def sentences(min_words: int = 8, max_words: int = 60):
    """Sentences of stdlib module/class/function docstrings, deduplicated, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen = set()
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if min_words <= len(words) <= max_words and s[0].isupper() and s not in seen \
                        and not re.search(r"[>{}\[\]=_]", s):
                    seen.add(s)
                    yield s


def tokenize(texts, seq: int, tokenizer: Path = TOKENIZER) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    enc = tok.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--stride", type=int, default=7, help="take every k-th sentence (topic spread)")
    args = ap.parse_args()
    pool = list(sentences())[::args.stride]
    texts = pool[args.skip:args.skip + args.n]
    if len(texts) < args.n:
        raise SystemExit(f"only {len(texts)} sentences available")
    np.savez(args.output, **tokenize(texts, args.seq))
    print(f"{args.output}: {len(texts)} sentences x {args.seq} tokens (first: {texts[0]!r})")


if __name__ == "__main__":
    main()
