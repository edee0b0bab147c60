"""Key/value cache for incremental decoding.

Per layer, keys and values are preallocated once as (B, n_kv_head, S, hd): only the n_kv_head
key/value heads are stored, so grouped-query attention saves memory for real. S is block_size for
full-attention layers and the window for sliding-window layers, whose buffer is a ring: slot s
lives at index s % window, and a token never needs keys older than its window.

Batched prompts of different lengths use left padding plus `attention_mask` (B, T) on the
prefill: every row advances by the same number of slots per forward, pads are never attended to,
and each row's positions count its real tokens only (the first real token is position 0), so a
padded row computes what it would compute alone. Decode steps after the prefill are all real.

Usage: `cache = KVCache.for_model(model, batch_size)`, then `model(idx, kv_cache=cache)` for the
prompt and for each new token. The cache holds at most block_size slots; once full, `reset()` it
and prefill again (model/generation.py does this for its sliding crop). Causal models only.
Leaves out: paged or shared-prefix caches, quantised caches. Tests: `pytest tests/test_model.py`.
"""

import torch

from model.attention import CAUSAL, NO_MASK, AttnMask, make_attn_mask


class KVCache:
    """Preallocated per-layer K/V buffers plus the slot bookkeeping shared by every layer."""

    def __init__(self, config, batch_size: int, *, device=None, dtype=torch.float32):
        if not config.causal:
            raise ValueError("config.causal: a KV cache needs a causal model (causal=True)")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.block_size = config.block_size
        self.windows = list(config.windows)  # per layer: ring size, or None = full buffer
        shapes = [
            (batch_size, config.kv_heads, w or config.block_size, config.head_dim)
            for w in self.windows
        ]
        self.k = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        self.v = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        # real[b, s]: slot s of row b holds a real token (False = padding)
        self.real = torch.ones(batch_size, config.block_size, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.reset()

    @classmethod
    def for_model(cls, model, batch_size: int) -> "KVCache":
        """A cache on the model's device, in its parameters' dtype."""
        p = next(model.parameters())
        return cls(model.config, batch_size, device=p.device, dtype=p.dtype)

    def reset(self) -> None:
        """Forget every token; the buffers are kept and overwritten."""
        self.pos = 0  # slots written so far (pads included), the same for every row
        self.start = 0  # first slot of the forward in progress
        self.has_pad = False
        self.real.fill_(True)

    def nbytes(self) -> int:
        """Bytes held by the key and value buffers (the slot bookkeeping is not counted)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def begin(
        self, T: int, attention_mask: torch.Tensor | None
    ) -> tuple[int | torch.Tensor, dict[int | None, AttnMask]]:
        """Reserve T slots for the next forward.

        Returns positions (an int offset when they are slots start..start+T-1, else (B, T)) and
        the prepared attention mask per window size, matching what `update` returns.
        """
        p = self.pos
        if p + T > self.block_size:
            raise ValueError(
                f"kv_cache: {p} + {T} tokens exceed block_size {self.block_size}; reset() it"
            )
        positions = self._positions(p, T, attention_mask)
        self.start, self.pos = p, p + T
        masks = {w: self._mask(w, p, T) for w in set(self.windows)}
        return positions, masks

    def _positions(self, p: int, T: int, attention_mask) -> int | torch.Tensor:
        """Track padding; positions count real tokens per row."""
        if attention_mask is None and not self.has_pad:
            return p
        if attention_mask is None:
            real = torch.ones(self.batch_size, T, dtype=torch.bool, device=self.real.device)
        else:
            real = attention_mask.to(dtype=torch.bool, device=self.real.device)
        if not self.has_pad:
            self.n_real.fill_(p)  # until now every slot was real
            self.has_pad = True
        self.real[:, p : p + T] = real
        positions = self.n_real[:, None] + real.cumsum(dim=1) - 1  # (B, T)
        self.n_real += real.sum(dim=1)
        return positions.clamp(min=0)

    def _mask(self, window: int | None, p: int, T: int) -> AttnMask:
        """The mask over the keys that `update` returns for layers of this window."""
        if not self.has_pad:
            if T == 1:
                return NO_MASK  # every stored key is visible to the newest token
            if p == 0 and (window is None or window >= T):
                return CAUSAL
        k_slots = self._key_slots(window, p, T)
        key_real = self.real[:, k_slots] if self.has_pad else None
        q_slots = torch.arange(p, p + T, device=self.real.device)
        return make_attn_mask(q_slots, k_slots, causal=True, window=window, key_real=key_real)

    def _key_slots(self, window: int | None, p: int, T: int) -> torch.Tensor:
        """Slots of the keys `update` returns, in its order (see the cases there)."""
        device = self.real.device
        if window is None:
            return torch.arange(p + T, device=device)
        if T == 1:
            if p < window:
                return torch.arange(p + 1, device=device)
            return self._ring_slots(window, p + 1)
        if p <= window:
            return torch.arange(p + T, device=device)
        return torch.cat([self._ring_slots(window, p), torch.arange(p, p + T, device=device)])

    def _ring_slots(self, window: int, n_written: int) -> torch.Tensor:
        """Slot held at each ring index after n_written slots: the newest s < n with s % w == i."""
        i = torch.arange(window, device=self.real.device)
        return (n_written - 1) - (n_written - 1 - i) % window

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, n_kv_head, T, hd) for this forward; return every key/value visible."""
        p, T, window = self.start, k.shape[2], self.windows[layer]
        kc, vc = self.k[layer], self.v[layer]
        if window is None:
            kc[:, :, p : p + T] = k
            vc[:, :, p : p + T] = v
            return kc[:, :, : p + T], vc[:, :, : p + T]
        if T == 1:
            # write first, then the ring holds exactly the visible window
            kc[:, :, p % window] = k[:, :, 0]
            vc[:, :, p % window] = v[:, :, 0]
            n = min(p + 1, window)
            return kc[:, :, :n], vc[:, :, :n]
        # several new tokens: attend over (old ring + new), then keep the newest in the ring
        keys = torch.cat([kc[:, :, : min(p, window)], k], dim=2)
        values = torch.cat([vc[:, :, : min(p, window)], v], dim=2)
        m = min(T, window)
        idx = torch.arange(p + T - m, p + T, device=k.device) % window
        kc.index_copy_(2, idx, k[:, :, T - m :])
        vc.index_copy_(2, idx, v[:, :, T - m :])
        return keys, values
