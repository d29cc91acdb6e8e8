"""Grid specs and cells: the YAML schema (pydantic), the variants and protocols, and the plan of cells."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GENERATIVE = {
    "p5": ["model.variant=p5"],
    "pod": ["model.variant=pod"],
    "peapod-neighbors": ["model.variant=peapod", "model.composer=neighbors"],
    "peapod-pool": ["model.variant=peapod", "model.composer=pool"],
}
BASELINES = ("popularity", "sasrec", "retrieval")
VARIANTS = (*GENERATIVE, *BASELINES)
# A spec without `variants` runs these (retrieval, explanation-only, is run when named).
DEFAULT_VARIANTS = (*GENERATIVE, "popularity", "sasrec")
PROTOCOLS = ("legacy", "rigorous")
INDEXING = {"legacy": "p5-sequential", "rigorous": "random"}

# POD's test-split figures from its official run logs, legacy protocol, same P5 data
# (ranking metrics as fractions, BLEU/ROUGE in percent).
POD_ANCHORS = {
    "beauty": {"seq HR@5": 0.0537, "seq NDCG@5": 0.0395, "top-n HR@5": 0.1926, "top-n NDCG@5": 0.1391, "exp BLEU-4": 1.0630, "exp ROUGE-1 F": 15.2517},
    "sports": {"seq HR@5": 0.0496, "seq NDCG@5": 0.0396, "top-n HR@5": 0.2086, "top-n NDCG@5": 0.1506, "exp BLEU-4": 1.0013, "exp ROUGE-1 F": 14.0168},
    "toys": {"seq HR@5": 0.0691, "seq NDCG@5": 0.0599, "top-n HR@5": 0.1433, "top-n NDCG@5": 0.1009, "exp BLEU-4": 2.3053, "exp ROUGE-1 F": 12.2889},
}
# Table columns: label -> (task, metric key in the metrics file).
LEGACY_COLUMNS = {
    "seq HR@5": ("sequential", "HR@5"), "seq NDCG@5": ("sequential", "NDCG@5"),
    "seq HR@10": ("sequential", "HR@10"), "seq NDCG@10": ("sequential", "NDCG@10"),
    "top-n HR@5": ("topn", "HR@5"), "top-n NDCG@5": ("topn", "NDCG@5"),
    "exp BLEU-4": ("explanation", "BLEU-4"), "exp ROUGE-1 F": ("explanation", "ROUGE-1-F"),
}
RIGOROUS_COLUMNS = {
    "seq HR@10": ("sequential", "HR@10"), "seq NDCG@10": ("sequential", "NDCG@10"),
    "seq NDCG@20": ("sequential", "NDCG@20"),
    "top-n HR@5": ("topn", "HR@5"), "top-n NDCG@10": ("topn", "NDCG@10"),
    "exp SacreBLEU": ("explanation", "SacreBLEU"), "exp ROUGE-1 F (rouge-score)": ("explanation", "rouge-score-rouge1-F"),
    "exp FHR": ("explanation", "FHR"),
}


class GridError(ValueError):
    """A bad grid spec or selection: one message that says what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    max_steps: int | None = Field(None, ge=1, description="optimizer steps per training run (the fair, reproducible budget)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock cap per training run; a row that hit it says so")


class EvalSpec(_Strict):
    max_users: int | None = Field(1000, ge=1, description="first N users (and explanation records) of the split")
    split: str = "test"
    batch_size: int | None = Field(None, ge=1)
    legacy_random_fill: bool = False

    @field_validator("split")
    @classmethod
    def _split(cls, v: str) -> str:
        if v not in ("val", "test"):
            raise ValueError("split must be 'val' or 'test'")
        return v


class Ablation(_Strict):
    base: str = Field(..., description="the generative variant it changes (p5, pod, peapod-neighbors, peapod-pool)")
    set: list[str] = Field(..., min_length=1, description="`section.key=value` overrides, e.g. model.n_neighbors=20")

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if v not in GENERATIVE:
            raise ValueError(f"base must be one of {', '.join(GENERATIVE)}")
        return v


class GridSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    config: str
    datasets: dict[str, str]
    # Extra generative variants for ablations (k, L, heads, composer ...), usable in `variants`.
    ablations: dict[str, Ablation] = {}
    variants: list[str] = list(DEFAULT_VARIANTS)
    protocols: list[str] = list(PROTOCOLS)
    seeds: dict[str, list[int]] = {"legacy": [0], "rigorous": [0, 1, 2]}
    budget: Budget = Budget()
    eval: EvalSpec = EvalSpec()
    set: list[str] = []
    # Overrides for one generative variant only (applied before `set`): e.g. p5's text inputs in a grid
    # whose config trains the dense objective (`p5: [objective.kind=published, ...]`).
    variant_set: dict[str, list[str]] = {}
    # Overrides for one dataset's generative cells, applied before the variant's own (so an ablation's
    # lever still wins): e.g. fewer epochs where a larger dataset would outrun the time budget.
    dataset_set: dict[str, list[str]] = {}
    sasrec: dict = {}
    description: str = ""
    # Item indexing per protocol, where a grid departs from INDEXING (e.g. the laptop grid's atomic ids).
    indexing: dict[str, str] = {}

    @field_validator("indexing")
    @classmethod
    def _indexing(cls, v: dict[str, str]) -> dict[str, str]:
        from peapod.data.indexing import STRATEGIES

        bad = [f"{p}: {s}" for p, s in v.items() if p not in PROTOCOLS or s not in STRATEGIES]
        if bad:
            raise ValueError(f"indexing maps a protocol ({', '.join(PROTOCOLS)}) to a strategy ({', '.join(STRATEGIES)}); bad: {', '.join(bad)}")
        return v

    @field_validator("ablations")
    @classmethod
    def _ablations(cls, v: dict[str, Ablation]) -> dict[str, Ablation]:
        clash = [name for name in v if name in VARIANTS or not name.replace("-", "").replace("_", "").isalnum()]
        if clash:
            raise ValueError(f"ablation name(s) {', '.join(clash)} clash with a built-in variant or are not [A-Za-z0-9_-]")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str], info) -> list[str]:
        known = (*VARIANTS, *info.data.get("ablations", {}))
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(known)}")
        return v

    @field_validator("variant_set")
    @classmethod
    def _variant_set(cls, v: dict[str, list[str]], info) -> dict[str, list[str]]:
        known = (*GENERATIVE, *info.data.get("ablations", {}))
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"variant_set names {', '.join(bad)}, not a generative variant or ablation ({', '.join(known)})")
        return v

    @field_validator("dataset_set")
    @classmethod
    def _dataset_set(cls, v: dict[str, list[str]], info) -> dict[str, list[str]]:
        known = info.data.get("datasets", {})
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"dataset_set names {', '.join(bad)}, not a dataset of this grid ({', '.join(known)})")
        return v

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
        return v


def load_grid_spec(path: str | Path) -> GridSpec:
    from peapod.config import read_yaml_mapping, validation_problems

    raw = read_yaml_mapping(path, GridError, "grid spec")
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as e:
        raise GridError(f"invalid grid spec {path}: {validation_problems(e)}") from None
    from peapod.baselines import SASRecConfig

    unknown = set(spec.sasrec) - set(SASRecConfig.__dataclass_fields__)
    if unknown:
        raise GridError(f"invalid grid spec {path}: sasrec: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        SASRecConfig(**spec.sasrec)
    except ValueError as e:
        raise GridError(f"invalid grid spec {path}: sasrec: {e}") from None
    return spec


# ---- cells ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    dataset: str
    variant: str
    protocol: str  # "legacy" | "rigorous" | "any" (retrieval, and baseline cells written before the history rule)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.variant}__{self.protocol}__seed{self.seed}"

    @property
    def generative(self) -> bool:
        return self.variant not in BASELINES


def _pick(name: str, chosen: Sequence[str] | None, available: Sequence[str], default: Sequence[str] | None = None) -> list[str]:
    if not chosen:
        return list(available if default is None else default)
    bad = [c for c in chosen if c not in available]
    if bad:
        raise GridError(f"{name} {', '.join(bad)} not in this grid (it has {', '.join(available)})")
    return list(chosen)


def plan_cells(
    spec: GridSpec,
    datasets: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells of a (sub)grid, datasets in spec order, then variants, protocols and seeds."""
    ds_list = _pick("dataset(s)", datasets, list(spec.datasets))
    # Ablations outside `variants` run only when named.
    var_list = _pick("variant(s)", variants, [*spec.variants, *(a for a in spec.ablations if a not in spec.variants)], spec.variants)
    prot_list = _pick("protocol(s)", protocols, spec.protocols)
    cells: list[Cell] = []
    for d in ds_list:
        for v in var_list:
            if v == "retrieval":
                cells.append(Cell(d, v, "any", 0))  # deterministic, and no ranking: one cell
                continue
            if v == "popularity":  # deterministic; the protocol decides the history rule
                cells.extend(Cell(d, v, p, 0) for p in prot_list)
                continue
            for p in prot_list:
                cells.extend(Cell(d, v, p, s) for s in spec.seeds.get(p, [0]) if seeds is None or s in seeds)
    return list(dict.fromkeys(cells))
