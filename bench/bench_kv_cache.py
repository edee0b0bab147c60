"""Benchmark: generation speed with and without the KV cache, and the cache's size under GQA.

For each model width, generate the same new tokens from a one-token prompt with the cache and
without it (same seed; the script checks both give the same tokens), and report ms per new
token and the speedup. Every model has 4 layers, vocab 4096 and block_size 512 (so 500 new
tokens fit without cropping); only n_embd and n_head change. The cached path runs `--repeats`
times and the median is reported; the uncached one (seconds per run) runs once unless asked.
Then the K/V buffer size of an 8-head model with 8 versus 2 KV heads.

Run: `python bench/bench_kv_cache.py` (about 5 minutes on 2 cores) or `--quick` (seconds).
Leaves out: batch sizes above 1 and GPU timings.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.generation import generate  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.kv_cache import KVCache  # noqa: E402
from model.probes import time_generate  # noqa: E402

SIZES = [(128, 4), (256, 4), (512, 8), (768, 12)]  # (n_embd, n_head)


def speed_rows(sizes, n_new: int, repeats: int, uncached_repeats: int) -> list[str]:
    rows = []
    for n_embd, n_head in sizes:
        config = GPTConfig(n_embd=n_embd, n_head=n_head, block_size=512)
        torch.manual_seed(0)
        model = GPT(config)
        generate(model, [[0]], 8, seed=0)  # warm-up: allocator, kernels
        t_cache, out_cache = time_generate(model, n_new, True, repeats)
        t_full, out_full = time_generate(model, n_new, False, uncached_repeats)
        same = "yes" if out_cache == out_full else "NO"
        params = model.num_params(non_embedding=True) / 1e6
        cells = [
            str(n_embd),
            str(n_head),
            f"{params:.2f}",
            f"{1e3 * t_full / n_new:.2f}",
            f"{1e3 * t_cache / n_new:.3f}",
            f"{t_full / t_cache:.1f}x",
            same,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def cache_size_rows(block_size: int) -> list[str]:
    rows = []
    base = None
    for n_kv_head in (8, 2):
        config = GPTConfig(n_embd=512, n_head=8, n_kv_head=n_kv_head, block_size=block_size)
        nbytes = KVCache(config, batch_size=1).nbytes()
        base = base or nbytes
        cells = [str(n_kv_head), f"{nbytes:,}", f"{100 * (1 - nbytes / base):.0f}%"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model, 100 tokens")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cached path")
    parser.add_argument("--uncached-repeats", type=int, default=1, help="runs without cache")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    n_new = 100 if args.quick else args.tokens

    threads = torch.get_num_threads()
    print(f"## KV cache: {n_new} new tokens, batch 1, 4 layers, vocab 4096, {threads} threads\n")
    print(
        "| n_embd | n_head | params (M, non-emb.) | no cache ms/token | cache ms/token "
        "| speedup | same tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(speed_rows(sizes, n_new, args.repeats, args.uncached_repeats)))
    print("\nK/V cache size, n_embd 512, 8 query heads, 4 layers, block_size 512, batch 1, fp32\n")
    print("| n_kv_head | bytes | smaller by |")
    print("|---|---|---|")
    print("\n".join(cache_size_rows(512)))


if __name__ == "__main__":
    main()
