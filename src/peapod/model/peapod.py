"""The PeaPOD model: a T5 encoder-decoder fed through `inputs_embeds` with soft prompts in front.

Encoder input, per example:  [task prompt (P) ; user prompt (L) ; token embeddings + whole-word embeddings (T)]

Variants (one config switch, one code path):
- `p5`:     discrete text templates only; no soft prompt (P = L = 0).
- `pod`:    learnable task prompts (P vectors per task); no user prompt.
- `peapod`: task prompts and a personalized user prompt from a composer (`neighbors` or `pool`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from peapod.data.cf import ALSConfig, fold_in, nearest_neighbors, train_als
from peapod.data.dataset import Dataset
from peapod.data.indexing import ItemIndex, user_text
from peapod.inputs.prompt import TASK_IDS, TASKS
from peapod.inputs.tokenizer import atomic_item_tokens, template_corpus, train_tokenizer
from peapod.io import atomic_directory, write_json_atomic
from peapod.model.composer import NeighborComposer, PoolComposer
from peapod.model.copy_head import NO_SOURCE, CopyHead, copy_sources
from peapod.model.dropout import DROPOUT_MASKS, set_dropout, use_chunked_dropout
from peapod.model.item_head import init_item_embeddings, restricted_lm_output

VARIANTS = ("p5", "pod", "peapod")
COMPOSERS = ("neighbors", "pool")
TOPN_INPUTS = ("candidates", "user")
ITEM_INITS = ("random", "cf")
HISTORY_ORDERS = ("oldest-first", "newest-first")
EXPLANATION_CONTEXTS = ("none", "retrieved")

# From-scratch backbone sizes. `t5-small` has T5-small's dimensions (60M parameters with its vocab).
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=128, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32, vocab_size=2000),
    "cpu-d128": dict(d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32, vocab_size=2000),
    "cpu-small": dict(d_model=256, d_ff=512, num_layers=3, num_decoder_layers=3, num_heads=4, d_kv=64, vocab_size=8000),
    "t5-small": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=32000),
}


class ModelOptions(BaseModel):
    """The model choices a run sets (the run config's `model:` section); the defaults are the CPU recipe's."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    variant: Literal[VARIANTS] = "peapod"
    composer: Literal[COMPOSERS] = "neighbors"
    backbone: str = Field("cpu-d128", description="a preset (tiny, cpu-d128, cpu-small, t5-small) or a local T5 directory")
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
    vocab_size: int | None = Field(None, ge=16, description="from-scratch tokenizer size; None takes the preset's")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    item_init: Literal[ITEM_INITS] = Field("cf", description="'cf': item token embeddings start as projected ALS item factors")
    # The rate that keeps a small catalogue's item tasks from overfitting slows a from-scratch decoder
    # learning its language.
    explanation_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout of training batches that hold only explanations (default: model.dropout)"
    )
    # A from-scratch decoder cannot learn a language in minutes; it can learn to copy and edit.
    explanation_context: Literal[EXPLANATION_CONTEXTS] = Field(
        "none", description="'retrieved': an explanation input also holds the item's training sentence closest to how the user writes"
    )


# What a saved model that lacks a key was built with, where the recipe's default differs from it.
SAVED_MODEL_DEFAULTS = {"backbone": "tiny", "item_init": "random"}


