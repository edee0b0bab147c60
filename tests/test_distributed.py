"""DDP: two CPU ranks (gloo) take the same steps as one process at the same global batch.

The worker runs the shared training loop (`tasks.training.fit`) under `tasks.distributed`; the
reference is one process with grad_accum = world_size. Evaluation shards the val windows and
all-reduces sums, so its loss equals the single-process full val loss.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from model.gpt import GPT, GPTConfig
from tasks import distributed, tracking
from tasks.params import PretrainParams
from tasks.pretrain import full_val_loss, random_windows, sampled_val_loss, to_xy
from tasks.training import Loop, fit, make_optimizer
from tests.conftest import copy_repo, project_env, run_in

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
TOKENS = np.random.default_rng(0).integers(0, 64, 6000).astype(np.uint16)
VAL = np.random.default_rng(1).integers(0, 64, 1001).astype(np.uint16)  # 63 windows: uneven
B, T, STEPS = 4, 16, 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_eval(grad_accum: int, out: str) -> None:
    """Train STEPS steps with the shared loop on this rank; rank 0 saves weights and losses."""
    tracking.log_metrics = lambda *a, **k: None  # no MLflow in this test
    p = PretrainParams(
        batch_size=B,
        grad_accum=grad_accum,
        max_steps=STEPS,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=3,
        eval_batches=3,
        log_interval=STEPS,
        checkpoint_interval=STEPS,
    )
    cpu = torch.device("cpu")
    with distributed.session(cpu) as dist:
        torch.manual_seed(0)
        model = GPT(CONFIG)
        net = distributed.wrap(model, dist)
        loop = Loop(
            stage="ddp-test",
            batch=lambda step, micro: to_xy(
                random_windows(TOKENS, B, T, np.random.default_rng([1, step, micro])), cpu
            ),
            evaluate=lambda: {"val/loss": sampled_val_loss(model, VAL, 3, B, T, 5, cpu)},
            resume_dir=Path(out) / "resume",
            fingerprint="fp",
            run_id="run",
            tokens_per_step=B * T * grad_accum * dist.world_size,
            flops_per_token=1.0,
            peak_flops=1.0,
        )
        history = fit(net, make_optimizer(model, p), loop, p, cpu)
        nats, n, _ = full_val_loss(model, VAL, T, B, cpu)
        nats, n = distributed.all_reduce_sums([nats, n])
        if dist.is_main:
            name = f"{out}/world{dist.world_size}"
            save_file({k: v.detach().clone() for k, v in model.named_parameters()}, name + ".st")
            info = {"history": history, "val_loss": nats / n, "val_tokens": n}
            with open(name + ".json", "w") as f:
                json.dump(info, f)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    train_and_eval(grad_accum=1, out=out)


def test_single_process_helpers_are_identities():
    assert distributed.init(torch.device("cpu")).world_size == 1
    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.all_reduce_sums([1.5, 2]) == [1.5, 2.0]
    assert distributed.global_micro(3, grad_accum=4) == 3
    assert distributed.is_main()


@pytest.mark.slow
def test_two_ranks_match_one_process_at_the_same_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    os.environ.pop("WORLD_SIZE", None)
    train_and_eval(grad_accum=2, out=str(tmp_path))

    ddp, single = load_file(tmp_path / "world2.st"), load_file(tmp_path / "world1.st")
    diff = max((ddp[k] - single[k]).abs().max().item() for k in single)
    a = json.loads((tmp_path / "world2.json").read_text())
    b = json.loads((tmp_path / "world1.json").read_text())
    print(f"DDP vs single: max |param diff| {diff:.3g} after {STEPS} steps; ", end="")
    print(f"full val loss {a['val_loss']:.7f} vs {b['val_loss']:.7f} on {a['val_tokens']} tokens")
    assert diff < 1e-5
    assert a["val_tokens"] == b["val_tokens"] == len(VAL) - 1  # every val token exactly once
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    for (s1, l1), (s2, l2) in zip(a["history"]["train"], b["history"]["train"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)
    for (_, l1), (_, l2) in zip(a["history"]["val"], b["history"]["val"], strict=True):
        assert l1 == pytest.approx(l2, abs=1e-5)  # sharded sampled eval: same mean


@pytest.mark.slow
def test_pretrain_stage_runs_under_torchrun(quick_pretrained, tmp_path):
    """`torchrun --nproc_per_node=2 -m tasks.pretrain`: rank 0 writes, every val token once."""
    repo = copy_repo(quick_pretrained, tmp_path / "r")
    single = json.loads((repo / "metrics" / "pretrain.json").read_text())
    (repo / "out" / "pretrain" / "model.safetensors").unlink()
    env = project_env(repo.parent) | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "tasks.pretrain"]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    metrics = json.loads((repo / "metrics" / "pretrain.json").read_text())
    assert (repo / "out" / "pretrain" / "model.safetensors").exists()
    assert metrics["val_tokens"] == single["val_tokens"]
    assert metrics["tokens_seen"] == 2 * single["tokens_seen"]  # global batch = 2 x batch_size
    assert proc.stdout.count("pretrain: val loss") == 1  # rank 0 alone logs
    count = "import mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db'); print(len("
    count += "mlflow.search_runs(experiment_names=['llmpipe'], "
    count += "filter_string='tags.stage=\"pretrain\"')))"
    assert run_in(repo, "-c", count).stdout.split()[-1] == "2"  # the fixture's and rank 0's
