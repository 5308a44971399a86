"""``mechwork sae``: train SAEs (sweeps in one pass), evaluate them spliced into the model, browse latents."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from . import sae_family as family
from .options import Opt, add_options, command, given, group, int_arg, shared

TRAIN_EXAMPLES = (
    """examples:
  # stream activations of the shipped model (no cache needed), sweep k over one pass:
  mechwork sae train --model toy-mixed --site resid_post.2 --tokens 2000000 --k 16,32 --width 2048 --out runs/l2
  # from an activation cache written by `mechwork cache collect`:
  mechwork sae train --from-cache acts/ --site resid_post.2 --k 32 --width 4096 --out runs/l2
  # from a JSON TrainConfig (flags given on the command line override its fields):
  mechwork sae train --config run.json --out runs/l2
  # continue an interrupted run (same config):
  mechwork sae train --config runs/l2/cfg.json --resume
"""
    + family.FAMILY_EXAMPLES
)
EVAL_EXAMPLES = """examples:
  mechwork sae eval runs/l2/saes/topk_k32_w2048_s0
  mechwork sae eval sae_checkpoints/toy-mixed/blocks.2.hook_resid_post --tokens 50000 --json
"""
SHOW_EXAMPLES = """examples:
  # the latents worth a first look (best held-out label F1 on the generated language), and the full dashboard:
  mechwork sae show sae_checkpoints/toy-mixed/blocks.2.hook_resid_post --html l2.html
  # chosen latents, more tokens, BOS/EOS/padding counted too:
  mechwork sae show runs/l2/saes/topk_k32_w2048_s0 12 40 133 --tokens 100000 --include-special
  # any model: read a text file (one document per line) with the model's tokenizer, or an activation cache:
  mechwork sae show my_sae/ --model path/to/hf_folder --source corpus.txt --html my_sae.html
  mechwork sae show my_sae/ --from-cache acts/ --html my_sae.html
