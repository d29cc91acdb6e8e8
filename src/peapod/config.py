"""The one run configuration: YAML validated by pydantic, with `--set section.key=value` overrides.

Sections: data / index / model / objective / train / eval / runtime. Unknown keys and wrong types are
errors. The defaults are the working recipe (the CPU recipe, `recipes/laptop.yaml`); the published setup
is the named recipe `paper`. A config names a recipe by name (`laptop`) or a YAML file by path.

`objective` is what the model is trained to do, one of two whole objectives (a discriminated union on
`kind`), so that a combination of half of one and half of the other cannot be written:

* `dense` (the recipe): every training position is a sequential example; the decoder writes the next
  `item_targets` items teacher-forced; top-n trains candidate-free (the user alone); item tasks
  normalize over the item tokens only; a training example's user prompt is built from the items before
  its target, as at test time; histories are written newest first; inputs are token ids built once an
  epoch, batched by input length; the best epoch is the best validation NDCG@10.
* `published` (P5 / POD / PeaPOD as published): text templates tokenized per batch, one random
  position per user and epoch, a top-n input that lists its candidates, the vocabulary softmax, user
  prompts from the whole training history, the best epoch by validation loss.

Configs written before `objective` existed (saved runs, grid cells) are read through `migrate`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from peapod.data.indexing import STRATEGIES
from peapod.model.dropout import DROPOUT_MASKS
from peapod.model.peapod import SAVED_MODEL_DEFAULTS, ModelConfig, ModelOptions


class ConfigError(ValueError):
    """A bad configuration: one message that says what is wrong and where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    path: str | None = Field(None, description="P5 directory, interactions table, 'demo' or 'demo-toys'")
    negatives_seed: int = 0
    explanation_val_fraction: float = Field(0.1, ge=0.0, lt=1.0)


class IndexSection(_Section):
    strategy: Literal[STRATEGIES] = Field(
        "atomic", description="one token per item numbered at random; P5's sequential numbers leak the next item"
    )
    seed: int = 0


class DenseObjective(_Section):
    """The recipe's objective (module docstring). What it fixes that the model and the epoch selection
    read are class constants, under the published objective's names; the rest is its training inputs
    (`peapod.train.id_batches`)."""

    kind: Literal["dense"] = "dense"
    item_targets: int = Field(5, ge=1, le=64, description="next items the decoder writes per item example (teacher-forced)")
    decoder_history: int = Field(
        1, ge=0, le=63,
        description="inference: the user's last j items are teacher-forced into the decoder and step j scores the items "
        "(the question step j was trained on; needs item_targets > j)",
    )

    history_order: ClassVar[str] = "newest-first"
    topn_input: ClassVar[str] = "user"
    select_by: ClassVar[str] = "ndcg"

    @model_validator(mode="after")
    def _decoder_reads_what_it_learned(self) -> DenseObjective:
        if self.decoder_history and self.decoder_history >= self.item_targets:
            raise ValueError(
                f"objective.decoder_history {self.decoder_history} needs objective.item_targets > it "
                f"(the decoder learned to read at most item_targets - 1 = {self.item_targets - 1} items)"
            )
        return self


class PublishedObjective(_Section):
    """P5 / POD / PeaPOD's published objective (module docstring)."""

    kind: Literal["published"] = "published"
    topn_candidates: int = Field(100, ge=2, description="1 positive + negatives in a training top-n input")
    schedule: Literal["rotate", "mixed"] = Field("rotate", description="one task per batch in turn, or tasks mixed in a batch")

    history_order: ClassVar[str] = "oldest-first"
    topn_input: ClassVar[str] = "candidates"
    select_by: ClassVar[str] = "loss"
    item_targets: ClassVar[int] = 1
    decoder_history: ClassVar[int] = 0


Objective = Annotated[DenseObjective | PublishedObjective, Field(discriminator="kind")]


class TrainSection(_Section):
    seed: int = 0
    lr: float = Field(6e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(
        30, gt=0, description="wall-clock budget for the optimizer steps (summed over resumes); the run stops after the step that crosses it"
    )
    # The schedule (fitted to the budget) runs to its end: with patience 3 the runs early stopping cut were the weak
    # seeds, stopped while the decaying learning rate was still improving them (3 seeds, seq NDCG@10 on Toys / Beauty:
    # 4.97 ± 0.30 / 4.29 ± 0.53 with patience 3 and the first 2,000 validation users, 5.31 ± 0.04 / 4.66 ± 0.13 with
    # these; RESULTS.md).
    patience: int = Field(10, ge=1)
    tasks: list[Literal["sequential", "topn", "explanation"]] = ["sequential", "topn", "explanation"]
    max_history: int = Field(20, ge=1)
    user_dropout: float = Field(0.1, ge=0, le=1)
    max_input_length: int = Field(64, ge=8)
    max_target_length: int = Field(48, ge=4)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(20, ge=1)
    val_max_users: int | None = Field(2000, ge=1)
    # A from-scratch decoder needs thousands of steps to write sentences, the item tasks of a small catalogue
    # overfit in a few hundred: the explanation task can first learn its language alone (`peapod.train.loop`).
    # Off in the recipe: on Musical Instruments 20 epochs make sentences a reader can follow but cost top-n HR@5
    # (benchmarks/NOTEBOOK.md). The demo recipe, whose item tasks are a smoke test, trains 10.
    language_epochs: int = Field(
        0, ge=0, description="epochs of the explanation task alone before all tasks train together, when the run trains it "
        "beside an item task on data with explanations and has a time budget (0: none); they end sooner at half of max_minutes"
    )
    # The first users' NDCG wanders between epochs by as much as the epochs differ.
    val_users: Literal["first", "random"] = Field(
        "random", description="which val_max_users users select the best epoch: the first ones, or a fixed-seed uniform sample "
        "(the first users of the P5 files have longer histories than the rest)"
    )


class EvalSection(_Section):
    protocol: Literal["legacy", "rigorous"] = "rigorous"
    max_users: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)
    seeds: list[int] = [0]


