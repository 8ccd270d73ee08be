"""A real-text retrieval task built offline from the docstrings of the installed Python standard library.

Each function or class docstring of the standard library (tests, idlelib and site-packages excluded)
with a summary paragraph of >= 6 words and a body of >= 25 words gives one pair:

    query   = the summary paragraph        ("Return the number of items in the deque ...")
    passage = the rest of the docstring    (the explanation, arguments, examples)

Query -> passage retrieval among all passages by cosine similarity of the sentence embeddings:
recall@1 and mean reciprocal rank (MRR). Pairs are split by a hash of their qualified name into an
evaluation set and a disjoint calibration set (for the peers that need real calibration data). The texts
depend on the installed Python version; `describe()` prints the count and a digest of the set.

Only the standard library (plus the `tokenizers` package for `encode`, a bench extra).
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SKIP_DIRS = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__")
MIN_SUMMARY, MIN_BODY = 6, 25


@dataclass(frozen=True)
class Pair:
    where: str        # module path : qualified name
    query: str
    passage: str


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _pair(where: str, doc: str) -> Pair | None:
    paras = [p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    if len(paras) < 2:
        return None
    summary, body = _clean(paras[0]), _clean(" ".join(paras[1:]))
    if len(summary.split()) < MIN_SUMMARY or len(body.split()) < MIN_BODY:
        return None
    return Pair(where, summary, body)


def _walk(tree: ast.AST, prefix: str):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}" if prefix else node.name
            doc = ast.get_docstring(node)
            if doc:
                yield name, doc
            yield from _walk(node, name)


def stdlib_pairs() -> list[Pair]:
    """All pairs, sorted by where; duplicate queries or passages keep their first occurrence."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for name, doc in _walk(tree, ""):
            p = _pair(f"{rel}:{name}", doc)
            if p is not None and p.query not in seen and p.passage not in seen:
                seen.update((p.query, p.passage))
                pairs.append(p)
    return pairs


def _bucket(where: str) -> int:
    return int(hashlib.sha1(where.encode()).hexdigest()[:8], 16) % 8


def split(pairs: list[Pair], n_eval: int, n_calib: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic disjoint sets: calibration from hash bucket 0, evaluation from the others, each
    an evenly spaced subset of at most n pairs."""
    calib = [p for p in pairs if _bucket(p.where) == 0]
    evals = [p for p in pairs if _bucket(p.where) != 0]

    def spaced(items, n):
        if len(items) <= n:
            return items
        return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
    return spaced(evals, n_eval), spaced(calib, n_calib)


def describe(pairs: list[Pair]) -> str:
    digest = hashlib.sha1("\n".join(p.where for p in pairs).encode()).hexdigest()[:10]
    return f"{len(pairs)} pairs (sha1 {digest})"


def encode(tokenizer_path: str | Path, texts: list[str], length: int = 128) -> dict[str, np.ndarray]:
    """input_ids / attention_mask [N, length] int64, truncated and padded with the tokenizer's own pad
    token (BERT word-piece's [PAD] = 0; MPNet's / RoBERTa's <pad> = 1, where 0 is the start token)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(length)
    own = tok.padding or {}                   # the file's padding settings, when it has them
    pad = (own["pad_token"], own["pad_id"]) if own else next(
        ((t, tok.token_to_id(t)) for t in ("<pad>", "[PAD]") if tok.token_to_id(t) is not None), ("[PAD]", 0))
    tok.enable_padding(length=length, pad_id=pad[1], pad_token=pad[0])
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def encoded_sets(tokenizer_path: str | Path, n_eval: int, n_calib: int
                 ) -> tuple[list[Pair], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(evaluation pairs, their queries then passages encoded, the calibration pairs' encoded likewise)."""
    evals, calibs = split(stdlib_pairs(), n_eval, n_calib)
    both = [encode(tokenizer_path, [p.query for p in ps] + [p.passage for p in ps]) for ps in (evals, calibs)]
    return evals, both[0], both[1]


def retrieval(queries: np.ndarray, passages: np.ndarray) -> dict[str, float]:
    """recall@1 and MRR of query i -> passage i by cosine similarity."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    p = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    sim = q @ p.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)      # passages scoring above the right one
    return {"recall@1": float(np.mean(rank == 0)), "mrr": float(np.mean(1.0 / (1 + rank)))}


def cosines(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    num = np.sum(ref * test, axis=1)
    return num / (np.linalg.norm(ref, axis=1) * np.linalg.norm(test, axis=1) + 1e-30)
