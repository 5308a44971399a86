"""The papers' claims at test size (each can fail); the benchmark runs them longer (benchmarks/RESULTS.md).

Held here: MFR makes the SAEs of a run agree (the mechanism); lifting speeds dictionary recovery (SAE-NO);
an SAE-FNO trained at one resolution reconstructs at a coarser one as well as at its own, an SAE-CNN does not.
MFR's headline claim (better recovery of the true features than independent training) did not hold at these
sizes and is reported, with its settings, in RESULTS.md rather than asserted.
"""

from __future__ import annotations

import torch

import mechwork.sae as ms
from mechwork.sae.functional import FunctionDictionary, dictionary_recovery, nmse
from mechwork.sae.mfr import hungarian, matched_mmcs, mfr_saes
from mechwork.sae.synthetic import recovery


def test_mfr_pulls_the_saes_of_a_run_together():
    gen = ms.GroupedSynthetic(d=64, n_features=128, n_groups=8, n_active=8, seed=0)
    x, _ = gen.sample(20_000, seed=7)
    base = ms.SAEConfig(architecture="mfr", d_sae=128, k=8, b_dec_init="zeros")
    cross, truth = {}, {}
    for w in (0.0, 0.3):
        cfg = ms.TrainConfig(
            saes=mfr_saes(base, 2),
            batch_size=512,
            tokens=512 * 120,
            lr=1e-2,
            warmup_steps=10,
            mfr=ms.MFRPenalty(weight=w, warmup_steps=30) if w else None,
        )
        a, b = (s.W_dec.detach() for s in ms.train(cfg, x, progress=False).saes)
        cross[w] = float(matched_mmcs(a, b, hungarian(a, b)))
        truth[w] = [recovery(d, gen.features)["mcc"] for d in (a, b)]
    assert cross[0.3] > 0.95 and cross[0.3] > cross[0.0] + 0.1, cross
    assert min(truth[0.3] + truth[0.0]) > 0.6, truth  # both runs learn the features to a large extent


def _curve(arch: str, x: torch.Tensor, true: torch.Tensor, **kw) -> dict[int, float]:
    curve: dict[int, float] = {}

    def cb(step: int, saes: list) -> None:
        s = saes[0]
        atoms = s.dictionary() if arch == "lifted" else s.W_dec
        curve[step] = dictionary_recovery(atoms.reshape(s.d_sae, -1), true)["mcc"]

    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(architecture=arch, b_dec_init="zeros", **kw),),
        batch_size=256,
        tokens=256 * 50,
        lr=3e-3,
        warmup_steps=20,
        log_every=25,
    )
    ms.train(cfg, x, progress=False, callback=cb)
    return curve


def test_lifting_speeds_recovery():
    fd = FunctionDictionary()
    x = fd.sample(6000, 32, seed=1)
    true = fd.concepts(32)
    flat = _curve("topk", x, true, d_sae=256, k=4)
    lifted = _curve("lifted", x, true, d_sae=256, k=4, lift=4)
    assert lifted[50] > flat[50] + 0.05, (flat, lifted)


def test_fno_reconstructs_at_unseen_resolutions_where_cnn_does_not():
    fd = FunctionDictionary()
    x = fd.sample(6000, 64, seed=1)
    pos, amp = fd.codes(1000, seed=5)
    err = {}
    for arch, kw in (("cnn", dict(kernel=21)), ("fno", dict(modes=12))):
        cfg = ms.TrainConfig(
            saes=(ms.SAEConfig(architecture=arch, d_sae=8, iterations=2, b_dec_init="zeros", **kw),),
            batch_size=256,
            tokens=256 * 80,
            lr=3e-3,
            warmup_steps=20,
        )
        s = ms.train(cfg, x, progress=False).sae
        with torch.no_grad():
            err[arch] = {n: nmse(s(fd.render(pos, amp, n)), fd.render(pos, amp, n)) for n in (32, 64, 128)}
    fno, cnn = err["fno"], err["cnn"]
    assert max(fno[32], fno[128]) < 1.25 * fno[64], err
    assert cnn[32] > 1.5 * cnn[64], err
