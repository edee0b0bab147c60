"""quantize stage: int8 / int4 versions of the base model and the aligned policy, with their cost.

For each model in `quantize.models` (checkpoint folders out/<model>, e.g. pretrain and ppo) and
each scheme in `quantize.schemes`, quantize the linear layers (model/quant.py), save the result
as a quantized checkpoint, load it back from disk and measure it next to the fp32 model:
val perplexity and its relative increase, bits per byte (the same first `eval_tokens` val
tokens for every variant), bytes of the quantized layers and of the whole file against fp32,
greedy generation tokens/s and, for a chat policy (ppo, sft), the held-out true task accuracy.
A model whose stage is not in dvc.yaml is skipped with a warning (a missing output of a
declared stage is an error).

Quantized checkpoint folder: `model.safetensors` (integer weights, fp16 scales, uint8 zero
points, the other tensors in fp32), `config.json` ({"model": GPTConfig, "quantization": scheme
and options}) and `tokenizer.json`. Never pickles; a corrupt file is a clear error.

    python -m tasks.quantize
Writes out/quantize/<model>-<scheme>/, metrics/quantize.json, out/quantize/report.md.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from model.generation import generate
from model.gpt import GPT, GPTConfig
from model.quant import QuantScheme, quantize_model, weight_bytes
from model.tokenizer import Tokenizer
from tasks import registry, tracking
from tasks.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, load_checkpoint, read_config
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.io import METRICS, OUT, atomic_dir, write_json, write_text
from tasks.params import load_params
from tasks.pretrain import full_val_loss, token_byte_lengths
from tasks.tokenizer import load_tokens

OUT_DIR = OUT / "quantize"
FORMAT = "llmpipe-quant-v1"
CHAT_MODELS = ("sft", "ppo")  # checkpoints that answer instruction prompts


# ---------------------------------------------------------------------- quantized checkpoints


def save_quantized(path: str | Path, model: GPT, quant: dict, tokenizer_file: str | Path) -> None:
    """Write a quantized model folder; `quant` = {"scheme": ..., "embeddings": ...}."""
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / MODEL_FILE))  # tied buffers are stored once
        config = {"model": model.config.to_dict(), "quantization": {"format": FORMAT, **quant}}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)


def load_quantized(path: str | Path, int8_compute: bool = True) -> GPT:
    """Rebuild a quantized GPT from its folder; ValueError naming the file when it is corrupt."""
    path = Path(path)
    config = read_config(path)
    quant = config.get("quantization")
    if not isinstance(quant, dict) or quant.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE}: not a quantized checkpoint ({FORMAT})")
    try:
        scheme = QuantScheme.from_dict(quant["scheme"])
        skeleton = GPT(GPTConfig.from_dict(config["model"]))
        embeddings = bool(quant["embeddings"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: invalid quantization config ({e})") from e
    model = quantize_model(skeleton, scheme, embeddings=embeddings, int8_compute=int8_compute)
    expected = {k: v.dtype for k, v in model.state_dict().items()}
    try:
        load_model(model, str(path / MODEL_FILE), strict=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path / MODEL_FILE}: missing weights") from e
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ValueError(f"{path / MODEL_FILE}: corrupt or mismatched weights ({e})") from e
    wrong = [k for k, v in model.state_dict().items() if v.dtype != expected[k]]
    if wrong:
        raise ValueError(f"{path / MODEL_FILE}: wrong dtypes for {wrong}")
    return model.eval()


# ---------------------------------------------------------------------- measurements


def perplexity(model, val: np.ndarray, tok: Tokenizer, T: int, B: int, device) -> dict:
    nats, n, targets = full_val_loss(model, val, T, B, device)
    n_bytes = int(token_byte_lengths(tok)[targets].sum())
    return {
        "val_loss": nats / n,
        "val_perplexity": math.exp(nats / n),
        "val_bits_per_byte": nats / math.log(2) / n_bytes,
    }


def tokens_per_s(model, n_new: int, repeats: int = 3) -> float:
    """Greedy generation speed from a one-token prompt (batch 1, KV cache), best of repeats."""
    generate(model, [[0]], 4, temperature=0.0)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, [[0]], n_new, temperature=0.0)[0]
        best = min(best, (time.perf_counter() - t0) / max(1, len(out)))
    return 1.0 / best


def task_accuracy(model, tok: Tokenizer, per_family: int, max_new_tokens: int) -> dict:
    """Greedy exact match on the first `per_family` held-out prompts of each task family."""
    from model.chat import respond
    from model.instruct import exact_match_by_family
    from tasks.instruct import read_examples

    examples, counts = [], {}
    for ex in read_examples("test"):
        if counts.get(ex.family, 0) < per_family:
            counts[ex.family] = counts.get(ex.family, 0) + 1
            examples.append(ex)
    out = respond(model, tok, [list(ex.messages) for ex in examples], max_new_tokens)
    return exact_match_by_family(examples, [r.text for r in out])


def file_bytes(folder: Path) -> int:
    return (folder / MODEL_FILE).stat().st_size


def evaluate(model, name: str, folder: Path, ctx: dict) -> dict:
    """Every metric of one variant (fp32 or quantized) of one model."""
    p = ctx["p"]
    m = perplexity(model, ctx["val"], ctx["tok"], ctx["T"], p.batch_size, ctx["device"])
    m["tokens_per_s"] = tokens_per_s(model, p.gen_tokens)
    m["file_bytes"] = file_bytes(folder)
    if name in CHAT_MODELS and p.task_prompts_per_family > 0:
        acc = task_accuracy(model, ctx["tok"], p.task_prompts_per_family, p.max_new_tokens)
        m["task_accuracy"] = acc["all"]
    return m


# ---------------------------------------------------------------------- the stage


def declared_stages() -> set[str]:
    try:
        return set(yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"dvc.yaml: cannot read its stages ({e})") from e


def quantize_one(name: str, ctx: dict) -> dict:
    """fp32 baseline and every scheme for the model in out/<name>."""
    p, device, src = ctx["p"], ctx["device"], OUT / name
    base = load_checkpoint(src, device).eval()
    ctx["tok"] = Tokenizer.load(src / TOKENIZER_FILE)
    ctx["T"] = base.config.block_size
    fp32 = evaluate(base, name, src, ctx)
    log.info("quantize: %s fp32 %s", name, _fmt(fp32))
    results = {"fp32": fp32}
    for sp in p.schemes:
        scheme = QuantScheme(**sp.model_dump())
        results[scheme.name] = quantize_scheme(name, base, scheme, fp32, ctx)
    return results


def quantize_scheme(name: str, base: GPT, scheme: QuantScheme, fp32: dict, ctx: dict) -> dict:
    p, folder = ctx["p"], OUT_DIR / f"{name}-{scheme.name}"
    q = quantize_model(base, scheme, embeddings=p.embeddings, int8_compute=p.int8_compute)
    quant = {"scheme": scheme.to_dict(), "embeddings": p.embeddings, "source": f"out/{name}"}
    save_quantized(folder, q.cpu(), quant, OUT / name / TOKENIZER_FILE)
    loaded = load_quantized(folder, p.int8_compute).to(ctx["device"])  # measure what ships
    m = evaluate(loaded, name, folder, ctx)
    sizes = weight_bytes(loaded)
    m |= {
        "ppl_increase": m["val_perplexity"] / fp32["val_perplexity"] - 1,
        "layer_bytes": sizes["quantized"],
        "layer_bytes_fp32": sizes["quantized_fp32"],
        "layer_size_ratio": sizes["quantized_fp32"] / sizes["quantized"],
        "file_size_ratio": fp32["file_bytes"] / m["file_bytes"],
        "speedup": m["tokens_per_s"] / fp32["tokens_per_s"],
    }
    if "task_accuracy" in m:
        m["task_accuracy_change"] = m["task_accuracy"] - fp32["task_accuracy"]
    log.info("quantize: %s %s %s", name, scheme.name, _fmt(m))
    return m


def _fmt(m: dict) -> str:
    keys = ("val_perplexity", "ppl_increase", "layer_size_ratio", "tokens_per_s", "task_accuracy")
    return ", ".join(f"{k} {m[k]:.4g}" for k in keys if k in m)


def report_table(results: dict) -> str:
    head = (
        "| model | scheme | val ppl | ppl increase | bits/byte | layers MB | layer ratio "
        "| file MB | file ratio | tokens/s | speedup | task acc |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for model, schemes in results.items():
        for scheme, m in schemes.items():
            acc = f"{m['task_accuracy']:.3f}" if "task_accuracy" in m else "-"
            cells = [
                model,
                scheme,
                f"{m['val_perplexity']:.2f}",
                f"{100 * m['ppl_increase']:+.2f}%" if "ppl_increase" in m else "-",
                f"{m['val_bits_per_byte']:.4f}",
                f"{m['layer_bytes'] / 1e6:.3f}" if "layer_bytes" in m else "-",
                f"{m['layer_size_ratio']:.2f}x" if "layer_size_ratio" in m else "1x",
                f"{m['file_bytes'] / 1e6:.3f}",
                f"{m['file_size_ratio']:.2f}x" if "file_size_ratio" in m else "1x",
                f"{m['tokens_per_s']:.0f}",
                f"{m['speedup']:.2f}x" if "speedup" in m else "1x",
                acc,
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "# Quantization\n\n" + head + "\n".join(rows) + "\n"


def main() -> None:
    params = load_params()
    p, device = params.quantize, resolve_device(params.device)
    stages = declared_stages()
    models = [m for m in p.models if m in stages]
    for m in sorted(set(p.models) - set(models)):
        log.warning("quantize: no '%s' stage in dvc.yaml; skipping that model", m)
    if not models:
        raise ValueError(f"quantize.models: none of {p.models} is a stage in dvc.yaml")
    val = load_tokens("val")[: p.eval_tokens + 1]
    ctx = {"p": p, "device": device, "val": val}
    with tracking.stage_run("quantize", {"quantize": p.model_dump(), "seed": params.seed}):
        seed_everything(params.seed)
        torch.set_grad_enabled(False)
        results = {name: quantize_one(name, ctx) for name in models}
        finish(results)


def finish(results: dict) -> None:
    metrics = {
        model: {
            s: {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}
            for s, m in schemes.items()
        }
        for model, schemes in results.items()
    }
    write_json(METRICS / "quantize.json", metrics)
    table = report_table(results)
    write_text(OUT_DIR / "report.md", table)
    for model, schemes in results.items():
        for scheme, m in schemes.items():
            tracking.log_metrics({f"{model}/{scheme}/{k}": float(v) for k, v in m.items()})
    tracking.log_artifact(OUT_DIR / "report.md")
    tracking.log_artifact(METRICS / "quantize.json")
    for model, schemes in results.items():  # alias per variant: models:/llmpipe-quantized@ppo-...
        for scheme, m in schemes.items():
            if scheme == "fp32":  # the reference row: its checkpoint is the model's own
                continue
            variant = f"{model}-{scheme}"
            tags = {"model": model, "scheme": scheme, "ppl_increase": m["ppl_increase"]}
            registry.register_checkpoint(
                OUT_DIR / variant, registry.QUANTIZED_MODEL, variant, tags, f"models/{variant}"
            )
    log.info("quantize: results\n%s", table)


if __name__ == "__main__":
    run_stage(main)
