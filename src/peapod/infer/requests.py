"""What inference is asked and answers: requests, encoded batches, beam results, model directories.

Split out of `peapod.infer.predictor` (which re-exports every name), so the `Predictor` module holds
the model-facing code only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peapod.config import RunConfig, saved_config

__all__ = ["EXPLANATION_DECODINGS", "BeamResult", "Encoded", "Request", "normalize_task", "resolve_model_dir"]

_TASK_ALIASES = {
    "sequential": "sequential", "seq": "sequential",
    "topn": "topn", "top-n": "topn", "top_n": "topn",
    "explanation": "explanation", "exp": "explanation",
}

#: Explanation decodings: name -> generate() settings. `max_length`/`min_length` count decoder
#: positions including the decoder start token (transformers' meaning, as in the published code).
#: `legacy` is what the published PeaPOD explanation decoding reduces to: it calls group beam search
#: with 21 beams, 3 groups and diversity_penalty 0.0; with a zero penalty no diversity processor is
#: added, the 3 groups of 7 beams evolve identically, and the top hypothesis is that of plain beam
#: search with 7 beams. (Group beam search is no longer in transformers 5 core, so it is run as that.)
EXPLANATION_DECODINGS: dict[str, dict] = {
    "greedy": {"num_beams": 1, "max_length": 50},
    "beam": {"num_beams": 4, "max_length": 50},
    "legacy": {"num_beams": 7, "min_length": 10, "max_length": 50},
    # For people rather than metrics: greedy, but no bigram may repeat (weak models loop on "the the ...",
    # and a token cannot then come three times in a row) and no end before 8 tokens (a reader wants a sentence).
    "serve": {"num_beams": 1, "min_length": 9, "max_length": 50, "no_repeat_ngram_size": 2},
}


def normalize_task(task: str) -> str:
    """`seq`/`topn`/`exp` (or the full names) -> a name in TASKS."""
    try:
        return _TASK_ALIASES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; tasks are sequential (seq), topn, explanation (exp)") from None


@dataclass(frozen=True)
class Request:
    """One inference request; all indices are internal (see `Predictor.user_index/item_index`).

    Attributes:
        task: "sequential" | "topn" | "explanation" (aliases "seq", "exp").
        items: the history, oldest first (sequential; the last `max_history` are used), the
            candidates in input order (topn), or exactly one item (explanation).
        user: a training user's index, or None for a user the model never saw.
        profile: the items the user interacted with, oldest first: an unseen user's CF vector is
            folded in from them (peapod only; default `items` for sequential and explanation, top-n
            needs it), and a model with `decoder_history` j reads the last j of them in its top-n
            decoder (every user's top-n request needs it then).
    """

    task: str
    items: tuple[int, ...]
    user: int | None = None
    profile: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "task", normalize_task(self.task))
        object.__setattr__(self, "items", tuple(int(i) for i in self.items))
        if self.user is not None:
            object.__setattr__(self, "user", int(self.user))
        if self.profile is not None:
            object.__setattr__(self, "profile", tuple(int(i) for i in self.profile))
        if self.task == "explanation" and len(self.items) != 1:
            raise ValueError(f"an explanation request names exactly one item, got {len(self.items)}")
        if self.task == "topn" and not self.items:
            raise ValueError("a top-n request needs at least one candidate item")


@dataclass
class Encoded:
    """Encoder output of a batch of requests.

    hidden: [B, S, d] encoder states; mask: [B, S] attention mask (soft prompts included);
    truncated: per request, whether its text was cut at `max_input_length` tokens;
    copy_source: [B, S] the token each position offers a copying model's explanations (`PeaPOD.copy_sources`), or None.
    """

    requests: list[Request]
    hidden: torch.Tensor
    mask: torch.Tensor
    truncated: list[bool] = field(default_factory=list)
    copy_source: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.requests)


@dataclass
class BeamResult:
    """Ranked items from beam search, one list per request (best first).

    items: item indices, -1 where an output is not a catalogue item (`invalid` counts them);
    scores: transformers' beam scores (sum of log-probs / length ** length_penalty);
    texts: the decoded outputs.
    """

    items: list[list[int]]
    scores: list[list[float]]
    texts: list[list[str]]
    invalid: int
    total: int


def resolve_model_dir(path: str | Path) -> tuple[Path, Path | None, RunConfig | None]:
    """(model directory, run directory or None, the run's configuration or None).

    `path` is a run directory (its `best/` model is used) or a model directory (a run's `best/` or
    `checkpoint/`, whose parent run directory is picked up when it has one, or a bare model). A run's
    config.json is read in today's form (`peapod.config.saved_config`); ValueError when it cannot be.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")

    def run_config(d: Path) -> RunConfig | None:
        f = d / "config.json"
        if not f.is_file():
            return None
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not (isinstance(raw, dict) and "data" in raw and "train" in raw):
            return None
        return saved_config(raw, str(f))

    if (path / "model.safetensors").is_file():
        cfg = run_config(path.parent)
        return path, (path.parent if cfg is not None else None), cfg
    cfg = run_config(path)
    if cfg is not None:
        if (path / "best" / "model.safetensors").is_file():
            return path / "best", path, cfg
        raise FileNotFoundError(f"run directory {path} has no trained model yet (no best/model.safetensors)")
    raise FileNotFoundError(f"{path} is neither a run directory (config.json + best/) nor a model directory (model.safetensors)")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
