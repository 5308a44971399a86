"""A corruption campaign over mechwork's artefact kinds (used by tests/test_corruption.py and
benchmarks/corruption_campaign.py).

Each trial takes a fresh copy of a pristine artefact, applies one seeded corruption to one of its files and
calls the loader plus one use in a worker process (batches of trials per process, under a memory limit and a
time limit per batch; a trial that outlives its limit is a hang). Outcomes:

``clean``   a ``MechworkError`` whose message names the damaged file (or, for a removed file, its name)
``same``    loaded, and the use gives exactly the pristine output (the damage did not matter: padding bytes,
            an unused metadata field)
``other``   any other exception
``hang``    the trial did not finish in time (or the worker died: memory limit, crash)
``silent``  loaded, and the output changed or is not finite
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FAMILIES = (
    "truncate",
    "bitflip",
    "dataflip",
    "foreign",
    "delete",
    "fifo",
    "directory",
    "devzero",
    "json_schema",
    "header_edit",
    "nan_resealed",
)
KINDS = ("sae", "store", "model", "eraser", "patch_result", "steerer", "tuned_lens")
OUTCOMES = ("clean", "same", "other", "hang", "silent")


# ------------------------------------------------------------------------------------------------ pristine
def build(root: Path, model: Any = None) -> dict[str, str]:
    """Write one small pristine artefact of every kind under ``root``; ``{kind: folder or file}`` (``model``:
    the loaded toy-mixed model the store is collected from, loaded here when not given)."""
    import torch

    import mechwork
    from mechwork.models.checkpoint import expected_shapes, save_checkpoint
    from mechwork.models.config import ModelConfig

    torch.manual_seed(0)
    out: dict[str, str] = {}
    cfg = ModelConfig(name="tiny", n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=16, d_vocab=512, d_mlp=32)
    state = {k: torch.randn(s) * 0.1 for k, s in expected_shapes(cfg).items()}
    save_checkpoint(root / "model", cfg, state, card={"note": "corruption campaign"})
    out["model"] = str(root / "model")

    from mechwork.sae.base import SAE
    from mechwork.sae.config import SAEConfig

    sae = SAE(SAEConfig(architecture="topk", d_in=16, d_sae=32, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    sae.save(root / "sae")
    out["sae"] = str(root / "sae")

    model = model if model is not None else mechwork.load_model("toy-mixed", device="cpu")
    toks = torch.randint(4, 200, (4, 32))
    mechwork.cache.collect(
        model, toks, ["resid_post.0", "resid_post.1"], out=root / "store", progress=False, shard_tokens=64
    )
    out["store"] = str(root / "store")

    from mechwork.erasure import LEACE

    X = torch.randn(200, 16, dtype=torch.float64)
    z = (X[:, 0] > 0).long()
    LEACE.fit(X, z).save(root / "eraser")
    out["eraser"] = str(root / "eraser")

    from mechwork.patching.result import PatchResult

    res = PatchResult(
        scores=torch.randn(3, 4),
        axes=("layer", "pos"),
        labels={"layer": [0, 1, 2], "pos": ["0 a", "1 b", "2 c", "3 d"]},
        method="activation",
        per="position",
        direction="denoise",
        sites=["resid_pre"],
        aliases=["resid_pre"],
        clean=1.5,
        corrupted=-0.5,
    )
    res.save(root / "patch.json")
    out["patch_result"] = str(root / "patch.json")

    from mechwork.steering.steerer import Steerer, SteererConfig

    scfg = SteererConfig(method="diffmeans", sites=("blocks.0.hook_resid_post",), shapes=((16,),), d_model=16)
    Steerer({"blocks.0.hook_resid_post": torch.ones(16)}, {"blocks.0.hook_resid_post": torch.randn(16)}, scfg).save(
        root / "steerer"
    )
    out["steerer"] = str(root / "steerer")

    from mechwork.projection.tuned import TunedLens

    lens = TunedLens(16, 2, meta={"model_digest": "abc", "d_model": 16, "n_layers": 2, "d_vocab": 512})
    with torch.no_grad():
        lens.weight.copy_(torch.randn_like(lens.weight) * 0.1)
    lens.save(root / "lens")
    out["tuned_lens"] = str(root / "lens")
    return out


def use(kind: str, path: str) -> Any:
    """Load the artefact and use it once; returns a float64 tensor (compared with the pristine output)."""
    import torch

    g = torch.Generator().manual_seed(1)
    if kind == "model":
        import mechwork

        m = mechwork.load_model(path, device="cpu", backend="hooked")
        return m(torch.randint(0, 100, (1, 8), generator=g)).double().flatten()
    if kind == "sae":
        from mechwork.sae import load

        sae = load(path)
        x = torch.randn(8, 16, generator=g)
        return torch.cat([sae.encode(x).flatten(), sae(x).flatten()]).double().detach()
    if kind == "store":
        from mechwork.cache import ActivationStore

        try:
            st = ActivationStore.open(path, verify=True)
        except TypeError:  # mechwork before integrity checks (the "before" column of the campaign)
            st = ActivationStore.open(path)
        parts = [st[s].double().flatten() for s in st.sites] + [st.tokens.double(), st.docs.double()]
        parts += [st.stats(s)["mean"].double().flatten() for s in st.sites]
        return torch.cat(parts)
    if kind == "eraser":
        from mechwork.erasure import Eraser

        e = Eraser.load(path)
        return e(torch.randn(8, 16, generator=g, dtype=torch.float64)).double().flatten()
    if kind == "patch_result":
        from mechwork.patching.result import PatchResult

        r = PatchResult.load(path)
        extra = torch.tensor([r.clean, r.corrupted, float(len(r.labels["pos"]))], dtype=torch.float64)
        return torch.cat([r.scores.double().flatten(), extra])
    if kind == "steerer":
        from mechwork.steering.steerer import Steerer

        s = Steerer.load(path)
        return torch.cat([v.double().flatten() for v in [*s.scales.values(), *s.biases.values()]])
    if kind == "tuned_lens":
        from mechwork.projection.tuned import TunedLens

        lens = TunedLens.load(path)
        return torch.cat([lens.weight.detach().double().flatten(), lens.bias.detach().double().flatten()])
    raise KeyError(kind)


# ------------------------------------------------------------------------------------------------ corruptions
def files_of(artefact: Path) -> list[Path]:
    if artefact.is_file():
        return [artefact]
    return sorted(p for p in artefact.rglob("*") if p.is_file())


def _st_layout(data: bytes) -> tuple[int, dict] | None:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return n, json.loads(data[8 : 8 + n])
    except Exception:  # noqa: BLE001
        return None


def corrupt(target: Path, family: str, rng: random.Random, donor: Path) -> str:
    """Apply ``family`` to ``target`` (a file); returns a short description."""
    data = target.read_bytes()
    if family == "truncate":
        cut = rng.randrange(0, max(1, len(data)))
        target.write_bytes(data[:cut])
        return f"truncated to {cut} of {len(data)}"
    if family in ("bitflip", "dataflip"):
        lo = 0
        layout = _st_layout(data) if target.suffix == ".safetensors" else None
        if family == "dataflip":
            if layout is None or 8 + layout[0] >= len(data):
                family = "bitflip"
            else:
                lo = 8 + layout[0]
        b = bytearray(data)
        flips = []
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(lo, len(b)) if len(b) > lo else 0
            if b:
                b[i] ^= 1 << rng.randrange(8)
            flips.append(i)
        target.write_bytes(bytes(b))
        return f"{family} at {flips}"
    if family == "foreign":
        choice = rng.choice(["random", "donor", "zip", "empty", "json"])
        blob = {
            "random": rng.randbytes(rng.randint(1, 5000)),
            "donor": donor.read_bytes(),
            "zip": b"PK\x03\x04" + rng.randbytes(300),
            "empty": b"",
            "json": json.dumps({"hello": "world"}).encode(),
        }[choice]
        target.write_bytes(blob)
        return f"foreign {choice}"
    if family == "delete":
        target.unlink()
        return "deleted"
    if family == "fifo":
        target.unlink()
        os.mkfifo(target)
        return "fifo"
    if family == "directory":
        target.unlink()
        target.mkdir()
        return "directory"
    if family == "devzero":
        target.unlink()
        target.symlink_to("/dev/zero")
        return "symlink to /dev/zero"
    if family == "json_schema":
        return _json_schema(target, data, rng)
    if family == "header_edit":
        return _header_edit(target, data, rng)
    if family == "nan_resealed":
        return _nan_resealed(target, data, rng)
    raise KeyError(family)


_BAD_VALUES: list[Any] = ["abc", 12345, -1, 0, 1e20, [], {}, None, True, "no", 2**70, 0.5, [1, "x"], {"a": 1}]


def _json_schema(target: Path, data: bytes, rng: random.Random) -> str:
    try:
        obj = json.loads(data)
    except Exception:  # noqa: BLE001
        obj = None
    if not isinstance(obj, dict) or rng.random() < 0.1:
        new: Any = rng.choice([[], {}, "text", 3, None])
        target.write_text(json.dumps(new))
        return f"whole file -> {new!r}"
    path: list[Any] = []
    node: Any = obj
    while isinstance(node, dict) and node and (not path or rng.random() < 0.5):
        key = rng.choice(sorted(node))
        if not isinstance(node[key], (dict,)) or rng.random() < 0.5:
            path.append(key)
            break
        path.append(key)
        node = node[key]
    if not path:
        target.write_text(json.dumps([]))
        return "whole file -> []"
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.25:
        del parent[path[-1]]
        desc = f"removed {'.'.join(map(str, path))}"
    else:
        v = rng.choice(_BAD_VALUES)
        parent[path[-1]] = v
        desc = f"{'.'.join(map(str, path))} -> {v!r}"
    target.write_text(json.dumps(obj))
    return desc


def _header_edit(target: Path, data: bytes, rng: random.Random) -> str:
    layout = _st_layout(data)
    if layout is None:
        return _json_schema(target, data, rng) if target.suffix == ".json" else corrupt(target, "bitflip", rng, target)
    n, hdr = layout
    body = data[8 + n :]
    names = [k for k in hdr if k != "__metadata__"]
    if not names:
        return corrupt(target, "bitflip", rng, target)
    name = rng.choice(names)
    info = hdr[name]
    op = rng.choice(["relabel", "shape", "offsets_oob", "offsets_overlap", "rename", "dtype_unknown", "metadata"])
    if op == "relabel":
        swap = {"F32": "I32", "F64": "I64", "F16": "I16", "BF16": "F16", "I64": "F64", "I32": "F32"}
        info["dtype"] = swap.get(info["dtype"], "U8")
    elif op == "shape":
        info["shape"] = list(reversed(info["shape"])) if len(info["shape"]) > 1 else [info["shape"][0] + 1]
        if info["shape"] == hdr[name]["shape"]:
            info["shape"] = [*info["shape"], 1]
    elif op == "offsets_oob":
        info["data_offsets"] = [info["data_offsets"][0], info["data_offsets"][1] + rng.choice([8, 4096, 10**12])]
    elif op == "offsets_overlap":
        b, e = info["data_offsets"]
        info["data_offsets"] = [max(0, b - 4), e - 4] if b >= 4 else [b + 4, e + 4]
    elif op == "rename":
        hdr[name + "_x"] = hdr.pop(name)
    elif op == "dtype_unknown":
        info["dtype"] = "Q7"
    else:
        hdr["__metadata__"] = {"format": 5} if rng.random() < 0.5 else {"format": "something-else"}
    text = json.dumps(hdr).encode()
    keep_len = rng.random() < 0.5 and len(text) <= n
    if keep_len:
        text = text + b" " * (n - len(text))
    target.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return f"header {op} on {name}"


def _nan_resealed(target: Path, data: bytes, rng: random.Random) -> str:
    """Write NaN/inf into a float tensor and re-record its digest (the finiteness check must catch it)."""
    import hashlib

    def sha256_file(p: Path, offset: int = 0) -> str:
        return hashlib.sha256(p.read_bytes()[offset:]).hexdigest()

    def digest_path(p: Path) -> Path:
        return p.with_name(p.name + ".sha256")

    layout = _st_layout(data)
    if layout is None or target.suffix != ".safetensors":
        if target.suffix == ".json":
            text = data.decode("utf-8", errors="replace")
            import re

            nums = list(re.finditer(r"-?\d+\.\d+(e-?\d+)?", text))
            if nums:
                m = rng.choice(nums)
                target.write_text(
                    text[: m.start()] + rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]) + text[m.end() :]
                )
                return "JSON number -> non-finite"
        return corrupt(target, "bitflip", rng, target)
    n, hdr = layout
    floats = [(k, v) for k, v in hdr.items() if k != "__metadata__" and v["dtype"] in ("F32", "F64", "F16", "BF16")]
    if not floats:
        return corrupt(target, "dataflip", rng, target)
    name, info = rng.choice(floats)
    size = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2}[info["dtype"]]
    b, e = info["data_offsets"]
    if e <= b:
        return corrupt(target, "dataflip", rng, target)
    at = 8 + n + b + size * rng.randrange((e - b) // size)
    pattern = {4: struct.pack("<f", math.nan), 8: struct.pack("<d", math.inf), 2: b"\x00\x7e"}[size]
    buf = bytearray(data)
    buf[at : at + size] = pattern
    target.write_bytes(bytes(buf))
    side = digest_path(target)
    if side.exists():
        side.write_text(f"{sha256_file(target)}  {target.name}\n")
    manifest = target.parent.parent / "manifest.json"
    if manifest.is_file():  # a store shard: the digest lives in the manifest
        m = json.loads(manifest.read_text())
        key = f"{target.parent.name}/{target.name}"
        if key in m.get("digests", {}):
            m["digests"][key] = sha256_file(target, offset=m.get("align", 4096))
            manifest.write_text(json.dumps(m))
    return f"NaN written into {name}, digest re-recorded"


# ------------------------------------------------------------------------------------------------ trials
def plan(n: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    """``n`` trials, cycling over every kind x family, each with its own seed."""
    rng = random.Random(seed)
    combos = [(k, f) for k in kinds for f in FAMILIES]
    return [
        {"i": i, "kind": combos[i % len(combos)][0], "family": combos[i % len(combos)][1], "seed": rng.randrange(2**31)}
        for i in range(n)
    ]


def _classify(err: BaseException | None, out: Any, ref: Any, target: Path, artefact: Path) -> tuple[str, str]:
    from mechwork.core.errors import MechworkError

    if err is not None:
        msg = str(err)
        if isinstance(err, MechworkError):
            named = target.name in msg or (target == artefact and artefact.name in msg)
            return ("clean" if named else "other"), f"{type(err).__name__}: {msg[:300]}"
        return "other", f"{type(err).__name__}: {msg[:300]}"
    import torch

    if out.shape != ref.shape or not torch.isfinite(out).all() or not torch.equal(out, ref):
        return "silent", "output changed or not finite"
    return "same", ""


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def worker(pristine: dict[str, str], trials: list[dict[str, Any]], results: Path, per_trial: float) -> None:
    """Run ``trials`` in this process, appending one JSON line per trial to ``results``."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    refs = {k: use(k, p) for k, p in pristine.items() if any(t["kind"] == k for t in trials)}
    with open(results, "a", encoding="utf-8") as log:
        for t in trials:
            rng = random.Random(t["seed"])
            src = Path(pristine[t["kind"]])
            with tempfile.TemporaryDirectory() as d:
                dst = Path(d) / src.name
                (shutil.copy if src.is_file() else shutil.copytree)(src, dst)
                files = files_of(dst)
                if t["family"] in ("json_schema",):
                    files = [f for f in files if f.suffix == ".json"] or files
                if t["family"] in ("header_edit", "dataflip", "nan_resealed"):
                    files = [f for f in files if f.suffix == ".safetensors"] or files
                target = rng.choice(files)
                donor = rng.choice(files_of(Path(pristine[rng.choice(list(pristine))])))
                desc = corrupt(target, t["family"], rng, donor)
                log.write(json.dumps({"i": t["i"], "started": True}) + "\n")
                log.flush()
                err: BaseException | None = None
                out = None
                signal.setitimer(signal.ITIMER_REAL, per_trial)
                start = time.perf_counter()
                try:
                    out = use(t["kind"], str(dst))
                except _Timeout:
                    err = _Timeout()
                except BaseException as e:  # noqa: BLE001
                    err = e
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if isinstance(err, _Timeout):
                    outcome, detail = "hang", f"no answer in {per_trial} s"
                else:
                    outcome, detail = _classify(err, out, refs[t["kind"]], target, dst)
                rel = str(target.relative_to(dst.parent))
                row = {**t, "file": rel, "corruption": desc, "outcome": outcome, "detail": detail}
                row["seconds"] = round(time.perf_counter() - start, 3)
                log.write(json.dumps(row) + "\n")
                log.flush()


