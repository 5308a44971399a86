"""mechwork.cache: every bad input and broken store fails with a clear MechworkError."""

from __future__ import annotations

import argparse
import copy
import errno
import json
import shutil

import pytest
import torch

import mechwork
from mechwork import CheckpointError, ConfigError, DataError, NonFiniteError, SiteError
from mechwork.cache import ActivationStore, collect
from mechwork.cache import format as F

TOKENS = torch.randint(3, 200, (12, 64), generator=torch.Generator().manual_seed(5))
SITES = ["resid_post.1", "z.2"]
KW = dict(batch_size=2, bos=False, progress=False, shard_tokens=256)  # rounded up to 512-row shards of 4 batches


@pytest.fixture(scope="module")
def good_store(toy_mixed, tmp_path_factory):
    return collect(toy_mixed, TOKENS, SITES, out=tmp_path_factory.mktemp("good") / "s", **KW)


@pytest.fixture
def store_copy(good_store, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(good_store.path, dst)
    return dst


def _tmp_files(root):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sites="resid_post.9"), SiteError, "resid_post"),
        (dict(sites="nonsense_site"), SiteError, "no site"),
        (dict(sites=[]), SiteError, "no sites"),
        (dict(sites="attn_scores.0"), ConfigError, "hook_pattern"),
        (dict(n_tokens=0), ConfigError, "n_tokens"),
        (dict(n_tokens=1.5), ConfigError, "n_tokens"),
        (dict(n_tokens=True), ConfigError, "n_tokens"),
        (dict(batch_size=0), ConfigError, "batch_size"),
        (dict(context=65), ConfigError, "n_ctx"),
        (dict(context=1), ConfigError, "context"),
        (dict(dtype="int8"), ConfigError, "dtype"),
        (dict(dtype=torch.int64), ConfigError, "floating"),
        (dict(bos="yes"), ConfigError, "bos"),
        (dict(autocast="int8"), ConfigError, "dtype"),
        (dict(source=[]), DataError, "empty"),
        (dict(source="no/such/file.txt"), DataError, "not an existing file"),
        (dict(source=torch.rand(2, 8)), DataError, "integers"),
        (dict(source=torch.zeros(2, 2, 2, dtype=torch.long)), DataError, r"found \(2, 2, 2\)"),
        (dict(source=torch.full((1, 8), 999)), DataError, "vocabulary"),
        (dict(source={"text": "a"}), DataError, "dict"),
        (dict(source=None), DataError, "None"),
        (dict(source=3.5), DataError, "float"),
        (dict(source=iter([])), DataError, "no tokens"),
        (dict(source=[[1, 2], "text"]), DataError, "mix"),
    ],
)
def test_bad_arguments(toy_mixed, kwargs, error, match):
    args = dict(source=TOKENS, sites=SITES)
    args.update(kwargs)
    with pytest.raises(error, match=match) as info:
        collect(toy_mixed, args.pop("source"), args.pop("sites"), progress=False, **args)
    assert isinstance(info.value, mechwork.MechworkError)


def test_bad_files(toy_mixed, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2"):
        collect(toy_mixed, bad, SITES, progress=False)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="'text'"):
        collect(toy_mixed, nofield, SITES, progress=False)


def test_disk_store_device_and_flags(toy_mixed, tmp_path):
    with pytest.raises(ConfigError, match="store.batches"):
        collect(toy_mixed, TOKENS, SITES, out=tmp_path / "a", device="meta", progress=False)
    with pytest.raises(ConfigError, match="not both"):
        collect(toy_mixed, TOKENS, SITES, out=tmp_path / "b", resume=True, overwrite=True, progress=False)


