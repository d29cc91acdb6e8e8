"""How a run's epochs become batches: text examples tokenized per batch (the published objective) or
token-id tables built once an epoch (the dense objective), each handing a rank its share of a batch."""

from __future__ import annotations

import torch

from peapod.config import RunConfig
from peapod.data.dataset import Dataset
from peapod.data.retrieval import ExplanationRetrieval
from peapod.inputs.examples import Example
from peapod.inputs.owners import PrefixPrompts
from peapod.inputs.prompt import TASK_IDS, encode_inputs, encode_targets
from peapod.train.distributed import rank_share
from peapod.train.id_batches import IdTrainingData


def collate(examples: list[Example], tokenizer, cfg: RunConfig, max_words: int, device: torch.device) -> dict:
    """Tensors for one batch of examples (any mix of tasks)."""
    enc = encode_inputs(tokenizer, [e.source for e in examples], cfg.train.max_input_length, max_words)
    labels = encode_targets(tokenizer, [e.target for e in examples], cfg.train.max_target_length)
    return {
        "task_ids": torch.tensor([TASK_IDS[e.task] for e in examples], device=device),
        "users": torch.tensor([e.user for e in examples], device=device),
        "input_ids": enc.input_ids.to(device),
        "attention_mask": enc.attention_mask.to(device),
        "whole_word_ids": enc.whole_word_ids.to(device),
        "labels": labels.to(device),
    }


class TextEpoch:
    """The batches of one epoch as examples of text, tokenized when a batch is drawn."""

    def __init__(self, batches: list[list[Example]], tokenizer, cfg: RunConfig, max_words: int):
        self.batches, self.tokenizer, self.cfg, self.max_words = batches, tokenizer, cfg, max_words

    def __len__(self) -> int:
        return len(self.batches)

    def task(self, position: int) -> str:
        return self.batches[position][0].task

    def batch(self, position: int, rank: int, world: int, device: torch.device) -> tuple[dict, int]:
        examples = self.batches[position]
        return collate(rank_share(examples, rank, world), self.tokenizer, self.cfg, self.max_words, device), len(examples)


def id_training_data(cfg: RunConfig, model, ds: Dataset, index, tokenizer, explanations, contexts=None) -> IdTrainingData:
    """The epoch planner of the dense objective's token-id inputs, with prefix prompts for a user prompt."""
    prompts = None
    if model.config.has_user_prompt:
        prompts = PrefixPrompts(
            model.cf_users.detach().cpu(), model.cf_items.cpu(), model.neighbor_index.cpu(), model.config.als(),
            with_neighbors=model.config.composer == "neighbors",
        )
    return IdTrainingData(ds, index, tokenizer, explanations, cfg, model.config.max_whole_words, prompts, contexts)


def explanation_contexts(cfg: RunConfig, train: list, val: list) -> tuple[list[str] | None, list[str] | None]:
    """(training, validation) records' retrieved sentences when explanation inputs hold one, else (None, None).
    A training record's is retrieved without itself (`ExplanationRetrieval.leave_one_out`)."""
    if cfg.model.explanation_context != "retrieved" or "explanation" not in cfg.train.tasks:
        return None, None
    retrieval = ExplanationRetrieval().fit(train)
    return retrieval.leave_one_out(), [retrieval.explain(e.user, e.item)[0] for e in val]
