"""ActivationStore: the activations of one or several sites over the same tokens, on disk or in memory."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.devices import parse_device, parse_dtype
from ..core.errors import CheckpointError, ConfigError, SiteError
from ..core.io import PathLike, load_tensors, read_json
from . import format as F
from .loader import _resolve_rows, as_site_list, iterate, row_batches
from .mapping import map_stream
from .stats import Moments

SiteName = str | tuple[str, int]


class ActivationStore:
    """Activations of several sites on the same tokens; row ``window * context + pos`` of every site belongs
    to token ``store.tokens[row]``.

    Open a folder with :meth:`open`; :func:`mechwork.cache.collect` returns one. On disk the rows of each site
    are memory-mapped: ``store[site]`` is an ordinary tensor whose pages are read only when touched.

    Attributes
    ----------
    path : Path or None
        The folder (``None`` for a store kept in memory).
    sites : list of str
        Full hook names, in the order they were requested.
    n_tokens : int
        Rows per site.
    context : int
        Tokens per packed context window.
    model_spec : str
        What ``mechwork.load_model`` was given (``model.mechwork_spec``), or the model's config name.
    dtype : torch.dtype
        Storage dtype of the activations.
    manifest : Manifest
        Everything recorded about the collection.
    """

    def __init__(
        self,
        manifest: F.Manifest,
        *,
        path: Path | None = None,
        data: dict[str, Tensor] | None = None,
        moments: dict[str, Moments] | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self._data: dict[str, Tensor] = dict(data or {})
        self._moments = moments
        self._stats: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: PathLike, *, partial: bool = False, verify: bool = False) -> ActivationStore:
        """Open a store folder, checking every shard's header and size against the manifest.

        Parameters
        ----------
        path : str or Path
        partial : bool
            Also open a store whose collection did not finish (its committed rows only).
        verify : bool
            Also read every shard: compare it with the SHA-256 the manifest recorded when it was written (stores
            written before digests were recorded are only checked for finiteness) and check every value is
            finite. Costs one read of the store (see benchmarks/RESULTS.md, "Loader integrity").

        Raises
        ------
        CheckpointError
            Missing or foreign manifest, missing, truncated, foreign or (with ``verify``) changed shard (the
            message names the file), or an incomplete store without ``partial=True``.
        """
        root = Path(path).expanduser()
        manifest = load_manifest(root)
        if not manifest.complete and not partial:
            raise CheckpointError(
                f"{root / F.MANIFEST}: the collection did not finish ({manifest.n_tokens} tokens in {len(manifest.shards)} "
                "shards committed); continue it with collect(..., out=path, resume=True) or open it with partial=True"
            )
        check_store(root, manifest, verify=verify)
        return cls(manifest, path=root)

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def sites(self) -> list[str]:
        return [s.name for s in self.manifest.sites]

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def context(self) -> int:
        return self.manifest.context

    @property
    def model_spec(self) -> str:
        return self.manifest.model_spec

    @property
    def dtype(self) -> torch.dtype:
        return parse_dtype(self.manifest.dtype)  # type: ignore[return-value]

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def __len__(self) -> int:
        return self.n_tokens

    def __contains__(self, site: object) -> bool:
        try:
            self.site_name(site)  # type: ignore[arg-type]
        except SiteError:
            return False
        return True

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return (
            f"ActivationStore({where}: {self.model_spec}, {self.n_tokens:,} tokens x {len(self.sites)} sites, "
            f"{self.manifest.dtype}, context {self.context})"
        )

    def _repr_html_(self) -> str:
        from ..viz.cards import store_card

        return store_card(self)

    def site_name(self, site: SiteName) -> str:
        """The full hook name of ``site`` (a full name, an alias ``resid_post.2``, ``2.resid_post`` or ``("resid_post", 2)``)."""
        entry = self._entry(site)
        return entry.name

    def _entry(self, site: Any) -> F.SiteEntry:
        if hasattr(site, "name") and not isinstance(site, str):
            site = site.name
        if isinstance(site, tuple) and len(site) == 2:
            site = f"{site[0]}.{site[1]}"
        if not isinstance(site, str):
            raise SiteError(f"site must be a name such as 'resid_post.2', got {type(site).__name__}")
        key = site.strip()
        m = re.match(r"^(\d+)\.(\w+)$", key)
        if m:
            key = f"{m.group(2)}.{m.group(1)}"
        for e in self.manifest.sites:
            if key in (e.name, e.alias):
                return e
        names = [e.name for e in self.manifest.sites] + [e.alias for e in self.manifest.sites]
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise SiteError(f"the store has no site {site!r}; it holds {', '.join(self.sites)}.{hint}")

    def shape(self, site: SiteName) -> tuple[int, ...]:
        """Per-token shape of a site, e.g. ``(128,)`` or ``(4, 32)`` for ``hook_z``."""
        return tuple(self._entry(site).shape)

    def d(self, site: SiteName) -> int:
        """Flattened width of one token's activation."""
        return self._entry(site).d

    @property
    def nbytes(self) -> int:
        """Bytes of activations (all sites, without tokens)."""
        return sum(e.d * F.element_size(self.dtype) * self.n_tokens for e in self.manifest.sites)

    # ------------------------------------------------------------------------------------------ data
    def _stream(self, name: str, dirname: str, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
        if name not in self._data:
            if self.path is None:
                raise CheckpointError(f"in-memory store has no stream {name!r}")
            parts = []
            for i, rows in enumerate(self.manifest.shards):
                nbytes = rows * F.element_size(dtype) * max(1, _prod(shape))
                parts.append((self.path / dirname / F.shard_name(i), self.manifest.align, nbytes))
            self._data[name] = map_stream(parts, dtype, shape, self.n_tokens, align=self.manifest.align)
        return self._data[name]

    def __getitem__(self, site: SiteName) -> Float[Tensor, n_tokens * shape]:
        """All rows of one site, ``[n_tokens, *shape]`` in the storage dtype (memory-mapped for disk stores)."""
        e = self._entry(site)
        return self._stream(e.name, e.dir, self.dtype, tuple(e.shape))

    @property
    def _meta(self) -> Int[Tensor, "n_tokens 3"]:
        return self._stream(F.TOKENS, F.TOKENS, torch.int64, (3,))

    @property
    def tokens(self) -> Int[Tensor, " n_tokens"]:
        """Token id of every row."""
        return self._meta[:, 0]

    @property
    def docs(self) -> Int[Tensor, " n_tokens"]:
        """Index of the source document (text, prompt, tensor row) of every row; ``-1`` for an inserted BOS."""
        return self._meta[:, 1]

    @property
    def doc_pos(self) -> Int[Tensor, " n_tokens"]:
        """Position of every row's token in its source document (``-1`` for an inserted BOS)."""
        return self._meta[:, 2]

    def window(self, rows: int | Tensor) -> tuple[Int[Tensor, "k context"], Int[Tensor, " k"]]:
        """The context window(s) that ``rows`` belong to, and each row's position in its window.

        ``tokens[w, :pos[w] + 1]`` is what the model had read when it produced row ``rows[w]``.
        """
        r = torch.as_tensor(rows).long().reshape(-1)
        if r.numel() and (int(r.min()) < 0 or int(r.max()) >= self.n_tokens):
            raise ConfigError(f"row indices must lie in [0, {self.n_tokens})")
        starts = (r // self.context) * self.context
        idx = (starts[:, None] + torch.arange(self.context)).clamp_max(self.n_tokens - 1)
        return self.tokens[idx.reshape(-1)].reshape(idx.shape), r - starts

    def examples(self, rows: int | Tensor, tokenizer: Any, *, before: int = 12) -> list[str]:
        """What the model had read for each row: up to ``before`` tokens of its window, then the row's own token
        in ``[[ ]]`` (e.g. to show the top activations of an SAE latent).

        Parameters
        ----------
        rows : int or Int[Tensor, "k"]
        tokenizer : Hugging Face tokenizer, or a model with a ``tokenizer``
        before : int
        """
        tok = getattr(tokenizer, "tokenizer", None) or tokenizer
        if not callable(getattr(tok, "decode", None)):
            raise ConfigError(f"examples() needs a tokenizer (or a model with one), got {type(tokenizer).__name__}")
        windows, pos = self.window(rows)
        out = []
        for w, p in zip(windows.tolist(), pos.tolist()):
            lead = tok.decode(w[max(0, p - before) : p])
            out.append(f"{lead} [[{tok.decode(w[p : p + 1])}]]".strip())
        return out

    # ------------------------------------------------------------------------------------------ statistics
    def stats(self, site: SiteName) -> dict[str, Any]:
        """Running statistics from the collection.

        Returns
        -------
        dict
            ``count``; ``mean``, ``var``, ``std``, ``min``, ``max`` (tensors shaped like one token's activation);
            ``mean_norm``, ``rms_norm``, ``norm_std`` (of the per-token L2 norm) and ``norm_scaling_factor``
            (``sqrt(d) / mean_norm``, SAELens's activation normalisation).
        """
        e = self._entry(site)
        if e.name not in self._stats:
            self._stats[e.name] = self._all_moments()[e.name].summary(tuple(e.shape))
        return self._stats[e.name]

    def _all_moments(self) -> dict[str, Moments]:
        if self._moments is None:
            assert self.path is not None
            if self.manifest.complete:
                self._moments = load_stats(self.path / F.STATS, self.manifest, F.STATS)
            else:
                self._moments = merge_shard_stats(self.path, self.manifest)
        return self._moments

    # ------------------------------------------------------------------------------------------ batches
    def row_indices(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        rows: Any = None,
        start: int = 0,
    ) -> Iterator[Int[Tensor, " batch"]]:
        """The row indices of the batches :meth:`batches` yields with the same arguments, without reading data."""
        return row_batches(
            _resolve_rows(rows, self.n_tokens),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epochs=epochs,
            drop_last=drop_last,
            start=start,
        )

    def batches(
        self,
        sites: SiteName | Sequence[SiteName],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = 1,
        device: str | torch.device | None = None,
        drop_last: bool = False,
        flatten: bool = False,
        dtype: str | torch.dtype | None = None,
        rows: Any = None,
        start: int = 0,
        prefetch: int = 2,
        with_indices: bool = False,
    ) -> Iterator[Any]:
        """Iterate batches of rows of one site (tensors) or several sites (dicts of tensors, rows aligned).

        Parameters
        ----------
        sites : str or sequence of str
            One site gives ``Tensor [batch, *shape]``; a list gives ``dict[full name -> Tensor]``.
        batch_size : int
        shuffle : bool
            A fresh permutation of the rows every epoch (each row exactly once per epoch), reproducible from
            ``(seed, epoch)``; ``False`` reads rows in order.
        seed : int
        epochs : int or None
            ``None`` streams forever.
        device : str or torch.device, optional
            Where batches are delivered (default CPU); CUDA transfers go through pinned memory, non-blocking.
        drop_last : bool
            Drop each epoch's last, smaller batch.
        flatten : bool
            Give ``[batch, d]`` instead of ``[batch, *shape]``.
        dtype : str or torch.dtype, optional
            Dtype of the batches (default float32, whatever the storage dtype).
        rows : slice, index tensor or boolean mask, optional
            Restrict to these rows (e.g. a train/validation split).
        start : int
            Skip this many batches (to resume a training run at the same point of the stream).
        prefetch : int
            Batches gathered ahead on a background thread (0: gather in the caller's thread).
        with_indices : bool
            Yield ``(row_indices, batch)`` pairs.

        Yields
        ------
        Tensor or dict of Tensor (or pairs with the row indices)
        """
        names, single = as_site_list(sites)
        full = [self.site_name(s) for s in names]
        dev = torch.device("cpu") if device is None else parse_device(device)
        out_dtype = parse_dtype(dtype, default=torch.float32)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be a non-negative integer, got {prefetch!r}")
        sources = {n: self[n] for n in full}
        idx = self.row_indices(
            batch_size, shuffle=shuffle, seed=seed, epochs=epochs, drop_last=drop_last, rows=rows, start=start
        )
        return iterate(
            sources,
            idx,
            single=full[0] if single else None,
            device=dev,
            dtype=out_dtype,  # type: ignore[arg-type]
            flatten=flatten,
            with_indices=with_indices,
            prefetch=prefetch,
            locate=self._locate,
        )

    def _locate(self, name: str, row: int) -> str:
        """The shard file holding ``row`` of site ``name`` (for error messages)."""
        if self.path is None:
            return "in memory"
        shard = min(row // self.manifest.shard_tokens, len(self.manifest.shards) - 1)
        return str(self.path / self._entry(name).dir / F.shard_name(shard))

    # ------------------------------------------------------------------------------------------ saving
    def save(self, path: PathLike, *, overwrite: bool = False) -> ActivationStore:
        """Write this store (e.g. an in-memory one) to a folder and return the opened copy."""
        from .collect import save_store

        return save_store(self, Path(path).expanduser(), overwrite=overwrite)


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def load_manifest(root: Path) -> F.Manifest:
    """Read and validate ``manifest.json`` (CheckpointError naming the file when missing or foreign)."""
    path = root / F.MANIFEST
    if not root.is_dir():
        raise CheckpointError(f"activation store {root} does not exist (or is not a folder)")
    raw = read_json(path, what="activation store manifest")
    if not isinstance(raw, dict) or raw.get("format") != F.FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a mechwork activation-store manifest (format {found!r}, expected {F.FORMAT!r})"
        )
    version = raw.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > F.FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {raw['format_version']}; this mechwork reads up to {F.FORMAT_VERSION}"
        )
    try:
        manifest = F.Manifest.from_dict(raw, source=str(path))
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid manifest ({e})") from e
    if sum(manifest.shards) != manifest.n_tokens:
        raise CheckpointError(f"{path}: shards hold {sum(manifest.shards)} rows but n_tokens is {manifest.n_tokens}")
    if any(r != manifest.shard_tokens for r in manifest.shards[:-1]):
        raise CheckpointError(
            f"{path}: every shard but the last must hold {manifest.shard_tokens} rows, found {list(manifest.shards)}"
        )
    return manifest


def check_store(root: Path, manifest: F.Manifest, *, verify: bool | Sequence[str] = False) -> None:
    """Check every committed shard file (and the statistics) against the manifest.

    Headers, dtypes, shapes and sizes are always checked; ``verify`` (``True``, or the folders to verify such as
    ``("tokens", "stats")``) also reads the shards: their SHA-256 against the manifest's, and finiteness.
    """
    dtype = parse_dtype(manifest.dtype)
    streams = [(e.name, e.dir, dtype, tuple(e.shape)) for e in manifest.sites] + [
        (F.TOKENS, F.TOKENS, torch.int64, (3,))
    ]
    folders = {d for _, d, _, _ in streams} | {"stats"} if verify is True else set(verify or ())
    for name, dirname, dt, shape in streams:
        for i, rows in enumerate(manifest.shards):
            file = root / dirname / F.shard_name(i)
            F.check_shard(file, name, dt, (rows, *shape), manifest.align)  # type: ignore[arg-type]
            if dirname in folders:
                verify_shard(file, manifest, f"{dirname}/{F.shard_name(i)}", dt, (rows, *shape))  # type: ignore[arg-type]
    if "stats" in folders:
        for i in range(len(manifest.shards)):
            load_stats(root / "stats" / F.shard_name(i), manifest, f"stats/{F.shard_name(i)}")
    if manifest.complete:
        load_stats(root / F.STATS, manifest, F.STATS)


def verify_shard(file: Path, manifest: F.Manifest, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Read one shard: its data against the SHA-256 recorded in the manifest (when recorded), and finiteness."""
    from ..core.files import check_digest

    expected = manifest.digests.get(key)
    if expected is not None:
        check_digest(file, expected, offset=manifest.align, what="shard", recorded_in=file.parent.parent / F.MANIFEST)
    if dtype.is_floating_point and shape[0]:
        data = torch.from_file(
            str(file), shared=False, size=manifest.align + F.element_size(dtype) * _prod(shape), dtype=torch.uint8
        )
        values = data[manifest.align :].view(dtype)
        for lo in range(0, values.numel(), 1 << 24):
            if not bool(torch.isfinite(values[lo : lo + (1 << 24)]).all()):
                raise CheckpointError(f"shard {file} contains NaN or inf activations: corrupt")


def load_stats(file: Path, manifest: F.Manifest, key: str) -> dict[str, Moments]:
    """Read a statistics file (checked against the manifest's digest, finite where anything was counted)."""
    counts = [f"{e.name}/count" for e in manifest.sites]
    t = load_tensors(file, what="store statistics", digest=manifest.digests.get(key), finite=False, floating=counts)
    out = {}
    for e in manifest.sites:
        try:
            m = Moments.from_tensors(t, e.name)
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{file}: no statistics for site {e.name} (or of the wrong kind)") from err
        fields = [m.mean, m.m2, m.min, m.max, m.norm_sum, m.norm_sq]
        if any(x.shape != (e.d,) for x in fields[:4]) or m.count < 0:
            raise CheckpointError(f"{file}: statistics of site {e.name} are of the wrong width (expected {e.d})")
        if m.count and not all(bool(torch.isfinite(x).all()) for x in fields):
            raise CheckpointError(f"{file}: statistics of site {e.name} contain NaN or inf")
        out[e.name] = m
    return out


def merge_shard_stats(root: Path, manifest: F.Manifest) -> dict[str, Moments]:
    """Merge the per-shard statistics of the committed shards, in shard order."""
    total = {e.name: Moments.zeros(e.d) for e in manifest.sites}
    for i in range(len(manifest.shards)):
        shard = load_stats(root / "stats" / F.shard_name(i), manifest, f"stats/{F.shard_name(i)}")
        for e in manifest.sites:
            total[e.name].merge_(shard[e.name])
    return total


__all__ = ["ActivationStore", "load_manifest", "check_store", "load_stats", "merge_shard_stats"]