def test_existing_folders(toy_mixed, store_copy, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no activation store"):
        collect(toy_mixed, TOKENS, SITES, out=other, **KW)
    assert (other / "notes.txt").read_text() == "mine"  # never touched
    with pytest.raises(ConfigError, match="resume=True"):
        collect(toy_mixed, TOKENS, SITES, out=store_copy, **KW)
    replaced = collect(toy_mixed, TOKENS[:4], SITES, out=store_copy, overwrite=True, **KW)
    assert replaced.n_tokens == 4 * 64
    done = collect(toy_mixed, TOKENS[:4], SITES, out=store_copy, resume=True, **KW)  # complete: returned as is
    assert done.n_tokens == 4 * 64


def test_resume_refuses_other_settings(toy_mixed, store_copy):
    with pytest.raises(ConfigError, match=r"sites: stored"):
        collect(toy_mixed, TOKENS, ["resid_post.1"], out=store_copy, resume=True, **KW)
    with pytest.raises(ConfigError, match=r"dtype: stored 'float32', now 'float16'"):
        collect(toy_mixed, TOKENS, SITES, out=store_copy, resume=True, dtype="float16", **KW)
    other = copy.deepcopy(toy_mixed)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(ConfigError, match="fingerprint"):
        collect(other, TOKENS, SITES, out=store_copy, resume=True, **KW)


def test_resume_refuses_another_source(toy_mixed, good_store, tmp_path):
    # an unfinished store whose committed tokens a different source does not reproduce
    out = tmp_path / "s"
    shutil.copytree(good_store.path, out)
    m = F.Manifest.from_json(out / F.MANIFEST)
    m.replace(complete=False, shards=m.shards[:1], n_tokens=m.shards[0]).to_json(out / F.MANIFEST)
    changed = TOKENS.clone()
    changed[3, 10] = 7 if int(changed[3, 10]) != 7 else 8
    with pytest.raises(DataError, match=f"first at token row {3 * 64 + 10}"):
        collect(toy_mixed, changed, SITES, out=out, resume=True, **KW)


# ------------------------------------------------------------------------------------------------ broken stores
def _shard(root, site_dir="blocks.1.hook_resid_post", i=0):
    return root / site_dir / F.shard_name(i)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda r: _shard(r).unlink(), r"shard-00000.safetensors is missing"),
        (
            lambda r: _shard(r, i=1).write_bytes(_shard(r, i=1).read_bytes()[:-100]),
            r"shard-00001.safetensors has \d+ bytes but its header describes",
        ),
        (lambda r: _shard(r).write_bytes(b"\x00" * 5000), r"shard-00000.safetensors"),
        (
            lambda r: _shard(r).write_bytes(b"PK\x03\x04 not a safetensors file at all" * 200),
            r"shard-00000.safetensors",
        ),
        (
            lambda r: shutil.copy(_shard(r, "blocks.2.attn.hook_z"), _shard(r)),
            r"shard-00000.safetensors is not a mechwork activation shard .*found \['blocks.2.attn.hook_z'\]",
        ),
        (lambda r: (r / "tokens" / F.shard_name(0)).unlink(), r"tokens/shard-00000.safetensors is missing"),
        (lambda r: (r / F.MANIFEST).unlink(), r"manifest.json is missing"),
        (lambda r: (r / F.MANIFEST).write_text("{truncated"), r"manifest.json is not valid JSON"),
        (
            lambda r: (r / F.MANIFEST).write_text(json.dumps({"format": "mechwork-model"})),
            r"not a mechwork activation-store manifest",
        ),
        (lambda r: _edit_manifest(r, n_tokens=100), r"shards hold 768 rows but n_tokens is 100"),
        (lambda r: _edit_manifest(r, format_version=99), r"format version 99"),
        (lambda r: _edit_manifest(r, bogus=1), r"unknown field"),
        (lambda r: (r / F.STATS).unlink(), r"stats.safetensors"),
        (lambda r: _edit_manifest(r, complete=False), r"did not finish .* resume=True"),
    ],
)
def test_broken_store_names_the_file(store_copy, damage, match):
    damage(store_copy)
    with pytest.raises(CheckpointError, match=match):
        ActivationStore.open(store_copy)


def _edit_manifest(root, **changes):
    d = json.loads((root / F.MANIFEST).read_text())
    d.update(changes)
    (root / F.MANIFEST).write_text(json.dumps(d))


def test_open_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")


def test_store_lookups(good_store):
    assert good_store.site_name("resid_post.1") == good_store.site_name("1.resid_post") == "blocks.1.hook_resid_post"
    assert good_store.site_name(("z", 2)) == "blocks.2.attn.hook_z"
    assert "z.2" in good_store and "z.3" not in good_store
    with pytest.raises(SiteError, match="Closest: .*resid_post.1"):
        good_store["resid_post.3"]
    with pytest.raises(ConfigError, match="batch_size"):
        next(good_store.batches("z.2", 0))
    with pytest.raises(ConfigError, match="epochs"):
        next(good_store.batches("z.2", 8, epochs=0))
    with pytest.raises(ConfigError, match="row indices"):
        next(good_store.batches("z.2", 8, rows=torch.tensor([0, 10**6])))
    with pytest.raises(ConfigError, match="no batch"):
        next(good_store.batches("z.2", 10**6, drop_last=True))


