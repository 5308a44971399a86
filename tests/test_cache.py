"""mechwork.cache: stored activations equal run_with_cache, packing, sources, dtypes, statistics, batches."""

from __future__ import annotations

import json

import pytest
import torch

import mechwork
from mechwork.cache import ActivationStore, collect
from mechwork.data import Corpus

SITES = ["hook_embed", "resid_pre.0", "z.1", "mlp_post.2", "blocks.3.hook_resid_post", "pattern.2", "ln1_scale.1"]
SITES_ATTN_ONLY = ["resid_post.0", "z.1", "pattern.1", "attn_out.1"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return Corpus(seed=3).texts(120)


def _reference(model, tokens: torch.Tensor, site: str) -> torch.Tensor:
    """Rows of ``site`` from model.run_with_cache, in the store's layout (patterns: one row per query)."""
    s = mechwork.site(model, site)
    _, cache = model.run_with_cache(tokens, names_filter=[s.name])
    t = cache[s.name]
    if s.kind == "pattern":
        t = t.transpose(1, 2)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_matches_run_with_cache(toy_mixed_any, where, tmp_path):
    model = toy_mixed_any
    tokens = torch.randint(3, model.cfg.d_vocab, (20, 64), generator=torch.Generator().manual_seed(0))
    out = None if where == "memory" else tmp_path / "store"
    store = collect(model, tokens, SITES, out=out, batch_size=4, bos=False, progress=False, shard_tokens=1024)
    assert store.n_tokens == tokens.numel() and store.context == 64
    assert store.sites == [mechwork.site(model, s).name for s in SITES]
    assert torch.equal(store.tokens, tokens.reshape(-1))
    if where == "disk":
        assert len(store.manifest.shards) > 1  # several shards mapped as one tensor
        store = ActivationStore.open(out)
    for s in SITES:
        ref = _reference(model, tokens, s)
        got = store[s]
        assert got.shape == ref.shape == (store.n_tokens, *store.shape(s))
        assert store.d(s) == ref[0].numel()
        assert (got - ref).abs().max().item() <= 1e-6, s


def test_attention_only_model(toy_induction, tmp_path):
    tokens = torch.randint(3, 200, (3, 64), generator=torch.Generator().manual_seed(1))
    store = collect(toy_induction, tokens, SITES_ATTN_ONLY, out=tmp_path / "s", batch_size=2, bos=False, progress=False)
    for s in SITES_ATTN_ONLY:
        assert (store[s] - _reference(toy_induction, tokens, s)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("sites, started", [(["resid_post.0", "z.1"], 2), (["resid_post.3"], 4)])
def test_stops_after_last_needed_site(toy_mixed_any, sites, started):
    """The pass ends right after the last requested site: later blocks, ln_final and unembed never run."""
    model = toy_mixed_any
    calls = {i: 0 for i in range(4)}
    calls["unembed"] = 0
    handles = [
        b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(model.blocks)
    ]
    handles.append(
        model.unembed.register_forward_pre_hook(lambda m, a: calls.__setitem__("unembed", calls["unembed"] + 1))
    )
    try:
        store = collect(model, torch.randint(3, 200, (4, 64)), sites, batch_size=2, bos=False, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert [calls[i] for i in range(4)] == [2] * started + [0] * (4 - started) and calls["unembed"] == 0
    assert store.n_tokens == 256
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())  # the aborted pass left no hook behind


def test_texts_are_packed_with_bos(toy_mixed, texts):
    tok = toy_mixed.tokenizer
    store = collect(toy_mixed, texts, ["resid_post.0"], context=32, batch_size=8, progress=False)
    bos = tok.bos_token_id
    windows = store.tokens[: (store.n_tokens // 32) * 32].reshape(-1, 32)
    assert (windows[:, 0] == bos).all()  # every window starts with BOS
    # every text's tokens appear, in order, under its document index
    docs, pos = store.docs, store.doc_pos
    for i in (0, 7, len(texts) - 1):
        ids = tok(texts[i], add_special_tokens=False)["input_ids"]
        rows = (docs == i).nonzero().squeeze(1)
        assert store.tokens[rows].tolist() == [bos] + ids
        assert pos[rows].tolist() == list(range(len(ids) + 1))
    inserted = docs == -1
    assert (store.tokens[inserted] == bos).all() and (pos[inserted] == -1).all()
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts) + int(inserted.sum())
    assert store.n_tokens == n_tokens  # no token lost; the last window may be short
    w, p = store.window(torch.tensor([40, 41]))
    assert w.shape == (2, 32) and p.tolist() == [8, 9] and torch.equal(w[0], store.tokens[32:64])
    shown = store.examples(torch.tensor([40, 32]), toy_mixed, before=3)
    assert shown[0] == f"{tok.decode(store.tokens[37:40].tolist())} [[{tok.decode([int(store.tokens[40])])}]]"
    assert shown[1] == f"[[{tok.decode([bos])}]]"  # a window's first row has nothing before it


def test_no_bos_is_plain_concatenation(toy_mixed):
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    store = collect(toy_mixed, docs, ["resid_post.0"], context=4, bos=False, progress=False)
    assert store.tokens.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert store.docs.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_sources_agree(toy_mixed, texts, tmp_path):
    """Texts, a .txt file, a .jsonl file, a token tensor and a generator of batches give the same rows."""
    kw = dict(context=32, batch_size=4, progress=False, n_tokens=576)
    ref = collect(toy_mixed, texts, ["resid_post.1"], **kw)
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(texts) + "\n")
    jsl = tmp_path / "t.jsonl"
    jsl.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    windows = ref.tokens[:576].reshape(-1, 32)
    gen = (windows[i : i + 3] for i in range(0, len(windows), 3))
    for src in (str(txt), jsl, gen, windows):
        other = collect(toy_mixed, src, ["resid_post.1"], **kw)
        assert other.n_tokens == 576 and torch.equal(other.tokens, ref.tokens)
        assert torch.equal(other["resid_post.1"], ref["resid_post.1"])


def test_task_source_and_prompt_labels(toy_mixed):
    task = mechwork.tasks.get("gender")
    batch = task.prompts(40, seed=5)
    store = collect(toy_mixed, batch, ["resid_post.2"], context=64, progress=False)
    # row -> prompt -> label: the last token of every prompt is found and labelled
    last = (store.doc_pos == batch.pos[store.docs.clamp_min(0)]) & (store.docs >= 0)
    rows = last.nonzero().squeeze(1)
    assert len(rows) == len(batch)
    assert torch.equal(store.tokens[rows], batch.clean[torch.arange(len(batch)), batch.pos])
    labels = batch.labels[store.docs[rows]]
    assert labels.shape == (len(batch),)
    endless = collect(toy_mixed, task, ["resid_post.2"], n_tokens=1000, progress=False)
    assert endless.n_tokens == 1000
    with pytest.raises(mechwork.ConfigError, match="never ends"):
        collect(toy_mixed, task, ["resid_post.2"], progress=False)


def test_pad_packing_gives_per_prompt_activations(toy_mixed_any, tmp_path):
    """packing='pad': one prompt per window, activations equal to each prompt run alone, padding kept out."""
    model = toy_mixed_any
    batch = mechwork.tasks.get("gender").prompts(12, seed=1)
    width = batch.clean.shape[1]
    store = collect(model, batch, ["resid_post.2", "z.1"], context=width, packing="pad", batch_size=5, progress=False)
    assert store.n_tokens == 12 * width and store.manifest.packing == "pad"
    docs, toks = store.docs.reshape(12, width), store.tokens.reshape(12, width)
    for i in range(12):
        n = int(batch.pos[i]) + 1
        assert (docs[i, :n] == i).all() and (docs[i, n:] == -1).all()
        assert torch.equal(toks[i, :n], batch.clean[i, :n])
    for s in store.sites:
        for i in (0, 5, 11):
            n = int(batch.pos[i]) + 1
            _, cache = model.run_with_cache(batch.clean[i : i + 1, :n])
            got = store[s].reshape(12, width, *store.shape(s))[i, :n]
            assert (got - cache[mechwork.site(model, s).name][0]).abs().max().item() <= 1e-5, s
    real = store.docs >= 0
    x = store["resid_post.2"][real].double()
    st = store.stats("resid_post.2")
    assert st["count"] == int(real.sum())
    torch.testing.assert_close(st["mean"].double(), x.mean(0), rtol=1e-5, atol=1e-6)
    idx = torch.cat(list(store.row_indices(16, rows=real)))
    assert torch.equal(idx.sort().values, real.nonzero().squeeze(1))
    saved = store.save(tmp_path / "pad")
    assert saved.manifest.packing == "pad" and saved.stats("resid_post.2")["count"] == int(real.sum())
    with pytest.raises(mechwork.DataError, match="packing='pad'"):
        collect(model, batch, ["resid_post.2"], context=4, packing="pad", progress=False)
    with pytest.raises(mechwork.ConfigError, match="packing"):
        collect(model, batch, ["resid_post.2"], packing="none", progress=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_storage_dtypes(toy_mixed, dtype, tmp_path):
    tokens = torch.randint(3, 200, (4, 64), generator=torch.Generator().manual_seed(2))
    ref = collect(toy_mixed, tokens, ["resid_post.1", "z.0"], bos=False, progress=False)
    store = collect(
        toy_mixed, tokens, ["resid_post.1", "z.0"], out=tmp_path / "s", dtype=dtype, bos=False, progress=False
    )
    assert store.dtype == getattr(torch, dtype)
    for s in store.sites:
        assert store[s].dtype == store.dtype
        assert torch.equal(store[s], ref[s].to(store.dtype))
        batch = next(store.batches(s, 16, shuffle=False))
        assert batch.dtype == torch.float32 and torch.equal(batch, ref[s][:16].to(store.dtype).float())


def test_statistics(toy_mixed, tmp_path):
    tokens = torch.randint(3, 200, (10, 64), generator=torch.Generator().manual_seed(4))
    store = collect(
        toy_mixed,
        tokens,
        ["resid_post.2", "z.1"],
        out=tmp_path / "s",
        batch_size=3,
        shard_tokens=128,
        bos=False,
        progress=False,
    )
    for s in store.sites:
        x = store[s].double().reshape(store.n_tokens, -1)
        st = store.stats(s)
        norms = x.norm(dim=1)
        assert st["count"] == store.n_tokens
        torch.testing.assert_close(st["mean"].double().reshape(-1), x.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st["std"].double().reshape(-1), x.std(0, correction=0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(st["max"].double().reshape(-1), x.max(0).values)
        assert st["mean"].shape == store.shape(s)
        assert abs(st["mean_norm"] - norms.mean().item()) < 1e-6 * norms.mean().item()
        assert abs(st["rms_norm"] - norms.square().mean().sqrt().item()) < 1e-6 * st["rms_norm"]
        assert store.manifest.summary[s]["mean_norm"] == pytest.approx(st["mean_norm"])
    memory = collect(toy_mixed, tokens, ["resid_post.2"], batch_size=3, shard_tokens=128, bos=False, progress=False)
    torch.testing.assert_close(
        memory.stats("resid_post.2")["mean"], store.stats("resid_post.2")["mean"], rtol=0, atol=0
    )


def test_in_memory_store_saves(toy_mixed, tmp_path):
    tokens = torch.randint(3, 200, (3, 64))
    mem = collect(toy_mixed, tokens, ["resid_post.1", "z.2"], bos=False, progress=False)
    disk = mem.save(tmp_path / "saved")
    assert disk.path == tmp_path / "saved" and disk.sites == mem.sites
    for s in mem.sites:
        assert torch.equal(disk[s], mem[s])
    assert torch.equal(disk.tokens, mem.tokens)
    assert disk.stats("z.2")["mean_norm"] == mem.stats("z.2")["mean_norm"]


# ------------------------------------------------------------------------------------------------ batches
@pytest.fixture(scope="module")
def small_store(toy_mixed, tmp_path_factory):
    tokens = torch.randint(3, 200, (8, 64), generator=torch.Generator().manual_seed(7))
    return collect(
        toy_mixed,
        tokens,
        ["resid_post.1", "z.2"],
        out=tmp_path_factory.mktemp("b") / "s",
        bos=False,
        shard_tokens=128,
        progress=False,
    )


def test_shuffle_is_a_permutation_per_epoch(small_store):
    n = small_store.n_tokens
    idx = list(small_store.row_indices(100, seed=3, epochs=3))
    per_epoch = -(-n // 100)
    assert len(idx) == 3 * per_epoch
    epochs = [torch.cat(idx[e * per_epoch : (e + 1) * per_epoch]) for e in range(3)]
    for e in epochs:
        assert torch.equal(torch.sort(e).values, torch.arange(n))  # every row exactly once
    assert not torch.equal(epochs[0], epochs[1])  # a fresh order every epoch
    assert not torch.equal(epochs[0], torch.arange(n))
    again = torch.cat(list(small_store.row_indices(100, seed=3, epochs=3)))
    assert torch.equal(again, torch.cat(idx))  # reproducible
    assert not torch.equal(torch.cat(list(small_store.row_indices(100, seed=4))), epochs[0])
    ordered = torch.cat(list(small_store.row_indices(100, shuffle=False)))
    assert torch.equal(ordered, torch.arange(n))


def test_batches_match_rows(small_store):
    x = small_store["resid_post.1"]
    z = small_store["z.2"]
    got = list(small_store.batches(["resid_post.1", "z.2"], 96, seed=1, with_indices=True))
    for idx, b in got:
        assert set(b) == {"blocks.1.hook_resid_post", "blocks.2.attn.hook_z"}
        assert torch.equal(b["blocks.1.hook_resid_post"], x[idx]) and torch.equal(b["blocks.2.attn.hook_z"], z[idx])
    idx_only = list(small_store.row_indices(96, seed=1))
    assert all(torch.equal(a, b) for a, (b, _) in zip(idx_only, got))
    flat = next(small_store.batches("z.2", 32, flatten=True, shuffle=False))
    assert flat.shape == (32, 128) and torch.equal(flat, z[:32].reshape(32, -1))
    no_prefetch = [b for b in small_store.batches("resid_post.1", 96, seed=1, prefetch=0)]
    assert all(torch.equal(a, b["blocks.1.hook_resid_post"]) for a, (_, b) in zip(no_prefetch, got))


def test_batches_options(small_store):
    n = small_store.n_tokens
    sizes = [b.shape[0] for b in small_store.batches("resid_post.1", 100, drop_last=True)]
    assert sizes == [100] * (n // 100)
    stream = small_store.batches("resid_post.1", 100, epochs=None)
    assert sum(1 for _ in zip(range(3 * n // 100), stream)) == 3 * n // 100  # streams past one epoch
    full = list(small_store.row_indices(50, seed=2, epochs=2))
    assert all(
        torch.equal(a, b) for a, b in zip(list(small_store.row_indices(50, seed=2, epochs=2, start=5)), full[5:])
    )
    sub = torch.cat(list(small_store.row_indices(64, rows=slice(0, 200))))
    assert torch.equal(torch.sort(sub).values, torch.arange(200))
    b = next(small_store.batches("resid_post.1", 8, dtype="float64"))
    assert b.dtype == torch.float64


def test_staged_copy_path_of_the_gpu(toy_mixed, tmp_path, monkeypatch):
    """The GPU path's buffer pool (take -> copy -> writer thread -> give back), run on the CPU with one buffer
    per site so that every batch waits for the writer: same bytes as the direct path, last short batch included."""
    import importlib

    C = importlib.import_module("mechwork.cache.collect")  # the module (the package exports the function of that name)
    tokens = torch.randint(3, 200, (9, 64), generator=torch.Generator().manual_seed(8))
    kw = dict(batch_size=2, bos=False, shard_tokens=256, progress=False, n_tokens=9 * 64 - 10)
    direct = collect(toy_mixed, tokens, ["resid_post.1", "z.2"], out=tmp_path / "direct", **kw)
    monkeypatch.setattr(C, "STAGED_ON_CPU", True)
    monkeypatch.setattr(C, "POOL_DEPTH", 1)
    staged = collect(toy_mixed, tokens, ["resid_post.1", "z.2"], out=tmp_path / "staged", dtype="bfloat16", **kw)
    for s in direct.sites:
        assert torch.equal(staged[s], direct[s].to(torch.bfloat16))
    assert torch.equal(staged.tokens, direct.tokens) and staged.n_tokens == 9 * 64 - 10


def test_background_iterator_order_errors_and_close():
    from mechwork.cache.background import Background

    assert list(Background(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise mechwork.DataError("bad document 2")

    it = Background(failing())
    assert next(it) == 1
    with pytest.raises(mechwork.DataError, match="bad document 2"):
        next(it)
    endless = Background(iter(int, 1), depth=2)  # never ends
    assert next(endless) == 0
    endless.close()
    endless._thread.join(5)
    assert not endless._thread.is_alive()


def test_site_patterns(toy_mixed):
    store = collect(
        toy_mixed, torch.randint(3, 200, (2, 64)), ["resid_post.*", "blocks.1.attn.hook_?"], bos=False, progress=False
    )
    heads = [
        s.name for s in mechwork.sites(toy_mixed) if s.name.startswith("blocks.1.attn.hook_") and len(s.name) == 20
    ]
    assert sorted(heads) == [f"blocks.1.attn.hook_{x}" for x in "kqvz"]
    assert store.sites == [f"blocks.{i}.hook_resid_post" for i in range(4)] + heads  # the model's site order
    with pytest.raises(mechwork.SiteError, match="matches no site"):
        collect(toy_mixed, torch.randint(3, 200, (2, 64)), ["resid_mid.9*"], bos=False, progress=False)


def test_corpus_source_depends_on_its_seed_only(toy_mixed):
    corpus = Corpus(seed=9)
    a = collect(toy_mixed, corpus, ["resid_post.0"], n_tokens=300, progress=False)
    b = collect(toy_mixed, corpus, ["resid_post.0"], n_tokens=300, progress=False)  # same object, used again
    assert torch.equal(a.tokens, b.tokens) and "seed 9" in a.manifest.source


def test_corpus_documents_end_with_eos_as_in_training(toy_mixed):
    """A Corpus source packs ``<bos> doc <eos>`` like the zoo's training rows, not bare concatenated text."""
    from mechwork.data import Corpus
    from mechwork.data import vocab as V
    from mechwork.data.tokenizer import word_to_id

    store = collect(toy_mixed, Corpus(seed=5), ["resid_post.0"], n_tokens=640, batch_size=4, progress=False)
    toks = store.tokens.tolist()
    ids = word_to_id()
    bos = [i for i, t in enumerate(toks) if t == ids[V.BOS]]
    assert len(bos) > 3
    for i in bos[1:]:
        if i % store.context:  # a BOS inside a window follows the previous document's EOS
            assert toks[i - 1] == ids[V.EOS]


def test_zoo_models_warn_when_documents_are_packed(toy_mixed):
    """The zoo's models were trained one document per row: packing documents back to back is out of their
    distribution, which collect says; packing='pad' reproduces each document run alone (loss as in training)."""
    import warnings

    docs = [[1, 5, 6, 7, 8], [1, 9, 10, 11], [1, 12, 13, 14, 15, 16]]
    with pytest.warns(mechwork.MechworkWarning, match="trained one document per row"):
        collect(toy_mixed, docs, ["resid_post.0"], context=8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mechwork.MechworkWarning)
        store = collect(toy_mixed, docs, ["resid_post.0"], context=8, packing="pad", progress=False)
    real = store.docs >= 0
    alone = torch.cat([toy_mixed.run_with_cache(torch.tensor([d]))[1]["blocks.0.hook_resid_post"][0] for d in docs])
    torch.testing.assert_close(store["resid_post.0"][real], alone, atol=1e-5, rtol=1e-5)
