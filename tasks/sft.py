"""sft stage: instruction-tune the base checkpoint with the loss on assistant tokens only.

Conversations use the chat template of model/chat.py: the loss covers each assistant turn's
text and the `<|end|>` that closes it, so the model learns both the answer and when to stop.
Batches are right-padded with `<|pad|>` (outside the loss); with causal attention padding after
the real tokens cannot change them, so the shared loop (tasks/training.py) trains on
(inputs, targets) as pretraining does. Batches are a pure function of (seed, step, micro-step),
so a killed run resumes exactly from out/sft-resume.

Measured on the held-out test split, for the base model and for the SFT model: exact match per
task family (greedy decoding, batched, KV cache), the rate of responses that end with `<|end|>`
within `max_new_tokens`, and the mean loss per response token.

    python -m tasks.sft
Writes out/sft/ (checkpoint + transcripts.md), metrics/sft.json, plots/sft/{train,test}.csv.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.chat import Response, collate, encode_conversation, respond
from model.instruct import Example, check, exact_match_by_family
from model.tokenizer import Tokenizer
from tasks import tracking
from tasks.checkpoint import TOKENIZER_FILE, load_checkpoint, save_checkpoint
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.hardware import matmul_peak_flops
from tasks.instruct import read_examples
from tasks.io import METRICS, OUT, PLOTS, write_json, write_text
from tasks.params import load_params
from tasks.training import Loop, fingerprint, fit, make_optimizer, peek_resume, resume

OUT_DIR, RESUME_DIR, BASE_DIR = OUT / "sft", OUT / "sft-resume", OUT / "pretrain"
Encoded = tuple[list[int], list[int]]  # (ids, loss_mask) of one conversation


def encode_all(tok: Tokenizer, examples: list[Example], block_size: int) -> list[Encoded]:
    """Encoded conversations; ones longer than block_size + 1 tokens are dropped (logged):
    cutting them would cut the answer or its `<|end|>` out of the loss."""
    encoded = [encode_conversation(tok, ex.conversation()) for ex in examples]
    kept = [e for e in encoded if len(e[0]) <= block_size + 1]
    if len(kept) < len(encoded):
        log.warning(
            "sft: dropped %d of %d conversations longer than block_size + 1 = %d tokens",
            len(encoded) - len(kept),
            len(encoded),
            block_size + 1,
        )
    return kept


def batch_at(encoded: list[Encoded], B: int, rng: np.random.Generator, pad_id: int, device):
    """(inputs, targets) of B conversations drawn at random: (B, T) each."""
    picks = rng.integers(0, len(encoded), size=B)
    batch = collate([encoded[i] for i in picks], pad_id, device)
    return batch["input_ids"], batch["targets"]


@torch.no_grad()
def response_loss(model, encoded: list[Encoded], pad_id: int, device, B: int = 64) -> float:
    """Mean loss per response token (assistant text and `<|end|>`) over every conversation."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(encoded), B):
        batch = collate(encoded[i : i + B], pad_id, device)
        logits, _ = model(batch["input_ids"])
        targets = batch["targets"]
        total += F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    return total / max(count, 1)


def evaluate(model, tok, examples, encoded, p, device) -> tuple[dict, list[Response]]:
    """Exact match per family, end-of-turn rate and response loss on the test split."""
    conversations = [list(ex.messages) for ex in examples]
    responses = respond(model, tok, conversations, p.max_new_tokens, batch_size=p.eval_batch_size)
    scores = {
        "exact_match": exact_match_by_family(examples, [r.text for r in responses]),
        "end_rate": statistics.fmean(r.ended for r in responses),
        "response_loss": response_loss(model, encoded, tok.pad_id, device),
        "response_tokens": statistics.fmean(len(r.ids) for r in responses),
    }
    return scores, responses


