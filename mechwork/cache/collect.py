"""``collect``: run the model over a token source once and store the activations of many sites."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from ..core.devices import dtype_name, parse_device, parse_dtype
from ..core.errors import CheckpointError, ConfigError, DataError, MechworkWarning, ShapeError
from ..core.hooks import capture, check_tokens, model_device, model_dtype
from ..core.io import PathLike, save_tensors
from ..core.kind import is_causal, trained_per_document
from ..core.prompts import bos_id, prepends_bos
from ..data.sources import Windows, pack, pad_windows, token_source
from . import format as F
from .background import Background
from .plan import autocast_dtype, check_int, fingerprint, make_plan, rows_of, shard_tokens_for
from .stats import Moments, scalar_summary
from .store import ActivationStore, check_store, load_manifest, merge_shard_stats
from .writer import DiskSink, MemorySink, PinnedPool, Pipeline, Stream, clear_uncommitted


def collect(
    model: Any,
    source: Any,
    sites: str | Sequence[str],
    *,
    out: PathLike | None = None,
    n_tokens: int | None = None,
    batch_size: int = 32,
    context: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    bos: bool | None = None,
    progress: bool = True,
    overwrite: bool = False,
    shard_tokens: int | None = None,
    seed: int = 0,
    autocast: bool | str | torch.dtype | None = None,
    packing: str | None = None,
) -> ActivationStore:
    """Run ``model`` over ``source`` once and store the activations of every site in ``sites``.

    One batched forward pass per batch under inference mode computes all sites (any mix of layers and kinds,
    per-head sites such as ``hook_z`` and attention patterns included) and stops right after the last site needed (no final LayerNorm or unembedding for block sites).
    Documents are packed into windows of ``context`` tokens; row ``window * context + pos`` of every site
    belongs to token ``store.tokens[row]``.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    source : texts, token tensor, task, prompt batch, corpus, file path, or generator of token batches
        See :mod:`mechwork.data.sources`.
    sites : str or sequence of str
        Full hook names or aliases (``"resid_post.2"``, ``"z.1"``), or shell-style patterns (``"resid_post.*"``:
        every layer's residual stream).
    out : str or Path, optional
        Folder to stream the store into (created); ``None`` keeps it in memory.
    n_tokens : int, optional
        Rows to collect; ``None`` takes the whole source (required for endless sources: tasks, corpora).
    batch_size : int
        Context windows per forward pass.
    context : int, optional
        Tokens per window (default: the model's ``n_ctx``).
    dtype : str or torch.dtype, optional
        Storage dtype: ``float32``, ``float16``, ``bfloat16`` (default: the model's dtype).
    device : str or torch.device, optional
        Where an in-memory store keeps its tensors (default CPU). Disk stores are read onto a device with
        ``store.batches(..., device=...)``.
    resume : bool
        Continue an interrupted collection into ``out``; the result is identical to an uninterrupted run.
    bos : bool, optional
        Start every document and every window with the BOS token (``False``: plain concatenation). Default: the
        model family's convention (``model.cfg.default_prepend_bos``: GPT-2, LLaMA and the shipped models
        prepend BOS, Pythia does not); encoders take ``[CLS]``/``[SEP]`` from their tokenizer instead.
    progress : bool
        Show a progress bar with tokens/s and gigabytes written.
    overwrite : bool
        Replace an existing store at ``out``.
    shard_tokens : int, optional
        Rows per shard file (rounded up to whole batches and page-aligned rows; default about 256 MiB).
    seed : int
        Seed of generated sources (task prompts).
    autocast : bool or str, optional
        Run the forward pass under ``torch.autocast`` (``True``: bfloat16).
    packing : {"concat", "pad"}, optional
        ``"concat"`` packs documents back to back into full windows (no padding: what SAE training wants).
        ``"pad"`` puts each document alone in a right-padded window, run with an attention mask, so its
        activations are exactly those of the document run by itself (what probes and erasers fitted on task
        prompts want); padding rows have ``store.docs == -1``, are left out of the statistics, and
        ``batches(..., rows=store.docs >= 0)`` skips them. A document longer than ``context`` is then an error.
        Default: ``"concat"`` for causal models, ``"pad"`` for encoders (bidirectional attention would mix
        packed documents, so ``"concat"`` is refused for them; their documents carry ``[CLS] ... [SEP]`` as
        the tokenizer defines them, and ``bos`` does not apply). ``"concat"`` on a model trained one document
        per row (mechwork's own models, ``core.kind.trained_per_document``) warns: its packed windows are out
        of the model's distribution.

    Returns
    -------
    ActivationStore

    Raises
    ------
    SiteError, ConfigError, DataError
        Unknown sites, bad arguments, an empty or out-of-vocabulary source.
    NonFiniteError
        A NaN or inf activation (or one outside the storage dtype's range), naming the site and token row.
    CheckpointError
        A disk error (the store keeps its committed shards and can be resumed) or a store that cannot be resumed.
    """
    run = _Run.prepare(
        model,
        source,
        sites,
        out=out,
        n_tokens=n_tokens,
        batch_size=batch_size,
        context=context,
        dtype=dtype,
        device=device,
        resume=resume,
        bos=bos,
        overwrite=overwrite,
        shard_tokens=shard_tokens,
        seed=seed,
        autocast=autocast,
        packing=packing,
    )
    if run.done is not None:
        return run.done
    return run.execute(progress=progress)


POOL_DEPTH = 4  # pinned buffers per site in flight on the GPU path
STAGED_ON_CPU = False  # tests switch this on to run the GPU path's buffer pool on a CPU


class _Run:
    """One collection: the validated arguments, the plan, the sink, and the loop."""

    done: ActivationStore | None = None

    @classmethod
    def prepare(
        cls,
        model: Any,
        source: Any,
        sites: Any,
        *,
        out: PathLike | None,
        n_tokens: int | None,
        batch_size: int,
        context: int | None,
        dtype: Any,
        device: Any,
        resume: bool,
        bos: bool | None,
        overwrite: bool,
        shard_tokens: int | None,
        seed: int,
        autocast: Any,
        packing: str,
    ) -> _Run:
        self = cls()
        self.model = model
        check_int("n_tokens", n_tokens, none=True)
        check_int("batch_size", batch_size)
        check_int("shard_tokens", shard_tokens, none=True)
        n_ctx = int(model.cfg.n_ctx)
        context = n_ctx if context is None else context
        causal = is_causal(model)
        if bos is None:  # the model family's convention (GPT-2, LLaMA and the shipped models: yes; Pythia: no)
            bos = causal and prepends_bos(model)  # False too when there is no BOS id (no tokenizer)
        check_int("context", context, lo=2 if bos else 1)
        if context > n_ctx:
            raise ConfigError(f"context {context} exceeds the model's n_ctx {n_ctx}")
        if not isinstance(bos, bool):
            raise ConfigError(f"bos must be True or False, got {bos!r}")
        if packing is None:
            packing = "concat" if causal else "pad"
        if packing == "concat" and trained_per_document(model):
            warnings.warn(
                "packing='concat' puts several documents back to back in one window, but this model was trained one "
                "document per row: packed windows (and positions past its longest training document) are out of its "
                "distribution (toy-mixed: cross-entropy 8.4 nats packed vs 1.8 per document), so their activations are "
                "not the model's usual ones. Pass packing='pad' (one document per window) for in-distribution "
                "activations.",
                MechworkWarning,
                stacklevel=3,
            )
        if packing not in ("concat", "pad"):
            raise ConfigError(f"packing must be 'concat' or 'pad', got {packing!r}")
        if packing == "concat" and not causal:
            raise ConfigError(
                "packing='concat' would put several documents in one window of a bidirectional encoder, where they "
                "attend to each other; use packing='pad' (one document per window, attention mask on the padding)"
            )
        self.packing = packing
        self.dtype = parse_dtype(dtype, default=model_dtype(model))
        if self.dtype not in F.STORAGE_DTYPES:
            raise ConfigError(f"storage dtype must be float32, float16, bfloat16 or float64, got {self.dtype}")
        if out is not None and device is not None and parse_device(device).type != "cpu":
            raise ConfigError(
                f"device={device!r} applies to in-memory stores; a disk store is read onto a device with store.batches(..., device=...)"
            )
        self.store_device = parse_device(device) if device is not None else torch.device("cpu")
        self.autocast = autocast_dtype(autocast)
        tokenizer = getattr(model, "tokenizer", None)
        self.bos_id = None
        if bos and causal:
            self.bos_id = bos_id(model)  # GPT-2 style: BOS and EOS share an id
            if self.bos_id is None:
                raise ConfigError("bos=True but the model's tokenizer has no BOS (or EOS) token; pass bos=False")
        self.pad_id = next(
            (
                i
                for i in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                if i is not None
            ),
            0,
        )
        self.source = token_source(model, source, seed=seed)
        if self.source.finite is False and n_tokens is None:
            raise ConfigError(f"the source ({self.source.description}) never ends: pass n_tokens")
        self.n_tokens, self.batch_size, self.context = n_tokens, batch_size, context
        self.plan = make_plan(model, sites, context, self.dtype)
        self.device = model_device(model)
        spec = getattr(model, "mechwork_spec", None) or getattr(model.cfg, "model_name", None) or type(model).__name__
        st = shard_tokens_for(self.plan.streams, context, batch_size, shard_tokens, n_tokens, F.ALIGN)
        self.manifest = F.Manifest(
            model_spec=str(spec),
            sites=self.plan.entries,
            dtype=dtype_name(self.dtype),
            context=context,
            bos=bos,
            batch_size=batch_size,
            shard_tokens=st,
            source=self.source.description,
            mechwork_version=__version__,
            fingerprint=fingerprint(model),
            seed=seed,
            autocast=dtype_name(self.autocast) if self.autocast else None,
            requested_tokens=n_tokens,
            packing=packing,
        )
        self.root = None if out is None else Path(out).expanduser()
        if self.root is not None:
            self._open_folder(resume=resume, overwrite=overwrite)
        return self

    # -------------------------------------------------------------------------------------- folder
    def _open_folder(self, *, resume: bool, overwrite: bool) -> None:
        root = self.root
        assert root is not None
        has_manifest = (root / F.MANIFEST).is_file()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"out={root} is a file, not a folder")
        if resume and overwrite:
            raise ConfigError("pass resume=True (continue the store at out) or overwrite=True (replace it), not both")
        if has_manifest and resume:
            old = load_manifest(root)
            diff = {
                k: (v, self.manifest.settings()[k])
                for k, v in old.settings().items()
                if v != self.manifest.settings()[k]
            }
            if diff:
                lines = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ConfigError(f"cannot resume {root}: the collection differs from the stored one ({lines})")
            if old.complete:
                check_store(root, old)
                self.done = ActivationStore(old, path=root)
                return
            check_store(root, old, verify=("tokens", "stats"))  # the shards a resume reads back
            clear_uncommitted(root, self.plan.streams, len(old.shards))
            self.manifest = old
            return
        if root.exists() and any(root.iterdir()):
            if not has_manifest:
                raise ConfigError(
                    f"out={root} exists, is not empty and holds no activation store; choose another folder"
                )
            if not overwrite:
                state = "a complete" if load_manifest(root).complete else "an unfinished"
                raise ConfigError(
                    f"out={root} already holds {state} activation store; pass resume=True to continue it "
                    "or overwrite=True to replace it"
                )
            _empty_store_folder(root)
        root.mkdir(parents=True, exist_ok=True)
        self.manifest.to_json(root / F.MANIFEST)

    # -------------------------------------------------------------------------------------- loop
    def _windows(self) -> Iterator[Windows]:
        if self.packing == "pad":
            return pad_windows(
                self.source.documents(), self.context, bos_id=self.bos_id, pad_id=self.pad_id, batch=self.batch_size
            )
        return pack(self.source.documents(), self.context, bos_id=self.bos_id, batch=self.batch_size)

    def _skip_committed(self, windows: Iterator[Windows]) -> None:
        """Re-read the source up to the committed rows and check it reproduces the stored tokens."""
        done = self.manifest.n_tokens
        if not done:
            return
        stored = ActivationStore(self.manifest, path=self.root).tokens
        row = 0
        while row < done:
            w = next(windows, None)
            if w is None:
                raise DataError(f"cannot resume: the source ends after {row} tokens but the store holds {done}")
            t = w.tokens.reshape(-1)
            if not torch.equal(t, stored[row : row + t.numel()]):
                bad = int((t != stored[row : row + t.numel()]).nonzero()[0]) + row
                raise DataError(
                    f"cannot resume: the source differs from the one the store was collected from (first at token row {bad})"
                )
            row += t.numel()

    def execute(self, *, progress: bool) -> ActivationStore:
        from tqdm.auto import tqdm

        m = self.manifest
        on_gpu = self.device.type == "cuda"
        if self.root is None:
            sink: Any = MemorySink(self.plan.streams, self.n_tokens, self.store_device)
        else:
            sink = Pipeline(DiskSink(self.root, m, self.plan.streams), depth=3)
        pool = None
        if (on_gpu or STAGED_ON_CPU) and self.root is not None:
            pool = PinnedPool(self.plan.streams[:-1], self.batch_size * self.context, depth=POOL_DEPTH, pin=on_gpu)
        windows = Background(self._windows(), depth=4, name="mechwork-cache-tokens")  # tokenising overlaps the forward
        bar = tqdm(
            total=self.n_tokens, initial=m.n_tokens, unit="tok", unit_scale=True, desc="collect", disable=not progress
        )
        try:
            self._skip_committed(windows)
            self._loop(windows, sink, pool, bar)
            if self.root is None:
                return self._finish_memory(sink)
            sink.close()
            return self._finish_disk()
        except BaseException:
            if isinstance(sink, Pipeline):
                sink.abort()
            raise
        finally:
            windows.close()
            bar.close()

    def _loop(self, windows: Iterator[Windows], sink: Any, pool: PinnedPool | None, bar: Any) -> None:
        m = self.manifest
        shard, row, in_shard = len(m.shards), m.n_tokens, 0
        shard_rows = m.shard_tokens
        entries = {e.name: e for e in m.sites}
        moments = {e.name: Moments.zeros(e.d, device=self.device) for e in m.sites}
        for w in windows:
            if self.n_tokens is not None and row >= self.n_tokens:
                break
            tokens = check_tokens(self.model, w.tokens, what="source tokens").to(self.device, non_blocking=True)
            keep = w.tokens.numel() if self.n_tokens is None else min(w.tokens.numel(), self.n_tokens - row)
            am = (w.doc >= 0).long().to(self.device) if self.packing == "pad" else None
            acts = capture(self.model, tokens, self.plan.sites, attention_mask=am, clone=False, autocast=self.autocast)
            payload: dict[str, Tensor] = {}
            taken: list[tuple[str, Tensor]] = []
            real = (w.doc.reshape(-1)[:keep] >= 0).to(self.device) if self.packing == "pad" else None
            for s in self.plan.sites:
                x = rows_of(acts[s.name], s, self.context)[:keep]
                if tuple(x.shape[1:]) != tuple(entries[s.name].shape):
                    raise ShapeError(
                        f"site {s.name} gave per-token shape {tuple(x.shape[1:])}, expected {tuple(entries[s.name].shape)}"
                    )
                flat = x.reshape(keep, -1)
                moments[s.name].update(flat if real is None else flat[real])  # padding rows stay out of the statistics
                if pool is not None:
                    whole = pool.take(s.name)
                    buf = whole[:keep]
                    buf.copy_(x, non_blocking=True)  # device -> pinned host, cast on the way
                    taken.append((s.name, whole))
                    payload[s.name] = buf
                else:
                    payload[s.name] = x.to(self.dtype).contiguous() if self.root is not None else x
            del acts
            payload[F.TOKENS] = torch.stack([w.tokens, w.doc, w.doc_pos], dim=-1).reshape(-1, 3)[:keep]
            event = release = None
            if pool is not None:
                if self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()
                release = lambda t=taken: [pool.give(n, b) for n, b in t]  # noqa: E731
            sink.write(shard, payload, event=event, release=release)
            row += keep
            in_shard += keep
            bar.update(keep)
            bar.set_postfix_str(f"{sink.bytes_written / 1e9:.2f} GB", refresh=False)
            if in_shard == shard_rows:
                sink.end_shard(shard, in_shard, {k: v.to("cpu") for k, v in moments.items()})
                shard, in_shard = shard + 1, 0
                moments = {e.name: Moments.zeros(e.d, device=self.device) for e in m.sites}
        if in_shard:
            sink.end_shard(shard, in_shard, {k: v.to("cpu") for k, v in moments.items()})
        total = row
        if total == 0:
            raise DataError(f"the source ({self.source.description}) gave no tokens")
        if self.n_tokens is not None and total < self.n_tokens:
            warnings.warn(
                f"the source ({self.source.description}) ran out after {total} of the {self.n_tokens} tokens requested; "
                "the store holds what there was",
                stacklevel=4,
            )

    # -------------------------------------------------------------------------------------- finishing
    def _final_manifest(self, manifest: F.Manifest, moments: dict[str, Moments]) -> F.Manifest:
        summary = {e.name: scalar_summary(moments[e.name].summary(tuple(e.shape))) for e in manifest.sites}
        return manifest.replace(complete=True, summary=summary)

    def _finish_disk(self) -> ActivationStore:
        root = self.root
        assert root is not None
        manifest = load_manifest(root)
        moments = merge_shard_stats(root, manifest)
        manifest = manifest.replace(digests={**manifest.digests, F.STATS: save_stats(root, moments)})
        manifest = self._final_manifest(manifest, moments)
        manifest.to_json(root / F.MANIFEST)
        return ActivationStore.open(root)

    def _finish_memory(self, sink: MemorySink) -> ActivationStore:
        moments = {e.name: Moments.zeros(e.d) for e in self.manifest.sites}
        for shard in sink.shard_stats:
            for k, mo in shard.items():
                moments[k].merge_(mo)
        manifest = self.manifest.replace(shards=tuple(sink.shard_rows), n_tokens=sum(sink.shard_rows))
        manifest = self._final_manifest(manifest, moments)
        return ActivationStore(manifest, data=sink.tensors(), moments=moments)


def save_stats(root: Path, moments: dict[str, Moments]) -> str:
    """Write ``stats.safetensors`` (the merged statistics) and return its SHA-256 (recorded in the manifest)."""
    from ..core.files import sha256_file

    save_tensors(root / F.STATS, {k: v for n, mo in moments.items() for k, v in mo.tensors(n).items()}, digest=False)
    return sha256_file(root / F.STATS)


def _empty_store_folder(root: Path) -> None:
    """Remove an activation store's files (only what a store holds: manifest, stats, shard folders)."""
    import shutil

    manifest = load_manifest(root)
    for e in manifest.sites:
        shutil.rmtree(root / e.dir, ignore_errors=True)
    for name in (F.TOKENS, "stats"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in (F.STATS, F.MANIFEST):
        (root / name).unlink(missing_ok=True)
    if any(root.iterdir()):
        raise CheckpointError(
            f"{root} holds files that are not part of the activation store; remove them or choose another folder"
        )


def save_store(store: ActivationStore, root: Path, *, overwrite: bool = False) -> ActivationStore:
    """Write an (in-memory or other) store to ``root`` shard by shard, and open the result."""
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(f"{root} exists and is not empty; pass overwrite=True to replace it")
        _empty_store_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    m = store.manifest
    streams = [Stream(e.name, e.dir, store.dtype, tuple(e.shape)) for e in m.sites] + [
        Stream(F.TOKENS, F.TOKENS, torch.int64, (3,))
    ]
    st = (
        m.shard_tokens
        if m.align == F.ALIGN
        else shard_tokens_for(streams, m.context, m.batch_size, m.shard_tokens, None, F.ALIGN)
    )
    manifest = m.replace(shards=(), n_tokens=0, complete=False, align=F.ALIGN, shard_tokens=st, digests={})
    manifest.to_json(root / F.MANIFEST)
    sink = DiskSink(root, manifest, streams)
    moments = store._all_moments()
    data = {e.name: store[e.name] for e in m.sites}
    data[F.TOKENS] = store._meta
    try:
        for i, lo in enumerate(range(0, store.n_tokens, st)):
            hi = min(lo + st, store.n_tokens)
            sink.write(i, {k: v[lo:hi].to("cpu").contiguous() for k, v in data.items()})
            shard_m = {e.name: Moments.zeros(e.d) for e in m.sites}
            for e in m.sites:
                rows = data[e.name][lo:hi].to("cpu").reshape(hi - lo, -1)
                shard_m[e.name].update(rows if m.packing != "pad" else rows[data[F.TOKENS][lo:hi, 1] >= 0])
            sink.end_shard(i, hi - lo, shard_m)
    except BaseException:
        sink.abort()
        raise
    digests = {**sink.manifest.digests, F.STATS: save_stats(root, moments)}
    sink.manifest.replace(complete=True, summary=m.summary, digests=digests).to_json(root / F.MANIFEST)
    return ActivationStore.open(root)
