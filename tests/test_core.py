"""Core helpers: config round trips, atomic writes, safe tensor loading, device/dtype parsing, sites."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import mechwork
from mechwork.core import (
    CheckpointError,
    Config,
    ConfigError,
    atomic_dir,
    atomic_write_json,
    load_tensors,
    parse_device,
    parse_dtype,
    save_tensors,
)
from mechwork.core.sites import resolve, stop_at_layer


@dataclasses.dataclass(frozen=True)
class Inner(Config):
    a: int = 1


@dataclasses.dataclass(frozen=True)
class Outer(Config):
    name: str
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = Inner()
    lr: float = 1e-3


def test_config_round_trip(tmp_path):
    cfg = Outer("x", sizes=(3, 4), inner=Inner(5), lr=2)
    cfg.to_json(tmp_path / "cfg.json", mechwork_version="0")
    back = Outer.from_json(tmp_path / "cfg.json", ignore=("mechwork_version",))
    assert back == cfg and isinstance(back.sizes, tuple) and isinstance(back.inner, Inner)
    assert cfg.diff(cfg.replace(lr=3.0)) == {"lr": (2, 3.0)}


def test_config_unknown_field_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'sizes'"):
        Outer.from_dict({"name": "x", "size": [1]})
    with pytest.raises(ConfigError, match="required field 'name'"):
        Outer.from_dict({})


def test_atomic_json_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind


def test_atomic_dir_all_or_nothing(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target) as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "x").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "x").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["art"]


def test_tensors_truncated_and_foreign_files(tmp_path):
    p = tmp_path / "w.safetensors"
    save_tensors(p, {"a": torch.arange(100.0)})
    assert torch.equal(load_tensors(p)["a"], torch.arange(100.0))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(p)
    q = tmp_path / "pickle.safetensors"
    q.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle header is not accepted
    with pytest.raises(CheckpointError, match=str(q.name)):
        load_tensors(q)
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "missing.safetensors")


def test_dtype_and_device_strings():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float32") is torch.float32
    with pytest.raises(ConfigError, match="float32"):
        parse_dtype("float33")
    with pytest.raises(ConfigError, match="floating"):
        parse_dtype(torch.int64)
    assert parse_device("cpu").type == "cpu"
    with pytest.raises(ConfigError):
        parse_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            parse_device("cuda:0")


def test_sites_same_on_both_backends(toy_mixed, toy_mixed_bridge):
    a = {(s.name, s.shape, s.layer, s.kind) for s in mechwork.sites(toy_mixed)}
    b = {(s.name, s.shape, s.layer, s.kind) for s in mechwork.sites(toy_mixed_bridge)}
    assert a == b
    cfg = toy_mixed.cfg
    z = mechwork.site(toy_mixed, "z.2")
    assert z.name == "blocks.2.attn.hook_z" and z.shape == (cfg.n_heads, cfg.d_head) and z.layer == 2
    assert mechwork.site(toy_mixed, ("resid_post", 3)).name == "blocks.3.hook_resid_post"
    assert mechwork.site(toy_mixed, "post.1").name == "blocks.1.mlp.hook_post"
    assert mechwork.site(toy_mixed, "blocks.0.hook_resid_pre").shape == (cfg.d_model,)
    assert mechwork.site(toy_mixed, "pattern.0").layout == "batch head q_pos k_pos"
    # bridge-only canonical names resolve on the bridge
    assert mechwork.site(toy_mixed_bridge, "blocks.0.attn.q.hook_out").kind == "other"


def test_unknown_site_suggests_close_names(toy_mixed_any):
    with pytest.raises(mechwork.SiteError) as e:
        mechwork.site(toy_mixed_any, "blocks.1.hook_resid_psot")
    assert "blocks.1.hook_resid_post" in str(e.value)
    with pytest.raises(mechwork.SiteError, match="resid_post.3"):
        mechwork.site(toy_mixed_any, "resid_post.9")


def test_stop_at_layer_and_capture_match_run_with_cache(toy_mixed_any):
    model = toy_mixed_any
    toks = mechwork.tasks.get("ioi").prompts(4, seed=3).clean
    names = ["resid_pre.1", "z.1", "mlp_post.0", "pattern.1"]
    sl = resolve(model, names)
    assert stop_at_layer(model, sl) == 2
    got = mechwork.core.capture(model, toks, names)
    _, cache = model.run_with_cache(toks)
    for s in sl:
        assert torch.allclose(got[s.name], cache[s.name], atol=1e-6), s.name


def test_gated_site_is_enabled_on_use(toy_mixed):
    s = mechwork.site(toy_mixed, "result.0")
    assert s.gate == "use_attn_result"
    toks = mechwork.tasks.get("ioi").prompts(2, seed=0).clean
    out = mechwork.core.capture(toy_mixed, toks, [s])
    assert out[s.name].shape == (2, toks.shape[1], toy_mixed.cfg.n_heads, toy_mixed.cfg.d_model)
    # the per-head results sum to the attention output (minus the output bias)
    attn_out = mechwork.core.capture(toy_mixed, toks, ["attn_out.0"])["blocks.0.hook_attn_out"]
    assert torch.allclose(out[s.name].sum(2) + toy_mixed.blocks[0].attn.b_O, attn_out, atol=1e-5)
    toy_mixed.set_use_attn_result(False)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "f.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
