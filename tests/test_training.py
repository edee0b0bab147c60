"""Training plumbing: lr schedule, exact resume, NaN stop, checkpoints that are not pickles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.gpt import GPT, GPTConfig
from tasks.checkpoint import load_checkpoint, save_checkpoint, save_state
from tasks.params import PretrainParams
from tasks.pretrain import random_windows, to_xy
from tasks.training import Loop, NonFiniteLoss, fit, lr_at, make_optimizer, peek_resume, resume

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
TOKENS = np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16)


def params(**kw) -> PretrainParams:
    base = dict(
        batch_size=4,
        max_steps=12,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=3,
        eval_interval=4,
        eval_batches=1,
        checkpoint_interval=5,
        log_interval=4,
    )
    return PretrainParams(**(base | kw))


def make_loop(model, tmp_path, p) -> Loop:
    def batch(step, micro):
        return to_xy(
            random_windows(TOKENS, p.batch_size, 16, np.random.default_rng([1, step, micro])), "cpu"
        )

    def evaluate():
        model.eval()
        with torch.no_grad():
            return {"val/loss": model(*batch(10**6, 0))[1].item()}

    return Loop(
        stage="test",
        batch=batch,
        evaluate=evaluate,
        resume_dir=tmp_path / "resume",
        fingerprint="fp",
        run_id="run",
        tokens_per_step=p.batch_size * 16,
        flops_per_token=1.0,
        peak_flops=1.0,
    )


@pytest.fixture(autouse=True)
def no_mlflow(monkeypatch):
    monkeypatch.setattr("tasks.tracking.log_metrics", lambda *a, **k: None)


def test_lr_warms_up_then_decays_to_min():
    p = params(max_steps=100, warmup_steps=10)
    lrs = [lr_at(s, p) for s in range(100)]
    assert lrs[0] == pytest.approx(p.lr / 10) and lrs[9] == pytest.approx(p.lr)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(100, p) == pytest.approx(p.min_lr)


def fresh(p, tmp_path):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    return model, make_optimizer(model, p), make_loop(model, tmp_path, p)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    p = params()
    model, opt, loop = fresh(p, tmp_path / "a")
    full = fit(model, opt, loop, p, torch.device("cpu"))

    # killed during step 11, after the step-10 checkpoint (step 10 is lost), then resumed
    model2, opt2, loop2 = fresh(p, tmp_path / "b")
    batch = loop2.batch

    def dies_at_step_11(step, micro):
        if step == 11:
            raise KeyboardInterrupt
        return batch(step, micro)

    loop2.batch = dies_at_step_11
    with pytest.raises(KeyboardInterrupt):
        fit(model2, opt2, loop2, p, torch.device("cpu"))
    del model2, opt2
    torch.manual_seed(123)  # a new process would start from another RNG state
    model3, opt3, loop3 = fresh(p, tmp_path / "b")
    assert peek_resume(loop3.resume_dir, "fp")["step"] == 10
    start = resume(model3, opt3, loop3)
    fit(model3, opt3, loop3, p, torch.device("cpu"), start_step=start)

    assert [s for s, _ in loop3.history["train"]] == list(range(12))
    assert loop3.history["train"] == full["train"]  # dropout is on: RNG restored too
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)


def test_stale_resume_state_is_ignored(tmp_path):
    p = params()
    model, opt, loop = fresh(p, tmp_path)
    save_state(
        loop.resume_dir,
        model,
        opt,
        {"step": 5, "fingerprint": "other", "run_id": "r", "history": {}},
    )
    assert peek_resume(loop.resume_dir, "fp") is None
    (loop.resume_dir / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt resume state"):
        peek_resume(loop.resume_dir, "fp")


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    p = params(lr=1e30, warmup_steps=0, grad_clip=0.0, checkpoint_interval=1)
    model, opt, loop = fresh(p, tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"loss is (nan|inf) at step \d+; the last good"):
        fit(model, opt, loop, p, torch.device("cpu"))
    assert (loop.resume_dir / "state.json").exists()  # the last good state is kept


def test_model_checkpoint_round_trip_and_corruption(tmp_path):
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    tok_file = tmp_path / "tok.json"
    tok_file.write_text("{}")
    save_checkpoint(tmp_path / "ckpt", model, tok_file, {"stage": "test"})
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    x = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(x)[0], loaded(x)[0])
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or mismatched weights"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="is .* a model checkpoint folder"):
        load_checkpoint(tmp_path)


def test_tied_embeddings_survive_resume_state(tmp_path):
    p = params()
    model, opt, _ = fresh(p, tmp_path)
    save_state(
        tmp_path / "s",
        model,
        opt,
        {
            "step": 0,
            "fingerprint": "fp",
            "run_id": "r",
            "history": {"train": [], "val": [], "ms": []},
        },
    )
    model2, opt2, loop2 = fresh(p, tmp_path)
    loop2.resume_dir = tmp_path / "s"
    resume(model2, opt2, loop2)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True)
    )
    assert not math.isnan(sum(q.sum().item() for q in model2.parameters()))
