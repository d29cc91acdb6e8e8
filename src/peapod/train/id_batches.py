"""Training and validation batches of the dense objective (`peapod.config`), built as token ids.

An epoch's examples are rows of internal indices (`peapod.inputs.examples`: user, input items, target
items), drawn with numpy from a generator seeded by (seed, epoch, task), and encoded once per epoch
through `TokenTables`; a batch is a slice of those matrices. Inputs are the bare evaluation form
(`user items...`), so validation and test read exactly what training read. The objective's parts:

* every training position is a sequential example, with the last `max_history` items before it;
* the decoder writes the next `item_targets` training items teacher-forced (sequential), or that many
  of the user's training items in random order (candidate-free top-n: no items in the input, the
  prompts carry the user); the first is the one evaluation scores;
* item tasks normalize their loss over the item tokens only, explanations over the other tokens;
* a peapod example's user prompt is built from the CF vector folded in from the training items before
  its target (and that vector's nearest other users), as a test user's prompt is built from the items
  before the test item (`PrefixPrompts`). The CF vector of all the user's training items holds the
  target itself: a model trained on it learns to read its targets back out of the prompt, which no
  test example allows;
* sequential inputs list the history most recent item first;
* batches hold rows of about the same input length (`batch_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from peapod.data.batch_order import length_grouped_batches
from peapod.data.dataset import Dataset, Explanation, validation_users
from peapod.inputs.examples import (
    TaskRows,
    TrainSequences,
    explanation_rows,
    newest_first,
    sequential_rows,
    take_turns,
    topn_rows,
)
from peapod.inputs.owners import PrefixPrompts
from peapod.inputs.prompt import TASK_IDS, TokenTables, context_tokens, sentence_labels
from peapod.metrics.ranking import PROTOCOL_HISTORY
from peapod.train.distributed import rank_share


@dataclass
class EncodedRows:
    """A task's examples as tensors (CPU). `label_space` restricts the loss softmax (to item or text tokens)."""

    task_ids: torch.Tensor
    users: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    whole_word_ids: torch.Tensor
    labels: torch.Tensor
    label_space: torch.Tensor | None = None
    rank_space: torch.Tensor | None = None  # item tasks: the item tokens a validation target is ranked among
    cf_query: torch.Tensor | None = None  # [N, cf_dim] prompt owners' CF vectors (prompt_history prefix)
    neighbors: torch.Tensor | None = None  # [N, k] their nearest training users
    score_step: torch.Tensor | None = None  # [N] validation: the decoder step ranked, after the decoder history
    # Validation under history "excluded": per row, the token ids of the user's training items, left out of the
    # ranking as the evaluation leaves them out (the validation item never is).
    seen: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.users.shape[0]

    def batch(self, rows, device: torch.device) -> dict:
        """The model inputs of `rows`, with padding columns the rows do not use trimmed."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        mask = self.attention_mask[rows]
        labels = self.labels[rows]
        width = max(1, int(mask.sum(1).max()))
        used = (labels != -100).any(0).nonzero()
        lwidth = int(used.max()) + 1 if len(used) else 1
        out = {
            "task_ids": self.task_ids[rows].to(device),
            "users": self.users[rows].to(device),
            "input_ids": self.input_ids[rows, :width].contiguous().to(device),
            "attention_mask": mask[:, :width].contiguous().to(device),
            "whole_word_ids": self.whole_word_ids[rows, :width].contiguous().to(device),
            "labels": labels[:, :lwidth].contiguous().to(device),
        }
        if self.label_space is not None:
            out["label_space"] = self.label_space.to(device)
        if self.cf_query is not None:
            out["cf_query"] = self.cf_query[rows].to(device)
            out["neighbors"] = self.neighbors[rows].to(device)
        return out


class IdEpoch:
    """The batches of one epoch: (table, row indices) pairs, in training order."""

    def __init__(self, plan: list[tuple[EncodedRows, np.ndarray]], tasks: list[str]):
        self.plan = plan
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.plan)

    def task(self, position: int) -> str:
        return self.tasks[position]

    def batch(self, position: int, rank: int, world: int, device: torch.device) -> tuple[dict, int]:
        """(model inputs of this rank's share (`rank_share`), global batch size)."""
        table, rows = self.plan[position]
        return table.batch(rank_share(rows, rank, world), device), len(rows)


class IdTrainingData:
    """Token tables, training sequences and sentence labels of one run, built once; epochs on demand."""

    def __init__(
        self, ds: Dataset, index, tokenizer, explanations: list[Explanation], cfg, max_words: int, prompts: PrefixPrompts | None = None,
        contexts: list[str] | None = None,
    ):
        """`contexts`: per explanation record, the retrieved sentence its input holds (`model.explanation_context`)."""
        self.ds, self.cfg, self.max_words, self.prompts = ds, cfg, max_words, prompts
        self.tables = TokenTables.build(tokenizer, index, ds.n_users)
        self.seqs = TrainSequences.from_dataset(ds)
        self.explanations = explanations
        self.tokenizer = tokenizer
        self.sentences = sentence_labels(tokenizer, [e.text for e in explanations], cfg.train.max_target_length)
        self.contexts = None if contexts is None else context_tokens(tokenizer, contexts, cfg.train.max_input_length)
        m = cfg.objective.item_targets
        space = self.tables.item_space if m > 1 else np.union1d(self.tables.item_space, [self.tables.eos_id])
        self.item_space = torch.from_numpy(space)  # item tasks normalize over the item tokens only
        # An explanation is text, so its softmax leaves the item tokens out: its steps then cost half as much
        # on MI and leave the (tied) embeddings of the items they do not read alone. A copying model's head
        # mixes copies into the whole vocabulary and keeps it.
        self.text_space = None
        if cfg.model.explanation_context == "none":
            self.text_space = torch.from_numpy(np.setdiff1d(np.arange(len(tokenizer)), self.tables.item_space))
        self._cached: tuple[int, IdEpoch] | None = None

    def encode(self, rows: TaskRows, sentences: np.ndarray | None = None, contexts: tuple[np.ndarray, np.ndarray] | None = None) -> EncodedRows:
        """Tensors of `rows`; an explanation row's labels and context are row `rows.sentences` of
        `sentences` and `contexts` (default the training records')."""
        t = self.cfg.train
        inputs = rows.inputs
        if rows.task == "sequential":
            inputs = newest_first(inputs)
        context = None
        if rows.task == "explanation":
            contexts = self.contexts if contexts is None else contexts
            if contexts is not None:
                context = (contexts[0][rows.sentences], contexts[1][rows.sentences])
        ids, mask, words = self.tables.inputs(rows.text_users, inputs, t.max_input_length, self.max_words, context)
        if rows.task == "explanation":
            labels = (self.sentences if sentences is None else sentences)[rows.sentences]
            space, ranked = self.text_space, None
        else:
            labels = self.tables.item_labels(rows.targets, eos=self.cfg.objective.item_targets == 1)
            space = self.item_space
            # The first label token is the item (one token per item): ranking it is the evaluation's ranking.
            ranked = torch.from_numpy(self.tables.item_space)
        n = len(rows)
        query = neighbors = None
        if self.prompts is not None:
            query, neighbors = self.prompts.for_rows(self.seqs, rows.users, rows.prefix)
        return EncodedRows(
            torch.full((n,), TASK_IDS[rows.task], dtype=torch.long), torch.from_numpy(rows.users),
            torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(words), torch.from_numpy(labels), space, ranked,
            query, neighbors,
        )

    def task_rows(self, task: str, rng: np.random.Generator) -> TaskRows | None:
        t, o, g = self.cfg.train, self.cfg.objective, self.tables.generic_user
        if task == "sequential":
            return sequential_rows(self.seqs, rng, t.max_history, o.item_targets, t.user_dropout, g)
        if task == "topn":
            return topn_rows(self.seqs, rng, o.item_targets, t.user_dropout, g, prefix=self.prompts is not None)
        if task == "explanation" and self.explanations:
            return explanation_rows(self.explanations, rng, t.user_dropout, g)
        return None

    def epoch(self, epoch: int) -> IdEpoch:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        t = self.cfg.train
        tables = []
        for task in t.tasks:
            rows = self.task_rows(task, np.random.default_rng([t.seed, epoch, TASK_IDS[task]]))
            if rows is not None and len(rows):
                tables.append((task, self.encode(rows)))
        rng = np.random.default_rng([t.seed, epoch, 99])
        plan, tasks = [], []
        queues = [[(task, table, rows) for rows in length_grouped_batches(table.attention_mask.sum(1).numpy(), t.batch_size, rng)] for task, table in tables]
        for task, table, rows in take_turns(queues):
            plan.append((table, rows))
            tasks.append(task)
        result = IdEpoch(plan, tasks)
        self._cached = (epoch, result)
        return result

    def validation(
        self, explanations_val: list[Explanation], max_users: int | None, users_sample: str = "first",
        contexts_val: list[str] | None = None,
    ) -> dict[str, EncodedRows]:
        """Fixed validation tables per task for `validation_users(n_users, max_users, users_sample)`, in
        the evaluation input form: the last max_history training
        items -> the validation item; top-n without candidates; held-out explanations. With
        `objective.decoder_history` j (atomic items), the user's last j training items go into the decoder
        before the validation item, as the evaluation hands them (`Predictor.decoder_items`:
        sequential keeps at least one in the encoder), and `score_step` says where the item is read.
        Under the rigorous protocol the item tables also hold each user's training items (`seen`), which
        the ranking leaves out as the evaluation does, so that the epoch is chosen on the test's metric."""
        t, o = self.cfg.train, self.cfg.objective
        ds = self.ds
        users = np.array(validation_users(ds.n_users, max_users, users_sample), dtype=np.int64)
        val_items = np.array([ds.history_and_target(int(u), "val")[1] for u in users], dtype=np.int64)
        stop = self.seqs.lengths[users]
        j = o.decoder_history
        out = {}
        if "sequential" in t.tasks:
            steps = np.minimum(j, np.maximum(stop - 1, 0))
            end = stop - steps
            hist = self.seqs.window(users, np.maximum(0, end - t.max_history), end, t.max_history)
            out["sequential"] = self._validation_table("sequential", users, hist, end, stop, steps, val_items, j)
        if "topn" in t.tasks:
            inputs = np.zeros((len(users), 0), dtype=np.int64)
            steps = np.minimum(j, stop)
            out["topn"] = self._validation_table("topn", users, inputs, stop - steps, stop, steps, val_items, j)
        if "explanation" in t.tasks and explanations_val:
            sentences = sentence_labels(self.tokenizer, [e.text for e in explanations_val], t.max_target_length)
            contexts = None if contexts_val is None else context_tokens(self.tokenizer, contexts_val, t.max_input_length)
            out["explanation"] = self.encode(explanation_rows(explanations_val, None, 0.0, 0), sentences, contexts)
        return out

    def _validation_table(self, task, users, inputs, start, stop, steps, val_items, j) -> EncodedRows:
        """Targets [N, j + 1]: training items start..stop-1 (the decoder history), then the validation item."""
        targets = np.full((len(users), j + 1), -1, dtype=np.int64)
        if j:
            targets[:, :j] = self.seqs.window(users, start, stop, j)
        targets[np.arange(len(users)), steps] = val_items
        table = self.encode(TaskRows(task, users, users, inputs, targets))
        if j:
            table.score_step = torch.from_numpy(steps)
        if PROTOCOL_HISTORY[self.cfg.eval.protocol] == "excluded":
            first = self.tables.item_tokens[:, 0]
            table.seen = [first[self.ds.seen_items(int(u), "val")] for u in users]
        return table
