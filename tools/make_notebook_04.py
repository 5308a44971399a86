"""Write notebooks/04_erasure.ipynb (kept as code so the notebook stays reviewable)."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(
        "# Concept erasure: where is gender in `toy-mixed`, and what breaks when it is gone?\n\n"
        "`toy-mixed` was trained on a generated language in which a pronoun agrees with the gender of the name that "
        "opens the sentence (*Mary went to the park because* → *she*). Gender is therefore both linearly decodable "
        "from the residual stream and used by the model. This notebook\n\n"
        "1. probes every residual-stream site and token position for gender,\n"
        "2. fits a LEACE eraser at each site and hooks it into the forward pass: where does the pronoun "
        "prediction fall to chance, and what happens to IOI and induction?\n"
        "3. compares LEACE, INLP and R-LACE at the site where erasure works best (rank, probes, non-linear leakage,\n"
        "distortion, behaviour),\n"
        "4. scrubs every layer, saves and reloads an eraser."
    ),
    code(
        "import torch, mechwork\n"
        "from mechwork.erasure import LEACE, INLP, RLACE, fit, layer_sweep, plot_sweep, probe_report, labelled_activations, labelled\n"
        "torch.set_num_threads(1)\n"
        "model = mechwork.load_model('toy-mixed')\n"
        "task = mechwork.tasks.get('gender')\n"
        "batch = task.prompts(4, seed=1, split='test')\n"
        "for text, ans in zip(batch.texts(), batch.answer):\n"
        "    print(f'{text!r:45} -> {model.to_single_str_token(int(ans))}')\n"
        "mechwork.erasure.behaviour(model, None, n=256)"
    ),
    md(
        "## 1. Where is gender?\n\n"
        "A fresh linear probe per (site, token position), trained on half of 400 held-out prompts and scored on the "
        "other half. Position 1 holds the name."
    ),
    code(
        "grid = mechwork.erasure.probe_grid(model, 'gender', n=400)\n"
        "from mechwork.viz import heatmap\n"
        "heatmap(grid['accuracy'], x=grid['positions'], y=grid['sites'], zmid=0.5,\n"
        "        title='gender probe accuracy by site and position (0.5 = chance)', xlabel='position', ylabel='site')"
    ),
    md(
        "In the embeddings gender exists only at the name; from layer 1 on, attention has copied it to every later "
        "position, including the one that predicts the pronoun.\n\n"
        "## 2. A LEACE eraser at every residual-stream site\n\n"
        "Each eraser is fitted on 500 training prompts with every token labelled by the prompt's gender, then hooked "
        "in at every position. Probes are trained on **held-out** prompts at the prediction position. Two variants: "
        "one rank-1 eraser for all positions (`leace [all]`), and LEACE stratified by position (`stratify='position'`: "
        "no class signal within any position, one affine map, rank up to the number of positions)."
    ),
    code(
        "kw = dict(n_fit=500, n_eval=300, behaviour_n=128)\n"
        "rows = layer_sweep(model, 'gender', methods=('leace',), **kw)\n"
        "rows += layer_sweep(model, 'gender', methods=('leace',), stratify='position', **kw)[1:]\n"
        "def show(rows, cols):\n"
        "    print(' '.join(f'{c[:14]:>14}' for c in cols))\n"
        "    for r in rows:\n"
        "        print(' '.join(f'{r[c]:>14.3f}' if isinstance(r.get(c), float) else f'{str(r.get(c, \"-\"))[:14]:>14}' for c in cols))\n"
        "show(rows, ['site', 'label', 'rank', 'linear_accuracy_before', 'linear_accuracy', 'mlp_accuracy', 'majority', 'gender_accuracy', 'ioi_accuracy'])"
    ),
    code("plot_sweep(rows)"),
    md(
        "The site is chosen by measurement: the eraser that brings the pronoun accuracy closest to chance while IOI "
        "accuracy stays within a few points of the clean model."
    ),
    code(
        "clean = rows[0]\n"
        "ok = [r for r in rows[1:] if clean['ioi_accuracy'] - r['ioi_accuracy'] < 0.05]\n"
        "best = min(ok or rows[1:], key=lambda r: abs(r['gender_accuracy'] - 0.5))\n"
        "site, stratify = best['site'], ('position' if 'stratified' in best['positions'] else None)\n"
        "print(best['label'], 'at', site, '| gender', round(clean['gender_accuracy'], 3), '->', round(best['gender_accuracy'], 3),\n"
        "      '| ioi', round(clean['ioi_accuracy'], 3), '->', round(best['ioi_accuracy'], 3))"
    ),
    md("What the model now predicts after *Mary went to the park because*:"),
    code(
        "eraser = fit(model, 'gender', site, 'leace', n=500, stratify=stratify)\n"
        "ids = [model.to_single_token(w) for w in ('she', 'he')]\n"
        "for prompt in ['Mary went to the park because', 'John went to the park because']:\n"
        "    toks = model.to_tokens(prompt)\n"
        "    with torch.inference_mode():\n"
        "        p0 = model(toks)[0, -1].softmax(-1)[ids]\n"
        "        with eraser.hook(model, site):\n"
        "            p1 = model(toks)[0, -1].softmax(-1)[ids]\n"
        "    print(f'{prompt!r:35} P(she), P(he): clean {p0.numpy().round(3)}  erased {p1.numpy().round(3)}')"
    ),
    md(
        "## 3. Three methods at one site\n\n"
        "At the best site for an eraser fitted on every position (no stratification, so that INLP and R-LACE, which "
        "train one classifier, see the same rows). LEACE is the closed-form least-squares eraser (rank 1 for a binary concept); INLP removes one classifier "
        "direction per round; R-LACE plays the adversarial game for a rank-1 orthogonal projection. The MLP probe "
        "measures non-linear leakage, which no linear eraser promises to remove."
    ),
    code(
        "plain = [r for r in rows[1:] if r['positions'] == 'all' and clean['ioi_accuracy'] - r['ioi_accuracy'] < 0.05]\n"
        "site = min(plain, key=lambda r: abs(r['gender_accuracy'] - 0.5))['site']\n"
        "print('site', site)\n"
        "fit_data = labelled('gender', n=500, seed=0)\n"
        "held = labelled('gender', n=300, seed=1, split='test', positions='last')\n"
        "X, z = labelled_activations(model, fit_data, site)\n"
        "Xh, zh = labelled_activations(model, held, site)\n"
        "erasers = {'LEACE': LEACE.fit(X, z), 'INLP (10 rounds)': INLP.fit(X, z, n_iter=10), 'R-LACE rank 1': RLACE.fit(X, z)}\n"
        "table = []\n"
        "for name, e in erasers.items():\n"
        "    r = probe_report(e, Xh, zh)\n"
        "    b = mechwork.erasure.behaviour(model, e.hook(model, site), tasks=('ioi',), n=128)\n"
        "    table.append({'method': name, 'rank': r['rank'], 'fit_s': round(r['fit_seconds'], 2), 'linear': r['linear_accuracy'],\n"
        "                  'mlp': r['mlp_accuracy'], 'majority': r['majority'], 'mse': r['mse'], 'gender': b['gender']['accuracy'],\n"
        "                  'ioi': b['ioi']['accuracy']})\n"
        "show(table, ['method', 'rank', 'fit_s', 'linear', 'mlp', 'majority', 'mse', 'gender', 'ioi'])"
    ),
    md(
        "## 4. Scrubbing every layer, saving, loading\n\n"
        "`scrub` fits erasers in causal order, each on activations already erased upstream, and hooks them all."
    ),
    code(
        "sc = mechwork.erasure.scrub(model, 'gender', mechwork.erasure.residual_sites(model), 'leace', n=500)\n"
        "print(sc.sites)\n"
        "mechwork.erasure.behaviour(model, sc.hook(model), n=128)"
    ),
    code(
        "import tempfile, pathlib\n"
        "folder = pathlib.Path(tempfile.mkdtemp()) / 'gender-leace'\n"
        "eraser.save(folder)\n"
        "print(sorted(p.name for p in folder.iterdir()))\n"
        "back = mechwork.erasure.load(folder)\n"
        "back, back.config.site, back.config.task"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/04_erasure.ipynb")
print("wrote notebooks/04_erasure.ipynb")
