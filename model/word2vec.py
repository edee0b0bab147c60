"""Word2vec: skip-gram with negative sampling (SGNS), and the word-vector benchmarks.

Training follows Mikolov et al. (2013) and the reference `word2vec.c`:
- words below `min_count` are dropped before windows are drawn;
- frequent words are subsampled each epoch with word2vec.c's keep probability
  `(sqrt(f / sample) + 1) * sample / f` (f = the word's share of all kept tokens), the variant
  gensim also uses, not the paper's `1 - sqrt(t / f)` discard probability;
- the window is dynamic: each center word draws b uniform in [1, window] and pairs with the
  words at distance <= b in its sentence (so near words count more);
- negatives come from the unigram counts raised to the 3/4 power;
- plain SGD whose lr decays linearly from `lr` to `min_lr` over all steps; input vectors start
  uniform in +-0.5/dim, output vectors at zero.
Unlike word2vec.c (one pair at a time, threads racing on shared rows), each step here updates a
batch of `batch_size` (center, context) pairs with gathered rows and `index_add_`, so gradients of
a word seen twice in a batch are summed: the same total step as sequential SGD, taken at once.
The pairs of a batch share `shared_negatives` noise words weighted K / N (see `SGNS.step`), and
`threads` Python threads train on shards of each epoch, lock-free (see `SGNS.train`).

The loss reported per epoch is the mean over positive pairs of
`-log sigmoid(u_o . v_c) - sum_k log sigmoid(-u_k . v_c)` (K = `negative` noise words; with
shared negatives the sum is (K / N) times the sum over the N shared ones, the same in
expectation), measured on each batch before its update. Evaluation: 3CosAdd analogy accuracy
over unit vectors restricted to the most frequent words (as gensim's `restrict_vocab`), Spearman
correlation on word-pair similarity sets, nearest neighbours by cosine.
Leaves out: hierarchical softmax, CBOW, phrases. Tests: `pytest tests/test_word2vec.py`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Lowercase runs of letters, or runs of digits: "Canada's 4,196" -> canada, s, 4, 196.
WORD_RE = re.compile(r"[^\W\d_]+|\d+")


def tokenize(text: str) -> list[list[str]]:
    """Sentences of lowercase words; a sentence is a non-empty line (a paragraph here), so
    windows never cross paragraph boundaries."""
    lines = (WORD_RE.findall(line.lower()) for line in text.splitlines())
    return [words for words in lines if words]


# ------------------------------------------------------------------------------ vocabulary


@dataclass
class Vocab:
    """Words kept by `min_count`, most frequent first, with their counts."""

    words: list[str]
    counts: np.ndarray  # (V,) int64

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


def build_vocab(sentences: Iterable[list[str]], min_count: int) -> Vocab:
    counter = Counter(w for s in sentences for w in s)
    kept = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: -counter[w])
    if not kept:
        raise ValueError(f"min_count={min_count}: no word occurs that often in the corpus")
    return Vocab(kept, np.array([counter[w] for w in kept], dtype=np.int64))


def encode(sentences: Iterable[list[str]], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """All in-vocabulary words as one id array, and the sentence number of each (both int64)."""
    ids, sent = [], []
    for n, s in enumerate(sentences):
        row = [vocab.index[w] for w in s if w in vocab.index]
        ids.extend(row)
        sent.extend([n] * len(row))
    return np.array(ids, dtype=np.int64), np.array(sent, dtype=np.int64)


def keep_probs(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word (word2vec.c's formula, clipped to 1);
    sample <= 0 keeps everything."""
    if sample <= 0:
        return np.ones(len(counts))
    f = counts / counts.sum()
    return np.minimum(1.0, (np.sqrt(f / sample) + 1) * sample / f)


