"""``mechwork demo``: a short tour of the shipped toy-mixed model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import command, shared


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "demo",
        help="a short tour of the shipped model (tokens, predictions, logit lens, a figure)",
        description="Load the shipped toy-mixed model, tokenise an IOI prompt, show the top next-token predictions, "
        "the IOI logit difference on held-out name pairs, and its build-up layer by layer with the logit lens; "
        "write the figure as self-contained HTML.",
        examples=["mechwork demo --out out/demo"],
        parents=[shared("backend")],
        func=run,
    )
    p.add_argument("--model", default="toy-mixed", help="model to tour (default: toy-mixed)")
    p.add_argument("--out", default="out/demo", help="folder for the figure (default: out/demo)")
    p.add_argument("--n", type=int, default=128, help="number of IOI prompts (default: 128)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import load_model, sites, tasks
    from ..projection import logit_lens
    from ..viz import save_html

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model(args.model, device="cpu", backend=args.backend)
    cfg = model.cfg
    print(
        f"== {args.model} ({type(model).__name__}): {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, {sum(p.numel() for p in model.parameters()):,} parameters, {len(sites(model))} sites"
    )

    prompt = "When Mary and John went to the store , John gave a drink to"
    toks = model.to_tokens(prompt)
    print(f"\nprompt: {prompt!r}\ntokens: {model.to_str_tokens(prompt)}")
    with torch.inference_mode():
        probs = model(toks)[0, -1].softmax(-1)
    top = probs.topk(5)
    print("top next-token predictions:")
    for p_, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {model.to_single_str_token(i):>10}  {p_:.3f}")

    task = tasks.get("ioi")
    batch = task.prompts(args.n, seed=0, split="test", model=model)
    res = task.evaluate(model, n=args.n, seed=0)
    print(
        f"\nIOI on {args.n} held-out name pairs: accuracy {res['accuracy']:.3f}, logit diff {res['metric']:.2f} "
        f"(corrupted: {res['metric_corrupted']:.2f})"
    )
    lens = logit_lens(model, batch.clean, pos=batch.pos)
    ld = lens.logit_diff(batch.answer, batch.wrong)
    print("logit lens, mean IOI logit difference after each layer:")
    for label, v in zip(lens.labels, ld.mean(1).tolist()):
        print(f"  {label:>6}  {v:+.2f}  " + "#" * max(0, int(round(v * 2))))
    fig = lens.plot(ld, title=f"IOI logit difference through the layers of {args.model} (logit lens)")
    out = save_html(fig, Path(args.out) / "ioi_logit_lens.html")
    print(f"\nfigure: {out}")
    print("next: `mechwork info toy-mixed` lists every activation site; see notebooks/01_getting_started.ipynb")
    return 0