def transcripts(examples, base: list[Response], tuned: list[Response], per_family: int) -> str:
    """Markdown: the first test prompts of each family with the base and the SFT answers."""
    lines = ["# SFT transcripts (held-out test prompts, greedy)", ""]
    shown: dict[str, int] = {}
    for ex, b, t in zip(examples, base, tuned, strict=True):
        if shown.get(ex.family, 0) >= per_family:
            continue
        shown[ex.family] = shown.get(ex.family, 0) + 1
        lines += [f"## {ex.family}", "", f"- user: `{ex.prompt}`", f"- expected: `{ex.answer}`"]
        for name, r in (("base", b), ("sft", t)):
            mark = "correct" if check(ex, r.text) else "wrong"
            end = "ended" if r.ended else "no end token"
            lines.append(f"- {name}: `{r.text!r}` ({mark}, {end})")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    t_stage = time.perf_counter()
    params = load_params()
    p, device = params.sft, resolve_device(params.device)
    tok = Tokenizer.load(BASE_DIR / TOKENIZER_FILE)
    model = load_checkpoint(BASE_DIR, device)
    if not model.config.causal:
        raise ValueError("sft: the base checkpoint is bidirectional (model.causal: false)")
    train_ex, test_ex = read_examples("train"), read_examples("test")
    block = model.config.block_size
    train_enc, test_enc = encode_all(tok, train_ex, block), encode_all(tok, test_ex, block)
    if not train_enc:
        raise ValueError(f"sft: no training conversation fits block_size + 1 = {block + 1}")

    fp = fingerprint(
        p.model_dump(), params.seed, _digest(BASE_DIR / "model.safetensors"), train_enc
    )
    meta = peek_resume(RESUME_DIR, fp)
    run_params = {"sft": p.model_dump(), "seed": params.seed, "train_examples": len(train_enc)}
    with tracking.stage_run("sft", run_params, meta and meta["run_id"]) as run_id:
        base_scores, base_responses = evaluate(model, tok, test_ex, test_enc, p, device)
        log.info("sft: base exact match %s", _fmt(base_scores["exact_match"]))
        seed_everything(params.seed)
        loop = make_loop(model, train_enc, test_enc, tok, params, device, fp, run_id)
        optimizer = make_optimizer(model, p)
        start = resume(model, optimizer, loop) if meta else 0
        t0 = time.perf_counter()
        fit(model, optimizer, loop, p, device, start)
        train_seconds = time.perf_counter() - t0
        sft_scores, sft_responses = evaluate(model, tok, test_ex, test_enc, p, device)
        md = transcripts(test_ex, base_responses, sft_responses, p.transcripts_per_family)
        metrics = {
            "base": base_scores,
            "sft": sft_scores,
            "train_examples": len(train_enc),
            "test_examples": len(test_ex),
            "dropped_too_long": len(train_ex) - len(train_enc) + len(test_ex) - len(test_enc),
            "steps": p.max_steps,
            "train_seconds": train_seconds,
            "ms_per_step": statistics.median(loop.history["ms"][3:] or loop.history["ms"]),
        }
        finish(model, loop, metrics, md, time.perf_counter() - t_stage)
    shutil.rmtree(RESUME_DIR, ignore_errors=True)


def make_loop(model, train_enc, test_enc, tok, params, device, fp, run_id) -> Loop:
    p = params.sft
    mean_len = statistics.fmean(len(ids) - 1 for ids, _ in train_enc)
    return Loop(
        stage="sft",
        batch=lambda step, micro: batch_at(
            train_enc,
            p.batch_size,
            np.random.default_rng([params.seed, step, micro]),
            tok.pad_id,
            device,
        ),
        evaluate=lambda: {"val/loss": response_loss(model, test_enc, tok.pad_id, device)},
        resume_dir=RESUME_DIR,
        fingerprint=fp,
        run_id=run_id,
        tokens_per_step=int(p.batch_size * mean_len * p.grad_accum),
        flops_per_token=model.flops_per_token(int(mean_len)),
        peak_flops=matmul_peak_flops(device.type),
    )


def finish(model, loop: Loop, metrics: dict, md: str, stage_seconds: float) -> None:
    metrics["stage_seconds"] = stage_seconds
    metrics = _rounded(metrics)
    save_checkpoint(
        OUT_DIR,
        model,
        BASE_DIR / TOKENIZER_FILE,
        {"stage": "sft", "objective": "causal", "step": metrics["steps"], "base": str(BASE_DIR)},
    )
    write_text(OUT_DIR / "transcripts.md", md)
    write_json(METRICS / "sft.json", metrics)
    for name, key in (("train", "train"), ("test", "val")):
        rows = "\n".join(f"{s},{v:.6f}" for s, v in loop.history[key])
        write_text(PLOTS / "sft" / f"{name}.csv", f"step,loss\n{rows}\n")
    final = {
        f"test/{who}/{k}": v
        for who in ("base", "sft")
        for k, v in _flat_scores(metrics[who]).items()
    }
    tracking.log_metrics(final | {"train_seconds": metrics["train_seconds"]})
    for path in (OUT_DIR / "transcripts.md", METRICS / "sft.json"):
        tracking.log_artifact(path)
    log.info("sft: exact match base %s", _fmt(metrics["base"]["exact_match"]))
    log.info("sft: exact match sft  %s", _fmt(metrics["sft"]["exact_match"]))
    log.info(
        "sft: end rate base %.3f -> sft %.3f; response loss %.3f -> %.3f; %.0fs",
        metrics["base"]["end_rate"],
        metrics["sft"]["end_rate"],
        metrics["base"]["response_loss"],
        metrics["sft"]["response_loss"],
        stage_seconds,
    )


def _flat_scores(scores: dict) -> dict[str, float]:
    flat = {f"exact_match_{k}": v for k, v in scores["exact_match"].items()}
    return flat | {k: v for k, v in scores.items() if k != "exact_match"}


def _rounded(d):
    if isinstance(d, dict):
        return {k: _rounded(v) for k, v in d.items()}
    return round(d, 5) if isinstance(d, float) else d


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in scores.items())


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


if __name__ == "__main__":
    run_stage(main)
