"""Write notebooks/06_steering.ipynb (kept as code so the notebook stays reviewable)."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(
        "# Concept steering: from neutral to positive stories in `toy-mixed`\n\n"
        "In the generated language a story opens with *the day began .* and continues in one of two styles whose "
        "words are disjoint and known (positive: *happy, lovely, laughed* ...; negative: *sad, awful, cried* ...). "
        "`toy-mixed` continues the neutral opener in either style about equally often, so the style of a generation "
        "is read off exactly by counting lexicon words: no judge model. This notebook\n\n"
        "1. measures the unsteered style rate,\n"
        "2. fits **LinEAS** (per-unit affine maps at every layer, trained end to end with a sorted 1-D Wasserstein "
        "loss) from 32 negative and 32 positive stories and generates with it,\n"
        "3. compares LinEAS with LoFiT, difference of means, ITI and Linear-AcT on the same 32 + 32 prompts: "
        "behaviour (share of positive generations) against fluency cost (KL to the unsteered next-token "
        "distribution on unrelated text),\n"
        "4. switches layers off with the group lasso, inverts a map, saves and reloads a steerer."
    ),
    code(
        "import torch, mechwork\n"
        "from mechwork import steering as S\n"
        "torch.set_num_threads(1)\n"
        "model = mechwork.load_model('toy-mixed')\n"
        "base = S.evaluate(model, None, n=48)\n"
        "print({k: round(v, 4) for k, v in base.items()})\n"
        "for row in S.generate(model, ['the day began .'] * 4, max_new_tokens=16, seed=1):\n"
        "    print('  ', model.tokenizer.decode(row))"
    ),
    md(
        "`rate` is the share of generations whose style words are mostly positive: about one half. `kl` and "
        "`delta_ce` are 0 without steering; IOI accuracy and the induction loss are the unrelated behaviours we "
        "watch.\n\n## 2. LinEAS from 32 + 32 stories"
    ),
    code(
        "src, tgt = S.concept_sets('style', to='positive', n=32, seed=0)\n"
        "print(src[0]); print(tgt[0])\n"
        "lineas = S.LinEAS(steps=100).fit(model, src, tgt, concept='style', to='positive')\n"
        "lineas"
    ),
    code(
        "for lam in (0.5, 1.0):\n"
        "    r = S.evaluate(model, lineas, strength=lam, n=48)\n"
        '    print(f\'strength {lam}: rate {r["rate"]:.3f}  KL {r["kl"]:.4f}  dCE {r["delta_ce"]:+.4f}  \'\n'
        '          f\'IOI acc {r["ioi_accuracy"]:.3f}  induction loss {r["induction_loss"]:.3f}\')\n'
        "for row in S.generate(model, ['the day began .'] * 4, steerer=lineas, max_new_tokens=16, seed=1):\n"
        "    print('  ', model.tokenizer.decode(row))"
    ),
    md(
        "## 3. Five methods on the same 32 + 32 prompts\n\n"
        "Additive methods (difference of means, ITI, LoFiT's head biases) take a strength multiplier in [-4, 4]; "
        "affine maps (LinEAS, Linear-AcT) interpolate to the identity over [0, 1]."
    ),
    code(
        "steerers = {\n"
        "    'lineas': lineas,\n"
        "    'linear-act': S.LinearAcT().fit(model, src, tgt, to='positive'),\n"
        "    'diffmeans (all layers)': S.DiffMeans(sites='resid_post').fit(model, src, tgt, to='positive'),\n"
        "    'iti': S.ITI(read='mean').fit(model, src, tgt, to='positive'),\n"
        "    'lofit': S.LoFiT(steps=100).fit(model, src, tgt, to='positive'),\n"
        "}\n"
        "res = {}\n"
        "for name, st in steerers.items():\n"
        "    grid = (0.5, 1.0) if st.config.strength_range[1] == 1 else (0.5, 1.0, 2.0)\n"
        "    res[name] = S.sweep(model, {name: st}, strengths=grid, n=32, n_text=32, progress=False)\n"
        "result = S.SweepResult([r for x in res.values() for r in x.rows], res['lineas'].baseline)\n"
        "fig = result.plot(title='style rate vs KL to the unsteered model (32 + 32 prompts)')\n"
        "fig"
    ),
    code(
        "budget = 0.1  # nats per token of KL on unrelated text\n"
        "for m, r in sorted(result.best(budget=budget, by='steerer').items(), key=lambda kv: -kv[1]['rate']):\n"
        '    print(f\'{m:<24} best rate within KL {budget}: {r["rate"]:.3f} (strength {r["strength"]:g}, \'\n'
        '          f\'KL {r["kl"]:.4f}, {r["parameters"]} parameters, fit {r["fit_seconds"]:.1f}s)\')'
    ),
    md(
        "## 4. Sparsity, inversion, artefacts\n\n"
        "The group lasso (`group`) shrinks whole layers' maps to exactly the identity; the per-layer support "
        "figure shows which layers LinEAS keeps."
    ),
    code(
        "sparse = S.LinEAS(steps=100, group=0.02).fit(model, src, tgt, to='positive')\n"
        "print(sparse.support())\n"
        "print('rate', S.style_rate(model, sparse, n=48)['rate'])\n"
        "S.support_figure(sparse)"
    ),
    code(
        "# the inverse map (z - b) / w turns 'negative -> positive' into 'positive -> negative'\n"
        "inv = lineas.inverse()\n"
        "print('inverse: rate of positive generations', S.style_rate(model, inv, n=48)['rate'])\n"
        "import tempfile, pathlib\n"
        "folder = pathlib.Path(tempfile.mkdtemp()) / 'lineas-positive'\n"
        "lineas.save(folder)\n"
        "print(sorted(p.name for p in folder.iterdir()))\n"
        "back = S.load(folder)\n"
        "print(back, back.config.model, back.config.sites[:2])"
    ),
    md(
        "## 5. Another concept: gender\n\n"
        "Names carry a gender that later pronouns agree with. Difference of means from 32 sentences about men to 32 "
        "about women, added at every layer, makes the model say *she* after male names: `rate` is the share of "
        "male-name prompts whose pronoun flips, `kept` the share of female-name prompts that keep *she*."
    ),
    code(
        "gsrc, gtgt = S.concept_sets('gender', to='female', n=32)\n"
        "g = S.DiffMeans(sites='resid_post').fit(model, gsrc, gtgt, concept='gender', to='female')\n"
        "for lam in (0.5, 1.0):\n"
        "    print(lam, {k: round(v, 3) for k, v in S.evaluate(model, g, strength=lam, n=64, n_text=32).items()})"
    ),
    md(
        "Steering only the generated tokens (`positions='generated'`) works with the KV cache because positions "
        "are absolute: the first generated token's own activations are steered, and cached decoding gives the "
        "same tokens as re-running the whole sequence."
    ),
    code(
        "kw = dict(steerer=steerers['diffmeans (all layers)'], positions='generated', max_new_tokens=12, temperature=0)\n"
        "prompts = ['the day began .', 'the day began . it was a']\n"
        "a = S.generate(model, prompts, use_cache=True, **kw)\n"
        "b = S.generate(model, prompts, use_cache=False, **kw)\n"
        "print('cache == no cache:', a == b)\n"
        "for p, row in zip(prompts, a):\n"
        "    print(repr(p), '->', model.tokenizer.decode(row))"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/06_steering.ipynb")
print("wrote notebooks/06_steering.ipynb")
