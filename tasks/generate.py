"""generate command: sample from any checkpoint, streaming tokens to stdout; or chat with one.

    python -m tasks.generate --checkpoint out/pretrain --prompt "The history of" \\
        --max-new-tokens 50 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 0
    python -m tasks.generate --checkpoint out/sft --chat --temperature 0
    printf 'Repeat the word: apple\\n' | python -m tasks.generate --checkpoint out/sft --chat

Plain mode prints the prompt, then the new text as it is sampled, and stops at
`<|endoftext|>` or after --max-new-tokens. Chat mode (for SFT/PPO checkpoints) reads one user
message per line from stdin until EOF (works when piped), answers each with the chat template of
model/chat.py and stops the turn at `<|end|>`; `/reset` forgets the conversation. When the
conversation no longer fits the context, the oldest turns are dropped. Temperature 0 is greedy.
Not a pipeline stage: it writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from model.chat import encode_prompt
from model.generation import stream_generate
from model.tokenizer import Tokenizer
from tasks.checkpoint import TOKENIZER_FILE, load_checkpoint
from tasks.common import resolve_device, run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tasks.generate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--checkpoint", default="out/pretrain", help="checkpoint folder")
    ap.add_argument("--prompt", default="", help="text to continue (plain mode)")
    ap.add_argument("--chat", action="store_true", help="chat on stdin (SFT/PPO checkpoints)")
    ap.add_argument("--system", default=None, help="system message for --chat")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return ap.parse_args(argv)


def stream_text(model, tok: Tokenizer, prompt: list[int], stop_id: int, args) -> Iterator[str]:
    """Yield the text of each sampled token (held back inside a multi-byte character); the
    stop token ends the stream and is not shown."""
    decoder = tok.stream_decoder()
    steps = stream_generate(
        model,
        [prompt],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=stop_id,
        seed=args.seed,
    )
    for (token,) in steps:
        if token is None or token == stop_id:
            break
        text = decoder.push(token)
        if text:
            yield text
    tail = decoder.flush()
    if tail:
        yield tail


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def plain(model, tok: Tokenizer, args) -> None:
    prompt = [tok.eot_id] + tok.encode(args.prompt)  # documents start after <|endoftext|>
    write(args.prompt)
    for text in stream_text(model, tok, prompt, tok.eot_id, args):
        write(text)
    write("\n")


def fit_context(tok: Tokenizer, messages: list[dict], room: int) -> list[int]:
    """Prompt ids of the conversation, dropping the oldest turns (a system message stays)
    until it leaves `room` tokens for the answer (or only the last user turn is left)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    while True:
        ids = encode_prompt(tok, system + turns)
        if len(ids) <= room or len(turns) <= 1:
            return ids
        turns = turns[1:]
        while turns and turns[0]["role"] != "user":
            turns = turns[1:]


def chat(model, tok: Tokenizer, args) -> None:
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    room = max(1, model.config.block_size - args.max_new_tokens)
    while True:
        if interactive:
            write("you> ")
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt = fit_context(tok, messages, room)
        write("assistant> ")
        parts: list[str] = []
        for text in stream_text(model, tok, prompt, tok.end_id, args):
            if not parts:
                text = text.removeprefix(" ")  # the chat template's dummy-prefix space
            parts.append(text)
            write(text)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(parts)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected >= 1, got {args.max_new_tokens}")
    model = load_checkpoint(args.checkpoint, resolve_device(args.device))
    tok = Tokenizer.load(f"{args.checkpoint}/{TOKENIZER_FILE}")
    model.eval()
    (chat if args.chat else plain)(model, tok, args)


if __name__ == "__main__":
    run_stage(main)
