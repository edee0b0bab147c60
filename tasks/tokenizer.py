"""tokenizer stage: train the byte-level BPE on the train split, encode both splits.

Each document becomes `<|endoftext|>` followed by its tokens, so documents stay separated in
the flat token arrays. Special-token strings inside the corpus are encoded as plain text.

    python -m tasks.tokenizer
Writes out/tokenizer/{tokenizer.json, vocab.txt, train.npy, val.npy} and metrics/tokenizer.json.
"""

from __future__ import annotations

import time

import numpy as np

from model.tokenizer import SPLIT_PATTERNS, Tokenizer
from tasks import tracking
from tasks.common import log, run_stage
from tasks.data import OUT_DIR as DATA_DIR
from tasks.data import read_texts
from tasks.io import METRICS, OUT, atomic_dir, write_json
from tasks.params import load_params

OUT_DIR = OUT / "tokenizer"


def encode_documents(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Flat token array: [eot, doc0..., eot, doc1..., ...]; uint16 when the vocab fits."""
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    ids = tok.encode_batch(texts)
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=dtype)
    pos = 0
    for doc in ids:
        out[pos] = tok.eot_id
        out[pos + 1 : pos + 1 + len(doc)] = doc
        pos += len(doc) + 1
    return out


def save_tokens(path, tokens: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, tokens, allow_pickle=False)


def load_tokens(split: str) -> np.ndarray:
    """Memory-mapped token array of a split written by this stage."""
    path = OUT_DIR / f"{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the tokenizer stage first")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_tokenizer() -> Tokenizer:
    return Tokenizer.load(OUT_DIR / "tokenizer.json")


def main() -> None:
    params = load_params()
    p = params.tokenizer
    train_texts, val_texts = (
        read_texts(DATA_DIR / "train.parquet"),
        read_texts(DATA_DIR / "val.parquet"),
    )
    with tracking.stage_run("tokenizer", {"tokenizer": p.model_dump()}):
        t0 = time.perf_counter()
        pattern = SPLIT_PATTERNS[p.split]
        tok = Tokenizer.train(train_texts, p.vocab_size, pattern=pattern, progress=True)
        train_seconds = time.perf_counter() - t0

        with atomic_dir(OUT_DIR) as tmp:
            tok.save(tmp / "tokenizer.json")
            tok.save_vocab(tmp / "vocab.txt")
            t0 = time.perf_counter()
            counts = {}
            for split, texts in (("train", train_texts), ("val", val_texts)):
                tokens = encode_documents(tok, texts)
                save_tokens(tmp / f"{split}.npy", tokens)
                counts[split] = int(len(tokens) - len(texts))  # separators excluded
            encode_seconds = time.perf_counter() - t0

        n_bytes = sum(len(t.encode("utf-8")) for t in train_texts + val_texts)
        val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
        metrics = {
            "vocab_size": tok.vocab_size,
            "train_seconds": round(train_seconds, 3),
            "encode_mb_per_s": round(n_bytes / 1e6 / encode_seconds, 3),
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "val_bytes_per_token": round(val_bytes / max(counts["val"], 1), 4),
        }
        write_json(METRICS / "tokenizer.json", metrics)
        tracking.log_metrics(metrics)
        tracking.log_artifact(OUT_DIR / "tokenizer.json")
        tracking.log_artifact(OUT_DIR / "vocab.txt")
        log.info(
            "tokenizer: vocab %d trained in %.1fs; val %.3f bytes/token; %d train tokens",
            tok.vocab_size,
            train_seconds,
            metrics["val_bytes_per_token"],
            counts["train"],
        )


if __name__ == "__main__":
    run_stage(main)
