"""The one run configuration: YAML validated by pydantic, with `--set section.key=value` overrides.

Sections: data / index / model / train / eval. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from peapod.model.peapod import ModelConfig


class ConfigError(ValueError):
    """A bad configuration: one message that says what is wrong and where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    path: str | None = Field(None, description="P5 directory, interactions table, or 'demo'")
    negatives_seed: int = 0
    explanation_val_fraction: float = Field(0.1, ge=0.0, lt=1.0)


class IndexSection(_Section):
    strategy: Literal["p5-sequential", "random", "atomic"] = "p5-sequential"
    seed: int = 0


class ModelSection(_Section):
    variant: Literal["p5", "pod", "peapod"] = "peapod"
    composer: Literal["neighbors", "pool"] = "neighbors"
    backbone: str = "tiny"
    task_prompt_length: int = Field(3, ge=1)
    user_prompt_length: int = Field(3, ge=1)
    n_heads: int = Field(4, ge=1)
    n_neighbors: int = Field(10, ge=1)
    pool_size: int = Field(20, ge=1)
    cf_dim: int = Field(64, ge=2)
    cf_trainable: bool = False
    cf_reg: float = Field(0.1, gt=0)
    cf_alpha: float = Field(10.0, ge=0)
    cf_iterations: int = Field(15, ge=1)
    vocab_size: int | None = Field(None, ge=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    dropout_masks: Literal["bernoulli", "chunked"] = Field(
        "bernoulli", description="how dropout draws its masks; 'chunked' is the same dropout, about 3x cheaper on a CPU"
    )
    topn_input: Literal["candidates", "user"] = Field(
        "candidates", description="what a top-n input holds besides the prompts: the candidate list, or nothing but the user"
    )
    item_targets: int = Field(1, ge=1, le=64, description="next items the decoder writes per item example (teacher-forced)")
    item_init: Literal["random", "cf"] = Field("random", description="'cf': item token embeddings start as projected ALS item factors")
    history_order: Literal["oldest-first", "newest-first"] = Field(
        "oldest-first", description="order of a sequential input's history; 'newest-first' makes an item's whole-word id its recency"
    )
    decoder_history: int = Field(
        0, ge=0, le=63,
        description="inference: the user's last j items are teacher-forced into the decoder and step j scores the items "
        "(needs item_targets > j; top-n only with topn_input user, the candidate-free form trained on item_targets items)",
    )
    explanation_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout of training batches that hold only explanations (default: model.dropout)"
    )
    explanation_context: Literal["none", "retrieved"] = Field(
        "none", description="'retrieved': an explanation input also holds the item's training sentence closest to how the user writes"
    )


class TrainSection(_Section):
    seed: int = 0
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget for the optimizer steps (summed over resumes); the run stops after the step that crosses it"
    )
    patience: int = Field(5, ge=1)
    schedule: Literal["rotate", "mixed"] = "rotate"
    tasks: list[Literal["sequential", "topn", "explanation"]] = ["sequential", "topn", "explanation"]
    max_history: int = Field(20, ge=1)
    topn_candidates: int = Field(100, ge=2, description="1 positive + negatives in a training top-n input")
    user_dropout: float = Field(0.1, ge=0, le=1)
    max_input_length: int = Field(512, ge=8)
    max_target_length: int = Field(64, ge=4)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    val_max_users: int | None = Field(1000, ge=1)
    val_users: Literal["first", "random"] = Field(
        "first", description="which val_max_users users select the best epoch: the first ones, or a fixed-seed uniform sample "
        "(the first users of the P5 files have longer histories than the rest)"
    )
    bf16: bool = True
    deterministic: bool = False
    device: str = "auto"
    input_encoding: Literal["text", "ids"] = Field(
        "text", description="'ids': token ids built once per epoch from per-user/item token tables (bare inputs), not text tokenized per batch"
    )
    seq_positions: Literal["one", "all"] = Field(
        "one", description="sequential examples per user and epoch: one random position, or every training position"
    )
    batch_grouping: Literal["random", "length"] = Field(
        "random", description="'length' (ids inputs): rows sorted by input length within windows of random batches, "
        "so a batch computes little padding; every row still once per epoch"
    )
    item_softmax: Literal["vocab", "items"] = Field("vocab", description="'items': item-task losses normalize over item tokens only")
    prompt_history: Literal["full", "prefix"] = Field(
        "full",
        description="peapod: a training example's user prompt is built from all the user's training items ('full'), "
        "or from those before its target ('prefix', as at test time); variants without a user prompt ignore it",
    )
    select_by: Literal["loss", "ndcg"] = Field(
        "loss", description="best epoch and early stopping: mean validation loss, or mean validation NDCG@10 of the item tasks (atomic ids), "
        "read at the decoder step the evaluation reads (after model.decoder_history items)"
    )


