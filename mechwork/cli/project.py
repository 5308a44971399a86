"""``mechwork project``: read a model in vocabulary space (lenses, heads, neurons, directions, layer alignment)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, DataError
from .options import command, shared

ACTIONS = ("lens", "head", "neuron", "direction", "align", "scores")
DEFAULT_PROMPT = "When Mary and John went to the store , John gave a drink to"


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "project",
        help="read a model in vocabulary space: logit/tuned lens, head OV/QK, neurons, directions, layer alignment",
        description="Embedding-space projection (Dar et al. 2023; logit lens; tuned lens).\n\n"
        "  project MODEL lens [--prompt TEXT] [--tuned DIR]   per-layer KL to final, entropy, answer rank, top tokens\n"
        "  project MODEL head L.H [--ov | --qk]               top token pairs of a head's OV or QK circuit + scores\n"
        "  project MODEL neuron L.N                           tokens a neuron promotes (value) and reads (key)\n"
        "  project MODEL direction FILE --site SITE           rows of a safetensors/npy tensor read at a site\n"
        "  project MODEL scores                               copying / prev-token / induction score of every head\n"
        "  project align MODEL_A MODEL_B                      layer matching through the embedding space vs raw\n\n"
        "MODEL may also come after the action (project head toy-mixed 1.0); it defaults to toy-mixed.",
        examples=[
            "mechwork project toy-mixed lens --prompt 'When Mary and John went to the store , John gave a drink to'",
            "mechwork project toy-mixed lens --tuned lenses/toy-mixed --html lens.html",
            "mechwork project toy-induction-2l head 1.0 --ov --rows Mary,John --cols Mary,John,ba",
            "mechwork project toy-mixed neuron 2.274 --k 15",
            "mechwork project toy-mixed direction steer.safetensors --site resid_post.2 --key vector",
            "mechwork project align toy-mixed ./other-seed --json",
        ],
        parents=[shared("backend", "device", "json", device="cpu")],
        func=run,
    )
    p.add_argument("words", nargs="+", metavar="[MODEL] ACTION ARG", help=f"actions: {', '.join(ACTIONS)}")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--ov", dest="circuit", action="store_const", const="ov", help="head: the OV circuit (default)")
    kind.add_argument("--qk", dest="circuit", action="store_const", const="qk", help="head: the QK form")
    p.add_argument("--prompt", action="append", default=None, help="lens: a prompt (repeat for several)")
    p.add_argument("--tuned", default=None, metavar="DIR", help="lens: also apply this tuned lens and compare")
    p.add_argument("--stat", default="kl", choices=("kl", "entropy", "rank", "prob", "ce"), help="lens --html cells")
    p.add_argument("--site", default=None, help="direction: the site the vectors live in (default: residual)")
    p.add_argument("--key", default=None, help="direction: tensor name inside a safetensors file")
    p.add_argument("--mode", default="write", choices=("write", "read"), help="direction: write (promotes) / read")
    p.add_argument("--output", default="unembed", choices=("unembed", "embed"), help="read outputs via W_U or W_E^T")
    p.add_argument("--input", default="embed", choices=("embed", "effective"), help="input side: W_E or effective")
    p.add_argument("--rows", default=None, help="head: comma-separated row tokens for the pair table")
    p.add_argument("--cols", default=None, help="head: comma-separated column tokens for the pair table")
    p.add_argument("--k", type=int, default=10, help="top-k entries to show (default: 10)")
    p.add_argument("--html", default=None, help="write the figure as a self-contained HTML file")


def _split(words: list[str]) -> tuple[str, str, list[str]]:
    idx = [i for i, w in enumerate(words) if w in ACTIONS]
    if not idx:
        raise ConfigError(f"no action among {words}; expected one of {', '.join(ACTIONS)}")
    i = idx[0]
    action, rest = words[i], words[:i] + words[i + 1 :]
    if action == "align":
        return "", action, rest
    if i > 1:
        raise ConfigError(f"expected [MODEL] {action} ..., got {' '.join(words)}")
    if i == 1:
        return words[0], action, words[2:]
    if action in ("head", "neuron", "direction") and len(rest) == 2:
        return rest[0], action, rest[1:]
    if action in ("lens", "scores") and len(rest) == 1:
        return rest[0], action, []
    return "toy-mixed", action, rest


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = text.split(".")
        return int(a), int(b)
    except ValueError:
        raise ConfigError(f"{what} must be LAYER.INDEX (e.g. 1.0), got {text!r}") from None


def _one(rest: list[str], action: str, meta: str) -> str:
    if len(rest) != 1:
        raise ConfigError(f"project {action} takes one {meta}, got {rest or 'nothing'}")
    return rest[0]


def _tokens(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.split(",") if t]


def _emit(args: argparse.Namespace, obj: Any, lines: list[str], fig: Any = None) -> int:
    if fig is not None and args.html:
        from ..viz import save_html

        save_html(fig, args.html)
        lines.append(f"figure written to {args.html}")
    print(json.dumps(obj, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def run(args: argparse.Namespace) -> int:
    from .. import load_model

    spec, action, rest = _split(args.words)
    if action == "align":
        if len(rest) != 2:
            raise ConfigError(f"project align takes two models, got {rest}")
        return _align(args, [load_model(s, device=args.device, backend=args.backend) for s in rest])
    model = load_model(spec, device=args.device, backend=args.backend)
    return {"lens": _lens, "head": _head, "neuron": _neuron, "direction": _direction, "scores": _scores}[action](
        args, model, rest
    )


def _lens(args: argparse.Namespace, model: Any, rest: list[str]) -> int:
    from ..projection import logit_lens
    from ..projection.tuned import TunedLens

    if rest:
        raise ConfigError(f"project lens takes no positional arguments (use --prompt), got {rest}")
    prompts = args.prompt or [DEFAULT_PROMPT]
    res = [logit_lens(model, prompts, pos=None)]
    if args.tuned:
        res.append(TunedLens.load(args.tuned, model=model)(model, prompts, pos=None))
    lines, obj = [], {"prompts": prompts, "lenses": {}}
    for r in res:
        s = r.summary()
        obj["lenses"][r.kind] = s.drop(columns="lens").to_dict(orient="list")
        lines.append(f"{r.kind} lens (mean over {len(prompts)} prompt(s), every position):")
        lines.append(s.drop(columns="lens").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        tops = r.top_tokens(model, 3, prompt=0, pos=-1)
        obj["lenses"][r.kind]["top_last_position"] = tops
        lines.append("top-3 at the last position of prompt 0:")
        lines += [f"  {lab:>6}: " + ", ".join(f"{t!r} {p:.2f}" for t, p in row) for lab, row in zip(r.labels, tops)]
    return _emit(args, obj, lines, res[-1].heatmap(model, args.stat) if args.html else None)


def _head(args: argparse.Namespace, model: Any, rest: list[str]) -> int:
    from ..projection import copying_score, prev_token_score, project

    layer, head = _pair(_one(rest, "head", "L.H"), "head")
    kind = args.circuit or "ov"
    p = project(model, kind, layer=layer, head=head, output=args.output, input=args.input)
    obj: dict[str, Any] = {"what": p.what, "top_pairs": p.top_pairs(args.k)}
    lines = [repr(p)]
    if kind == "ov":
        obj["copying_score"] = copying_score(model, layer, head, output=args.output)
        lines.append(f"copying score (positive eigenvalue fraction): {obj['copying_score']:+.3f}")
    elif getattr(model.cfg, "positional_embedding_type", "standard") == "standard":
        obj["prev_token_score"] = prev_token_score(model, layer, head)
        lines.append(f"previous-token score of the positional QK form: {obj['prev_token_score']:.3f}")
    lines.append(f"top {args.k} ({p.row_side}, {p.col_side}) pairs:")
    lines += [f"  {a!r:>16} -> {b!r:<16} {v:+.3f}" for a, b, v in obj["top_pairs"]]
    rows, cols = _tokens(args.rows), _tokens(args.cols)
    if rows:
        obj["rows"] = {r: p.top(args.k, row=r) for r in rows}
        for r, top in obj["rows"].items():
            lines.append(f"{r!r}: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in top))
    return _emit(args, obj, lines, p.plot(rows, cols) if args.html else None)


def _neuron(args: argparse.Namespace, model: Any, rest: list[str]) -> int:
    from ..projection import project

    layer, neuron = _pair(_one(rest, "neuron", "L.N"), "neuron")
    out = project(model, "neuron_out", layer=layer, neuron=neuron, output=args.output)
    key = project(model, "neuron_in", layer=layer, neuron=neuron, input=args.input)
    obj = {"value_promotes": out.top(args.k), "value_suppresses": out.top(args.k, largest=False)}
    obj["key_reads"] = key.top(args.k)
    lines = [f"neuron L{layer}N{neuron}"]
    for name, top in obj.items():
        lines.append(f"  {name}: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in top))
    from ..projection.plots import top_table

    return _emit(args, obj, lines, top_table(out, args.k) if args.html else None)


def load_vectors(path: str, key: str | None) -> Any:
    """A tensor from a ``.safetensors`` (by ``key``, or its only tensor) or ``.npy`` file (no pickle)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise DataError(f"direction file not found: {p}")
    if p.suffix == ".npy":
        import numpy as np

        try:
            return torch.from_numpy(np.load(p, allow_pickle=False)).float()
        except ValueError as e:
            raise DataError(f"{p} is not a plain numeric .npy array ({e})") from e
    from ..core.io import load_tensors

    tensors = load_tensors(p)
    if key is None:
        if len(tensors) != 1:
            raise ConfigError(f"{p} holds {sorted(tensors)}; choose one with --key")
        return next(iter(tensors.values())).float()
    if key not in tensors:
        raise ConfigError(f"{p} has no tensor {key!r}; it holds {sorted(tensors)}")
    return tensors[key].float()


