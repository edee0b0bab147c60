"""Typed `params.yaml`: one pydantic model per section, validated on load.

A malformed file raises one `ParamsError` that lists every problem with its dotted key
(`pretrain.lr: Input should be greater than 0`), so a user fixes them all in one go.
Unknown keys are errors too: a typo must not silently fall back to a default.

    python -m tasks.params            # validate params.yaml and print it resolved
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and every bad key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    source: Literal["wikipedia", "files", "hub"] = "wikipedia"
    files: list[str] = []  # paths or globs of .txt (one document per file), .jsonl, .parquet
    hub_name: str | None = None  # a Hugging Face dataset name, for source=hub (needs network)
    hub_config: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    min_chars: int = Field(200, ge=0)  # drop documents shorter than this after cleaning
    max_docs: int | None = Field(None, gt=0)
    val_fraction: float = Field(0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _source_needs(self) -> DataParams:
        if self.source == "files" and not self.files:
            raise ValueError("source 'files' needs a non-empty 'files' list")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("source 'hub' needs 'hub_name'")
        return self


class TokenizerParams(Section):
    vocab_size: int = Field(4096, ge=264, le=2**20)  # total, special tokens included


class ModelParams(Section):
    """Architecture; field names match `model.gpt.GPTConfig` (vocab_size comes from the
    tokenizer)."""

    block_size: int = Field(128, gt=0)
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_kv_head: int | None = Field(None, gt=0)
    n_embd: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = False
    pos_encoding: Literal["none", "sinusoidal", "learned", "rope"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_placement: Literal["pre", "post"] = "pre"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: float = Field(4.0, gt=0)
    tie_embeddings: bool = True
    causal: bool = True
    sliding_window: int | list[int] | None = None
    n_expert: int = Field(0, ge=0)
    n_expert_active: int = Field(2, gt=0)
    expert_capacity_factor: float | None = Field(None, gt=0)
    moe_aux_coef: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head")
        return self


class PretrainParams(Section):
    batch_size: int = Field(16, gt=0)  # sequences per micro-batch
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    max_steps: int = Field(1000, gt=0)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    eval_interval: int = Field(100, gt=0)
    eval_batches: int = Field(8, gt=0)
    checkpoint_interval: int = Field(100, gt=0)
    log_interval: int = Field(10, gt=0)
    sample_prompts: list[str] = ["The history of", "In the early", "The city is"]
    sample_tokens: int = Field(48, ge=0)
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_k: int | None = Field(40, gt=0)

    @model_validator(mode="after")
    def _lr_order(self) -> PretrainParams:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


# Sections of the later stages. Each is owned by its stage module (named in the comment) and
# filled in as that stage is built; an empty section accepts only `{}`.


class InstructParams(Section):
    pass  # tasks/instruct.py


class SFTParams(Section):
    pass  # tasks/sft.py


class RewardParams(Section):
    pass  # tasks/reward.py


class PPOParams(Section):
    pass  # tasks/ppo.py


class QuantizeParams(Section):
    pass  # tasks/quantize.py


class ScalingParams(Section):
    pass  # tasks/scaling.py


class EmbeddingsParams(Section):
    pass  # tasks/embeddings.py


class ExperimentsParams(Section):
    pass  # tasks/experiments.py


class ReportParams(Section):
    pass  # tasks/report.py


class ScheduleParams(Section):
    pass  # flows/serve.py


class Params(Section):
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataParams = DataParams()
    tokenizer: TokenizerParams = TokenizerParams()
    model: ModelParams = ModelParams()
    pretrain: PretrainParams = PretrainParams()
    instruct: InstructParams = InstructParams()
    sft: SFTParams = SFTParams()
    reward: RewardParams = RewardParams()
    ppo: PPOParams = PPOParams()
    quantize: QuantizeParams = QuantizeParams()
    scaling: ScalingParams = ScalingParams()
    embeddings: EmbeddingsParams = EmbeddingsParams()
    experiments: ExperimentsParams = ExperimentsParams()
    report: ReportParams = ReportParams()
    schedule: ScheduleParams = ScheduleParams()


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return lines


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate a params file; raise ParamsError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = _format_errors(e)
        raise ParamsError(f"{path}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


if __name__ == "__main__":
    try:
        print(yaml.safe_dump(load_params().model_dump(), sort_keys=False))
    except ParamsError as e:
        sys.exit(str(e))
