"""Write notebooks/02_sae.ipynb (kept as code so the notebook stays reviewable): train, evaluate, browse."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Sparse autoencoders on toy-mixed\n\n"
        "Train a small TopK SAE on the residual stream of the shipped model (activations streamed from the generated "
        "corpus, no cache needed), evaluate it honestly (FVU, L0, dead latents, CE-loss recovered with the SAE spliced "
        "into the model), and look at what its latents mean: every token of the generated language carries a "
        "ground-truth tag (`ioi:IO`, `induction:second`, `style:adj+` ...), so a latent can be scored against it."
    ),
    nbf.v4.new_code_cell(
        "import torch, mechwork\n"
        "import mechwork.sae as ms\n"
        "torch.set_num_threads(1)\n"
        "model = mechwork.load_model('toy-mixed')\n"
        "site = 'resid_post.2'"
    ),
    nbf.v4.new_markdown_cell(
        "## Train\n\n`TrainConfig.saes` holds one or several SAEs; all of them see the same batches in one pass "
        "(here a tiny sweep over k). The sparse TopK kernels make the decoder and the backward-pass arithmetic "
        "involve only the selected latents (O(N k d)); top-k, the dense gradient tensors, Adam and the decoder "
        "renormalisation still cover every latent."
    ),
    nbf.v4.new_code_cell(
        "cfg = ms.TrainConfig(saes=ms.sweep(ms.SAEConfig(d_sae=512), k=[8, 16]), model='toy-mixed', site=site,\n"
        "                     tokens=120_000, batch_size=1024, lr=3e-3, stream_buffer=16384, log_every=10)\n"
        "result = ms.train(cfg, model=model, progress=False)\n"
        "for name, rec in result.final_metrics().items():\n"
        "    print(f\"{name}: FVU {rec['fvu']:.3f}  L0 {rec['l0']:.0f}  dead {rec['dead_fraction']:.1%}\")"
    ),
    nbf.v4.new_code_cell(
        "import plotly.graph_objects as go\n"
        "fig = go.Figure()\n"
        "for name in result.names:\n"
        "    h = [r for r in result.history if r['sae'] == name]\n"
        "    fig.add_scatter(x=[r['tokens'] for r in h], y=[r['fvu'] for r in h], name=name)\n"
        "fig.update_layout(xaxis_title='training tokens', yaxis_title='FVU (batch)', yaxis_type='log', height=300)\n"
        "fig"
    ),
    nbf.v4.new_markdown_cell(
        "## Evaluate\n\nReconstruction and sparsity on held-out text, and what splicing the SAE into the model costs: "
        "next-token loss clean, with the SAE, and with the site zero- or mean-ablated. CE-loss recovered is "
        "`(CE_ablated - CE_sae) / (CE_ablated - CE_clean)`; the mean-ablation version is the stricter one."
    ),
    nbf.v4.new_code_cell(
        "sae = result['topk_k16_w512_s0']\n"
        "ev = ms.evaluate(sae, model, n_tokens=4000)\n"
        "{k: round(ev[k], 4) for k in ('fvu', 'l0', 'dead_fraction', 'ce_clean', 'ce_sae', 'ce_zero',\n"
        "                               'ce_loss_recovered', 'ce_loss_recovered_mean_ablation', 'kl_sae')}"
    ),
    nbf.v4.new_markdown_cell(
        "The shipped SAEs (`sae_checkpoints/toy-mixed/<site>/`, 2048 latents, k=32, 2M tokens) are larger; their "
        "`card.json` records how they were trained and measured."
    ),
    nbf.v4.new_code_cell(
        "from mechwork.sae import shipped\n"
        "path = shipped.path('toy-mixed', 'blocks.2.hook_resid_post')\n"
        "big = ms.load(path)\n"
        "card = ms.read_card(path)\n"
        "print(big)\n"
        "{k: round(card['eval'][k], 4) for k in ('fvu', 'l0', 'dead_fraction', 'ce_loss_recovered', 'kl_sae')}"
    ),
    nbf.v4.new_markdown_cell(
        "## What do latents mean?\n\n`sae.latents(...)` (or `ms.latent_stats`) describes every latent from **one "
        "streamed pass** over held-out text: firing frequency, activation quantiles and histogram, the top-activating "
        "contexts (identical contexts shown once), a uniform sample of firing events by quantile band, and the tokens "
        "its decoder direction promotes and suppresses through the unembedding. Special tokens (`<bos>`, `<eos>`, "
        "padding) are left out by default (`include_special=True` counts them): the residual stream at `<bos>` is a "
        "near-constant vector that several latents fire on, which says nothing about text."
    ),
    nbf.v4.new_code_cell("stats = big.latents(model=model, n_tokens=20_000)\nstats"),
    nbf.v4.new_markdown_cell(
        "Every token of the generated language carries a ground-truth tag, so labels can be honest: a latent's label "
        "is the tag carried by (at least a third of) **the contexts its card shows**, chosen by F1 on those documents, "
        "and then scored on **held-out documents** (every other document is kept aside for this): precision = "
        "P(tag | fires), recall = P(fires | tag). Below F1 0.5 the label says `weak:`, `part of` (precise but "
        "narrow) or `unlabelled`. The label F1 table: the best latent per ground-truth tag."
    ),
    nbf.v4.new_code_cell(
        "[(r['tag'], r['latent'], r['level'], round(r['precision'], 2), round(r['recall'], 2), round(r['f1'], 2))\n"
        " for r in sorted(stats.tag_coverage(), key=lambda r: -r['f1'])]"
    ),
    nbf.v4.new_markdown_cell("One latent's card (it renders inline; `print(card.text())` in a terminal):"),
    nbf.v4.new_code_cell(
        "pronoun = max((r for r in stats.table() if r['tag'] == 'gender:pronoun'), key=lambda r: r['f1'])['latent']\n"
        "stats[pronoun]"
    ),
    nbf.v4.new_markdown_cell(
        "The dashboard of all latents is one self-contained HTML file (no CDN, works offline): a searchable, sortable "
        "index and each latent's card on click. Every token string is escaped. `mechwork sae show SAE_DIR --html "
        "out.html` writes the same file from the command line."
    ),
    nbf.v4.new_code_cell(
        "import tempfile, pathlib\n"
        "out = stats.to_html(pathlib.Path(tempfile.mkdtemp()) / 'latents.html', title='toy-mixed layer 2')\n"
        "print(out, f'{out.stat().st_size / 1e6:.1f} MB for {stats.d_sae} latents')"
    ),
    nbf.v4.new_markdown_cell(
        "## Splice into the model\n\nDoes the model still do IOI when the residual stream at layer 2 is replaced by "
        "the SAE's reconstruction?"
    ),
    nbf.v4.new_code_cell(
        "task = mechwork.tasks.get('ioi')\n"
        "print('clean  ', task.evaluate(model, n=128, seed=0))\n"
        "with ms.splice(model, big):\n"
        "    print('spliced', task.evaluate(model, n=128, seed=0))"
    ),
    nbf.v4.new_markdown_cell(
        "## SAELens\n\nThe folders use SAELens's format with the architecture registered in SAELens's registry, so "
        "after `import mechwork.sae`, `sae_lens.SAE.load_from_disk(path)` returns an SAE with the same `encode` / "
        "`decode` (`sae.save(path, portable=True)` writes plain `topk` folders that need no mechwork at all). "
        "mechwork loads SAELens folders (`topk`, `standard`, `jumprelu`) with `ms.load`."
    ),
    nbf.v4.new_code_cell(
        "d = pathlib.Path(tempfile.mkdtemp()) / 'my_sae'\nsae.save(d)\nsorted(p.name for p in d.iterdir())"
    ),
]

nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
out = Path(__file__).resolve().parents[1] / "notebooks" / "02_sae.ipynb"
nbf.write(nb, out)
print(f"wrote {out}")