def _direction(args: argparse.Namespace, model: Any, rest: list[str]) -> int:
    from ..projection import project

    vec = load_vectors(_one(rest, "direction", "FILE"), args.key)
    p = project(model, vec, site=args.site, mode=args.mode, output=args.output)
    n = min(p.shape[0], 20)
    labels = p.row_labels or [str(i) for i in range(p.shape[0])]
    obj = {"what": p.what, "rows": {labels[i]: p.top(args.k, row=i) for i in range(n)}}
    lines = [repr(p)] + [f"  {r}: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in top) for r, top in obj["rows"].items()]
    if p.shape[0] > n:
        lines.append(f"  ... {p.shape[0] - n} more rows")
    from ..projection.plots import top_table

    return _emit(args, obj, lines, top_table(p, args.k, rows=list(range(n))) if args.html else None)


def _scores(args: argparse.Namespace, model: Any, rest: list[str]) -> int:
    from ..projection import head_scores

    df = head_scores(model, output=args.output)
    from ..projection.plots import copying_bar

    lines = [df.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return _emit(args, df.to_dict(orient="records"), lines, copying_bar(df) if args.html else None)


def _align(args: argparse.Namespace, models: list[Any]) -> int:
    from ..projection.align import align

    al = align(*models)
    df = al.to_dataframe()
    obj = {"models": list(al.names), "table": df.to_dict(orient="records")}
    obj["kernel_all"] = al.kernel["all"].tolist()
    lines = [repr(al), df.to_string(index=False)]
    return _emit(args, obj, lines, al.plot() if args.html else None)
