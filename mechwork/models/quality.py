"""Quality measurements of the shipped models against the ground truth of the generated language.

Used for the model cards, the zoo tests and ``mechwork info``: IOI accuracy on held-out name pairs,
induction loss on the first vs the second copy, gender agreement, style detection by a linear probe on the
residual stream, and the style of free generations.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..core.generate import sample
from ..core.hooks import capture, model_device
from ..data import grammar as G
from ..data import vocab as V
from ..data.corpus import docs_to_batch
from ..data.tokenizer import encode_words, word_to_id


@torch.inference_mode()
def induction_losses(model: Any, n: int = 256, *, seed: int = 1234) -> dict[str, float]:
    """Mean next-token loss on the first and the second copy of repeated random segments."""
    rng = random.Random(seed)
    docs = [G.induction_doc(rng, suffix_len=0) for _ in range(n)]
    tokens, _ = docs_to_batch(docs, int(model.cfg.n_ctx))
    tokens = tokens.to(model_device(model))
    logp = model(tokens).float().log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).cpu()  # nll[i, t] predicts token t+1
    first, second = [], []
    for i, d in enumerate(docs):
        p, L = d.factors["prefix_len"], d.factors["segment_len"]
        # token positions (with BOS at 0): first copy 1+p .. p+L, second copy 1+p+L .. p+2L
        first.append(nll[i, p + 1 : p + L].mean())  # predicting first-copy tokens 2..L
        second.append(nll[i, p + L + 1 : p + 2 * L].mean())  # predicting second-copy tokens 2..L
    return {"loss_first_copy": float(torch.stack(first).mean()), "loss_second_copy": float(torch.stack(second).mean())}


@torch.inference_mode()
def head_scores(model: Any, *, segment_len: int = 12, n: int = 64, seed: int = 0) -> dict[str, list[list[float]]]:
    """Per-head induction and previous-token scores on ``[BOS, x, x]`` with ``x`` random pool tokens.

    ``induction[l][h]``: mean attention from each second-copy token to the token after its first occurrence;
    ``previous_token[l][h]``: mean attention to the immediately preceding position.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor(encode_words(V.INDUCTION_POOL, bos=False))
    L = segment_len
    x = pool[torch.randint(len(pool), (n, L), generator=gen)]
    bos = torch.full((n, 1), word_to_id()[V.BOS])
    tokens = torch.cat([bos, x, x], 1).to(model_device(model))
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(int(model.cfg.n_layers))]
    acts = capture(model, tokens, names, stop=False)
    q = torch.arange(1 + L, 1 + 2 * L)
    allq = torch.arange(1, 1 + 2 * L)
    ind, prev = [], []
    for name in names:
        pat = acts[name].float().cpu()
        ind.append([round(float(pat[:, h, q, q - L + 1].mean()), 4) for h in range(pat.shape[1])])
        prev.append([round(float(pat[:, h, allq, allq - 1].mean()), 4) for h in range(pat.shape[1])])
    return {"induction": ind, "previous_token": prev}


def style_probe_accuracy(model: Any, *, site: str | None = None, n: int = 512, seed: int = 7) -> float:
    """Held-out accuracy of a logistic-regression probe for style on the residual stream at the last position."""
    from sklearn.linear_model import LogisticRegression

    from ..tasks import get

    site = site or f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"
    batch = get("style").prompts(n, seed=seed, split="test")
    acts = capture(model, batch.clean.to(model_device(model)), [site])[site]
    X = acts[torch.arange(n), batch.pos].float().cpu().numpy()
    assert batch.labels is not None  # the style task labels every prompt
    y = batch.labels.numpy()
    half = n // 2
    clf = LogisticRegression(max_iter=2000).fit(X[:half], y[:half])
    return float(clf.score(X[half:], y[half:]))


def generation_styles(
    model: Any, n: int = 64, *, seed: int = 0, max_new_tokens: int = 40, fwd_hooks: Any = ()
) -> dict[str, float]:
    """Sample ``n`` continuations of the neutral opener and read their style off the two lexicons.

    Returns the share of generations with any style word (``styled``), the share whose style words are
    mostly positive (``positive_rate``, among styled ones) and the mean purity (share of a generation's
    style words that agree with its majority style).
    """
    table = word_to_id()
    prompt = torch.tensor([encode_words(G.STYLE_OPENER.split())] * n)
    outs = sample(model, prompt, max_new_tokens, seed=seed, stop_token=table[V.EOS], fwd_hooks=fwd_hooks)
    pos_ids = {table[w] for w in V.STYLE_WORDS[1]}
    neg_ids = {table[w] for w in V.STYLE_WORDS[0]}
    styled, positive, purity = 0, 0, []
    for row in outs:
        p = sum(t in pos_ids for t in row)
        q = sum(t in neg_ids for t in row)
        if p + q == 0:
            continue
        styled += 1
        positive += p > q
        purity.append(max(p, q) / (p + q))
    return {
        "styled": styled / n,
        "positive_rate": positive / max(styled, 1),
        "purity": float(np.mean(purity)) if purity else 0.0,
    }


def model_quality(model: Any, *, quick: bool = False) -> dict[str, Any]:
    """Every quality number of the model card, measured on freshly seeded held-out prompts."""
    from ..tasks import get

    n = 128 if quick else 512
    out: dict[str, Any] = {"induction": {**induction_losses(model, n=n // 2), "head_scores": head_scores(model)}}
    if int(model.cfg.n_layers) and not getattr(model.cfg, "attn_only", False):
        ioi = get("ioi").evaluate(model, n=n, seed=101, split="test")
        out["ioi"] = {
            "accuracy": ioi["accuracy"],
            "logit_diff": ioi["metric"],
            "logit_diff_corrupted": ioi["metric_corrupted"],
        }
        g = get("gender").evaluate(model, n=n, seed=102)
        out["gender"] = {"accuracy": g["accuracy"], "logit_diff": g["metric"]}
        s = get("style").evaluate(model, n=n, seed=103)
        out["style"] = {
            "accuracy": s["accuracy"],
            "logit_diff": s["metric"],
            "probe_accuracy": style_probe_accuracy(model, n=n),
        }
        out["style"].update({f"generation_{k}": v for k, v in generation_styles(model, n=32 if quick else 64).items()})
    return out