def noise_probs(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Noise distribution for negatives: counts ** power, normalised."""
    w = counts.astype(np.float64) ** power
    return w / w.sum()


def noise_table(probs: np.ndarray, size: int = 2**20) -> np.ndarray:
    """A table of `size` word ids in which word w fills about probs[w] * size slots; a uniform
    slot is then a noise draw (a gather is much faster than inverse-CDF search per draw)."""
    size = max(size, 100 * len(probs))
    slots = (np.arange(size) + 0.5) / size
    table = np.searchsorted(np.cumsum(probs), slots, side="right")
    return np.minimum(table, len(probs) - 1).astype(np.int64)


# ------------------------------------------------------------------------------ pairs


def subsample(
    ids: np.ndarray, sent: np.ndarray, keep: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    mask = rng.random(len(ids)) < keep[ids]
    return ids[mask], sent[mask]


def skipgram_pairs(
    ids: np.ndarray, sent: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) id pairs with a dynamic window: position i draws b_i in [1, window]
    and pairs with every j in its sentence with 0 < |i - j| <= b_i."""
    b = rng.integers(1, window + 1, size=len(ids))
    centers, contexts = [], []
    for off in range(1, window + 1):
        i = np.arange(len(ids) - off)
        j = i + off
        same = sent[i] == sent[j]
        right = same & (b[i] >= off)  # i sees j on its right
        left = same & (b[j] >= off)  # j sees i on its left
        centers += [ids[i[right]], ids[j[left]]]
        contexts += [ids[j[right]], ids[i[left]]]
    return np.concatenate(centers), np.concatenate(contexts)


# ------------------------------------------------------------------------------ training


@dataclass
class SGNSConfig:
    dim: int = 100
    window: int = 5
    negative: int = 5  # K: noise words per positive pair (in expectation, see SGNS.step)
    shared_negatives: int = 64  # N: noise words drawn per batch, shared by its pairs
    sample: float = 1e-3
    epochs: int = 10
    lr: float = 0.025
    min_lr: float = 0.0001
    batch_size: int = 1024  # (center, context) pairs per step
    threads: int = 2  # Python threads, each training on its own shard (see SGNS.train)
    seed: int = 0


class SGNS:
    """Input vectors `w_in` (V, dim) -- the word vectors -- and output vectors `w_out` (V, dim)."""

    def __init__(self, counts: np.ndarray, config: SGNSConfig):
        self.config, self.counts = config, counts
        gen = torch.Generator().manual_seed(config.seed)
        V, d = len(counts), config.dim
        self.w_in = (torch.rand(V, d, generator=gen) - 0.5) / d
        self.w_out = torch.zeros(V, d)
        self.noise_table = torch.from_numpy(noise_table(noise_probs(counts)))

    def negatives(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) ids drawn from the noise distribution via a lookup table (as word2vec.c)."""
        return self.noise_table[torch.randint(len(self.noise_table), (n,), generator=gen)]

    @torch.no_grad()
    def step(
        self, centers: torch.Tensor, contexts: torch.Tensor, lr: float, gen: torch.Generator
    ) -> float:
        """One SGD step on a batch of B pairs; returns the summed loss (before the update).

        The batch shares N = `shared_negatives` noise words, each weighted K/N
        (K = `negative`): an unbiased estimate of the same objective as K private draws per
        pair, whose scores are one (B, d) @ (d, N) matmul instead of B * K gathered rows.
        """
        c = self.config
        negs = self.negatives(c.shared_negatives, gen)  # (N,)
        v = self.w_in.index_select(0, centers)  # (B, d); index_select beats x[idx] here
        u_pos = self.w_out.index_select(0, contexts)  # (B, d)
        u_neg = self.w_out.index_select(0, negs)  # (N, d)
        pos = (u_pos * v).sum(1)  # (B,)
        neg = v @ u_neg.T  # (B, N)
        weight = c.negative / len(negs)
        loss = -F.logsigmoid(pos).sum() - weight * F.logsigmoid(-neg).sum()

        # the negated gradient of the loss w.r.t. each score, times lr: sigmoid(-s) for a
        # positive, -weight * sigmoid(s') for a negative (skipped where it is the context)
        g_pos = torch.sigmoid(pos.neg_()).mul_(lr)  # (B,)
        g_neg = torch.sigmoid(neg).mul_(-lr * weight)  # (B, N)
        g_neg.masked_fill_(negs[None, :] == contexts[:, None], 0.0)
        dv = torch.addmm(g_pos[:, None] * u_pos, g_neg, u_neg)  # (B, d)
        self.w_out.index_add_(0, contexts, g_pos[:, None] * v)
        self.w_out.index_add_(0, negs, g_neg.T @ v)
        self.w_in.index_add_(0, centers, dv)
        return float(loss)

    def lr_at(self, done: int, total: int) -> float:
        c = self.config
        return c.lr - (c.lr - c.min_lr) * min(1.0, done / max(1, total))

    def train(
        self,
        ids: np.ndarray,
        sent: np.ndarray,
        on_epoch: Callable[[int, float, float], None] | None = None,
    ) -> list[float]:
        """Train for `epochs` on the encoded corpus; returns the mean loss per positive pair of
        each epoch. `on_epoch(epoch, loss, pairs_per_s)` is called after each epoch.

        With threads > 1, each Python thread trains on its own shard of the epoch's pairs with
        single-threaded torch ops on the shared vectors, lock-free as word2vec.c (a race can
        lose an update; SGD does not mind). Torch releases the GIL inside ops, so the threads
        run in parallel; intra-op threading instead syncs at every op, which small ops pay for
        dearly (and a loaded machine more so). threads=1 is deterministic.
        """
        c = self.config
        rng = np.random.default_rng(c.seed)
        keep = keep_probs(self.counts, c.sample)
        # lr decays over an estimate of all steps (pairs per epoch vary with subsampling)
        est = len(skipgram_pairs(*subsample(ids, sent, keep, rng), c.window, rng)[0])
        self._done, self._total = 0, c.epochs * math.ceil(est / c.batch_size)
        losses = []
        with intra_op_threads(1):
            for epoch in range(c.epochs):
                t0 = time.perf_counter()
                pairs = skipgram_pairs(*subsample(ids, sent, keep, rng), c.window, rng)
                order = rng.permutation(len(pairs[0]))
                centers, contexts = (torch.from_numpy(a[order]) for a in pairs)
                losses.append(self._epoch(centers, contexts, epoch) / max(1, len(centers)))
                if on_epoch:
                    on_epoch(epoch, losses[-1], len(centers) / (time.perf_counter() - t0))
        return losses

    def _epoch(self, centers: torch.Tensor, contexts: torch.Tensor, epoch: int) -> float:
        """Run the epoch's batches on `threads` shards; returns the summed loss."""
        c = self.config
        bounds = np.linspace(0, len(centers), c.threads + 1).astype(int)

        def shard(t: int) -> float:
            gen = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch * 101 + t)
            total = 0.0
            for s in range(bounds[t], bounds[t + 1], c.batch_size):
                e = min(s + c.batch_size, bounds[t + 1])
                lr = self.lr_at(self._done, self._total)
                total += self.step(centers[s:e], contexts[s:e], lr, gen)
                self._done += 1  # shared progress for the lr schedule; exactness not needed
            return total

        if c.threads == 1:
            return shard(0)
        with ThreadPoolExecutor(c.threads) as pool:
            return sum(pool.map(shard, range(c.threads)))