class EvalSection(_Section):
    protocol: Literal["legacy", "rigorous"] = "rigorous"
    max_users: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    seeds: list[int] = [0]


class RunConfig(_Section):
    data: DataSection = DataSection()
    index: IndexSection = IndexSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        problems = []
        atomic = self.index.strategy == "atomic"
        if self.model.item_targets > 1 and not atomic:
            problems.append("model.item_targets > 1 needs index.strategy atomic")
        if self.model.decoder_history and self.model.decoder_history >= self.model.item_targets:
            problems.append(
                f"model.decoder_history {self.model.decoder_history} needs model.item_targets > it "
                f"(the decoder learned to read at most item_targets - 1 = {self.model.item_targets - 1} items)"
            )
        if self.model.item_init == "cf" and not atomic:
            problems.append("model.item_init cf needs index.strategy atomic")
        ids = self.train.input_encoding == "ids"
        if ids and self.model.variant == "p5":
            problems.append("train.input_encoding ids writes bare inputs; variant p5 needs its text templates")
        for what, needs_ids in (
            ("train.seq_positions all", self.train.seq_positions == "all"),
            ("train.item_softmax items", self.train.item_softmax == "items"),
            ("model.item_targets > 1", self.model.item_targets > 1),
            (f"model.topn_input {self.model.topn_input}", self.model.topn_input != "candidates"),
            ("train.prompt_history prefix", self.train.prompt_history == "prefix"),
            ("model.history_order newest-first", self.model.history_order == "newest-first"),
            ("train.batch_grouping length", self.train.batch_grouping == "length"),
        ):
            if needs_ids and not ids:
                problems.append(f"{what} needs train.input_encoding ids")
        if self.train.prompt_history == "prefix" and self.model.cf_trainable:
            # Prefix vectors and their neighbours are computed from the CF tables once per epoch; trained
            # user vectors would move under them, and a resumed run would see other neighbours.
            problems.append("train.prompt_history prefix needs model.cf_trainable false")
        if self.train.select_by == "ndcg" and not (ids and atomic):
            problems.append("train.select_by ndcg needs train.input_encoding ids and index.strategy atomic")
        if self.train.item_softmax == "items" and self.train.schedule != "rotate":
            problems.append("train.item_softmax items needs train.schedule rotate (one task per batch)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def architecture(self) -> ModelConfig:
        m = self.model.model_dump()
        return ModelConfig(**m, seed=self.train.seed)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several lines)."""
    problem = getattr(e, "problem", None)
    if not problem:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


def _parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set key must name a section and a key (e.g. train.lr), got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {_yaml_problem(e)}") from None
    return path, value


def validation_problems(e: ValidationError) -> str:
    """A pydantic error on one line: `where: what` for each problem, unknown keys named as such."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str) -> dict:
    """The top-level mapping of a YAML file; `error` (with a one-line message) when the file is
    missing, is not YAML, or is not a mapping. `what` names the file in messages ("config file")."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (or start from the defaults), apply overrides, validate. Raises ConfigError."""
    raw: dict = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, ConfigError, "config file")
    for item in overrides:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {k} is not a section")
        node[keys[-1]] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config {source}: {validation_problems(e)}") from None
