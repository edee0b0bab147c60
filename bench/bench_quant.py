"""Benchmark: generation tokens/s of quantized models against fp32, as ratios from one run.

Models: the default model (params.yaml `model` section, vocab 4096) and a wider one (6 layers,
width 384, 6 heads), random weights (speed does not depend on the values). For each, greedy
generation of `--tokens` new tokens from a one-token prompt (batch 1, KV cache) with the fp32
model, int8 per-channel (real int8 matmul via torch._int_mm, model/quant.py), int8 weight-only
(dequantize + fp32 matmul) and int4 group-wise (dequantize). The variants are timed in turns,
`--repeats` rounds, best time kept, so a busy machine slows all of them alike. Then one layer's
matmul alone (batch 1), fp32 vs the int8 kernels torch offers on CPU, which is why the int8
path uses torch._int_mm.

Run: `python bench/bench_quant.py` (about a minute on 2 free cores), `--quick` for seconds.
Writes the tables to stdout and, with `--notes PATH`, to a markdown file.
Leaves out: GPU timings, batch sizes above 1.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.generation import generate  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.quant import QuantScheme, quantize_model, quantize_weight  # noqa: E402
from tasks.params import load_params  # noqa: E402

VARIANTS = {
    "int8-channel (int8 matmul)": (QuantScheme(8, "channel"), True),
    "int8-channel (dequantize)": (QuantScheme(8, "channel"), False),
    "int4-g32 (dequantize)": (QuantScheme(4, "group", 32), False),
}


def model_configs(quick: bool) -> dict[str, GPTConfig]:
    default = load_params(ROOT / "params.yaml").model.model_dump()
    configs = {"default (params.yaml)": GPTConfig(vocab_size=4096, **default)}
    if not quick:
        wide = default | {"n_layer": 6, "n_embd": 384, "n_head": 6}
        configs["6 layers, width 384"] = GPTConfig(vocab_size=4096, **wide)
    return configs


def time_round(models: dict, n_new: int) -> dict[str, float]:
    """Seconds per new token for each model, one run each."""
    out = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        generate(model, [[0]], n_new, temperature=0.0)
        out[name] = (time.perf_counter() - t0) / n_new
    return out


def generation_rows(config: GPTConfig, n_new: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    base = GPT(config).eval()
    models = {"fp32": base}
    for name, (scheme, int8) in VARIANTS.items():
        models[name] = quantize_model(base, scheme, int8_compute=int8)
    time_round(models, 8)  # warm-up
    best = {k: float("inf") for k in models}
    for _ in range(repeats):
        for k, v in time_round(models, n_new).items():
            best[k] = min(best[k], v)
    rows = []
    for name in models:
        tok_s = 1.0 / best[name]
        cells = [name, f"{tok_s:,.0f}", f"{best['fp32'] / best[name]:.2f}x"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def best_us(fns: dict, n: int = 200, rounds: int = 5) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            f()
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / n * 1e6)
    return best


def kernel_rows(N: int, K: int) -> list[str]:
    """One (N, K) layer at batch 1: fp32 vs torch's CPU int8 options, microseconds per call."""
    torch.manual_seed(0)
    x, w = torch.randn(1, K), torch.randn(N, K) * 0.02
    qt = quantize_weight(w, QuantScheme(8, "channel"))
    wq, s = qt.data, qt.scale.float().view(-1)

    def int_mm():
        xs = x.abs().amax(1, keepdim=True) / 127
        return torch._int_mm(torch.round(x / xs).to(torch.int8), wq.t()).float() * xs * s

    fns = {
        "fp32 F.linear": lambda: F.linear(x, w),
        "torch._int_mm + activation quant": int_mm,
        "torch._weight_int8pack_mm": lambda: torch._weight_int8pack_mm(x, wq, s),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = torch.nn.Sequential(torch.nn.Linear(K, N, bias=False))
        dyn = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
        fns["torch.ao dynamic Linear (deprecated)"] = lambda: dyn(x)
    us = best_us(fns)
    return [f"| {N}x{K} | {k} | {v:.1f} | {us['fp32 F.linear'] / v:.2f}x |" for k, v in us.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default model only, 32 tokens")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best kept)")
    parser.add_argument("--notes", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    n_new = 32 if args.quick else args.tokens
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; greedy, batch 1, "
        f"{n_new} new tokens, KV cache, best of {args.repeats} rounds",
    ]
    for label, config in model_configs(args.quick).items():
        lines += [
            "",
            f"Generation, {label}:",
            "",
            "| variant | tokens/s | vs fp32 |",
            "|---|---|---|",
        ]
        lines += generation_rows(config, n_new, args.repeats)
    lines += [
        "",
        "One layer, batch 1:",
        "",
        "| layer | kernel | us/call | vs fp32 |",
        "|---|---|---|---|",
    ]
    for N, K in [(512, 128)] if args.quick else [(512, 128), (4096, 128), (1536, 384)]:
        lines += kernel_rows(N, K)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.notes:
        args.notes.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