"""


def _architectures() -> list[str]:
    from ..sae import registry

    return registry.trainable_names()


# TrainConfig / SAEConfig fields offered by `sae train` (type, default, choices and help come from the configs)
TRAIN_DATA = (
    Opt("store", flag="from-cache", help="activation store folder (mechwork cache)"),
    Opt("model", help="stream from this model on the generated corpus (e.g. toy-mixed)"),
    Opt("site", help="site, e.g. resid_post.2 or blocks.2.hook_resid_post"),
    Opt("tokens", help="training tokens (default: one pass over the cache)"),
    "data_seed",
)
# per config class (one per architecture); all land in the namespace "sae" and SAEConfig(**fields) keeps
# the fields of the chosen --arch
SAE_FIELDS: dict[str, tuple] = {
    "SAEConfig": (
        Opt("architecture", flag="arch", choices=_architectures, help="SAE architecture"),
        Opt("d_sae", flag="width", sweep=True),
        Opt("seed", flag="seeds", sweep=True),
        "dead_tokens",
        "normalize",
        "b_dec_init",
    ),
    "TopKConfig": (Opt("k", sweep=True), "k_start", "k_anneal", "alpha", "k_aux", "aux_coefficient"),
    "ReLUConfig": (Opt("l1_coefficient", flag="l1", sweep=True), "l1_warmup"),
}
SAE_NS = "sae"
TRAIN_RUN = (
    "batch_size",
    Opt("lr", help="Adam learning rate (default 2e-4/sqrt(width/16384))"),
    "warmup_steps",
    "decay_fraction",
    "grad_clip",
    "out",
    "checkpoint_every",
    "log_every",
    "device",
    Opt("sparse", flag="dense", help="use the dense reference step instead of the sparse kernels"),
    "autocast",
    Opt("wandb_project", flag="wandb"),
)


def _config_class(name: str) -> Any:
    import mechwork.sae as ms

    return getattr(ms, name)


def register(sub: argparse._SubParsersAction) -> None:
    from ..sae.config import TrainConfig
    from ..sae.latents import latent_stats

    _, ssub = group(
        sub,
        "sae",
        help="sparse autoencoders: train, evaluate, browse latents",
        description="Train TopK (k-sparse), ReLU, MFR or SAE-neural-operator SAEs on cached, streamed or given "
        "activations, evaluate them "
        "spliced into the model, and look at what their latents mean.",
        examples=TRAIN_EXAMPLES + EVAL_EXAMPLES + SHOW_EXAMPLES,
    )

    tr = command(
        ssub,
        "train",
        help="train one or several SAEs in one pass",
        examples=TRAIN_EXAMPLES,
        description="Train SAEs; comma-separated --k/--width/--seeds/--l1 values train the whole grid "
        "in one pass over the same batches. Writes <out>/saes/<name>/ (SAELens folder format), "
        "<out>/metrics.jsonl, <out>/cfg.json and <out>/checkpoint/.",
        func=run_train,
    )
    src = tr.add_argument_group("data (one of --from-cache, --model, or --config naming one)")
    src.add_argument("--config", help="a TrainConfig JSON file (the options below override its fields)")
    add_options(src, TrainConfig, TRAIN_DATA)
    sae_group = tr.add_argument_group("SAEs (comma-separated lists sweep)")
    for cls_name, fields in SAE_FIELDS.items():
        add_options(sae_group, _config_class(cls_name), fields, ns=SAE_NS)
    family.add_train_options(tr, sae_group, SAE_NS)
    opt = tr.add_argument_group("optimisation and run")
    add_options(opt, TrainConfig, TRAIN_RUN)
    opt.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    opt.add_argument("--stop-at", type=int_arg, help="stop after this step and checkpoint (resume later)")
    opt.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = command(
        ssub,
        "eval",
        help="FVU, L0, dead latents, CE-loss recovered and KL with the SAE spliced in",
        examples=EVAL_EXAMPLES,
        parents=[shared("json")],
        func=run_eval,
    )
    ev.add_argument("saes", nargs="+", metavar="SAE_DIR")
    ev.add_argument("--model", help="model (default: the one the SAE was trained on)")
    ev.add_argument("--site", help="site (default: the SAE's own)")
    ev.add_argument("--from-cache", dest="store", help="evaluate on the windows of this activation store")
    ev.add_argument("--tokens", type=int_arg, default=16384, help="tokens to evaluate on (default 16384)")
    ev.add_argument("--k", type=int, help="TopK: latents kept at inference")
    ev.add_argument(
        "--from-tensor",
        metavar="FILE[:NAME]",
        help="evaluate on activations in a safetensors file ([n, d] or [n, channels, grid]; FVU, NMSE, L0, dead); "
        "the way to evaluate operator SAEs",
    )

    sh = command(
        ssub,
        "show",
        help="what latents mean: statistics, labels with their evidence, logit effects, an HTML dashboard",
        examples=SHOW_EXAMPLES,
        description="One streamed pass over tokens gives every latent's firing frequency, activation quantiles and "
        "histogram, top contexts (de-duplicated) and samples by quantile band; logit effects come from the decoder "
        "directions. On the shipped models labels are ground-truth tags scored on held-out documents "
        "(precision/recall/F1); elsewhere a top-token summary. Special tokens (BOS, EOS, padding, CLS, SEP) are "
        "left out unless --include-special.",
        func=run_show,
    )
    sh.add_argument("sae", metavar="SAE_DIR")
    sh.add_argument(
        "latents", nargs="*", type=int, metavar="LATENT", help="latents to print (default: the best-labelled ones)"
    )
    sh.add_argument("--model", help="model (default: the one the SAE was trained on)")
    sh.add_argument("--from-cache", dest="store", help="read the rows of this activation store (no model run)")
    sh.add_argument(
        "--source",
        help="a token source: a file (.txt, one document per line; .jsonl; .safetensors; .npy), 'corpus' or 'task:NAME'",
    )
    sh.add_argument("--html", help="write the offline dashboard of all latents here")
    sh.add_argument("--top", type=int_arg, default=5, help="contexts printed per latent (default 5)")
    sh.add_argument("--n", type=int_arg, default=10, help="latents printed when none are given (default 10)")
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_options(sh, latent_stats, [Opt("n_tokens", flag="tokens"), "include_special", "seed", "batch_size"])
    sh.add_argument("--grid", type=int_arg, default=256, help="operator SAEs: grid on which concepts are shown")


_SWEEP_AXES = ("k", "d_sae", "seed", "l1_coefficient")
_FLAGS = {"d_sae": "width", "seed": "seeds", "l1_coefficient": "l1", "architecture": "arch"}


def _train_config(args: argparse.Namespace) -> Any:
    from ..sae import SAEConfig, TrainConfig, sweep

    base = TrainConfig.from_json(args.config, ignore=("mechwork_version", "kind")) if args.config else TrainConfig()
    changes = given(args, TrainConfig)
    sae_opts = given(args, SAE_NS)
    axes = {k: sae_opts.pop(k) for k in _SWEEP_AXES if k in sae_opts}
    sae_base = base.saes[0] if args.config else SAEConfig()
    if sae_opts or axes or not args.config:
        sae_base = sae_base.replace(architecture=sae_opts.pop("architecture", sae_base.architecture))
        foreign = [k for k in [*sae_opts, *axes] if k not in type(sae_base).__dataclass_fields__]
        if foreign:
            flags = ", ".join("--" + _FLAGS.get(k, k.replace("_", "-")) for k in foreign)
            raise ConfigError(f"{flags} do(es) not apply to --arch {sae_base.architecture}")
        changes["saes"] = sweep(sae_base.replace(**sae_opts), **axes)
    cfg = family.apply_mfr(args, base.replace(**changes))
    if args.from_tensor and (cfg.store or cfg.model):
        raise ConfigError("give one data source: --from-tensor, --from-cache or --model")
    if cfg.out is None:
        raise ConfigError("give an output folder with --out (or 'out' in the config)")
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from ..sae import train

    cfg = _train_config(args)
    x = family.load_tensor(args.from_tensor) if args.from_tensor else None
    result = train(cfg, x, resume=args.resume, stop_at_step=args.stop_at, progress=not args.no_progress)
    if result.stopped_early:
        print(
            f"stopped at step {result.steps} of the run; checkpoint in {Path(cfg.out) / 'checkpoint'} (resume with --resume)"
        )
        return 0
    rows = result.final_metrics()
    print(f"trained {len(result.saes)} SAE(s) on {result.tokens:,} tokens in {result.seconds:.1f} s")
    for name, r in rows.items():
        print(
            f"  {name}: FVU {r['fvu']:.4f}  L0 {r['l0']:.1f}  dead {r['dead_fraction']:.1%}  -> {Path(cfg.out) / 'saes' / name}"
        )
    return 0


def _model_for(sae: Any, spec: str | None, store: Any = None) -> Any:
    from ..models import load_model

    spec = spec or (getattr(store, "model_spec", None) if store is not None else None) or sae.meta.get("model")
    if not spec:
        raise ConfigError("the SAE does not record its model; pass --model")
    return load_model(spec, device="cpu")


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def run_eval(args: argparse.Namespace) -> int:
    from ..sae import load
    from ..sae.evaluate import evaluate

    if args.from_tensor:
        return family.eval_tensor(args.saes, args.from_tensor, args.json)
    store = _open_store(args.store)
    results = {}
    for path in args.saes:
        sae = load(path)
        model = _model_for(sae, args.model, store)
        res = evaluate(sae, model, store, args.site, n_tokens=args.tokens, k=args.k)
        res.pop("latent_freq", None)
        results[path] = res
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    keys = (
        "fvu",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "ce_clean",
        "ce_sae",
        "ce_zero",
        "ce_loss_recovered",
        "ce_loss_recovered_mean_ablation",
        "kl_sae",
        "n_tokens",
    )
    for path, res in results.items():
        print(f"{path} @ {res['site']} (k={res['k']})")
        print("  " + "  ".join(f"{k}={_fmt(res[k])}" for k in keys))
    return 0


def _open_store(path: str | None) -> Any:
    if path is None:
        return None
    from ..cache import ActivationStore

    return ActivationStore.open(path)


def run_show(args: argparse.Namespace) -> int:
    from ..sae import latent_stats, load
    from ..sae.dashboard import render_text

    sae = load(args.sae)
    if family.is_operator(sae):
        return family.show_operator(sae, args.html, args.grid)
    for j in args.latents:
        if not 0 <= j < sae.d_sae:
            raise ConfigError(f"latent {j} is out of range: the SAE has {sae.d_sae} latents (0..{sae.d_sae - 1})")
    store = _open_store(args.store)
    if store is not None and args.source:
        raise ConfigError("give either --from-cache or --source, not both")
    model = None if store is not None and not args.model else _model_for(sae, args.model, store)
    opts = given(args, latent_stats)
    stats = latent_stats(
        sae, store if store is not None else args.source, model=model, progress=not args.no_progress, **opts
    )
    latents = args.latents or stats.best(args.n)
    print(f"{stats!r}; special tokens {'counted' if stats.meta['include_special'] else 'left out'}")
    print(render_text(stats, latents, n=args.top))
    if args.html:
        info = {
            "sae": args.sae,
            "site": stats.meta.get("site"),
            "model": stats.meta.get("model"),
            "source": stats.meta.get("source"),
        }
        out = stats.to_html(args.html, title=f"SAE latents: {Path(args.sae).name}", info=info)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {stats.d_sae} latents)")
    return 0