class ModelConfig(ModelOptions):
    """Everything that defines a model's architecture; saved with every model.

    A run fills the fields below `ModelOptions` from its objective and runtime (`RunConfig.architecture`);
    their defaults are what a model saved before them did.
    """

    max_whole_words: int = Field(512, ge=1)
    # What a top-n input holds: the candidate list (P5/POD/PeaPOD) or only the user. Candidates are
    # always scored exactly; without them in the input, the prompts are all the model reads.
    topn_input: Literal[TOPN_INPUTS] = "candidates"
    # Items the decoder was trained to write: the next `item_targets` items (sequential) or that many of
    # the user's items (candidate-free top-n), teacher-forced, no EOS when > 1. Item scores then read
    # the first decoder step only (atomic items).
    item_targets: int = Field(1, ge=1)
    # "newest-first" writes the most recent item first, so an item's whole-word id is its recency
    # (2 = the last item) whatever the history's length.
    history_order: Literal[HISTORY_ORDERS] = "oldest-first"
    # Inference only: sequential and top-n scores teacher-force the user's most recent j items into the
    # decoder and read step j (training taught step j with the j items after the encoder's history).
    # Needs atomic items and item_targets > j; 0 reads the first step. Top-n reads it only candidate-free.
    decoder_history: int = Field(0, ge=0)
    dropout_masks: Literal[DROPOUT_MASKS] = "bernoulli"  # changes the random stream, not the model
    seed: int = 0

    @model_validator(mode="after")
    def _decoder_reads_what_it_learned(self) -> ModelConfig:
        if self.decoder_history and self.decoder_history >= self.item_targets:
            raise ValueError(
                f"decoder_history must be 0 or in 1..item_targets - 1 ({self.item_targets - 1}), got {self.decoder_history}: "
                "the decoder only learned to read up to item_targets - 1 items before the one it scores"
            )
        return self

    @property
    def has_task_prompt(self) -> bool:
        return self.variant in ("pod", "peapod")

    @property
    def has_user_prompt(self) -> bool:
        return self.variant == "peapod"

    @property
    def prompt_length(self) -> int:
        """Soft-prompt vectors in front of the tokens."""
        return self.task_prompt_length * self.has_task_prompt + self.user_prompt_length * self.has_user_prompt

    def als(self) -> ALSConfig:
        return ALSConfig(dim=self.cf_dim, reg=self.cf_reg, alpha=self.cf_alpha, iterations=self.cf_iterations, seed=self.seed)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{**SAVED_MODEL_DEFAULTS, **d})


