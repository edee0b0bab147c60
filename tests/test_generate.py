"""The generate command: streaming matches batch generation; chat reads piped stdin."""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from model.chat import encode_prompt
from model.generation import generate
from model.gpt import GPT, GPTConfig
from model.tokenizer import Tokenizer
from tasks.generate import fit_context, stream_text
from tests.conftest import project_env, run_in


def _tiny():
    tok = Tokenizer.train(["the cat sat on the mat. the dog ate the hat."], 280)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    return GPT(cfg).eval(), tok


def _args(**kw) -> argparse.Namespace:
    base = dict(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.95, seed=3)
    return argparse.Namespace(**(base | kw))


def test_stream_text_matches_generate_and_hides_the_stop_token():
    model, tok = _tiny()
    prompt = [tok.eot_id] + tok.encode("the cat")
    args = _args()
    streamed = "".join(stream_text(model, tok, prompt, tok.eot_id, args))
    (ids,) = generate(
        model, [prompt], 12, temperature=0.8, top_k=20, top_p=0.95, eos_id=tok.eot_id, seed=3
    )
    shown = ids[: ids.index(tok.eot_id)] if tok.eot_id in ids else ids
    assert streamed == tok.decode(shown)
    # greedy with the most likely token as the stop token prints nothing
    greedy = _args(temperature=0, top_k=None, top_p=None)
    first = generate(model, [prompt], 1, temperature=0)[0][0]
    assert "".join(stream_text(model, tok, prompt, first, greedy)) == ""


def test_fit_context_drops_oldest_turns_but_keeps_system():
    _, tok = _tiny()
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    msgs.append({"role": "user", "content": "last"})
    ids = fit_context(tok, msgs, room=30)
    assert len(ids) <= 30 and ids[:2] == [tok.eot_id, tok.system_id]
    assert ids[-1] == tok.assistant_id and tok.decode(ids).count("last") == 1
    assert fit_context(tok, msgs, room=10_000) == encode_prompt(tok, msgs)
    # a single overlong user turn is kept whole (generation crops it)
    huge = [{"role": "user", "content": "word " * 100}]
    assert fit_context(tok, huge, room=5) == encode_prompt(tok, huge)


def test_generate_command_plain_and_chat(quick_pretrained):
    repo = quick_pretrained
    cmd = [
        "-m",
        "tasks.generate",
        "--checkpoint",
        "out/pretrain",
        "--prompt",
        "The history of",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "0",
    ]
    first = run_in(repo, *cmd).stdout
    assert first.startswith("The history of") and len(first) > len("The history of\n")
    assert run_in(repo, *cmd).stdout == first  # the seed makes it reproducible

    chat = [
        "-m",
        "tasks.generate",
        "--checkpoint",
        "out/pretrain",
        "--chat",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0",
    ]
    piped = "Repeat the word: apple\n\n/reset\nWhat is 2 + 3?\n"
    proc = subprocess.run(
        [sys.executable, *chat],
        cwd=repo,
        env=project_env(repo.parent),
        input=piped,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("assistant> ") == 2  # one answer per non-empty message, then EOF
    assert "you> " not in proc.stdout  # no prompt when stdin is not a terminal


def test_generate_command_bad_checkpoint(quick_pretrained):
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.generate", "--checkpoint", "out/nope"],
        cwd=quick_pretrained,
        env=project_env(quick_pretrained.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "out/nope/config.json: missing" in proc.stdout