def run(
    pristine: dict[str, str],
    trials: list[dict[str, Any]],
    *,
    procs: int = 2,
    per_trial: float = 20.0,
    batch_timeout: float = 300.0,
    memory: int = 6 << 30,
) -> list[dict[str, Any]]:
    """Run ``trials`` in worker subprocesses (``procs`` at a time, memory-limited); returns one row per trial."""
    todo = {t["i"]: t for t in trials}
    done: dict[int, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="mechwork-corruption-"))
    try:
        while todo:
            chunks = [list(todo.values())[j::procs] for j in range(procs)]
            running = []
            for j, chunk in enumerate(c for c in chunks if c):
                spec = tmp / f"spec-{len(done)}-{j}.json"
                res = tmp / f"res-{len(done)}-{j}.jsonl"
                spec.write_text(json.dumps({"pristine": pristine, "trials": chunk, "per_trial": per_trial}))
                code = (
                    "import resource,sys,json; "
                    f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory})); "
                    "sys.path.insert(0, sys.argv[3]); import corruption as c; "
                    "s=json.load(open(sys.argv[1])); "
                    "c.worker(s['pristine'], s['trials'], __import__('pathlib').Path(sys.argv[2]), s['per_trial'])"
                )
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
                p = subprocess.Popen(
                    [sys.executable, "-c", code, str(spec), str(res), str(Path(__file__).parent)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                running.append((p, res, chunk))
            for p, res, chunk in running:
                try:
                    _, stderr = p.communicate(timeout=batch_timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    _, stderr = p.communicate()
                started = None
                if res.exists():
                    for line in res.read_text().splitlines():
                        row = json.loads(line)
                        if row.get("started"):
                            started = row["i"]
                        else:
                            done[row["i"]] = row
                            todo.pop(row["i"], None)
                            started = None
                if started is not None:  # the worker died or was killed in this trial
                    t = todo.pop(started)
                    why = "killed (time or memory limit)" if p.returncode else "worker ended"
                    done[started] = {**t, "outcome": "hang", "detail": f"{why}: {stderr.decode()[-300:]}"}
                elif p.returncode and any(t["i"] in todo for t in chunk) and not res.exists():
                    raise RuntimeError(f"corruption worker failed before any trial: {stderr.decode()[-2000:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [done[i] for i in sorted(done)]


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{kind: {trials, clean, same, other, hang, silent}}``."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        t = out.setdefault(r["kind"], {"trials": 0, **{o: 0 for o in OUTCOMES}})
        t["trials"] += 1
        t[r["outcome"]] += 1
    return out
