"""``mechwork circuit MODEL``: find a circuit (edges, nodes or SAE latents), prune it, check it, export it;
``mechwork circuit show graph.json``: summarise a saved graph."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..circuits.export import FORMATS
from .options import Opt, add_options, command, given, shared

EDGE_METHODS = ("eap", "eap-ig", "exact")
NODE_METHODS = ("activation", "atp", "attribution", "relp", "relevance", "ig")
_NODE_CANON = {"atp": "attribution", "relp": "relevance", "ig": "integrated_gradients"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..circuits import attribute_edges

    p = command(
        sub,
        "circuit",
        help="circuits: edge attribution (EAP, EAP-IG, exact), node or SAE-latent graphs, pruning, export",
        description="Score the edges between components (embeddings, heads via their q/k/v inputs, MLPs, logits) "
        "with EAP, EAP-IG or exact edge patching, or the nodes with a patching method, or the SAE latents of "
        "spliced SAEs; prune the graph (circuit-tracer's influence rule by default), measure its faithfulness "
        "(everything outside patched to the corrupted run) and export it: Neuronpedia JSON, node-link JSON, "
        "GraphML, DOT, or a self-contained interactive HTML page (no CDN). `mechwork circuit show FILE` prints a "
        "saved graph.",
        examples=[
            "mechwork circuit toy-mixed --task ioi --out ioi.json --html ioi.html",
            "mechwork circuit toy-mixed --task ioi --method exact --prune top=40 --out ioi.graphml",
            "mechwork circuit toy-induction-2l --task induction --method eap-ig --steps 16 --out ind.html",
            "mechwork circuit toy-mixed --task ioi --method relp --level node --out nodes.json",
            "mechwork circuit toy-mixed --task ioi --sae sae_checkpoints/toy-mixed/blocks.1.hook_resid_post "
            "--sae sae_checkpoints/toy-mixed/blocks.2.hook_resid_post --out latents.html",
            "mechwork circuit show ioi.json",
        ],
        parents=[
            shared(
                "backend",
                "device",
                "seed",
                "json",
                device="cpu",
                help={"seed": "prompt seed", "json": "print a JSON summary instead of text"},
            )
        ],  # fmt: skip
        func=run,
    )
    p.add_argument(
        "model", nargs="?", default="toy-mixed", help="shipped name or folder, or 'show' (default: toy-mixed)"
    )
    p.add_argument("graph", nargs="?", default=None, help="with 'show': the graph file to summarise")
    p.add_argument("--task", default="ioi", help="ioi, induction, gender, style (default: ioi)")
    p.add_argument(
        "--method",
        default="eap-ig",
        choices=(*EDGE_METHODS, *NODE_METHODS),
        help="edge level: eap, eap-ig, exact; node level: activation, atp, relp, ig (default: eap-ig)",
    )
    p.add_argument("--level", default=None, choices=["node", "edge", "latent"], help="default: from the method/--sae")
    p.add_argument("--per", default="head", help="node level granularity: head, head_position, position, layer")
    p.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="[SITE=]DIR",
        help="splice an SAE (repeatable): a latent graph; SITE defaults to the SAE's own site",
    )
    p.add_argument(
        "--scan",
        type=int,
        default=0,
        metavar="N_TOKENS",
        help="label latents with their best ground-truth tag from a scan of N_TOKENS generated tokens (default: off)",
    )
    p.add_argument(
        "--prune",
        default="influence=0.95",
        help="influence=F[,edge=E] (circuit-tracer rule; edge default 0.98), top=N, threshold=T, or none "
        "(default: influence=0.95: on toy-mixed IOI it keeps 31 of 479 edges at faithfulness 0.85, where 0.8 "
        "keeps 19 at 0.56)",
    )
    p.add_argument("--n", type=int, default=None, help="number of prompts (default: 32; latent graphs: 1)")
    add_options(
        p,
        attribute_edges,
        [
            Opt("steps", default=16, help="EAP-IG / IG quadrature points"),
            Opt("quadrature_rule", flag="quadrature"),
            "path",
            Opt("batch_size", help="most rows per forward pass"),
            Opt("per_position", help="EAP: nodes at token positions (heads read keys/values across positions)"),
        ],
        ns="edges",
    )
    p.add_argument("--ablation", default="corrupt", choices=["corrupt", "mean"], help="faithfulness ablation")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness check of the circuit")
    p.add_argument("--out", default=None, help="write the (pruned) graph; format from the extension or --format")
    p.add_argument(
        "--format", default=None, choices=FORMATS, help="default: from --out's extension (.json: neuronpedia)"
    )
    p.add_argument("--html", default=None, help="also write the interactive HTML view here")
    p.add_argument("--top", type=int, default=12, help="print the top N edges (default: 12)")


def parse_prune(text: str | None) -> dict[str, Any]:
    """``influence=0.8[,edge=0.98]`` / ``top=40`` / ``threshold=0.01`` / ``none`` -> keyword arguments of prune."""
    from ..core.errors import ConfigError

    if text is None or text.strip().lower() in ("", "none", "no"):
        return {}
    out: dict[str, Any] = {}
    names = {
        "influence": "influence",
        "edge": "edge_influence",
        "top": "top_n",
        "top_n": "top_n",
        "threshold": "threshold",
    }
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in names:
            raise ConfigError(f"--prune takes influence=F[,edge=E], top=N or threshold=T; got {item!r}")
        try:
            out[names[key]] = int(value) if names[key] == "top_n" else float(value)
        except ValueError as e:
            raise ConfigError(f"--prune {key}= needs a number, got {value!r}") from e
    return out


def run(args: argparse.Namespace) -> int:
    if args.model == "show":
        return _show(args)
    import torch

    from .. import tasks
    from ..core.errors import ConfigError
    from ..models.load import load_model

    t0 = time.perf_counter()
    method = args.method.lower()
    level = args.level or ("latent" if args.sae else "edge" if method in EDGE_METHODS else "node")
    if level == "edge" and method not in EDGE_METHODS:
        raise ConfigError(f"--method {method} scores nodes; at --level edge use one of {', '.join(EDGE_METHODS)}")
    if level == "node" and method not in NODE_METHODS:
        raise ConfigError(f"--level node takes a patching method ({', '.join(NODE_METHODS)}), got {method!r}")
    if level == "latent" and not args.sae:
        raise ConfigError("--level latent needs at least one --sae SITE=DIR")
    prune_kw = parse_prune(args.prune)
    model = load_model(args.model, device=args.device, backend=args.backend)
    if sum(p.numel() for p in model.parameters()) < 20_000_000:
        torch.set_num_threads(1)
    task = tasks.get(args.task)
    batch = _prompts(task, model, args.n or (1 if level == "latent" else 32), args.seed)
    graph = _attribute(model, batch, task, method, level, args)
    full = graph
    if prune_kw:
        graph = graph.prune(**prune_kw)
    summary: dict[str, Any] = {"model": args.model, "task": args.task, "method": method, "level": level}
    if not args.no_faithfulness and graph.n_edges:
        extra = {"saes": args.saes} if level == "latent" else {}
        f = graph.faithfulness(model, batch, task, ablation=args.ablation, **extra)
        graph.metadata["faithfulness"] = f.value
        graph.metadata["faithfulness_ablation"] = args.ablation
        summary["faithfulness"] = f.value
    summary.update(
        n_edges=graph.n_edges, n_edges_total=full.n_edges, n_nodes=graph.n_nodes, cost=full.metadata.get("cost", {})
    )
    written = []
    if args.out:
        written.append(str(graph.save(args.out, format=args.format)))
    if args.html:
        written.append(str(graph.save(args.html, format="html")))
    summary["written"] = written
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(graph.summary())
    for w in written:
        print(f"wrote {w}")
    print(f"done in {summary['seconds']:.1f} s")
    return 0


def _prompts(task: Any, model: Any, n: int, seed: int) -> Any:
    try:
        return task.prompts(n, seed=seed, model=model)
    except TypeError:  # tasks that only render in the generated language's vocabulary
        return task.prompts(n, seed=seed)


def _attribute(model: Any, batch: Any, task: Any, method: str, level: str, args: argparse.Namespace) -> Any:
    from ..circuits import Graph, attribute_edges

    kw = given(args, "edges")
    if level == "edge":
        return attribute_edges(model, batch, task, method=method, progress=not args.json, **{"steps": 16, **kw})
    if level == "latent":
        from ..circuits.latents import attribute_latents, parse_sae_args

        saes = parse_sae_args(args.sae)
        scans = None
        if args.scan:
            from ..sae import latent_stats

            scans = {site: latent_stats(sae, model=model, site=site, n_tokens=args.scan) for site, sae in saes.items()}
        args.saes = saes
        return attribute_latents(model, batch, task, saes=saes, scans=scans)
    from ..patching import METHODS

    fn = METHODS[_NODE_CANON.get(method, method)]
    node_kw: dict[str, Any] = {"sites": "z", "per": args.per}
    if fn.__name__ == "integrated_gradients":
        node_kw["steps"] = given(args, "edges").get("steps", 16)
    return Graph.from_scores(fn(model, batch, task, **node_kw), model=model)


def _show(args: argparse.Namespace) -> int:
    from ..circuits import Graph
    from ..core.errors import ConfigError

    if not args.graph:
        raise ConfigError("usage: mechwork circuit show GRAPH_FILE (.json Neuronpedia or node-link, .graphml)")
    path = Path(args.graph)
    g = Graph.load(path)
    if args.json:
        print(json.dumps({"nodes": g.n_nodes, "edges": g.n_edges, "metadata": g.metadata}, indent=2, default=str))
        return 0
    print(g.summary())
    return 0
