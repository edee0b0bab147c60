"""Tokenizer benchmark: our byte-level BPE against Hugging Face `tokenizers` and raw tiktoken.

For each vocab size, on the same text: training time (ours vs HF's BPE trainer with the same
split pattern, special tokens and total vocab size), batch-encoding throughput (our
`encode_batch`, HF `encode_batch`, tiktoken on our merges), and compression (bytes per token on
held-out text, ours vs HF). Prints one markdown table; every ratio compares two numbers measured
in this run, interleaved, as medians of `--repeats`.

    python bench/bench_tokenizer.py                       # out/data/{train,val}.parquet
    python bench/bench_tokenizer.py --corpus a.parquet --val b.parquet
    python bench/bench_tokenizer.py --corpus text.txt --quick

A .parquet file gives one document per row of its `text` column; a .txt file is one document
(as in the data stage). Without `--val`, the last 10% of the characters are held out.
Leaves out: memory use, and encoding with more threads than the machine's cores.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
import tokenizers
from tokenizers import Regex, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT4_SPLIT_PATTERN, Tokenizer  # noqa: E402

DEFAULT_TRAIN, DEFAULT_VAL = Path("out/data/train.parquet"), Path("out/data/val.parquet")


def load_docs(path: Path) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path}: not found (run `python -m tasks.data`, or pass --corpus)")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise SystemExit(f"{path}: no 'text' column (columns: {table.column_names})")
        return [t for t in table.column("text").to_pylist() if t]
    raise SystemExit(f"{path}: expected a .txt or .parquet file")


def hold_out(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Split off the last `fraction` of the characters (cutting one document if needed)."""
    cut = int(sum(map(len, docs)) * (1 - fraction))
    seen = 0
    for k, doc in enumerate(docs):
        if seen + len(doc) >= cut:
            at = cut - seen
            return docs[:k] + [doc[:at]], [doc[at:]] + docs[k + 1 :]
        seen += len(doc)
    return docs, []


def truncate(docs: list[str], n_chars: int) -> list[str]:
    out, total = [], 0
    for doc in docs:
        out.append(doc[: n_chars - total])
        total += len(out[-1])
        if total >= n_chars:
            break
    return out


def hf_train(docs: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    """HF byte-level BPE: our split pattern, then ByteLevel without its own regex."""
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer)
    return hf


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_times(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Run each fn `repeats` times, interleaved; return median seconds and the last results."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}, results


def bench_one(vocab_size: int, train: list[str], val: list[str], args) -> dict:
    # training: ours vs HF, same text and total vocab size
    trainers_ = {
        "ours": lambda: Tokenizer.train(train, vocab_size),
        "hf": lambda: hf_train(train, vocab_size),
    }
    t, models = median_times(trainers_, args.train_repeats)
    ours, hf = models["ours"], models["hf"]

    # encoding throughput on all the text, and tiktoken on our merges without our wrapper
    n_ranks = ours.vocab_size - len(ours.special_tokens)
    ranks = {ours.token_bytes(i): i for i in range(n_ranks)}
    raw = tiktoken.Encoding("raw", pat_str=ours.pattern, mergeable_ranks=ranks, special_tokens={})
    docs = train + val
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    e, _ = median_times(
        {
            "ours": lambda: ours.encode_batch(docs, num_threads=args.threads),
            "hf": lambda: hf.encode_batch(docs),
            "tiktoken": lambda: raw.encode_ordinary_batch(docs, num_threads=args.threads),
        },
        args.repeats,
    )

    # compression on held-out text, and the HF export giving our ids
    n_bytes = sum(len(d.encode("utf-8")) for d in val)
    our_ids = ours.encode_batch(val)
    with tempfile.TemporaryDirectory() as tmp:
        ours.to_hf(Path(tmp) / "tokenizer.json")
        exported = tokenizers.Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
    same = [enc.ids for enc in exported.encode_batch(val)] == our_ids
    return {
        "vocab": vocab_size,
        "train_ours": t["ours"],
        "train_hf": t["hf"],
        "enc_ours": mb / e["ours"],
        "enc_hf": mb / e["hf"],
        "enc_tiktoken": mb / e["tiktoken"],
        "bpt_ours": n_bytes / sum(map(len, our_ids)),
        "bpt_hf": n_bytes / sum(len(enc.ids) for enc in hf.encode_batch(val)),
        "export_same": same,
    }


def table(rows: list[dict]) -> str:
    head = [
        "vocab",
        "train ours (s)",
        "train HF (s)",
        "ours/HF time",
        "encode ours (MB/s)",
        "encode HF (MB/s)",
        "encode tiktoken (MB/s)",
        "ours/HF speed",
        "bytes/token ours",
        "bytes/token HF",
        "ours vs HF",
        "HF export same ids",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"{r['vocab']}",
            f"{r['train_ours']:.2f}",
            f"{r['train_hf']:.2f}",
            f"{r['train_ours'] / r['train_hf']:.2f}x",
            f"{r['enc_ours']:.1f}",
            f"{r['enc_hf']:.1f}",
            f"{r['enc_tiktoken']:.1f}",
            f"{r['enc_ours'] / r['enc_hf']:.1f}x",
            f"{r['bpt_ours']:.3f}",
            f"{r['bpt_hf']:.3f}",
            f"{100 * (r['bpt_ours'] / r['bpt_hf'] - 1):+.2f}%",
            "yes" if r["export_same"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, help=f"text, .txt or .parquet (default {DEFAULT_TRAIN})")
    p.add_argument("--val", type=Path, help=f"held-out text (default {DEFAULT_VAL})")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5, help="encoding repeats (median)")
    p.add_argument("--train-repeats", type=int, default=3, help="training repeats (median)")
    p.add_argument("--threads", type=int, default=2, help="encode_batch threads (ours, tiktoken)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 kB, vocab 512 and 1024")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.corpus is None:
        train, val = load_docs(DEFAULT_TRAIN), load_docs(args.val or DEFAULT_VAL)
    elif args.val is None:
        train, val = hold_out(load_docs(args.corpus), 0.1)
    else:
        train, val = load_docs(args.corpus), load_docs(args.val)
    if args.quick:
        train, val = truncate(train, 300_000), truncate(val, 50_000)
        args.vocab_sizes, args.repeats, args.train_repeats = [512, 1024], 2, 1
    mb = [sum(len(d.encode("utf-8")) for d in docs) / 1e6 for docs in (train, val)]
    fields = [
        f"train {mb[0]:.2f} MB ({len(train)} docs)",
        f"held-out {mb[1]:.2f} MB ({len(val)} docs)",
        f"{os.cpu_count()} CPUs",
        f"tokenizers {tokenizers.__version__}",
        f"tiktoken {tiktoken.__version__}",
    ]
    print(", ".join(fields))
    rows = [bench_one(v, train, val, args) for v in args.vocab_sizes]
    print(table(rows))


if __name__ == "__main__":
    main()
