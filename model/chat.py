"""Chat template on the tokenizer's role tokens, the SFT loss mask, and batching.

A conversation is encoded as

    <|endoftext|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...

`<|endoftext|>` opens it because pretraining put one before every document. Message text is
encoded as plain text (special-token strings in user data stay text, never control tokens),
after one leading space (SentencePiece's "dummy prefix"): a byte-level BPE splits " earth" and
"earth" into different tokens, so without it a word that opens the answer would be other
tokens than the same word in the prompt, and copying a word the model never answered with
would need a spelling fact per word rather than one skill (measured: held-out `copy` exact match
64% without the prefix). Decoding a response drops that one space again.
The loss covers each assistant turn's text tokens and the `<|end|>` that closes it, so the model
learns to stop; the `<|assistant|>` role token is part of the prompt. Padding uses `<|pad|>`,
never `<|end|>`, and padded positions are outside the loss and the attention mask, so a padded
batch cannot teach the model that `<|end|>` is noise.
All functions are pure: the tokenizer is passed in.
Leaves out: truncation (a caller drops or reports conversations longer than block_size + 1).
Tests: `pytest tests/test_instruct.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from model.generation import generate


class Response(NamedTuple):
    text: str  # decoded text before the first <|end|>
    ended: bool  # whether the model closed its turn with <|end|>
    ids: list[int]  # the new token ids, <|end|> included when it came


ROLE_TOKENS = {"system": "system_id", "user": "user_id", "assistant": "assistant_id"}


def _role_id(tok, role: str) -> int:
    if role not in ROLE_TOKENS:
        raise ValueError(f"message role {role!r}: expected one of {list(ROLE_TOKENS)}")
    return getattr(tok, ROLE_TOKENS[role])


def encode_turn(tok, text: str) -> list[int]:
    """One message's text as the template writes it: the dummy-prefix space, text, <|end|>."""
    return tok.encode(" " + text) + [tok.end_id]


def encode_conversation(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a whole conversation; mask 1 on assistant text and its <|end|>."""
    ids, mask = [tok.eot_id], [0]
    for m in messages:
        ids.append(_role_id(tok, m["role"]))
        mask.append(0)
        body = encode_turn(tok, m["content"])
        on = int(m["role"] == "assistant")
        ids.extend(body)
        mask.extend([on] * len(body))
    return ids, mask


def encode_prompt(tok, messages: list[dict]) -> list[int]:
    """Ids of the conversation so far followed by `<|assistant|>`: what generation continues."""
    if messages and messages[-1]["role"] == "assistant":
        raise ValueError("encode_prompt: the conversation already ends with an assistant turn")
    ids, _ = encode_conversation(tok, messages)
    return ids + [tok.assistant_id]


def extract_response(tok, ids: list[int]) -> tuple[str, bool]:
    """(text, ended): the text of generated ids up to the first `<|end|>` without the
    dummy-prefix space, and whether an `<|end|>` came.

    `ids` are the new tokens only (what `model.generation.generate` returns).
    """
    ids = list(ids)
    ended = tok.end_id in ids
    text = tok.decode(ids[: ids.index(tok.end_id)] if ended else ids)
    return text.removeprefix(" "), ended


def collate(
    batch: list[tuple[list[int], list[int]]], pad_id: int, device=None
) -> dict[str, torch.Tensor]:
    """Right-pad encoded conversations into next-token training tensors.

    Each (ids, loss_mask) of length L gives inputs ids[:-1] and targets ids[1:], a target kept
    only where loss_mask[1:] is 1 (else -100). Returns input_ids (B, T) padded with pad_id,
    targets (B, T) with -100 on masked and padded positions, and attention_mask (B, T) bool,
    True on real tokens; T = longest L - 1.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    T = max(len(ids) for ids, _ in batch) - 1
    if T < 1:
        raise ValueError("collate: every conversation needs at least 2 tokens")
    B = len(batch)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), -100, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (ids, mask) in enumerate(batch):
        if len(ids) != len(mask):
            raise ValueError(f"collate: item {b} has {len(ids)} ids but {len(mask)} mask entries")
        n = len(ids) - 1
        x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        keep = torch.tensor(mask[1:], dtype=torch.bool)
        input_ids[b, :n] = x
        targets[b, :n] = torch.where(keep, y, torch.full_like(y, -100))
        attention_mask[b, :n] = True
    out = {"input_ids": input_ids, "targets": targets, "attention_mask": attention_mask}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def respond(
    model,
    tok,
    conversations: list[list[dict]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[Response]:
    """The model's next assistant turn for each conversation (greedy by default), batched
    with the KV cache; generation stops at `<|end|>` or after max_new_tokens."""
    prompts = [encode_prompt(tok, c) for c in conversations]
    out: list[Response] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        new = generate(
            model,
            chunk,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=tok.end_id,
            seed=None if seed is None else seed + i,
        )
        out.extend(Response(*extract_response(tok, ids), ids) for ids in new)
    return out
