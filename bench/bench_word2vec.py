"""Word2vec benchmark: our SGNS (model/word2vec.py) against gensim's Word2Vec on the same tokens.

Both train skip-gram with negative sampling with the `embeddings` settings of params.yaml (dim,
window, min_count, negative, sample, epochs, lr; gensim with workers=threads, ours with `threads`
Python threads) on the same sentences (the data stage's train split, tokenized as the stage
does), then both sets of vectors go through the same evaluators: analogy accuracy (3CosAdd,
`restrict_vocab` most frequent words), SimLex-999 and WordSim-353 Spearman. Runs alternate
(ours, gensim, ours, ...) and each row is the median of `--repeats`; the ratio compares numbers
measured in this run. Prints a markdown table; `--write FILE` saves it with the settings.

    python bench/bench_word2vec.py                          # out/data/train.parquet, params.yaml
    python bench/bench_word2vec.py --epochs 5 --repeats 3 --write /tmp/w2v.md
Leaves out: hierarchical softmax and CBOW (we implement neither), memory use.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import word2vec as w2v  # noqa: E402
from tasks.data import read_texts  # noqa: E402
from tasks.embeddings import evaluate, sgns_config, train_gensim  # noqa: E402
from tasks.params import load_params  # noqa: E402


def train_ours(p, seed, vocab, ids, sent):
    t0 = time.perf_counter()
    model = w2v.SGNS(vocab.counts, sgns_config(p, seed))
    losses = model.train(ids, sent)
    return time.perf_counter() - t0, model.w_in.numpy(), vocab.words, losses[-1]


def median_row(runs: list[tuple], p) -> dict:
    seconds = statistics.median(r[0] for r in runs)
    scores = [evaluate(r[1], r[2], p.restrict_vocab) for r in runs]
    keys = ("analogy_accuracy", "analogy_covered", "simlex_spearman", "wordsim_spearman")
    row = {k: statistics.median(s[k] for s in scores) for k in keys}
    losses = [r[3] for r in runs if r[3] is not None]
    return row | {"seconds": seconds, "loss": statistics.median(losses) if losses else None}


def table(ours: dict, theirs: dict) -> str:
    lines = [
        "| | ours (torch SGNS) | gensim Word2Vec | ours / gensim |",
        "|---|---|---|---|",
        f"| training time (s) | {ours['seconds']:.1f} | {theirs['seconds']:.1f} | "
        f"{ours['seconds'] / theirs['seconds']:.2f}x |",
    ]
    for key, name, fmt in (
        ("analogy_accuracy", "analogy accuracy", "{:.2%}"),
        ("analogy_covered", "analogy questions covered", "{:.0f}"),
        ("simlex_spearman", "SimLex-999 Spearman", "{:.3f}"),
        ("wordsim_spearman", "WordSim-353 Spearman", "{:.3f}"),
    ):
        a, b = ours[key], theirs[key]
        ratio = f"{a / b:.2f}" if b else "-"
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    lines.append(f"| final SGNS loss (ours) | {ours['loss']:.4f} | - | - |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("out/data/train.parquet"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--epochs", type=int, help="override embeddings.epochs")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--write", type=Path, help="also write the result (markdown) here")
    args = ap.parse_args()

    params = load_params(args.params)
    p = params.embeddings
    if args.epochs:
        p = p.model_copy(update={"epochs": args.epochs})
    sentences = [s for text in read_texts(args.corpus) for s in w2v.tokenize(text)]
    vocab = w2v.build_vocab(sentences, p.min_count)
    ids, sent = w2v.encode(sentences, vocab)

    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(train_ours(p, params.seed + r, vocab, ids, sent))
        theirs.append(train_gensim(p, params.seed + r, sentences))
        print(f"repeat {r + 1}: ours {ours[-1][0]:.1f} s, gensim {theirs[-1][0]:.1f} s", flush=True)
    settings = (
        f"{args.corpus}: {len(sentences)} sentences, {len(ids)} words kept, vocabulary "
        f"{len(vocab)}; dim {p.dim}, window {p.window}, negative {p.negative}, min_count "
        f"{p.min_count}, sample {p.sample}, epochs {p.epochs}, lr {p.lr}->{p.min_lr}, "
        f"threads/workers {p.threads}; ours: batch {p.batch_size} pairs, {p.shared_negatives} "
        f"shared negatives per batch; median of {args.repeats} run(s)"
    )
    result = table(median_row(ours, p), median_row(theirs, p)) + "\n\n" + settings + "\n"
    print(result)
    if args.write:
        args.write.write_text(result, encoding="utf-8")


if __name__ == "__main__":
    main()
