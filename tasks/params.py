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
    # pre-tokenizer split (model/tokenizer.py SPLIT_PATTERNS): GPT-4's with one digit a chunk,
    # GPT-4's (1-3 digits), or GPT-2's
    split: Literal["gpt4-digits", "gpt4", "gpt2"] = "gpt4-digits"


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


class LoopParams(Section):
    """The optimisation keys every training loop (tasks/training.py) reads; pretrain, sft and
    reward add their own. Defaults are pretraining's: params.yaml sets each section's values."""

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
    eval_interval: int = Field(100, gt=0)  # steps between evaluations
    checkpoint_interval: int = Field(100, gt=0)  # steps between resume states
    log_interval: int = Field(10, gt=0)  # steps between progress lines

    @model_validator(mode="after")
    def _lr_order(self) -> LoopParams:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class PretrainParams(LoopParams):
    eval_batches: int = Field(8, gt=0)
    sample_prompts: list[str] = ["The history of", "In the early", "The city is"]
    sample_tokens: int = Field(48, ge=0)
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_k: int | None = Field(40, gt=0)
    objective: Literal["causal", "masked"] = "causal"  # masked needs model.causal false
    mask_prob: float = Field(0.15, gt=0, le=1)  # masked: share of positions selected


# Sections of the later stages. Each is owned by its stage module (named in the comment) and
# filled in as that stage is built; an empty section accepts only `{}`.


class InstructParams(Section):
    """tasks/instruct.py: the generated instruction tasks and any user files."""

    families: list[str] | None = None  # generated task families (null = all, see FAMILIES)
    n_train_per_family: int = Field(250, ge=0)  # SFT's
    n_prefs_per_family: int = Field(250, ge=0)  # reward and PPO prompts, apart from SFT's
    n_test_per_family: int = Field(50, ge=1)  # fewer where a family's test side runs out
    files: list[str] = []  # user data: .json (Alpaca records) or .jsonl (chat messages)

    @model_validator(mode="after")
    def _known_families(self) -> InstructParams:
        check_families(self.families)
        return self


