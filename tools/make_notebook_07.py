"""Write notebooks/07_sae_family.ipynb (kept as code so the notebook stays reviewable; a test executes it)."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(
        "# The SAE family: TopK, MFR and SAE neural operators\n\n"
        "Every architecture is one module behind one registry (`mechwork.sae.registry`: name → module class, config "
        "class), trains with the same trainer and saves a SAELens folder. This notebook runs the three kinds small "
        "enough to execute in about a minute on a CPU; the benchmark (`benchmarks/sae_family_bench.py`, numbers in "
        "`benchmarks/RESULTS.md`) runs them longer.\n\n"
        "1. **MFR** (mutual feature regularisation, Marks et al. 2024) on its synthetic data with known features, "
        "and on `toy-mixed` activations;\n"
        "2. **SAE neural operators** (Tolooshams et al. 2025) on functions built from known concepts: recovery, "
        "resolution changes;\n"
        "3. an SAE-FNO on a transformer: a window of positions of `resid_post.1` as a function over positions."
    ),
    code(
        "import torch, mechwork, mechwork.sae as ms\n"
        "from mechwork.sae import registry\n"
        "torch.set_num_threads(1)\n"
        "for e in registry.all_entries():\n"
        "    print(f'{e.name:9} {e.module.__name__:12} {e.config.__name__}')"
    ),
    md(
        "## 1. MFR on synthetic data with known features\n\n"
        "`GroupedSynthetic` is the paper's generator (features in groups, each sample one group, a few features of "
        "it with probability ∝ 0.99^rank) with every sample drawing its own support (the authors' code shares one "
        "support per group per chunk). Two tied TopK SAEs are trained on the same batches, once with the MFR "
        "penalty and once without (weight 0 = independent); recovery is the Hungarian-matched mean cosine (MCC) of "
        "each decoder with the true features."
    ),
    code(
        "from mechwork.sae.mfr import mfr_saes\n"
        "from mechwork.sae.synthetic import recovery\n"
        "gen = ms.GroupedSynthetic(d=64, n_features=128, n_groups=8, n_active=8, seed=0)\n"
        "x, _ = gen.sample(30_000, seed=7)\n"
        "base = ms.SAEConfig(architecture='mfr', d_sae=128, k=8, b_dec_init='zeros')\n"
        "for w in (0.0, 0.3):\n"
        "    cfg = ms.TrainConfig(saes=mfr_saes(base, 2), batch_size=512, tokens=512 * 200, lr=1e-2, warmup_steps=10,\n"
        "                         mfr=ms.MFRPenalty(weight=w, warmup_steps=50) if w else None)\n"
        "    res = ms.train(cfg, x, progress=False)\n"
        "    mcc = [recovery(s.W_dec, gen.features)['mcc'] for s in res.saes]\n"
        "    print(f'MFR weight {w}: MCC with the true features per SAE', [round(m, 3) for m in mcc])"
    ),
    md(
        "On this tiny run the difference is small; the benchmark reports several seeds and sizes, and where the "
        "claim did and did not hold.\n\n"
        "### MFR on `toy-mixed`, exported as plain SAELens folders\n\n"
        "Each SAE of an MFR run is a TopK SAE: its folder uses SAELens's own `topk` name and loads with "
        "`sae_lens.SAE.load_from_disk` alone; the card records its partners."
    ),
    code(
        "import tempfile, pathlib, json\n"
        "model = mechwork.load_model('toy-mixed')\n"
        "out = pathlib.Path(tempfile.mkdtemp()) / 'mfr'\n"
        "cfg = ms.TrainConfig(saes=mfr_saes(ms.SAEConfig(architecture='mfr', tied=False, d_sae=256, k=16), 2),\n"
        "                     model='toy-mixed', site='resid_post.1', tokens=1024 * 30, batch_size=1024, lr=3e-3,\n"
        "                     stream_buffer=8192, mfr=ms.MFRPenalty(weight=0.3, warmup_steps=10), out=str(out))\n"
        "res = ms.train(cfg, model=model, progress=False)\n"
        "folder = out / 'saes' / res.saes[0].cfg.label\n"
        "card = ms.read_card(folder)\n"
        "print(json.dumps({'saelens': card['saelens'], 'partners': card['mfr']['partners']}, indent=1))\n"
        "import sae_lens\n"
        "theirs = sae_lens.SAE.load_from_disk(str(folder))\n"
        "print(type(theirs).__name__, ms.evaluate(res.saes[0], model, n_tokens=2000, seed=5)['fvu'])"
    ),
    md(
        "## 2. SAE neural operators on functions with known concepts\n\n"
        "`FunctionDictionary`: functions on [0, 1) that are sparse sums of shifted concepts, four smooth and four "
        "with discontinuities, evaluable on any grid. Models see `[batch, channels, grid]`."
    ),
    code(
        "from mechwork.sae.functional import FunctionDictionary, dictionary_recovery, nmse\n"
        "fd = FunctionDictionary()\n"
        "xf = fd.sample(6000, 64, seed=1)\n"
        "import plotly.graph_objects as go\n"
        "s64 = [i / 64 for i in range(64)]\n"
        "fig = go.Figure([go.Scatter(x=s64, y=c.tolist(), name=n) for n, c in zip(fd.names, fd.concepts(64))])\n"
        "fig.update_layout(title='true concepts (centred at 0, periodic)', height=300)\n"
        "fig"
    ),
    code(
        "models = {\n"
        "    'cnn': ms.SAEConfig(architecture='cnn', d_sae=8, kernel=21, iterations=3, b_dec_init='zeros'),\n"
        "    'fno': ms.SAEConfig(architecture='fno', d_sae=8, modes=12, iterations=3, b_dec_init='zeros'),\n"
        "}\n"
        "trained = {}\n"
        "pos, amp = fd.codes(1000, seed=5)\n"
        "for name, c in models.items():\n"
        "    s = ms.train(ms.TrainConfig(saes=(c,), batch_size=256, tokens=256 * 120, lr=3e-3), xf, progress=False).sae\n"
        "    trained[name] = s\n"
        "    learned = s.concepts(64).reshape(8, -1) if name == 'fno' else s.concepts().reshape(8, -1)\n"
        "    rec = dictionary_recovery(learned, fd.concepts(64))\n"
        "    with torch.no_grad():\n"
        "        errs = {n: round(nmse(s(fd.render(pos, amp, n)), fd.render(pos, amp, n)), 4) for n in (32, 64, 128)}\n"
        "    print(f'{name}: MCC {rec[\"mcc\"]:.3f}  NMSE by grid {errs}')"
    ),
    md(
        "The FNO's concepts are functions, not arrays: `concepts(n)` evaluates them on any grid, and the model runs "
        "at resolutions it was not trained on. The CNN's kernels are in grid points, so at another resolution "
        "they describe a different physical width."
    ),
    code(
        "fno = trained['fno']\n"
        "with torch.no_grad():\n"
        "    c256 = fno.concepts(256)[:, 0]\n"
        "s256 = [i / 256 for i in range(256)]\n"
        "fig = go.Figure([go.Scatter(x=s256, y=c.tolist(), name=f'concept {i}') for i, c in enumerate(c256)])\n"
        "fig.update_layout(title='SAE-FNO concepts evaluated on 256 points (trained on 64)', height=300)\n"
        "fig"
    ),
    md(
        "## 3. An SAE-FNO on a transformer\n\n"
        "Windows of 16 consecutive positions of `resid_post.1` become functions over positions with 128 channels; "
        "each position keeps the generated language's tag. Which tags do the concept channels fire on, next to a "
        "TopK SAE trained on the same positions?"
    ),
    code(
        "from mechwork.sae.windows import position_windows, tag_alignment\n"
        "xw, tags = position_windows(model, 'resid_post.1', n_windows=800, window=16, stride=8)\n"
        "print('windows', tuple(xw.shape))\n"
        "fno_w = ms.train(ms.TrainConfig(saes=(ms.SAEConfig(architecture='fno', d_sae=32, modes=9, iterations=2),),\n"
        "                 batch_size=64, tokens=64 * 60, lr=3e-3), xw, progress=False).sae\n"
        "cells = xw.permute(0, 2, 1).reshape(-1, 128)\n"
        "topk = ms.train(ms.TrainConfig(saes=(ms.SAEConfig(d_sae=256, k=16),), batch_size=1024, tokens=1024 * 60, lr=3e-3),\n"
        "                cells, progress=False).sae\n"
        "with torch.no_grad():\n"
        "    rows = {'fno': tag_alignment(fno_w.encode(xw), tags),\n"
        "            'topk': tag_alignment(topk.encode(cells).reshape(800, 16, -1).permute(0, 2, 1), tags)}\n"
        "for name, r in rows.items():\n"
        "    r.sort(key=lambda z: -z['f1'])\n"
        "    print(name, 'units with F1 > 0.5:', sum(z['f1'] > 0.5 for z in r))\n"
        "    for z in r[:5]:\n"
        "        print(f\"   unit {z['channel']:4d}  {z['tag']:18} P {z['precision']:.2f}  R {z['recall']:.2f}  F1 {z['f1']:.2f}\")"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/07_sae_family.ipynb")
print("wrote notebooks/07_sae_family.ipynb")