# ------------------------------------------------------------------------------------------------ NaN, overflow, disk full
def _poison(model, site, value, *, at_call=1, pos=(1, 5)):
    calls = {"n": 0}

    def hook(t, hook):
        calls["n"] += 1
        if calls["n"] == at_call + 1:
            t = t.clone()
            t[pos[0], pos[1]] = value if value != "scale" else t[pos[0], pos[1]] * 1e7
            return t
        return None

    model.add_hook(site, hook)


def test_nan_is_reported_with_site_and_row(toy_mixed, tmp_path):
    out = tmp_path / "s"
    _poison(toy_mixed, "blocks.1.hook_resid_post", float("nan"), at_call=5)  # batch 5 is in shard 1
    try:
        with pytest.raises(
            NonFiniteError, match=r"site blocks\.1\.hook_resid_post: NaN or inf activation at token row 709 "
        ):
            collect(toy_mixed, TOKENS, SITES, out=out, **KW)
    finally:
        toy_mixed.reset_hooks(including_permanent=True)
    partial = ActivationStore.open(out, partial=True)
    assert partial.n_tokens == 512 and not _tmp_files(out)  # shard 0 committed, the poisoned shard not


def test_float16_overflow_is_reported(toy_mixed):
    _poison(toy_mixed, "blocks.0.hook_resid_post", "scale", at_call=0, pos=(0, 3))
    try:
        with pytest.raises(NonFiniteError, match=r"blocks\.1\.hook_resid_post.*token row 3 .*float16"):
            collect(toy_mixed, TOKENS, ["resid_post.1"], dtype="float16", batch_size=2, bos=False, progress=False)
    finally:
        toy_mixed.reset_hooks(including_permanent=True)


def test_disk_full_keeps_committed_shards_and_resumes(toy_mixed, good_store, tmp_path, monkeypatch):
    out = tmp_path / "s"
    real = F.write_all
    writes = {"n": 0}

    def failing(f, data):
        writes["n"] += 1
        if writes["n"] > 15:  # 3 streams x 4 batches in shard 0; shard 1 (2 batches) fails half way
            raise OSError(errno.ENOSPC, "No space left on device", f.name)
        return real(f, data)

    monkeypatch.setattr(F, "write_all", failing)
    with pytest.raises(
        CheckpointError, match=r"the disk is full writing .*keeps its 512 committed tokens.*resume=True"
    ):
        collect(toy_mixed, TOKENS, SITES, out=out, **KW)
    assert not _tmp_files(out)
    assert ActivationStore.open(out, partial=True).n_tokens == 512
    monkeypatch.setattr(F, "write_all", real)
    store = collect(toy_mixed, TOKENS, SITES, out=out, resume=True, **KW)
    for s in SITES:
        assert torch.equal(store[s], good_store[s])
    assert torch.equal(store.stats("z.2")["mean"], good_store.stats("z.2")["mean"])


# ------------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    from mechwork.cli import cache as cli_cache

    parser = argparse.ArgumentParser(prog="mechwork")
    cli_cache.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_collect_and_info(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        _cli(
            [
                "cache",
                "collect",
                "toy-mixed",
                "--sites",
                "resid_post.1",
                "z.2",
                "--tokens",
                "2e3",
                "--out",
                str(out),
                "--source",
                "task:ioi",
                "--dtype",
                "bfloat16",
                "--quiet",
                "--threads",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    store = ActivationStore.open(out)
    assert store.n_tokens == 2000 and store.dtype == torch.bfloat16 and "ioi" in store.manifest.source
    assert _cli(["cache", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "blocks.2.attn.hook_z" in text and "2,000" in text
    assert _cli(["cache", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tokens"] == 2000 and info["complete"] and info["summary"]["blocks.2.attn.hook_z"]["count"] == 2000
    with pytest.raises(ConfigError, match="--tokens"):
        _cli(["cache", "collect", "toy-mixed", "--sites", "z.2", "--tokens", "0.5", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="--source"):
        _cli(["cache", "collect", "toy-mixed", "--sites", "z.2", "--out", str(tmp_path / "x"), "--source", "nope.txt"])


def test_resume_when_only_the_finishing_step_was_lost(toy_mixed, good_store, store_copy):
    """Killed after the last shard was committed but before the statistics and the final manifest."""
    _edit_manifest(store_copy, complete=False, summary={})
    (store_copy / F.STATS).unlink()
    store = collect(toy_mixed, TOKENS, SITES, out=store_copy, resume=True, **KW)
    assert store.manifest.complete
    for name in (F.MANIFEST, F.STATS):
        assert (store_copy / name).read_bytes() == (good_store.path / name).read_bytes()
