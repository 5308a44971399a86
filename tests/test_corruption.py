"""Every loader refuses damage cleanly (issue 17): a seeded corruption campaign over every artefact kind x every
corruption family, run in memory- and time-limited worker processes (tests/corruption.py), plus the specific
failures the campaign of the issue found, reproduced one by one."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from mechwork.core.errors import CheckpointError, MechworkError

sys.path.insert(0, str(Path(__file__).parent))
import corruption  # noqa: E402

TRIALS = int(os.environ.get("MECHWORK_CORRUPTION_TRIALS", 2 * len(corruption.KINDS) * len(corruption.FAMILIES)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, toy_mixed):
    return corruption.build(tmp_path_factory.mktemp("pristine"), model=toy_mixed)


def test_campaign_every_kind_every_family(pristine):
    rows = corruption.run(pristine, corruption.plan(TRIALS, seed=17), procs=2, per_trial=20.0, batch_timeout=240.0)
    assert len(rows) == TRIALS
    seen = {(r["kind"], r["family"]) for r in rows}
    assert seen == {(k, f) for k in corruption.KINDS for f in corruption.FAMILIES}
    bad = [r for r in rows if r["outcome"] not in ("clean", "same")]
    assert not bad, "\n".join(
        f"{r['kind']} {r['family']} {r['file']} {r['corruption']}: {r['outcome']} {r['detail']}" for r in bad
    )
    # a flipped bit in tensor data, or a NaN written and its digest re-recorded, is always detected
    undetected = [r for r in rows if r["family"] in ("dataflip", "nan_resealed") and r["outcome"] != "clean"]
    assert not undetected, undetected
    # the damage was real: most trials must have been refused, not shrugged off
    assert sum(r["outcome"] == "clean" for r in rows) > 0.8 * len(rows)


# ------------------------------------------------------------------------------------------------ one by one
@pytest.fixture()
def copy(pristine, tmp_path):
    def make(kind: str) -> Path:
        src = Path(pristine[kind])
        dst = tmp_path / src.name
        (shutil.copy if src.is_file() else shutil.copytree)(src, dst)
        return dst

    return make


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is KeyError:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def test_fifo_shard_is_refused_not_waited_on(copy):
    from mechwork.cache import ActivationStore

    root = copy("store")
    shard = root / "blocks.0.hook_resid_post" / "shard-00000.safetensors"
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(CheckpointError, match=r"shard-00000.safetensors is a FIFO"):
        ActivationStore.open(root)


@pytest.mark.parametrize("value", [1e20, 10**9, "abc", -3])
def test_model_config_sizes_bounded_before_any_loop(copy, value):
    import mechwork

    root = copy("model")
    _edit_json(root / "config.json", n_layers=value)
    with pytest.raises(MechworkError, match=r"config.json.*|n_layers"):
        mechwork.load_model(root, backend="hooked")


def test_model_config_without_format_is_not_sent_to_hf_loader(copy):
    import mechwork

    root = copy("model")
    _edit_json(root / "config.json", format=KeyError)
    with pytest.raises(CheckpointError, match=r"config.json is not a mechwork model config \(format '<missing>'"):
        mechwork.load_model(root)


def test_sae_rescale_flag_must_be_a_bool(copy):
    from mechwork.sae import load

    root = copy("sae")
    _edit_json(root / "cfg.json", rescale_acts_by_decoder_norm="no")
    with pytest.raises(CheckpointError, match=r"rescale_acts_by_decoder_norm in .*cfg.json: expected true or false"):
        load(root)


def test_float_tensor_relabelled_int32_is_refused(copy):
    from mechwork.erasure import Eraser

    root = copy("eraser")
    f = root / "eraser.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8 : 8 + n])
    name = next(k for k, v in hdr.items() if k != "__metadata__" and v["dtype"] == "F64")
    hdr[name]["dtype"] = "I64"
    text = json.dumps(hdr).encode()
    f.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    (root / "eraser.safetensors.sha256").unlink()  # an artefact without a digest: the dtype check alone
    with pytest.raises(CheckpointError, match=rf"eraser.safetensors: tensor '{name}' has dtype torch.int64"):
        Eraser.load(root)


def test_store_verify_detects_a_flipped_bit_and_names_the_shard(copy):
    from mechwork.cache import ActivationStore

    root = copy("store")
    shard = root / "blocks.1.hook_resid_post" / "shard-00000.safetensors"
    b = bytearray(shard.read_bytes())
    b[4096 + 100] ^= 0x04
    shard.write_bytes(bytes(b))
    ActivationStore.open(root)  # headers and sizes are intact: the cheap check passes
    with pytest.raises(CheckpointError, match=r"blocks.1.hook_resid_post/shard-00000.safetensors does not match"):
        ActivationStore.open(root, verify=True)


def test_shipped_artefacts_load_and_match_their_recorded_digests():
    import mechwork
    from mechwork.core.files import recorded_digest, sha256_file
    from mechwork.models.zoo import ENTRIES
    from mechwork.sae import load
    from mechwork.sae.shipped import ROOT

    files = [e.path / "model.safetensors" for e in ENTRIES.values()]
    files += sorted(ROOT.glob("toy-mixed/*/sae_weights.safetensors"))
    assert len(files) >= 4
    for f in files:  # the digests were added beside the unchanged files: same bytes, same tensors
        assert recorded_digest(f) == sha256_file(f), f
    assert mechwork.load_model("toy-mixed", backend="hooked") is not None
    for f in files[len(ENTRIES) :]:
        assert torch.isfinite(load(f.parent).W_dec).all()


def test_artefact_without_digest_still_loads(copy):
    """Folders written before digests were recorded load as before (nothing to compare with)."""
    from mechwork.sae import load

    root = copy("sae")
    ref = load(root).W_dec.clone()
    (root / "sae_weights.safetensors.sha256").unlink()
    assert torch.equal(load(root).W_dec, ref)


def test_digest_recorded_and_sha256sum_compatible(tmp_path):
    from mechwork.core.files import sha256_file
    from mechwork.core.io import load_tensors, save_tensors

    f = tmp_path / "t.safetensors"
    save_tensors(f, {"a": torch.arange(6.0)})
    line = (tmp_path / "t.safetensors.sha256").read_text()
    assert line == f"{sha256_file(f)}  t.safetensors\n"
    assert torch.equal(load_tensors(f)["a"], torch.arange(6.0))


def test_nan_in_a_shard_is_caught_when_batches_read_it(copy):
    """A NaN written into a store after it was opened (no verify) surfaces as a NonFiniteError naming the shard."""
    from mechwork.cache import ActivationStore
    from mechwork.core.errors import NonFiniteError

    root = copy("store")
    store = ActivationStore.open(root)
    shard = root / "blocks.1.hook_resid_post" / "shard-00000.safetensors"
    b = bytearray(shard.read_bytes())
    b[4096 + 4 * 20 : 4096 + 4 * 21] = struct.pack("<f", float("nan"))
    shard.write_bytes(bytes(b))
    with pytest.raises(NonFiniteError, match=r"NaN or inf at store row 0 .*blocks.1.hook_resid_post/shard-00000"):
        for _ in ActivationStore.open(root).batches("resid_post.1", 16, shuffle=False):
            pass
    assert store.n_tokens > 0
