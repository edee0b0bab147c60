"""Byte-level BPE training: the incremental merge loop behind `Tokenizer.train`.

Training never touches the corpus after one pre-tokenization pass. The text is split into chunks
with the split pattern (one document at a time, so no chunk crosses a document boundary) and
counted: from then on the trainer only sees the unique chunks and their counts, so memory grows
with the vocabulary of the text, not with its length (no per-occurrence data).

Representation (the trick that makes pure Python fast enough): a chunk is a `str` in which every
character is one token, `chr(token_id)`. Bytes are `chr(0)..chr(255)` (so `bytes.decode("latin-1")`
converts a chunk), merge `r` creates `chr(256 + r)`. A pair is the 2-character string of its two
tokens, so `pair in chunk` and `chunk.replace(pair, new)` run in C, and `str.replace` merges the
non-overlapping occurrences left to right, exactly as BPE does. Comparing two pair strings compares
`(left_id, right_id)` lexicographically.

Merge loop: pair counts (weighted by chunk counts), an index pair -> chunks that (once) contained
it, and a max-heap of (count, pair) with lazy updates. After a merge only the chunks listed under
the merged pair are rewritten, and only the pairs next to each rewritten occurrence change count.
Counts of old pairs only ever decrease (merges destroy adjacencies, never create them between old
tokens), so a decreased pair is not re-pushed at once: when it reaches the top with a stale count
it is pushed back with its current count. Pairs that contain the new token are pushed once, after
the merge, with their final count.

Tie-breaking (deterministic): the pair with the highest count wins; among equal counts, the
smallest pair of token ids `(left, right)` in lexicographic order.

What it leaves out: min-frequency thresholds, dropout, and merges across chunk boundaries.
Run it through `model.tokenizer.Tokenizer.train`; tests: `pytest tests/test_tokenizer.py`.
"""

import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex
from tqdm import tqdm

log = logging.getLogger(__name__)

N_BYTES = 256
MAX_TOKEN_ID = 0x10FFFF  # a token is one `str` character, so ids must be valid code points


def count_chunks(texts: Iterable[str], pattern: str, progress: bool = False) -> Counter:
    """Pre-tokenize every document with `pattern`; return Counter {chunk: occurrences}."""
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be an iterable of documents (str), not a single str/bytes")
    compiled = regex.compile(pattern)
    counts: Counter = Counter()
    for i, text in enumerate(tqdm(texts, desc="pre-tokenize", unit="doc", disable=not progress)):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
        chunks = compiled.findall(text)
        if sum(map(len, chunks)) != len(text):  # encoders would silently drop the rest
            raise ValueError(f"pattern {pattern!r} leaves characters of document {i} unmatched")
        counts.update(chunks)
    counts.pop("", None)
    return counts


