"""Word2vec: tokenization, subsampling and noise formulas, pairs, the SGD step against autograd,
training on a tiny corpus, the benchmarks (parity with gensim's evaluators) and the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import word2vec as w2v
from tests.conftest import run_in


def test_tokenize_lowercases_and_splits_lines():
    text = "Canada's 4,196 people.\n\nThe  END"
    assert w2v.tokenize(text) == [["canada", "s", "4", "196", "people"], ["the", "end"]]


def test_vocab_drops_rare_words_and_sorts_by_count():
    vocab = w2v.build_vocab([["a", "b", "a", "c"], ["a", "b"]], min_count=2)
    assert vocab.words == ["a", "b"] and vocab.counts.tolist() == [3, 2]
    ids, sent = w2v.encode([["a", "c", "b"], ["b"]], vocab)
    assert ids.tolist() == [0, 1, 1] and sent.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="min_count"):
        w2v.build_vocab([["a"]], min_count=2)


def test_keep_probability_is_word2vec_c_formula():
    counts = np.array([50_000, 5_000, 500, 50, 5])
    f = counts / counts.sum()
    sample = 1e-3
    expected = np.minimum(1.0, (np.sqrt(f / sample) + 1) * sample / f)
    assert np.allclose(w2v.keep_probs(counts, sample), expected)
    assert w2v.keep_probs(counts, sample)[-1] == 1.0  # rare words are always kept
    assert w2v.keep_probs(counts, sample)[0] < 0.1
    assert (w2v.keep_probs(counts, 0.0) == 1).all()


def test_subsampling_keeps_the_expected_share():
    counts = np.array([9000, 1000])
    ids = np.repeat([0, 1], counts)
    keep = w2v.keep_probs(counts, 0.01)
    kept, _ = w2v.subsample(ids, np.zeros_like(ids), keep, np.random.default_rng(0))
    shares = np.bincount(kept, minlength=2) / counts
    assert np.allclose(shares, keep, atol=0.05) and keep[0] < keep[1] < 1


def test_noise_distribution_is_count_to_three_quarters():
    counts = np.array([1000, 100, 10, 1])
    probs = w2v.noise_probs(counts)
    assert np.allclose(probs, counts**0.75 / (counts**0.75).sum())
    model = w2v.SGNS(counts, w2v.SGNSConfig(dim=4))
    draws = model.negatives(200_000, torch.Generator().manual_seed(0)).numpy()
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.allclose(freq, probs, atol=0.005)


def test_pairs_use_a_dynamic_window_within_sentences():
    n, window = 20_000, 4
    ids = np.arange(n)  # id = position, so a pair's distance is |center - context|
    sent = np.zeros(n, dtype=np.int64)
    sent[n // 2 :] = 1
    centers, contexts = w2v.skipgram_pairs(ids, sent, window, np.random.default_rng(0))
    dist = np.abs(centers - contexts)
    assert dist.min() == 1 and dist.max() == window
    # a center draws b uniform in [1, window]: distance d is used with probability
    # (window - d + 1) / window, so distance 1 is used 4x as often as distance 4
    counts = np.bincount(dist)[1:]
    assert np.allclose(counts / counts[0], [1, 0.75, 0.5, 0.25], atol=0.03)
    # no pair crosses the sentence boundary at n / 2
    assert not ((centers < n // 2) != (contexts < n // 2)).any()


def test_step_is_sgd_on_the_sgns_loss():
    counts = np.array([40, 30, 20, 10, 5, 5])
    config = w2v.SGNSConfig(dim=8, negative=3, shared_negatives=4, seed=1)
    model = w2v.SGNS(counts, config)
    model.w_out.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    centers, contexts = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 3, 5])
    w_in = model.w_in.clone().requires_grad_()
    w_out = model.w_out.clone().requires_grad_()
    negs = model.negatives(4, torch.Generator().manual_seed(3))

    # reference: autograd on the documented loss, negatives weighted K / N, skip == context
    v, pos = w_in[centers], (w_in[centers] * w_out[contexts]).sum(1)
    neg = v @ w_out[negs].T
    skip = negs[None, :] == contexts[:, None]
    loss = -F.logsigmoid(pos).sum() - 3 / 4 * F.logsigmoid(-neg).masked_fill(skip, 0).sum()
    loss.backward()

    value = model.step(centers, contexts, 0.1, torch.Generator().manual_seed(3))
    full = -F.logsigmoid(pos).sum() - 3 / 4 * F.logsigmoid(-neg).sum()
    assert value == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(model.w_in, w_in.detach() - 0.1 * w_in.grad, atol=1e-6)
    assert torch.allclose(model.w_out, w_out.detach() - 0.1 * w_out.grad, atol=1e-6)


def topic_corpus(n_sentences: int = 400, seed: int = 0) -> list[list[str]]:
    """Two topics whose words never share a sentence: a clear signal for tiny vectors."""
    rng = np.random.default_rng(seed)
    topics = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]]
    return [list(rng.choice(topics[k % 2], size=12)) for k in range(n_sentences)]


def test_training_lowers_the_loss_and_groups_topics():
    sentences = topic_corpus()
    vocab = w2v.build_vocab(sentences, 1)
    ids, sent = w2v.encode(sentences, vocab)
    config = w2v.SGNSConfig(dim=16, epochs=5, sample=0, batch_size=256, threads=1, lr=0.05)
    model = w2v.SGNS(vocab.counts, config)
    losses = model.train(ids, sent)
    assert losses[-1] < losses[0] < 6 * math.log(2) + 0.01  # starts near 6 ln 2 (all scores 0)
    near = [w for w, _ in w2v.nearest(model.w_in.numpy(), vocab.words, "a0", 5)]
    assert all(w.startswith("a") for w in near)


def test_two_threads_train_as_well_as_one():
    sentences = topic_corpus(seed=1)
    vocab = w2v.build_vocab(sentences, 1)
    ids, sent = w2v.encode(sentences, vocab)
    final = []
    for threads in (1, 2):
        config = w2v.SGNSConfig(dim=16, epochs=3, sample=0, batch_size=128, threads=threads)
        final.append(w2v.SGNS(vocab.counts, config).train(ids, sent)[-1])
    assert final[1] == pytest.approx(final[0], rel=0.05)


# ------------------------------------------------------------------------------ evaluation


def analogy_vectors() -> tuple[np.ndarray, list[str]]:
    """Vectors where gender and royalty are two directions: king - man + woman = queen."""
    base = {"man": [1, 0, 0, 0], "woman": [1, 1, 0, 0], "king": [1, 0, 1, 0]}
    base |= {"queen": [1, 1, 1, 0], "boy": [1, 0, 0, 1], "girl": [1, 1, 0, 1], "cat": [0, 0, 0, 1]}
    words = list(base)
    return np.array([base[w] for w in words], dtype=np.float32) + 0.01, words


def write_questions(path) -> None:
    path.write_text(
        ": family\nman woman king queen\nking queen man woman\nman woman boy girl\n"
        ": other\nman woman dog bitch\nboy girl cat girl\n"
    )


def test_analogy_accuracy_on_a_hand_made_set(tmp_path):
    vectors, words = analogy_vectors()
    write_questions(tmp_path / "q.txt")
    questions = w2v.read_analogies(tmp_path / "q.txt")
    assert questions[0] == ("family", "man", "woman", "king", "queen")
    out = w2v.analogy_accuracy(vectors, words, questions)
    assert out["covered"] == 4 and out["total"] == 5 and out["coverage"] == 0.8  # dog skipped
    assert out["correct"] == 3  # boy:girl :: cat:? is not girl (girl is excluded as b)
    restricted = w2v.analogy_accuracy(vectors, words, questions, restrict_vocab=4)
    assert restricted["covered"] == 2  # only man, woman, king, queen are allowed


def test_analogy_accuracy_matches_gensim(tmp_path):
    from gensim.models import KeyedVectors

    # word (i, j) = A[i] + B[j] + noise: (i1, j1) : (i1, j2) :: (i2, j1) : (i2, j2) holds roughly
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    words = [f"w{i}x{j}" for i in range(8) for j in range(8)]
    vectors = np.array([A[i] + B[j] for i in range(8) for j in range(8)])
    vectors = (vectors + rng.normal(scale=0.8, size=vectors.shape)).astype(np.float32)
    lines = [": s1"]
    for _ in range(300):
        (i1, i2), (j1, j2) = rng.choice(8, 2, replace=False), rng.choice(8, 2, replace=False)
        lines.append(f"w{i1}x{j1} w{i1}x{j2} w{i2}x{j1} w{i2}x{j2}")
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    kv = KeyedVectors(16)
    kv.add_vectors(words, vectors)
    theirs, _ = kv.evaluate_word_analogies(str(tmp_path / "q.txt"), restrict_vocab=50)
    ours = w2v.analogy_accuracy(vectors, words, w2v.read_analogies(tmp_path / "q.txt"), 50)
    assert 0.1 < ours["accuracy"] < 1 and ours["coverage"] < 1
    assert ours["accuracy"] == pytest.approx(theirs)


def test_similarity_spearman_matches_gensim(tmp_path):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    rows = ["# comment"] + [
        f"w{rng.integers(40)}\tw{rng.integers(40)}\t{rng.uniform(0, 10):.2f}" for _ in range(80)
    ]
    rows.append("w1\tunknown\t5.0")
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    kv = KeyedVectors(8)
    kv.add_vectors(words, vectors)
    _, (rho, _), _ = kv.evaluate_word_pairs(str(tmp_path / "pairs.tsv"))
    ours = w2v.similarity_spearman(vectors, words, w2v.read_word_pairs(tmp_path / "pairs.tsv"))
    assert ours["spearman"] == pytest.approx(rho, abs=1e-6)
    assert ours["pairs"] == 80 and ours["coverage"] == pytest.approx(80 / 81)


def test_nearest_excludes_the_query_and_sorts():
    vectors, words = analogy_vectors()
    near = w2v.nearest(vectors, words, "king", 3)
    assert "king" not in [w for w, _ in near] and len(near) == 3
    assert [s for _, s in near] == sorted((s for _, s in near), reverse=True)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        w2v.nearest(vectors, words, "dog")


# ------------------------------------------------------------------------------ stage


def test_embeddings_stage_on_quick_profile(quick_pretrained):
    repo = quick_pretrained
    run_in(repo, "-m", "tasks.embeddings")
    metrics = json.loads((repo / "metrics" / "embeddings.json").read_text())
    losses = metrics["loss_per_epoch"]
    assert losses[-1] < losses[0] and metrics["final_loss"] == losses[-1]
    assert 0 < metrics["analogy_covered"] <= metrics["analogy_total"]
    assert -1 <= metrics["simlex_spearman"] <= 1 and metrics["wordsim_pairs"] > 0
    header, first = (repo / "out" / "embeddings" / "vectors.txt").read_text().split("\n")[:2]
    n_words, dim = map(int, header.split())
    assert n_words == metrics["vocab_size"] and len(first.split()) == dim + 1
    assert "| city |" in (repo / "out" / "embeddings" / "neighbours.md").read_text()
    rows = (repo / "plots" / "embeddings" / "loss.csv").read_text().split()
    assert rows[0] == "epoch,loss" and len(rows) == len(losses) + 1
    # the peer ran on the same words and went through the same evaluators
    assert metrics["gensim_analogy_covered"] == metrics["analogy_covered"]
    assert metrics["gensim_train_seconds"] > 0 and -1 <= metrics["gensim_simlex_spearman"] <= 1
