"""Every architecture option trains in the pretrain stage (quick profile, a few steps).

The options are grouped into a few combinations that together cover every value of every
`model` key in params.yaml, so each option (and several pairs of them) runs through the real
stage: params validation, training, evaluation, checkpoint, sampling with the KV cache.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import copy_repo, run_in

pytestmark = pytest.mark.slow

COMBOS = {
    "post-rms-swiglu-mqa-window": dict(
        pos_encoding="none",
        norm="rmsnorm",
        norm_placement="post",
        mlp="swiglu",
        tie_embeddings=False,
        n_kv_head=1,
        sliding_window=16,
        dropout=0.1,
        bias=True,
    ),
    "sinusoidal-gqa-moe": dict(
        pos_encoding="sinusoidal",
        n_kv_head=2,
        n_expert=4,
        n_expert_active=2,
        expert_capacity_factor=1.25,
        sliding_window=[8, 32],
    ),
    "learned-moe-top1-bidirectional": dict(
        pos_encoding="learned",
        n_expert=2,
        n_expert_active=1,
        causal=False,
        mlp="swiglu",
    ),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_option_combination_trains(quick_pretrained, tmp_path, name):
    repo = copy_repo(quick_pretrained, tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"].update(COMBOS[name])
    if not params["model"].get("causal", True):  # bidirectional attention needs the MLM objective
        params["pretrain"]["objective"] = "masked"
    params["pretrain"].update(max_steps=4, eval_interval=2, checkpoint_interval=2, log_interval=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(repo, "-m", "tasks.pretrain")
    metrics = json.loads((repo / "metrics" / "pretrain.json").read_text())
    assert metrics["steps"] == 4
    config = json.loads((repo / "out" / "pretrain" / "config.json").read_text())
    saved = config.get("model", config)
    for key, value in COMBOS[name].items():
        assert saved[key] == value, key


def test_combinations_cover_every_option_value():
    from typing import Literal, get_args, get_origin

    from tasks.params import ModelParams

    for key, field in ModelParams.model_fields.items():
        if get_origin(field.annotation) is Literal:
            seen = {c.get(key, field.default) for c in COMBOS.values()} | {field.default}
            assert seen == set(get_args(field.annotation)), key
