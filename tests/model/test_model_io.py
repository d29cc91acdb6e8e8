"""Model persistence: safetensors bundles round-trip bit for bit, and local pretrained backbones load.

Everything runs on CPU with the `tiny` preset and a small seeded synthetic dataset (model_fixtures.py, registered in conftest.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from model_fixtures import N_ITEMS, USERS, make_batch, model_config, no_grad_logits

from peapod.data.indexing import user_text
from peapod.inputs.tokenizer import template_corpus, train_tokenizer
from peapod.model.peapod import ModelBundle, PeaPOD, build_model, load_bundle, save_bundle


# ---- save / load ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant,composer,indexing", [("peapod", "neighbors", "atomic"), ("p5", "neighbors", "p5-sequential")]
)
def test_save_load_roundtrip(models, ds, indexes, tmp_path, variant, composer, indexing):
    model, tok = models(variant, composer, indexing)
    model = copy.deepcopy(model)  # keep the cache untouched by the (unlikely) in-place effects of saving
    index = indexes[indexing]
    b = make_batch(ds, index, tok, USERS)
    users = torch.tensor(USERS)
    model.eval()
    ref = no_grad_logits(model, b, users=users)
    bundle = ModelBundle(model, tok, index, list(ds.user_ids), list(ds.item_ids), extra={"note": "test"})
    out = tmp_path / "model"
    save_bundle(bundle, out)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "model.safetensors").is_file()
    assert not [p for p in written if p.suffix in (".pkl", ".bin", ".pt", ".pth", ".pickle", ".ckpt")]
    # Nothing left behind next to the directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    loaded = load_bundle(out)
    assert not loaded.model.training
    assert loaded.index == index
    assert loaded.user_ids == ds.user_ids
    assert loaded.item_ids == ds.item_ids
    assert loaded.extra == {"note": "test"}
    assert loaded.model.config == model.config
    # Same tokenizer: same ids and whole-word ids for the batch text.
    b2 = make_batch(ds, index, loaded.tokenizer, USERS)
    for key in b:
        assert torch.equal(b[key], b2[key]), key
    assert len(loaded.tokenizer) == len(tok)
    # Same state, bit for bit.
    sd, sd2 = model.state_dict(), loaded.model.state_dict()
    assert sd.keys() == sd2.keys()
    for key in sd:
        assert torch.equal(sd[key], sd2[key]), key
    assert torch.equal(ref, no_grad_logits(loaded.model, b2, users=users))
    # Saving again over the same directory replaces it atomically.
    save_bundle(bundle, out)
    assert torch.equal(ref, no_grad_logits(load_bundle(out).model, b2, users=users))


def test_load_bundle_rejects_non_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_bundle(tmp_path)

# ---- local pretrained backbone --------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_dir(ds, tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    directory = tmp_path_factory.mktemp("backbone") / "pretrained"
    users = [user_text(u) for u in range(ds.n_users)]
    items = [f"item_{i + 1}" for i in range(ds.n_items)]
    tok = train_tokenizer(template_corpus(users, items, [e.text for e in ds.explanations]), 500)
    torch.manual_seed(123)
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tok), d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, feed_forward_proj="relu",
        )
    )
    t5.save_pretrained(directory)
    tok.save_pretrained(directory)
    state = {k: v.clone() for k, v in t5.state_dict().items()}
    return directory, state, len(tok)


@pytest.mark.parametrize("indexing", ["p5-sequential", "atomic"])
def test_local_pretrained_backbone(ds, indexes, pretrained_dir, tmp_path, indexing):
    directory, state, vocab = pretrained_dir
    config = model_config("peapod", "neighbors", backbone=str(directory), dropout=0.05)
    model, tok = build_model(config, ds, indexes[indexing])
    assert isinstance(model, PeaPOD)
    assert model.t5.config.d_model == 64
    # model.dropout applies to a pretrained backbone too (the saved one has T5's default 0.1).
    assert model.t5.config.dropout_rate == 0.05
    assert {m.p for m in model.t5.modules() if isinstance(m, torch.nn.Dropout)} == {0.05}
    loaded = model.t5.state_dict()
    for key in ("encoder.block.0.layer.0.SelfAttention.q.weight", "decoder.block.1.layer.2.DenseReluDense.wo.weight"):
        assert torch.equal(loaded[key], state[key]), key
    emb = model.t5.get_input_embeddings().weight
    if indexing == "atomic":
        assert len(tok) == vocab + N_ITEMS
        assert emb.shape[0] >= len(tok)
        # The pretrained rows survive the resize.
        assert torch.equal(emb[:vocab], state["shared.weight"])
        assert len(tok("<item_7>")["input_ids"]) == 2
    else:
        assert len(tok) == vocab
        assert torch.equal(emb, state["shared.weight"])
    model.eval()
    b = make_batch(ds, indexes[indexing], tok, USERS[:3])
    out = model(**b, users=torch.tensor(USERS[:3]))
    assert torch.isfinite(out.loss)
    assert out.logits.shape[-1] == emb.shape[0]
    # A model on a pretrained backbone saves and loads like any other.
    save_bundle(ModelBundle(model, tok, indexes[indexing], list(ds.user_ids), list(ds.item_ids)), tmp_path / "m")
    loaded = load_bundle(tmp_path / "m")
    # Compare no-grad with no-grad: with autograd on, CPU kernels may differ in the last bit.
    ref = no_grad_logits(model, b, users=torch.tensor(USERS[:3]))
    assert torch.equal(ref, no_grad_logits(loaded.model, b, users=torch.tensor(USERS[:3])))


def test_missing_backbone_path(ds, indexes, tmp_path):
    config = model_config("pod", backbone=str(tmp_path / "does-not-exist"))
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        build_model(config, ds, indexes["p5-sequential"])
