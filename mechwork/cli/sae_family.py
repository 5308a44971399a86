"""The SAE family on the command line: MFR runs, operator SAEs, activations from a safetensors file.

Used by :mod:`mechwork.cli.sae` (``sae train`` / ``eval`` / ``show``); the options come from the config
dataclasses (:class:`~mechwork.sae.config.MFRPenalty`, the per-architecture configs) like the others.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, DataError
from .options import Opt, add_options, given, int_arg

FAMILY_EXAMPLES = """  # MFR: 4 TopK SAEs trained together, pulled towards the same features (Marks et al.):
  mechwork sae train --model toy-mixed --site resid_post.1 --arch mfr --n-saes 4 --mfr-weight 0.1 --k 32 \\
      --width 1024 --tokens 1000000 --out runs/mfr
  # SAE neural operators on functions [n, channels, grid] from a safetensors file:
  mechwork sae train --from-tensor fns.safetensors --arch fno --modes 12 --width 16 --out runs/fno
  mechwork sae train --from-tensor fns.safetensors --arch lifted --lift 4 --k 8 --width 512 --out runs/lifted
  mechwork sae eval runs/fno/saes/<name> --from-tensor test_fns.safetensors
"""

MFR_FIELDS = (
    Opt("weight", flag="mfr-weight", help="MFR penalty weight (turns on MFR; the authors: 0.005 GPT-2, 3 synthetic)"),
    Opt("matching", flag="mfr-matching"),
    Opt("warmup_steps", flag="mfr-warmup"),
    Opt("refresh_every", flag="mfr-refresh"),
)
MFR_NS = "mfr"
FAMILY_FIELDS: dict[str, tuple] = {
    "MFRConfig": ("tied",),
    "LiftedConfig": ("lift",),
    "CNNConfig": ("kernel",),
    "FNOConfig": ("modes", "local"),
    "ConvConfig": (Opt("l1_coefficient", flag="l1", sweep=True), "l1_warmup"),
}


def add_train_options(tr: argparse.ArgumentParser, sae_group: Any, sae_ns: str) -> None:
    """``--from-tensor``, the MFR options and the operator SAE options."""
    import mechwork.sae as ms
    from mechwork.sae import operators

    tr.add_argument(
        "--from-tensor",
        metavar="FILE[:NAME]",
        help="train on activations in a safetensors file: [n, d] or [n, channels, grid] (NAME picks a tensor)",
    )
    for cls_name, fields in FAMILY_FIELDS.items():
        cls = getattr(ms, cls_name, None) or getattr(operators, cls_name)
        add_options(sae_group, cls, fields, ns=sae_ns)
    mfr = tr.add_argument_group("MFR (mutual feature regularisation): --arch mfr or --n-saes > 1 with --mfr-weight")
    mfr.add_argument("--n-saes", type=int_arg, help="SAEs trained together in an MFR run (default 2)")
    mfr.add_argument(
        "--k-growth", choices=("same", "linear"), help="MFR: SAE i gets k (same) or k*(i+1) (linear, the authors')"
    )
    add_options(mfr, ms.MFRPenalty, MFR_FIELDS, ns=MFR_NS)


def load_tensor(spec: str) -> Any:
    """The tensor of ``FILE`` (its only tensor) or ``FILE:NAME``."""
    from ..core.io import load_tensors

    path, _, name = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    if not Path(path).is_file():
        raise DataError(f"--from-tensor: no file {path}")
    tensors = load_tensors(path)
    if not tensors:
        raise DataError(f"--from-tensor: {path} holds no tensors")
    if not name:
        if len(tensors) > 1:
            raise DataError(f"--from-tensor: {path} holds {sorted(tensors)}; pick one with {path}:NAME")
        name = next(iter(tensors))
    if name not in tensors:
        raise DataError(f"--from-tensor: {path} has no tensor {name!r}; it holds {sorted(tensors)}")
    x = tensors[name].float()
    if x.ndim not in (2, 3) or x.shape[0] == 0:
        raise DataError(f"--from-tensor: {spec} has shape {tuple(x.shape)}; expected [n, d] or [n, channels, grid]")
    return x


def apply_mfr(args: argparse.Namespace, cfg: Any) -> Any:
    """Turn the run into an MFR run when ``--arch mfr``, ``--n-saes`` or ``--mfr-weight`` ask for one."""
    import mechwork.sae as ms
    from mechwork.sae.mfr import mfr_saes

    pen = given(args, MFR_NS)
    wants = args.n_saes is not None or pen or args.k_growth or cfg.saes[0].architecture == "mfr"
    if not wants:
        return cfg
    if len(cfg.saes) != 1:
        raise ConfigError(
            f"an MFR run trains --n-saes copies of one SAE; the options describe {len(cfg.saes)} SAEs "
            "(give single values for --k / --width / --seeds)"
        )
    n = 2 if args.n_saes is None else args.n_saes
    saes = mfr_saes(cfg.saes[0], n, k_growth=args.k_growth or "same")
    base = cfg.mfr or ms.MFRPenalty()
    return cfg.replace(saes=saes, mfr=base.replace(**pen))


def is_operator(sae: Any) -> bool:
    return sae.architecture in ("lifted", "cnn", "fno") or len(sae.input_shape) == 2 and sae.site is None


def eval_tensor(paths: list[str], spec: str, as_json: bool) -> int:
    from ..sae import load
    from ..sae.functional import evaluate_tensor

    x = load_tensor(spec)
    results = {p: {"architecture": (s := load(p)).architecture, **evaluate_tensor(s, x)} for p in paths}
    if as_json:
        print(json.dumps(results, indent=2))
        return 0
    for p, r in results.items():
        print(f"{p} ({r['architecture']}) on {spec}")
        print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


def show_operator(sae: Any, html: str | None, n: int = 256) -> int:
    """A concept table (and optional plotly HTML of the concept functions) for operator SAEs."""
    import torch

    with torch.no_grad():
        if hasattr(sae, "concepts"):
            con = sae.concepts(n) if sae.architecture == "fno" else sae.concepts()
        elif hasattr(sae, "dictionary"):
            con = sae.dictionary()
        else:
            con = sae.W_dec.reshape(sae.d_sae, *sae.input_shape)
    con = con.reshape(con.shape[0], -1, con.shape[-1]).float()
    grid = con.shape[-1]
    spec = torch.fft.rfft(con, dim=-1).abs().pow(2).sum(1)
    cut = max(1, grid // 8)
    low = (spec[:, :cut].sum(-1) / spec.sum(-1).clamp_min(1e-12)).tolist()
    print(f"{sae.architecture} SAE: {con.shape[0]} concepts on {con.shape[1]} channel(s); shown on {grid} points")
    print("concept  norm     peak@   low-frequency energy (first 1/8 of modes)")
    for i in range(min(con.shape[0], 64)):
        c = con[i]
        print(f"{i:7d}  {float(c.norm() / math.sqrt(grid)):.4f}  {int(c.abs().amax(0).argmax()):5d}   {low[i]:.3f}")
    if html:
        import plotly.graph_objects as go

        from ..viz import save_html as save_fig

        fig = go.Figure()
        s = [i / grid for i in range(grid)]
        for i in range(min(con.shape[0], 32)):
            fig.add_trace(go.Scatter(x=s, y=con[i, 0].tolist(), mode="lines", name=f"concept {i}"))
        fig.update_layout(title=f"{sae.architecture} SAE concepts", xaxis_title="position s in [0, 1)")
        print(f"wrote {save_fig(fig, html)}")
    return 0
