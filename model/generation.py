"""Sampling and autoregressive generation, with or without the KV cache.

`generate(model, prompts, max_new_tokens, ...)` returns the new tokens of each prompt;
`stream_generate` yields them one step at a time. Sampling: temperature (0 = greedy), then top-k
(clamped to the vocabulary), then top-p over what top-k kept (always at least one token); a seed
makes the result reproducible. Prompts of different lengths run as one left-padded batch.

Stopping: a prompt stops after it samples eos_id (the eos token is included in its output) or
after max_new_tokens. Context: the model always conditions on the last block_size tokens (a
sliding crop, positions restarting at 0 in the window, as in nanoGPT), for every positional
encoding, so learned positions never pass block_size. The cache cannot shift positions, so once
block_size tokens are in it each step re-prefills the window: past block_size a cached step
costs what an uncached one does, and cached and uncached generation stay identical.
Leaves out: beam search, repetition penalties, speculative decoding.
Tests: `pytest tests/test_generation.py`. Benchmark: `python bench/bench_kv_cache.py`.
"""

from collections.abc import Iterator

import torch

from model.kv_cache import KVCache


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set logits (B, V) outside the top-k and then outside the top-p nucleus to -inf.

    Ties with the k-th logit are kept. The nucleus is the smallest set of most probable tokens
    whose probability mass reaches top_p; it always holds the most probable token.
    """
    _check_filters(top_k, top_p)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (B, V) -> (B,); temperature 0 is argmax."""
    _check_temperature(temperature)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    probs = filter_logits(logits, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """The new tokens of each prompt (eos included when it stopped on one)."""
    out = [[] for _ in prompts]
    steps = stream_generate(
        model,
        prompts,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        seed=seed,
        use_cache=use_cache,
    )
    for ids in steps:
        for row, tok in zip(out, ids, strict=True):
            if tok is not None:
                row.append(tok)
    return out


def stream_generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[list[int | None]]:
    """Yield, per step, one new token id per prompt (None for prompts that already stopped).

    The model is in eval mode while the generator runs and back in its old mode when it ends.
    """
    _check_prompts(prompts, model.config.vocab_size)
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    _check_temperature(temperature)
    _check_filters(top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        sampling = (temperature, top_k, top_p)
        yield from _stream(model, prompts, max_new_tokens, sampling, eos_id, seed, use_cache)
    finally:
        model.train(was_training)


@torch.inference_mode()  # torch re-enters this around each resumption of the generator
def _stream(model, prompts, max_new_tokens, sampling, eos_id, seed, use_cache):
    decoder = _Decoder(model, prompts, max_new_tokens, use_cache)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=decoder.device).manual_seed(seed)
    done = [False] * len(prompts)
    logits = decoder.first()
    for step in range(max_new_tokens):
        tok = sample_next(logits, *sampling, generator=generator)  # (B,)
        ids = tok.tolist()
        yield [None if d else t for d, t in zip(done, ids, strict=True)]
        if eos_id is not None:
            done = [d or t == eos_id for d, t in zip(done, ids, strict=True)]
            if all(done):
                return
        if step + 1 < max_new_tokens:
            logits = decoder.next(tok)


class _Decoder:
    """Feeds tokens to the model and returns next-token logits (B, V); crops at block_size."""

    def __init__(self, model, prompts, max_new_tokens, use_cache):
        self.model = model
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        prompts = [p[-self.block_size :] for p in prompts]
        L = max(len(p) for p in prompts)
        B = len(prompts)

        # left-padded token buffer for prompt + every new token, allocated once
        self.seq = torch.zeros(B, L + max_new_tokens, dtype=torch.long, device=self.device)
        self.real = torch.ones(B, L + max_new_tokens, dtype=torch.bool, device=self.device)
        padded = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=self.device)
        self.seq[:, :L] = padded
        for b, p in enumerate(prompts):
            self.real[b, : L - len(p)] = False
        self.padded = any(len(p) < L for p in prompts)
        self.n = L  # tokens in seq
        self.cache = KVCache.for_model(model, B) if use_cache else None

    def _run(self, idx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits, _ = self.model(idx, kv_cache=self.cache, attention_mask=mask, last_only=True)
        return logits[:, -1]

    def first(self) -> torch.Tensor:
        """Logits after (re)reading the last block_size tokens from scratch."""
        lo = max(0, self.n - self.block_size)
        mask = self.real[:, lo : self.n] if self.padded else None
        if self.cache is not None:
            self.cache.reset()
        return self._run(self.seq[:, lo : self.n], mask)

    def next(self, tok: torch.Tensor) -> torch.Tensor:
        """Append tok (B,) and return the logits for the token after it."""
        self.seq[:, self.n] = tok
        self.n += 1
        if self.cache is None or self.cache.pos == self.block_size:
            return self.first()
        return self._run(tok.view(-1, 1), None)


def _check_prompts(prompts, vocab_size: int) -> None:
    if not isinstance(prompts, list | tuple) or not prompts:
        raise ValueError("prompts: expected a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if not isinstance(p, list | tuple) or not p:
            raise ValueError(f"prompts[{i}]: expected a non-empty list of token ids")
        if not all(isinstance(t, int) and 0 <= t < vocab_size for t in p):
            raise ValueError(f"prompts[{i}]: token ids must be ints in [0, {vocab_size})")


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")


def _check_filters(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