def check_families(families: list[str] | None) -> None:
    from model.instruct import FAMILIES

    unknown = [f for f in families or [] if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")


class SFTParams(LoopParams):
    """tasks/sft.py: fine-tune the base checkpoint on the instruction data (loop keys in
    LoopParams; batch_size counts conversations; eval_interval: test response-loss evals)."""

    max_new_tokens: int = Field(24, gt=0)  # generation budget of an evaluated response
    eval_batch_size: int = Field(128, gt=0)  # prompts per batched greedy generation
    transcripts_per_family: int = Field(3, ge=0)


class RewardParams(LoopParams):
    """tasks/reward.py: preference pairs and the reward model's training (loop keys in
    LoopParams; batch_size counts pairs)."""

    pairs: Literal["sampled", "jsonl"] = "sampled"  # sampled from the SFT policy, or a file
    pairs_file: str | None = None  # for pairs=jsonl: {"prompt", "chosen", "rejected"} per line
    eval_fraction: float = Field(0.2, gt=0, lt=1)  # pairs=jsonl: share held out (by prompt)
    prompts_per_family: int = Field(40, gt=0)  # prefs prompts sampled per task family
    eval_prompts_per_family: int = Field(12, gt=0)  # test prompts for the held-out pairs
    samples_per_prompt: int = Field(4, ge=2)
    pairs_per_prompt: int = Field(2, gt=0)
    swapped_per_prompt: int = Field(4, ge=0)  # pairs vs another prompt's answer (train only)
    near_prompts_per_family: int = Field(0, ge=0)  # prefs prompts given near-miss pairs
    near_per_prompt: int = Field(3, ge=0)  # (reference, near miss) pairs each (train only)
    sample_temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(16, gt=0)
    generation_batch_size: int = Field(128, gt=0)
    center_coef: float = Field(0.0, ge=0)  # x (r_chosen + r_rejected)^2: one offset for all prompts

    @model_validator(mode="after")
    def _pairs_file(self) -> RewardParams:
        if self.pairs == "jsonl" and not self.pairs_file:
            raise ValueError("pairs 'jsonl' needs 'pairs_file'")
        return self


class PPOParams(Section):
    """tasks/ppo.py: PPO against the reward model with a KL penalty to the SFT reference."""

    prompts_per_family: int = Field(200, gt=0)  # prefs prompts the rollouts draw from
    families: list[str] | None = None  # families the rollouts draw from (null = all)
    eval_prompts_per_family: int = Field(50, gt=0)  # held-out test prompts (greedy accuracy)
    iterations: int = Field(60, gt=0)  # rollout + update rounds
    rollout_batch: int = Field(128, gt=0)  # responses per rollout
    samples_per_prompt: int = Field(1, gt=0)  # responses per prompt in a rollout
    # none: the score as it is; leave_one_out: minus the mean score of the prompt's other
    # responses (needs samples_per_prompt >= 2)
    baseline: Literal["none", "leave_one_out"] = "none"
    minibatch_size: int = Field(32, gt=0)
    ppo_epochs: int = Field(4, gt=0)
    max_new_tokens: int = Field(16, gt=0)
    # model: the reward model's score (RLHF); checker: +1/-1 from the task checkers (a
    # verifiable reward: the upper bound a perfect reward model would give)
    reward: Literal["model", "checker"] = "model"
    temperature: float = Field(1.0, gt=0)  # sampling temperature; log-probs use the same
    lr: float = Field(2e-5, gt=0)  # policy
    value_lr: float = Field(1e-4, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    clip: float = Field(0.2, gt=0)  # policy ratio clip
    value_clip: float = Field(0.2, gt=0)  # value change clip (normalised score units)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_control: Literal["fixed", "adaptive"] = "fixed"
    kl_coef: float = Field(0.05, ge=0)  # initial coefficient when adaptive
    kl_target: float = Field(1.0, gt=0)  # adaptive: target KL per response (nats)
    kl_horizon: int = Field(10000, gt=0)  # adaptive: responses over which to close the gap
    no_end_penalty: float = Field(1.0, ge=0)  # subtracted from the score of unended responses
    eval_interval: int = Field(20, gt=0)  # iterations between held-out evaluations
    eval_batch_size: int = Field(128, gt=0)
    log_interval: int = Field(5, gt=0)
    seed: int | None = None  # null = the global seed; set to re-run PPO alone with another

    @model_validator(mode="after")
    def _known_families(self) -> PPOParams:
        check_families(self.families)
        if self.rollout_batch % self.samples_per_prompt:
            raise ValueError(
                f"rollout_batch {self.rollout_batch} is not a multiple of samples_per_prompt "
                f"{self.samples_per_prompt}"
            )
        if self.baseline == "leave_one_out" and self.samples_per_prompt < 2:
            raise ValueError("baseline leave_one_out needs samples_per_prompt >= 2")
        return self


class QuantSchemeParams(Section):
    """One quantization scheme (model/quant.py QuantScheme)."""

    bits: Literal[4, 8] = 8
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = Field(64, ge=2, multiple_of=2)  # inputs per scale, for granularity group
    symmetric: bool = True  # false = asymmetric with a zero point


class QuantizeParams(Section):
    """tasks/quantize.py: which checkpoints, which schemes, how to measure them."""

    models: list[str] = ["pretrain", "ppo"]  # out/<model> checkpoints; skipped if no such stage
    schemes: list[QuantSchemeParams] = [
        QuantSchemeParams(bits=8, granularity="channel"),
        QuantSchemeParams(bits=8, granularity="tensor"),
        QuantSchemeParams(bits=4, granularity="group", group_size=32),
        QuantSchemeParams(bits=4, granularity="tensor"),
    ]
    embeddings: bool = False  # also quantize the token embedding / output head
    int8_compute: bool = True  # int8 matmul on CPU for symmetric int8 channel/tensor schemes
    batch_size: int = Field(16, gt=0)  # windows per perplexity batch
    eval_tokens: int = Field(65536, gt=0)  # first val tokens scored (the same for every scheme)
    gen_tokens: int = Field(64, gt=0)  # new tokens per generation-speed run
    task_prompts_per_family: int = Field(20, ge=0)  # held-out prompts per family (chat models)
    max_new_tokens: int = Field(16, gt=0)  # generation budget per task answer


class ScalingTrainParams(Section):
    """Training settings every sweep point shares (tasks/scaling_point.py)."""

    block_size: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(3e-3, gt=0)  # a point's own `lr` overrides it
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    eval_points: int = Field(4, gt=0)  # sampled val evaluations during training (a curve)
    eval_batches: int = Field(4, gt=0)
    val_tokens: int = Field(32768, gt=0)  # final loss on the first val_tokens val tokens


class ScalingPoint(Section):
    """One sweep point: a GPT shape and either a token budget or a compute budget.

    `flops` is C = 6 N D with N the total parameter count (tied embedding once, as its matmul is
    the output head's): the point trains on D = C / (6 N) tokens (IsoFLOP points).
    """

    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    n_head: int = Field(gt=0)
    tokens: int | None = Field(None, gt=0)
    flops: float | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> ScalingPoint:
        if (self.tokens is None) == (self.flops is None):
            raise ValueError("give exactly one of 'tokens' and 'flops'")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class ScalingFitParams(Section):
    """tasks/scaling_fit.py: bootstrap and the compute-optimal table."""

    n_boot: int = Field(1000, ge=10)
    ci: float = Field(0.95, gt=0, lt=1)
    tokens_per_param: float = Field(20.0, gt=0)
    budgets: list[float] = [1e15, 1e18, 1e21]  # FLOPs for the compute-optimal table


class ScalingParams(Section):
    """tasks/scaling_point.py (one DVC stage per point) and tasks/scaling_fit.py."""

    train: ScalingTrainParams = ScalingTrainParams()
    points: dict[str, ScalingPoint] = {}
    fit: ScalingFitParams = ScalingFitParams()

    @model_validator(mode="after")
    def _point_names(self) -> ScalingParams:
        bad = [k for k in self.points if not k.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"point names must be letters, digits, '-' or '_': {bad}")
        return self


class EmbeddingsParams(Section):
    """tasks/embeddings.py: skip-gram with negative sampling on the train split's words."""

    dim: int = Field(100, gt=0)
    window: int = Field(5, gt=0)  # max distance; each center draws its own in [1, window]
    negative: int = Field(5, gt=0)  # noise words per positive pair (in expectation)
    shared_negatives: int = Field(64, gt=0)  # noise words drawn per batch, shared by its pairs
    min_count: int = Field(5, gt=0)
    sample: float = Field(1e-3, ge=0)  # subsampling threshold; 0 keeps every word
    epochs: int = Field(10, gt=0)
    lr: float = Field(0.025, gt=0)  # decays linearly to min_lr
    min_lr: float = Field(0.0001, ge=0)
    batch_size: int = Field(1024, gt=0)  # (center, context) pairs per step
    threads: int = Field(2, gt=0)
    restrict_vocab: int = Field(30000, gt=0)  # analogy answers among the most frequent words
    neighbour_words: list[str] = ["city", "war", "king", "river", "music", "france", "water"]
    neighbours: int = Field(8, gt=0)
    compare_gensim: bool = True  # also train gensim's Word2Vec on the same words (the peer)


class ExperimentsParams(Section):
    """Sizes of the classic experiments (tasks/experiments.py); every model is tiny and seeded."""

    seed: int = 0
    steps: int = Field(150, gt=0)  # training steps of the position and copy-task models
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-3, gt=0)
    position_block_size: int = Field(16, ge=2)
    attn_dims: list[int] = Field([16, 64, 256, 1024], min_length=1)  # head sizes d
    attn_keys: int = Field(64, gt=1)
    attn_samples: int = Field(64, gt=0)
    temperatures: list[float] = Field([0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], min_length=2)
    entropy_contexts: int = Field(32, gt=0)  # val windows of block_size
    kv_sizes: list[tuple[int, int]] = Field([(128, 4), (256, 4)], min_length=1)  # (n_embd, n_head)
    kv_tokens: int = Field(500, gt=0)
    kv_repeats: int = Field(1, gt=0)
    ln_layers: int = Field(12, gt=0)
    ln_embd: int = Field(64, gt=0)
    ln_steps: int = Field(40, gt=1)
    ln_lr: float = Field(0.03, gt=0)
    copy_block_size: int = Field(16, ge=3)
    copy_distance: int = Field(6, gt=0)
    copy_layers: int = Field(2, gt=0)
    copy_windows: list[int] = Field([3, 4], min_length=1)
    moe_experts: int = Field(4, ge=2)
    moe_aux_coefs: list[float] = Field([0.0, 0.01, 1.0], min_length=2)
    moe_steps: int = Field(100, gt=0)
    mlm_steps: int = Field(200, gt=0)

    @model_validator(mode="after")
    def _sizes_fit(self) -> ExperimentsParams:
        if self.copy_distance >= self.copy_block_size:
            raise ValueError("copy_distance must be smaller than copy_block_size")
        if any(w < 1 for w in self.copy_windows) or any(t <= 0 for t in self.temperatures):
            raise ValueError("copy_windows must be >= 1 and temperatures > 0")
        if min(self.moe_aux_coefs) < 0 or len(set(self.moe_aux_coefs)) < 2:
            raise ValueError("moe_aux_coefs: need two or more distinct values >= 0")
        if any(e % h or (e // h) % 2 for e, h in self.kv_sizes):
            raise ValueError("kv_sizes: each [n_embd, n_head] needs an even n_embd / n_head")
        return self


class ReportParams(Section):
    pass  # tasks/report.py


class ScheduleParams(Section):
    """`python -m flows.serve`: when the served pipeline runs (cron in `timezone`)."""

    cron: str = "0 3 * * *"  # minute hour day-of-month month day-of-week
    timezone: str = "UTC"  # an IANA name, e.g. Europe/Paris
    stages: list[str] = []  # empty = every stage in dvc.yaml
    name: str = Field("scheduled", min_length=1)  # the Prefect deployment's name

    @model_validator(mode="after")
    def _cron_and_zone(self) -> ScheduleParams:
        import zoneinfo

        if len(self.cron.split()) != 5:
            raise ValueError(f"cron '{self.cron}' needs 5 fields (minute hour day month weekday)")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"timezone '{self.timezone}' is not an IANA time zone") from e
        return self


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

    @model_validator(mode="after")
    def _objective_attention(self) -> Params:
        """The masked objective needs bidirectional attention, and the causal one causal
        attention (a bidirectional model would see the token it predicts). An error, not a
        silent override, so params.yaml always says what runs."""
        masked = self.pretrain.objective == "masked"
        if masked == self.model.causal:
            raise ValueError(
                f"pretrain.objective '{self.pretrain.objective}' needs model.causal: "
                f"{str(not masked).lower()} (got {str(self.model.causal).lower()})"
            )
        return self


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
