"""``mechwork steer``: fit a steerer (LinEAS, LoFiT, difference of means, ITI, Linear-AcT), generate with it, sweep it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from .options import Opt, add_options, command, given, group, key_values, shared

_METHODS = ("lineas", "lofit", "diffmeans", "iti", "linear-act")


def register(sub: argparse._SubParsersAction) -> None:
    from ..steering import ITI, LinEAS, LoFiT

    _, g = group(
        sub,
        "steer",
        help="concept steering: fit a steerer from two prompt sets, generate with it, sweep strength x layer",
        description="Fit a steering intervention that moves a model's activations from a source prompt set to a "
        "target one (the generated language's style concept: negative -> positive stories), save it as an artefact "
        "folder, generate with it (correct under KV caching), and sweep its strength and layers: behaviour (share "
        "of generations in the target style from the neutral opener) against fluency cost (KL to the unsteered "
        "next-token distribution, cross-entropy increase on held-out text).",
        examples=[
            "mechwork steer fit toy-mixed --method lineas --concept style --to positive --out out/lineas",
            "mechwork steer generate out/lineas --prompt 'the day began .' --strength 0.8 --compare",
            "mechwork steer sweep out/lineas --strengths 0.25,0.5,1 --layers --out out/lineas-sweep",
        ],
    )
    f = command(
        g,
        "fit",
        help="fit a steerer and save it (cfg.json, steerer.safetensors, card.json with its evaluation)",
        examples=[
            "mechwork steer fit toy-mixed --method lineas --to positive --n 32 --out out/lineas",
            "mechwork steer fit toy-mixed --method diffmeans --sites resid_pre.2 --out out/dm",
            "mechwork steer fit toy-mixed --method linear-act --concept gender --to female --out out/gender",
            "mechwork steer fit toy-mixed --method lofit --k 2 --steps 200 --out out/lofit",
            "mechwork steer fit toy-mixed --method lineas --group 0.01 --option clip=0.5 --out out/sparse",
        ],
        parents=[shared("backend", "device", "seed", "json", device="cpu")],
        func=run_fit,
    )
    f.add_argument("model", help="model spec (toy-mixed, a mechwork or Hugging Face folder)")
    f.add_argument("--method", default="lineas", choices=_METHODS, help="steering method (default: lineas)")
    f.add_argument("--concept", default="style", choices=["style", "gender"], help="concept of the generated language")
    f.add_argument(
        "--to",
        default=None,
        choices=["positive", "negative", "female", "male"],
        help="target class (style: positive (default) or negative; gender: female (default) or male)",
    )
    f.add_argument(
        "--source",
        default="opposite",
        choices=["opposite", "mixed"],
        help="source set: stories in the other style (default) or in either style",
    )
    f.add_argument("--n", type=int, default=32, help="prompts per side (default: 32, the LinEAS protocol)")
    f.add_argument("--sites", default=None, help="comma-separated sites, or a kind meaning every layer (resid_post)")
    f.add_argument("--out", required=True, help="artefact folder to write")
    f.add_argument("--no-eval", action="store_true", help="skip the evaluation written to card.json")
    f.add_argument("--eval-n", type=int, default=64, help="generations and held-out texts of the evaluation")
    add_options(f, LinEAS, ["steps", "lr", "l1", "group"], ns="method")
    add_options(
        f,
        LoFiT,
        [
            Opt("k", help="lofit, iti: heads to tune (default: a tenth of the heads)"),
            Opt("loss", help="lofit: sft or dpo"),
        ],
        ns="method",
    )
    add_options(f, ITI, [Opt("alpha", help="iti: multiple of the projection std")], ns="method")
    f.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any other option of the method")

    gen = command(
        g,
        "generate",
        help="generate from prompts with a saved steerer (KV cache, batched, left-padded)",
        examples=[
            "mechwork steer generate out/lineas --prompt 'the day began .' --strength 0.8",
            "mechwork steer generate out/dm --prompt 'the day began .' --prompt 'the park was' --compare --n 3",
        ],
        parents=[shared("backend", "device", "seed", "json", device="cpu")],
        func=run_generate,
    )
    gen.add_argument("dir", help="steerer folder written by `mechwork steer fit`")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    gen.add_argument("--model", default=None, help="model spec (default: the one the steerer was fitted on)")
    gen.add_argument("--strength", type=float, default=None, help="strength (default: the steerer's)")
    gen.add_argument("--positions", default=None, help="all | prompt | generated | comma-separated absolute positions")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    gen.add_argument("--n", type=int, default=1, help="samples per prompt")
    gen.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step")
    gen.add_argument("--compare", action="store_true", help="also print the unsteered continuation")

    s = command(
        g,
        "sweep",
        help="evaluate a saved steerer over strengths (and each of its layers alone); JSON + HTML figure",
        examples=["mechwork steer sweep out/lineas --strengths 0.25,0.5,0.75,1 --layers --out out/sweep"],
        parents=[shared("backend", "device", "seed", "json", device="cpu")],
        func=run_sweep,
    )
    s.add_argument("dir", help="steerer folder")
    s.add_argument("--model", default=None, help="model spec (default: the one the steerer was fitted on)")
    s.add_argument("--strengths", default="0.25,0.5,0.75,1", help="comma-separated strengths")
    s.add_argument("--layers", action="store_true", help="also evaluate each site of the steerer alone")
    s.add_argument("--n", type=int, default=64, help="generations and held-out texts per point (default: 64)")
    s.add_argument("--out", required=True, help="folder for sweep.json and sweep.html")


def _load(spec: str, args: argparse.Namespace) -> Any:
    import mechwork

    return mechwork.load_model(spec, device=args.device, backend=args.backend)


def _method(args: argparse.Namespace) -> Any:
    from ..core.errors import ConfigError
    from ..steering import METHODS

    cls = METHODS[args.method]
    opts = {**given(args, "method"), **key_values(args.option, flag="--option")}
    if args.sites:
        opts["sites"] = args.sites.split(",") if "," in args.sites else args.sites
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(opts) - fields)
    if bad:
        raise ConfigError(f"{args.method} has no option {', '.join(bad)}; its options: {', '.join(sorted(fields))}")
    if "seed" in fields:
        opts.setdefault("seed", args.seed)
    return cls(**opts)


def run_fit(args: argparse.Namespace) -> int:
    from .. import steering as S

    method = _method(args)
    model = _load(args.model, args)
    to = args.to or ("positive" if args.concept == "style" else "female")
    src, tgt = S.concept_sets(args.concept, to=to, n=args.n, seed=args.seed, source=args.source)
    st = method.fit(model, src, tgt, concept=args.concept, to=to, progress=True)
    if not args.no_eval:
        kw: dict[str, Any] = dict(to=to, concept=args.concept, seed=args.seed, n=args.eval_n, n_text=args.eval_n)
        st.card["evaluation"] = {"unsteered": S.evaluate(model, None, **kw), "steered": S.evaluate(model, st, **kw)}
    st.save(args.out)
    _print(args, {"steerer": repr(st), "out": args.out, **st.card.get("evaluation", {})})
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .. import steering as S

    st = S.load(args.dir)
    model = _load(str(args.model or st.config.model), args)
    pos = args.positions
    if pos and pos not in ("all", "prompt", "generated"):
        pos = [int(x) for x in pos.split(",")]
    prompts = [p for p in args.prompt for _ in range(args.n)]
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    rows = S.generate(
        model, prompts, steerer=st, strength=args.strength, positions=pos, use_cache=not args.no_cache, **kw
    )
    out = [{"prompt": p, "steered": model.tokenizer.decode(r)} for p, r in zip(prompts, rows)]
    if args.compare:
        for o, r in zip(out, S.generate(model, prompts, use_cache=not args.no_cache, **kw)):
            o["unsteered"] = model.tokenizer.decode(r)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for o in out:
        print(f"{o['prompt']!r}\n  steered:   {o['steered']}")
        if "unsteered" in o:
            print(f"  unsteered: {o['unsteered']}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from .. import steering as S
    from ..viz import save_html

    st = S.load(args.dir)
    model = _load(str(args.model or st.config.model), args)
    strengths = [float(x) for x in args.strengths.split(",")]
    res = S.sweep(
        model,
        {Path(args.dir).name: st},
        strengths=strengths,
        layers=args.layers,
        n=args.n,
        n_text=args.n,
        seed=args.seed,
    )
    out = Path(args.out)
    res.save(out / "sweep.json")
    save_html(res.plot(), out / "sweep.html")
    save_html(S.support_figure(st), out / "support.html")
    if args.json:
        print(json.dumps({"baseline": res.baseline, "rows": res.rows}, indent=2))
        return 0
    b = res.baseline
    print(f"unsteered: rate {b['rate']:.3f}  (KL 0)  -> {out / 'sweep.json'}, {out / 'sweep.html'}")
    for r in res.rows:
        print(
            f"{r['label']:<40} strength {r['strength']:<5g} rate {r['rate']:.3f}  KL {r['kl']:.4f}  dCE {r['delta_ce']:+.4f}"
        )
    return 0


def _print(args: argparse.Namespace, obj: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, default=str))
        return
    print(obj["steerer"], "->", obj["out"])
    for k in ("unsteered", "steered"):
        if k in obj:
            e = obj[k]
            print(f"  {k:<10} rate {e['rate']:.3f}  KL {e['kl']:.4f}  dCE {e['delta_ce']:+.4f}", end="")
            print(f"  IOI acc {e['ioi_accuracy']:.3f}" if "ioi_accuracy" in e else "")