def train_merges(
    chunk_counts: dict[str, int], n_merges: int, progress: bool = False
) -> list[tuple[int, int]]:
    """Learn up to `n_merges` merges from {chunk: count}; merge r creates token id 256 + r.

    Returns the merges as (left_id, right_id) pairs in rank order. Returns fewer than `n_merges`
    only when no adjacent pair is left anywhere (the caller decides what that means).
    """
    if N_BYTES + n_merges > MAX_TOKEN_ID:
        raise ValueError(f"n_merges={n_merges} is too large (token ids must stay < 0x110000)")
    # latin-1 maps byte b to chr(b): each chunk becomes a string of byte tokens
    words = [chunk.encode("utf-8").decode("latin-1") for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    pair_counts, index = _count_pairs(words, freqs)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    with tqdm(total=n_merges, desc="bpe merges", disable=not progress, unit="merge") as bar:
        for rank in range(n_merges):
            pair = _pop_best(heap, pair_counts)
            if pair is None:
                break
            new = chr(N_BYTES + rank)
            for q in _apply_merge(pair, new, words, freqs, pair_counts, index):
                heapq.heappush(heap, (-pair_counts[q], q))
            merges.append((ord(pair[0]), ord(pair[1])))
            bar.update(1)
    return merges


def _count_pairs(words: list[str], freqs: list[int]) -> tuple[dict, dict]:
    """Weighted counts of adjacent pairs, and the index pair -> ids of chunks containing it
    (a chunk id appears once per occurrence, so a count is the sum over its index list)."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, w in enumerate(words):
        for j in range(len(w) - 1):
            index[w[j : j + 2]].append(i)
    pair_counts = defaultdict(int)
    for pair, ids in index.items():
        pair_counts[pair] = sum(map(freqs.__getitem__, ids))
    return pair_counts, index


def _pop_best(heap: list, pair_counts: dict[str, int]) -> str | None:
    """Pop the (highest count, smallest pair) entry whose count is current; None if none left."""
    while heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count == -neg_count:
            return pair
        if count > 0:  # stale: the count only went down since the push, so re-queue it
            heapq.heappush(heap, (-count, pair))
    return None


def _apply_merge(pair, new, words, freqs, pair_counts, index) -> list[str]:
    """Rewrite the chunks that contain `pair`; update counts and index; return the new pairs.

    A new pair (one containing `new`) is recorded by appending the chunk id to its index list
    once per occurrence, so its count is the sum of those chunks' frequencies (one op per
    occurrence). Decreases go straight into `pair_counts`.
    """
    created: dict[str, list[int]] = defaultdict(list)
    for i in index.pop(pair):
        w = words[i]
        j = w.find(pair)
        if j < 0:  # stale index entry, or a duplicate already rewritten
            continue
        f = freqs[i]
        if w.find(pair, j + 2) >= 0:  # several occurrences: the general path
            _forget_neighbours(w, pair, f, pair_counts)
            w = words[i] = w.replace(pair, new)
            _add_neighbours(w, new, i, created)
            continue
        # one occurrence, x a b y -> x new y (the common case, inlined for speed)
        nw = words[i] = w[:j] + new + w[j + 2 :]
        if j > 0:
            pair_counts[w[j - 1 : j + 1]] -= f
            created[nw[j - 1 : j + 1]].append(i)
        if j + 2 < len(w):
            pair_counts[w[j + 1 : j + 3]] -= f
            created[nw[j : j + 2]].append(i)
    del pair_counts[pair]
    for q, ids in created.items():
        pair_counts[q] = sum(map(freqs.__getitem__, ids))
        index[q] = ids
    return list(created)


def _forget_neighbours(w: str, pair: str, f: int, pair_counts: dict[str, int]) -> None:
    """Subtract the pairs overlapping each occurrence of `pair` in w (left to right, no overlap)."""
    n = len(w)
    prev_end = -1
    j = w.find(pair)
    while j >= 0:
        if j > 0 and j != prev_end:  # (x, a); when j == prev_end it was the previous (b, a)
            pair_counts[w[j - 1 : j + 1]] -= f
        if j + 2 < n:  # (b, y)
            pair_counts[w[j + 1 : j + 3]] -= f
        prev_end = j + 2
        j = w.find(pair, prev_end)


def _add_neighbours(w: str, new: str, i: int, created: dict[str, list[int]]) -> None:
    """Record chunk i once per pair around each `new` token in the rewritten chunk w."""
    n = len(w)
    k = w.find(new)
    while k >= 0:
        if k > 0:  # (x, new), including (new, new)
            created[w[k - 1 : k + 1]].append(i)
        if k + 1 < n and w[k + 1] != new:  # (new, y); (new, new) is added by the next one
            created[w[k : k + 2]].append(i)
        k = w.find(new, k + 1)


def merge_ranks(merges: list[tuple[int, int]]) -> dict[str, int]:
    """{pair string: rank} for `encode_chunk`."""
    return {chr(a) + chr(b): rank for rank, (a, b) in enumerate(merges)}


def encode_chunk(chunk: bytes, ranks: dict[str, int]) -> list[int]:
    """Reference BPE of one pre-tokenized chunk: merge the lowest-rank pair until none applies."""
    w = chunk.decode("latin-1")
    while len(w) > 1:
        pairs = {w[j : j + 2] for j in range(len(w) - 1)}
        best = min(pairs, key=lambda q: ranks.get(q, MAX_TOKEN_ID))
        rank = ranks.get(best)
        if rank is None:
            break
        w = w.replace(best, chr(N_BYTES + rank))
    return [ord(ch) for ch in w]