class PeaPOD(nn.Module):
    """T5 with task prompts, personalized user prompts and whole-word embeddings.

    Buffers (saved with the weights):
        cf_users: [n_users, cf_dim] CF embeddings of the training users (a Parameter when trainable).
        cf_items: [n_items, cf_dim] CF item factors, for folding in unseen users.
        neighbor_index: [n_users, k] each user's k most cosine-similar other users (neighbors composer).
    """

    def __init__(self, config: ModelConfig, t5: T5ForConditionalGeneration, n_users: int, n_items: int):
        super().__init__()
        self.config = config
        self.t5 = t5
        d = t5.config.d_model
        self.whole_word = nn.Embedding(config.max_whole_words, d, padding_idx=0)
        if config.has_task_prompt:
            self.task_prompts = nn.Parameter(torch.empty(len(TASKS), config.task_prompt_length, d).uniform_(-0.1, 0.1))
        if config.has_user_prompt:
            cf = torch.zeros(n_users, config.cf_dim)
            if config.cf_trainable:
                self.cf_users = nn.Parameter(cf)
            else:
                self.register_buffer("cf_users", cf)
            self.register_buffer("cf_items", torch.zeros(n_items, config.cf_dim))
            self.register_buffer("neighbor_index", torch.zeros(n_users, config.n_neighbors, dtype=torch.long))
            if config.composer == "neighbors":
                self.composer = NeighborComposer(config.cf_dim, d, config.user_prompt_length, config.n_heads)
            else:
                self.composer = PoolComposer(config.cf_dim, d, config.user_prompt_length, config.pool_size)
        if config.explanation_context == "retrieved":
            self.copy_head = CopyHead(d)
            self.t5.lm_head.register_forward_hook(self._copy_hook)
        self._copy_context: tuple[torch.Tensor, torch.Tensor] | None = None
        self._dropout = config.dropout
        if config.dropout_masks == "chunked":
            use_chunked_dropout(self)

    # ---- prompts ------------------------------------------------------------------------------
    def user_prompts(
        self,
        users: torch.Tensor | None = None,
        cf_query: torch.Tensor | None = None,
        neighbors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """User prompts [B, L, d_model].

        Args:
            users: [B] internal indices of training users; or
            cf_query: [B, cf_dim] folded-in CF vectors of unseen users, with `neighbors` [B, k].
        """
        if cf_query is None:
            if users is None:
                # cf_users[None] would silently broadcast to all users and fail deep in the composer.
                raise ValueError("variant 'peapod' needs `users` (training users) or `cf_query` (folded-in users)")
            cf_query, neighbors = self.cf_users[users], self.neighbor_index[users]
        if self.config.composer == "pool":
            return self.composer(cf_query)
        if neighbors is None:
            neighbors = self.neighbors_of(cf_query)
        return self.composer(cf_query, self.cf_users[neighbors])

    @torch.no_grad()
    def permute_user_prompts_(self, perm: torch.Tensor) -> None:
        """Give every training user u the soft prompt of user `perm[u]`, in place.

        A counterfactual ablation: the text input (history, candidates, user id) stays the user's
        own, only the personalized prompt is someone else's. `perm` [n_users] is a permutation;
        applying its inverse restores the model exactly.
        """
        if not self.config.has_user_prompt:
            raise ValueError(f"variant {self.config.variant!r} has no user prompt to permute")
        n = self.cf_users.shape[0]
        perm = perm.to(device=self.cf_users.device, dtype=torch.long)
        if perm.shape != (n,) or not torch.equal(torch.sort(perm).values, torch.arange(n, device=perm.device)):
            raise ValueError(f"perm must be a permutation of the {n} training users")
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n, device=perm.device)
        # New row u holds user perm[u]'s vector; neighbour ids are renamed so they still point at
        # the same vectors: cf'[inverse[x]] == cf[x].
        self.cf_users.copy_(self.cf_users[perm])
        self.neighbor_index.copy_(inverse[self.neighbor_index[perm]])

    def neighbors_of(self, cf_query: torch.Tensor) -> torch.Tensor:
        """[B, k] nearest training users of arbitrary CF vectors (cold-start users)."""
        return nearest_neighbors(cf_query, self.cf_users.detach(), self.config.n_neighbors).to(cf_query.device)

    def fold_in(self, item_lists: list[list[int]]) -> torch.Tensor:
        """CF vectors [B, cf_dim] of users known only by their items (internal indices)."""
        return fold_in(item_lists, self.cf_items.cpu(), self.config.als()).to(self.cf_items.device)

    def encoder_inputs(
        self,
        task_ids: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        whole_word_ids: torch.Tensor,
        users: torch.Tensor | None = None,
        cf_query: torch.Tensor | None = None,
        neighbors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the encoder input.

        Args:
            task_ids: [B] index into TASKS for each example.
            input_ids, attention_mask, whole_word_ids: [B, T].
            users / cf_query / neighbors: who the prompt is for (see `user_prompts`); unused for p5/pod.
        Returns:
            embeds [B, prompt_length + T, d_model] and attention mask [B, prompt_length + T].
        """
        parts = []
        if self.config.has_task_prompt:
            parts.append(self.task_prompts[task_ids])
        if self.config.has_user_prompt:
            parts.append(self.user_prompts(users, cf_query, neighbors))
        tokens = self.t5.get_input_embeddings()(input_ids) + self.whole_word(whole_word_ids)
        parts.append(tokens)
        embeds = torch.cat(parts, dim=1) if len(parts) > 1 else tokens
        prompt_mask = attention_mask.new_ones(attention_mask.shape[0], self.config.prompt_length)
        return embeds, torch.cat([prompt_mask, attention_mask], dim=1)

    def encode(self, task_ids, input_ids, attention_mask, whole_word_ids, **who) -> tuple[BaseModelOutput, torch.Tensor]:
        """Run the encoder once. Returns (encoder output [B, S, d_model], attention mask [B, S])."""
        embeds, mask = self.encoder_inputs(task_ids, input_ids, attention_mask, whole_word_ids, **who)
        return self.t5.encoder(inputs_embeds=embeds, attention_mask=mask, return_dict=True), mask

    def forward(self, task_ids, input_ids, attention_mask, whole_word_ids, labels, users=None, label_space=None, loss_steps=None, **who):
        """Teacher-forced forward; returns the transformers Seq2SeqLMOutput (with `.loss`).

        `label_space` [V'] (token ids, ascending), when given, restricts the softmax of the loss to those
        tokens (the item head over catalogue tokens); every label must be in it. Logits are then [B, T, V'].
        Without it, explanation rows of a copying model (`copy_head`) score the copy mixture, and `logits`
        are its log-probabilities. `loss_steps` [B], when given, makes the loss each row's label at that one
        decoder step (mean over rows): the item read after a decoder history, as evaluation reads it.
        """
        if self.training and self.config.explanation_dropout is not None:
            only_explanations = bool((task_ids == TASK_IDS["explanation"]).all())
            p = self.config.explanation_dropout if only_explanations else self.config.dropout
            if p != self._dropout:
                set_dropout(self, p)
                self._dropout = p
        encoder_out, mask = self.encode(task_ids, input_ids, attention_mask, whole_word_ids, users=users, **who)
        if label_space is None:
            source = self.copy_sources(task_ids, input_ids, attention_mask, whole_word_ids)
            with self.copying(encoder_out.last_hidden_state, source) as used:
                out = self.t5(encoder_outputs=encoder_out, attention_mask=mask, labels=labels, return_dict=True)
        else:
            used = False
            out = restricted_lm_output(self.t5, encoder_out, mask, labels, label_space)
        if loss_steps is not None:
            rows = torch.arange(labels.shape[0], device=labels.device)
            target = labels[rows, loss_steps]
            if label_space is not None:
                target = torch.searchsorted(label_space, target)
            out.loss = torch.nn.functional.cross_entropy(out.logits[rows, loss_steps].float(), target)
        if self.training and hasattr(self, "copy_head") and not used:
            # Every parameter joins every step's graph, as DDP's gradient all-reduce needs.
            out.loss = out.loss + 0.0 * sum(p.sum() for p in self.copy_head.parameters())
        return out

    # ---- copying (explanation_context: retrieved) -----------------------------------------------
    def copy_sources(self, task_ids, input_ids, attention_mask, whole_word_ids) -> torch.Tensor | None:
        """[B, S] the token each encoder position offers the copy head (`copy_sources`), or None
        for a model without one."""
        if not hasattr(self, "copy_head"):
            return None
        t5 = self.t5.config
        return copy_sources(
            input_ids, attention_mask, whole_word_ids, task_ids, TASK_IDS["explanation"],
            (t5.pad_token_id, t5.eos_token_id), self.config.prompt_length,
        )

    @contextmanager
    def copying(self, memory: torch.Tensor, source: torch.Tensor | None):
        """Within the block, the LM head's output is the copy mixture over `memory` [B, S, d] and
        `source` [B, S]; yields whether it is (some row offers something to copy)."""
        active = source is not None and bool((source != NO_SOURCE).any())
        self._copy_context = (memory, source) if active else None
        try:
            yield active
        finally:
            self._copy_context = None

    def _copy_hook(self, module, inputs, output):
        if self._copy_context is None:
            return None
        memory, source = self._copy_context
        hidden = inputs[0]
        beams = hidden.shape[0] // memory.shape[0]  # generate() repeats each row per beam, in order
        if beams > 1:
            memory, source = memory.repeat_interleave(beams, 0), source.repeat_interleave(beams, 0)
        return self.copy_head(hidden, output, memory, source)


# ---- construction, saving, loading --------------------------------------------------------------
def _backbone_config(config: ModelConfig, vocab_size: int) -> T5Config:
    p = dict(PRESETS[config.backbone])
    p["vocab_size"] = vocab_size
    return T5Config(
        **p, dropout_rate=config.dropout, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        feed_forward_proj="relu", tie_word_embeddings=True,
    )


def build_model(config: ModelConfig, dataset: Dataset, index: ItemIndex):
    """A new model for `dataset`: tokenizer, backbone, and CF embeddings from training interactions only.

    Returns (model, tokenizer).
    """
    torch.manual_seed(config.seed)
    atomic = index.all_item_texts() if index.is_atomic else []
    if config.backbone in PRESETS:
        vocab = config.vocab_size or PRESETS[config.backbone]["vocab_size"]
        sentences = [e.text for e in dataset.explanations_for("train")]
        users = [user_text(u) for u in range(dataset.n_users)]
        items = [] if index.is_atomic else index.all_item_texts()
        tokenizer = train_tokenizer(template_corpus(users, items, sentences), vocab, atomic)
        t5 = T5ForConditionalGeneration(_backbone_config(config, len(tokenizer)))
    else:
        path = Path(config.backbone)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model.backbone {config.backbone!r} is neither a preset ({', '.join(PRESETS)}) nor a local directory"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        t5 = T5ForConditionalGeneration.from_pretrained(path, dropout_rate=config.dropout)
        if atomic:
            tokenizer.add_tokens(atomic_item_tokens(atomic))
            t5.resize_token_embeddings(len(tokenizer))
    model = PeaPOD(config, t5, dataset.n_users, dataset.n_items)
    if config.item_init == "cf" and not index.is_atomic:
        raise ValueError("model.item_init 'cf' needs atomic item tokens (index.strategy atomic)")
    if config.item_targets > 1 and not index.is_atomic:
        raise ValueError("model.item_targets > 1 needs atomic item tokens (index.strategy atomic)")
    if config.has_user_prompt or config.item_init == "cf":
        user_f, item_f = train_als([dataset.train_items(u) for u in range(dataset.n_users)], dataset.n_items, config.als())
    if config.item_init == "cf":
        token_ids = tokenizer.convert_tokens_to_ids(index.all_item_texts())
        init_item_embeddings(t5, torch.tensor(token_ids), item_f, seed=config.seed)
    if config.has_user_prompt:
        with torch.no_grad():
            model.cf_users.copy_(user_f)
            model.cf_items.copy_(item_f)
            if config.composer == "neighbors":
                model.neighbor_index.copy_(nearest_neighbors(user_f, user_f, config.n_neighbors, exclude_self=True))
    return model, tokenizer


@dataclass
class ModelBundle:
    """A model with what it needs to read and write text: tokenizer, item index and raw ids."""

    model: PeaPOD
    tokenizer: object
    index: ItemIndex
    user_ids: list[str]
    item_ids: list[str]
    extra: dict = field(default_factory=dict)


def save_bundle(bundle: ModelBundle, directory: str | Path, extra_files=None) -> None:
    """Write a model directory atomically: weights (safetensors), JSON config, tokenizer, id maps.

    `extra_files(tmp_dir)`, when given, writes more files into the directory before it is renamed.
    """
    with atomic_directory(directory) as tmp:
        save_model(bundle.model, str(tmp / "model.safetensors"))
        write_json_atomic(
            tmp / "config.json",
            {
                "format": "peapod-model/1",
                "model": bundle.model.config.model_dump(),
                "backbone": bundle.model.t5.config.to_dict(),
                "n_users": len(bundle.user_ids),
                "n_items": len(bundle.item_ids),
                **bundle.extra,
            },
        )
        write_json_atomic(
            tmp / "id_maps.json",
            {"user_ids": bundle.user_ids, "item_ids": bundle.item_ids, "index": bundle.index.to_dict()},
        )
        bundle.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if extra_files is not None:
            extra_files(tmp)


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the exact model saved by `save_bundle`. No pickle: safetensors and JSON only."""
    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory} is not a peapod model directory (no model.safetensors)")
    meta = json.loads((directory / "config.json").read_text())
    maps = json.loads((directory / "id_maps.json").read_text())
    config = ModelConfig.from_dict(meta["model"])
    t5_config = T5Config.from_dict(meta["backbone"])
    t5 = T5ForConditionalGeneration(t5_config)
    model = PeaPOD(config, t5, meta["n_users"], meta["n_items"])
    load_model(model, str(directory / "model.safetensors"), strict=True, device=str(device))
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    extra = {k: v for k, v in meta.items() if k not in ("format", "model", "backbone", "n_users", "n_items")}
    return ModelBundle(model, tokenizer, ItemIndex.from_dict(maps["index"]), maps["user_ids"], maps["item_ids"], extra)
