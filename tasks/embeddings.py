"""embeddings stage: word2vec (skip-gram, negative sampling) on the train split, evaluated on the
word-analogy set and the SimLex-999 / WordSim-353 similarity sets that ship with gensim.

Tokens: each document's lines (paragraphs) are sentences of lowercase words, a word being a run
of letters or a run of digits (`model.word2vec.tokenize`: "Canada's 4,196" -> canada, s, 4,
196). The algorithm and the loss definition are in model/word2vec.py.

    python -m tasks.embeddings
Writes out/embeddings/{vectors.txt (word2vec text format), neighbours.md},
metrics/embeddings.json and plots/embeddings/loss.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from model import word2vec as w2v
from tasks import tracking
from tasks.common import log, run_stage
from tasks.data import OUT_DIR as DATA_DIR
from tasks.data import gensim_test_data, read_texts
from tasks.io import METRICS, OUT, PLOTS, atomic_dir, write_json, write_text
from tasks.params import EmbeddingsParams, load_params

OUT_DIR = OUT / "embeddings"
BENCHMARKS = {
    "analogy": "questions-words.txt",
    "simlex": "simlex999.txt",
    "wordsim": "wordsim353.tsv",
}


def sgns_config(p: EmbeddingsParams, seed: int) -> w2v.SGNSConfig:
    keys = ("dim", "window", "negative", "shared_negatives", "sample", "epochs", "lr", "min_lr")
    keys += ("batch_size", "threads")
    return w2v.SGNSConfig(seed=seed, **{k: getattr(p, k) for k in keys})


def load_corpus(min_count: int) -> tuple[list[list[str]], w2v.Vocab, np.ndarray, np.ndarray]:
    """Sentences of the train split, the vocabulary and the encoded corpus (ids, sentence ids)."""
    sentences = [s for text in read_texts(DATA_DIR / "train.parquet") for s in w2v.tokenize(text)]
    vocab = w2v.build_vocab(sentences, min_count)
    ids, sent = w2v.encode(sentences, vocab)
    return sentences, vocab, ids, sent


def benchmark_file(name: str) -> Path:
    path = gensim_test_data() / BENCHMARKS[name]
    if not path.exists():
        raise FileNotFoundError(f"{path}: gensim's {name} benchmark is missing; reinstall gensim")
    return path


def evaluate(vectors: np.ndarray, words: list[str], restrict_vocab: int) -> dict:
    """Analogy accuracy (with coverage) and Spearman correlations, flat keys."""
    questions = w2v.read_analogies(benchmark_file("analogy"))
    out = {
        f"analogy_{k}": v
        for k, v in w2v.analogy_accuracy(vectors, words, questions, restrict_vocab).items()
    }
    for name in ("simlex", "wordsim"):
        pairs = w2v.read_word_pairs(benchmark_file(name))
        scores = w2v.similarity_spearman(vectors, words, pairs)
        out |= {f"{name}_{k}": v for k, v in scores.items()}
    return out


def neighbours_table(vectors: np.ndarray, words: list[str], queries: list[str], k: int) -> str:
    """Markdown: one row per query word with its k nearest neighbours (cosine)."""
    rows = ["| word | nearest neighbours (cosine) |", "|---|---|"]
    index = set(words)
    for q in queries:
        if q not in index:
            rows.append(f"| {q} | (not in the vocabulary) |")
            continue
        near = ", ".join(f"{w} {s:.2f}" for w, s in w2v.nearest(vectors, words, q, k))
        rows.append(f"| {q} | {near} |")
    return "\n".join(rows) + "\n"


def word2vec_text(vectors: np.ndarray, words: list[str]) -> str:
    """The word2vec text format: a 'count dim' header, then one 'word v1 v2 ...' line each."""
    lines = [f"{len(words)} {vectors.shape[1]}"]
    lines += [
        w + " " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(words, vectors, strict=True)
    ]
    return "\n".join(lines) + "\n"


def train(p: EmbeddingsParams, seed: int, vocab, ids, sent) -> tuple[w2v.SGNS, list, float, float]:
    model = w2v.SGNS(vocab.counts, sgns_config(p, seed))
    rates = []

    def on_epoch(epoch: int, loss: float, pairs_per_s: float) -> None:
        rates.append(pairs_per_s)
        log.info(
            "embeddings | epoch %d/%d | loss %.4f | %.0f pairs/s",
            epoch + 1,
            p.epochs,
            loss,
            pairs_per_s,
        )
        tracking.log_metrics({"train/loss": loss, "train/pairs_per_s": pairs_per_s}, epoch + 1)

    t0 = time.perf_counter()
    losses = model.train(ids, sent, on_epoch)
    return model, losses, time.perf_counter() - t0, float(np.median(rates))


def train_gensim(p: EmbeddingsParams, seed: int, sentences: list[list[str]]) -> tuple:
    """The peer: gensim's Word2Vec, skip-gram with negative sampling, same settings as ours.

    Returns (seconds, vectors, words, None); None where ours has a final loss (gensim's
    reported loss is a different quantity)."""
    from gensim.models import Word2Vec

    t0 = time.perf_counter()
    model = Word2Vec(
        sentences,
        vector_size=p.dim,
        window=p.window,
        min_count=p.min_count,
        negative=p.negative,
        sample=p.sample,
        epochs=p.epochs,
        alpha=p.lr,
        min_alpha=p.min_lr,
        sg=1,
        hs=0,
        workers=p.threads,
        seed=seed,
    )
    return time.perf_counter() - t0, model.wv.vectors, model.wv.index_to_key, None


def gensim_metrics(p: EmbeddingsParams, seed: int, sentences: list[list[str]]) -> dict:
    """gensim trained on the same sentences and scored by the same evaluators, `gensim_` keys."""
    seconds, vectors, words, _ = train_gensim(p, seed, sentences)
    scores = evaluate(vectors, words, p.restrict_vocab)
    log.info(
        "embeddings: gensim analogy %.2f%%, SimLex %.3f, WordSim %.3f, %.1f s",
        100 * scores["analogy_accuracy"],
        scores["simlex_spearman"],
        scores["wordsim_spearman"],
        seconds,
    )
    return {f"gensim_{k}": v for k, v in scores.items()} | {"gensim_train_seconds": seconds}


def main() -> None:
    params = load_params()
    p = params.embeddings
    with tracking.stage_run("embeddings", {"embeddings": p.model_dump(), "seed": params.seed}):
        sentences, vocab, ids, sent = load_corpus(p.min_count)
        log.info(
            "embeddings: %d sentences, %d words kept, vocabulary %d (min_count %d)",
            len(sentences),
            len(ids),
            len(vocab),
            p.min_count,
        )
        model, losses, seconds, rate = train(p, params.seed, vocab, ids, sent)
        vectors = model.w_in.numpy()
        metrics = {
            "final_loss": losses[-1],
            "loss_per_epoch": [round(x, 5) for x in losses],
            **evaluate(vectors, vocab.words, p.restrict_vocab),
            "vocab_size": len(vocab),
            "tokens": len(ids),
            "train_seconds": seconds,
            "pairs_per_s": rate,
        }
        if p.compare_gensim:  # the peer, in this run, for the report card's ratio
            metrics |= gensim_metrics(p, params.seed, sentences)
        write_outputs(vectors, vocab.words, p, losses, metrics)
    log.info(
        "embeddings: loss %.4f, analogy %.2f%% (%d covered), SimLex %.3f, WordSim %.3f, %.1f s",
        losses[-1],
        100 * metrics["analogy_accuracy"],
        metrics["analogy_covered"],
        metrics["simlex_spearman"],
        metrics["wordsim_spearman"],
        seconds,
    )


def write_outputs(vectors, words, p: EmbeddingsParams, losses: list, metrics: dict) -> None:
    table = neighbours_table(vectors, words, p.neighbour_words, p.neighbours)
    with atomic_dir(OUT_DIR) as tmp:
        (tmp / "vectors.txt").write_text(word2vec_text(vectors, words), encoding="utf-8")
        (tmp / "neighbours.md").write_text(table, encoding="utf-8")
    metrics = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
    write_json(METRICS / "embeddings.json", metrics)
    rows = "\n".join(f"{e + 1},{loss:.6f}" for e, loss in enumerate(losses))
    write_text(PLOTS / "embeddings" / "loss.csv", f"epoch,loss\n{rows}\n")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    tracking.log_metrics(scalars, step=len(losses))
    for path in (OUT_DIR / "neighbours.md", METRICS / "embeddings.json"):
        tracking.log_artifact(path)


if __name__ == "__main__":
    run_stage(main)