@contextlib.contextmanager
def intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ evaluation


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def read_analogies(path) -> list[tuple[str, str, str, str, str]]:
    """(section, a, b, c, d) per question of a `questions-words.txt` file, lowercased."""
    out, section = [], ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
        elif line.strip():
            a, b, c, d = line.lower().split()
            out.append((section, a, b, c, d))
    return out


def analogy_accuracy(
    vectors: np.ndarray,
    words: list[str],
    questions: list[tuple[str, str, str, str, str]],
    restrict_vocab: int = 30000,
    chunk: int = 512,
) -> dict:
    """3CosAdd on unit vectors: the answer to a:b :: c:? is argmax_x cos(x, b - a + c) over the
    `restrict_vocab` most frequent words (rows of `vectors` in frequency order), a, b and c
    excluded. Questions with a word outside those are skipped; coverage says how many were not."""
    n = min(restrict_vocab, len(words))
    unit = unit_rows(np.asarray(vectors[:n], dtype=np.float32))
    index = {w: i for i, w in enumerate(words[:n])}
    covered = [q for q in questions if all(w in index for w in q[1:])]
    abcd = np.array([[index[w] for w in q[1:]] for q in covered], dtype=np.int64).reshape(-1, 4)
    correct = np.zeros(len(abcd), dtype=bool)
    for s in range(0, len(abcd), chunk):
        a, b, c, d = abcd[s : s + chunk].T
        sims = (unit[b] - unit[a] + unit[c]) @ unit.T  # (q, n)
        rows = np.arange(len(a))
        sims[rows, a] = sims[rows, b] = sims[rows, c] = -np.inf
        correct[s : s + chunk] = sims.argmax(axis=1) == d
    return {
        "accuracy": float(correct.mean()) if len(correct) else 0.0,
        "correct": int(correct.sum()),
        "covered": len(covered),
        "total": len(questions),
        "coverage": len(covered) / max(1, len(questions)),
    }


def read_word_pairs(path) -> list[tuple[str, str, float]]:
    """(w1, w2, human score) per line of a SimLex/WordSim file ('#' lines are comments)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            w1, w2, score = line.split("\t")[:3]
            out.append((w1.lower(), w2.lower(), float(score)))
    return out


def similarity_spearman(
    vectors: np.ndarray, words: list[str], pairs: list[tuple[str, str, float]]
) -> dict:
    """Spearman correlation between cosine similarity and human scores, on the pairs whose two
    words are in the vocabulary (the others are skipped and counted)."""
    from scipy.stats import spearmanr

    index = {w: i for i, w in enumerate(words)}
    kept = [(index[a], index[b], s) for a, b, s in pairs if a in index and b in index]
    if len(kept) < 3:
        return {"spearman": 0.0, "pairs": len(kept), "coverage": len(kept) / max(1, len(pairs))}
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    a, b, human = (np.array(col) for col in zip(*kept, strict=True))
    cos = (unit[a] * unit[b]).sum(axis=1)
    rho = spearmanr(cos, human).statistic
    return {
        "spearman": float(rho) if math.isfinite(rho) else 0.0,
        "pairs": len(kept),
        "coverage": len(kept) / max(1, len(pairs)),
    }


def nearest(
    vectors: np.ndarray, words: list[str], query: str, k: int = 8
) -> list[tuple[str, float]]:
    """The k words with the highest cosine similarity to `query` (itself excluded)."""
    index = {w: i for i, w in enumerate(words)}
    if query not in index:
        raise ValueError(f"nearest: {query!r} is not in the vocabulary")
    unit = unit_rows(np.asarray(vectors, dtype=np.float32))
    sims = unit @ unit[index[query]]
    sims[index[query]] = -np.inf
    top = np.argsort(-sims)[:k]
    return [(words[i], float(sims[i])) for i in top]