class RuntimeSection(_Section):
    """How a run computes, not what: none of these changes what the model learns in expectation."""

    device: str = "auto"
    bf16: bool = Field(True, description="bf16 autocast on CUDA")
    deterministic: bool = False
    dropout_masks: Literal[DROPOUT_MASKS] = Field(
        "chunked", description="how dropout draws its masks; 'chunked' is the same dropout, about 3x cheaper on a CPU"
    )


class RunConfig(_Section):
    data: DataSection = DataSection()
    index: IndexSection = IndexSection()
    model: ModelOptions = ModelOptions()
    objective: Objective = DenseObjective()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    runtime: RuntimeSection = RuntimeSection()

    @model_validator(mode="before")
    @classmethod
    def _objective_kind(cls, raw):
        # `objective: {item_targets: 3}` means the default objective: the tag may be left out.
        if isinstance(raw, dict) and isinstance(raw.get("objective"), dict) and "kind" not in raw["objective"]:
            raw = {**raw, "objective": {"kind": "dense", **raw["objective"]}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        problems = []
        atomic = self.index.strategy == "atomic"
        dense = self.objective.kind == "dense"
        if dense and not atomic:
            problems.append("objective dense (item tokens, k next items) needs index.strategy atomic")
        if dense and self.model.variant == "p5":
            problems.append("model.variant p5 needs objective.kind published (its text templates)")
        if self.model.item_init == "cf" and not atomic:
            problems.append("model.item_init cf needs index.strategy atomic")
        if dense and self.model.cf_trainable:
            # Prefix prompts are computed from the CF tables once per epoch; trained user vectors would
            # move under them, and a resumed run would see other neighbours.
            problems.append("objective dense (prompts from the items before the target) needs model.cf_trainable false")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def architecture(self) -> ModelConfig:
        o = self.objective
        return ModelConfig(
            **self.model.model_dump(), topn_input=o.topn_input, item_targets=o.item_targets, history_order=o.history_order,
            decoder_history=o.decoder_history, dropout_masks=self.runtime.dropout_masks, seed=self.train.seed,
        )


# ---- configs written before `objective` and `runtime` existed ---------------------------------------------
# Each retired switch with its (published, dense) values: a config sets all of them one way or the other.
_RETIRED_SWITCHES = {
    "train.input_encoding": ("text", "ids"),
    "train.seq_positions": ("one", "all"),
    "train.item_softmax": ("vocab", "items"),
    "train.prompt_history": ("full", "prefix"),
    "train.select_by": ("loss", "ndcg"),
    "model.topn_input": ("candidates", "user"),
    "model.history_order": ("oldest-first", "newest-first"),
}
_TO_OBJECTIVE = {"model.item_targets": "item_targets", "model.decoder_history": "decoder_history", "train.topn_candidates": "topn_candidates", "train.schedule": "schedule"}
_TO_RUNTIME = {"model.dropout_masks": "dropout_masks", "train.bf16": "bf16", "train.deterministic": "deterministic", "train.device": "device"}
_FROZEN = {"train.batch_grouping"}  # now the objective's: length for dense, random for published
OLD_KEYS = frozenset({*_RETIRED_SWITCHES, *_TO_OBJECTIVE, *_TO_RUNTIME, *_FROZEN})
# The defaults an old config was written against, where they differ from today's.
OLD_DEFAULTS = {
    "index.strategy": "p5-sequential", **{f"model.{k}": v for k, v in SAVED_MODEL_DEFAULTS.items()}, "model.item_targets": 1,
    "model.decoder_history": 0, "model.dropout_masks": "bernoulli", "train.lr": 1e-3, "train.batch_size": 64,
    "train.max_minutes": None, "train.patience": 5, "train.val_users": "first", "train.max_input_length": 512, "train.max_target_length": 64,
    "train.checkpoint_every": 200, "train.log_every": 10, "train.val_max_users": 1000, "eval.batch_size": 32,
}


_MISSING = object()


def _get(raw: dict, key: str, default=None):
    section, name = key.split(".")
    return (raw.get(section) or {}).get(name, default)


def _moved_to(key: str) -> str:
    if key in _TO_OBJECTIVE:
        return f"objective.{_TO_OBJECTIVE[key]}"
    return f"runtime.{_TO_RUNTIME[key]}" if key in _TO_RUNTIME else "objective.kind"


def old_keys(raw: dict) -> list[str]:
    """The keys of `OLD_KEYS` a config mapping sets."""
    return sorted(k for k in OLD_KEYS if _get(raw, k, _MISSING) is not _MISSING)


def migrate(raw: dict) -> dict:
    """A saved configuration in today's form. One without `objective` was saved before the objective
    existed (saved configurations hold every key of their day): the keys it predates take the defaults
    of then (`OLD_DEFAULTS`), its switches become the objective they all describe, and speed settings
    move to `runtime`. Raises ConfigError for one that mixes the two objectives' switches (an ablation
    of a retired switch)."""
    if "objective" in raw:
        return raw
    out = {section: dict(values) for section, values in raw.items() if isinstance(values, dict)}
    for key, value in OLD_DEFAULTS.items():
        section, name = key.split(".")
        out.setdefault(section, {}).setdefault(name, value)
    switches = {k: _get(out, k, published) for k, (published, _) in _RETIRED_SWITCHES.items()}
    dense = [k for k, v in switches.items() if v == _RETIRED_SWITCHES[k][1]]
    published = [k for k in switches if k not in dense]
    if dense and published:
        raise ConfigError(
            "this config mixes the two objectives' switches, a combination that is no longer trained: "
            f"dense {', '.join(f'{k}: {switches[k]}' for k in dense)}; published {', '.join(f'{k}: {switches[k]}' for k in published)}"
        )
    kind = DenseObjective if dense else PublishedObjective
    objective: dict = {"kind": "dense" if dense else "published"}
    for key, name in _TO_OBJECTIVE.items():
        value = _get(out, key, _MISSING)
        if value is _MISSING or (dense and name in ("topn_candidates", "schedule")):  # no candidate lists; rotate only
            continue
        if name in kind.model_fields:
            objective[name] = value
        elif value != getattr(kind, name):
            raise ConfigError(f"{key}: {value!r} is not part of the {objective['kind']} objective")
    runtime = {name: _get(out, key) for key, name in _TO_RUNTIME.items() if _get(out, key, _MISSING) is not _MISSING}
    for key in OLD_KEYS:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return {**out, "objective": objective, "runtime": {**out.get("runtime", {}), **runtime}}


# ---- reading ---------------------------------------------------------------------------------------------
RECIPES = ("laptop", "demo", "tiny", "paper")


def recipe_path(name: str) -> Path:
    """The YAML file of a named recipe shipped with the package."""
    return Path(str(resources.files("peapod") / "recipes" / f"{name}.yaml"))


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
        loc = ".".join(str(p) for p in err["loc"] if p not in ("dense", "published"))
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


def config_source(config: str | Path) -> Path:
    """A recipe name (`laptop`) or a YAML path, as the file to read."""
    if str(config) in RECIPES and not Path(config).is_file():
        return recipe_path(str(config))
    if not Path(config).is_file():
        raise ConfigError(f"config file not found: {config} (a YAML file, or a recipe: {', '.join(RECIPES)})")
    return Path(config)


def _apply(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {k} is not a section")
        if keys == ["objective", "kind"] and node.get("kind", "dense") != value:
            node.clear()  # another objective: the old one's settings are not its
        node[keys[-1]] = value
    return raw


def _validate(raw: dict, source: str) -> RunConfig:
    try:
        if old_keys(raw):
            raise ConfigError("old key(s): " + ", ".join(f"{k} (now {_moved_to(k)})" for k in old_keys(raw)))
        return RunConfig.model_validate(raw)
    except ConfigError as e:
        raise ConfigError(f"invalid config {source}: {e}") from None
    except ValidationError as e:
        raise ConfigError(f"invalid config {source}: {validation_problems(e)}") from None


def load_config(config: str | Path | None = None, overrides: list[str] = (), saved: bool = False) -> RunConfig:
    """Read a recipe or YAML file (or start from the defaults), apply overrides, validate. `saved`: the
    file is a run's saved config.json, which `migrate` brings to today's form first. Raises ConfigError."""
    raw: dict = {}
    source = "(defaults)"
    if config is not None:
        path = config_source(config)
        source = str(config)
        raw = read_yaml_mapping(path, ConfigError, "config file")
    if saved:
        raw = _migrated(raw, source)
    return _validate(_apply(raw, list(overrides)), source)


def _migrated(raw: dict, source: str) -> dict:
    try:
        return migrate(raw)
    except ConfigError as e:
        raise ConfigError(f"invalid config {source}: {e}") from None


def saved_config(raw: dict, where: str = "saved config") -> RunConfig:
    """A run's saved configuration (config.json, a checkpoint's run.json, a grid cell), in today's form."""
    return _validate(_migrated(dict(raw), where), where)
