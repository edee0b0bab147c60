"""The report card: verdict rules, rendering with every stage, with missing stages, run links."""

import json

from tasks import report


def experiment_row(verdict="pass", measured="x"):
    return {
        "expected": "e",
        "measured": measured,
        "value": 1.0,
        "unit": "u",
        "rule": "r",
        "verdict": verdict,
        "note": "n | with a pipe",
    }


FULL = {
    "tokenizer": {"val_bytes_per_token": 3.43},
    "pretrain": {"val_loss": 4.1, "unigram_loss": 6.0, "val_bits_per_byte": 1.7, "mfu": 0.3},
    "embeddings": {
        "final_loss": 1.8,
        "loss_per_epoch": [2.5] * 9 + [1.8],
        "analogy_accuracy": 0.05,
        "gensim_analogy_accuracy": 0.03,
        "train_seconds": 20.0,
        "gensim_train_seconds": 10.0,
        "simlex_spearman": 0.2,
        "wordsim_spearman": 0.3,
    },
    "sft": {"base": {"exact_match": {"all": 0.0}}, "sft": {"exact_match": {"all": 0.6}}},
    "reward": {"pairwise_accuracy": 0.9},
    "ppo": {
        "sft_test_accuracy": 0.6,
        "ppo_test_accuracy": 0.7,
        "sft_test_sampled_accuracy": 0.4,
        "ppo_test_sampled_accuracy": 0.5,
        "sft_test_rm_score": 0.1,
        "ppo_test_rm_score": 0.9,
        "final_kl": 0.2,
        "test_fixed": 12,
        "test_broken": 3,
        "test_p_value": 0.0352,
        "sft_seen_accuracy": 0.65,
        "ppo_seen_accuracy": 0.8,
    },
    "quantize": {
        "pretrain": {
            "fp32": {"val_perplexity": 60.0},
            "int8-channel": {"ppl_increase": 0.004, "file_size_ratio": 3.5},
            "int4-g32": {"ppl_increase": 0.08},
        }
    },
    "scaling": {"L_N": {"pure": {"alpha": 0.08}, "holdout": {"pure": {"rel_error": 0.03}}}},
    "experiments": {
        "rows": {name: experiment_row() for name in ["bpe_compression", *report.EXPERIMENT_TITLES]}
    },
}


def test_full_metrics_every_row_has_a_verdict():
    text, rows = report.build(FULL, {"experiments": "`abc`"})
    assert len(rows) == 14
    assert all(r["verdict"] in ("pass", "fail") for r in rows)
    assert report.counts(rows)["not run"] == 0
    assert "+0.40% (pretrain, int8-channel)" in text
    assert "60.0% -> 70.0%" in text  # PPO accuracy headline
    assert "40.0% -> 50.0%" in text and "+0.10 -> +0.90" in text  # sampled accuracy, RM score
    assert "| 12 / 3 (p 0.04) |" in text and "65.0% -> 80.0%" in text  # per prompt, seen prompts
    assert "| held-out prediction error | 3.0% |" in text  # the scaling fit's held-out check
    assert "`abc`" in text
    assert "n \\| with a pipe" in text  # a pipe in a note does not break the table
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == table[0].count(" | ") for line in table[1:15])


def test_missing_stages_show_not_run_and_never_crash():
    text, rows = report.build({}, {})
    assert all(r["verdict"] == "not run" for r in rows)
    assert "0 pass, 0 fail, 14 not run" in text
    partial = {"pretrain": {"val_loss": 5.0}, "quantize": {"pretrain": {"fp32": {}}}}
    text, rows = report.build(partial, {})
    assert "5.0000" in text and report.counts(rows)["not run"] == 14


def test_verdict_rules():
    q = lambda inc: {"quantize": {"pretrain": {"int8-tensor": {"ppl_increase": inc}}}}  # noqa: E731
    assert report.int8_row(q(0.049))["verdict"] == "pass"
    assert report.int8_row(q(0.06))["verdict"] == "fail"
    assert report.scaling_row({"scaling": {"alpha": 0.076}})["verdict"] == "pass"
    assert report.scaling_row({"scaling": {"alpha": 0.3}})["verdict"] == "fail"
    assert report.bpe_row({"tokenizer": {"val_bytes_per_token": 1.9}})["verdict"] == "fail"
    assert report.bpe_row({"tokenizer": {"val_bytes_per_token": 3.4}})["verdict"] == "pass"
    slow = dict(FULL["embeddings"], train_seconds=40.0)  # 4x gensim's time
    assert report.word2vec_row({"embeddings": slow})["verdict"] == "fail"
    assert report.word2vec_row(FULL)["verdict"] == "pass"
    assert report.skipgram_row({"embeddings": {"final_loss": 2.5}})["verdict"] == "fail"


def test_experiment_rows_keep_their_verdict_and_measured_value():
    m = {"experiments": {"rows": {"kv_cache": experiment_row("fail", "6.1x at width 128")}}}
    row = next(r for r in report.card_rows(m) if r["title"] == "KV-cache speedup")
    assert row["verdict"] == "fail" and row["measured"] == "6.1x at width 128"
    assert "rule: r" in row["note"]


def test_run_links():
    assert report.run_link("sqlite:///x/mlflow.db", "1", "abcdef12345") == "`abcdef12345`"
    link = report.run_link("http://127.0.0.1:5000/", "3", "abcdef12345")
    assert link == "[abcdef12](http://127.0.0.1:5000/#/experiments/3/runs/abcdef12345)"


def test_read_all_metrics_skips_bad_json(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "bad.json").write_text("{not json")
    assert report.read_all_metrics(tmp_path) == {"good": {"a": 1}}
