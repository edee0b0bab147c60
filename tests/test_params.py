"""params.yaml: both profiles load; malformed files give one error naming every bad key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tasks.params import ParamsError, load_params
from tests.conftest import ROOT

FREE_FORM = {"scaling.points"}  # sweep point names differ between profiles by design


def keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and prefix + k not in FREE_FORM:
            out |= keys(v, prefix + k + ".")
    return out


def test_default_and_quick_profiles_load_with_the_same_keys():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    quick = yaml.safe_load((ROOT / "profiles" / "quick.yaml").read_text())
    assert keys(default) == keys(quick)
    assert (
        load_params(ROOT / "params.yaml").pretrain.max_steps
        > load_params(ROOT / "profiles" / "quick.yaml").pretrain.max_steps
    )


def write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_every_problem_is_listed_with_its_key(tmp_path):
    path = write(tmp_path, "pretrain:\n  lr: -1\n  batch_size: many\nmodel:\n  n_layrs: 3\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and "3 problem(s)" in msg
    assert "pretrain.lr" in msg and "pretrain.batch_size" in msg and "'many'" in msg
    assert "model.n_layrs" in msg  # a typo is an error, not a silent default


def test_cross_field_rules_name_the_fields(tmp_path):
    with pytest.raises(ParamsError, match=r"model: .*n_embd \(100\).*n_head \(3\)"):
        load_params(write(tmp_path, "model:\n  n_embd: 100\n  n_head: 3\n"))
    with pytest.raises(ParamsError, match="data: .*'files'"):
        load_params(write(tmp_path, "data:\n  source: files\n"))
    with pytest.raises(ParamsError, match=r"ppo: .*unknown families \['cpy'\]"):
        load_params(write(tmp_path, "ppo:\n  families: [copy, cpy]\n"))
    with pytest.raises(ParamsError, match=r"tokenizer.split"):
        load_params(write(tmp_path, "tokenizer:\n  split: gpt3\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pretrain: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("seed: 1\nsurprise: 2\n", "surprise"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_exits_with_one_clear_line(tmp_path):
    write(tmp_path, "tokenizer:\n  vocab_size: 10\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.params"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1
    assert "tokenizer.vocab_size" in proc.stderr and "Traceback" not in proc.stderr
