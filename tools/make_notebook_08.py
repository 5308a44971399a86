"""Write notebooks/08_embedding_space.ipynb (kept as code so the notebook stays reviewable)."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(
        "# Reading a transformer in embedding space\n\n"
        "Parameters, activations and directions of a transformer live in a `d_model`-dimensional basis that means "
        "nothing by itself; multiplied by the embedding or the unembedding they become scores over the vocabulary "
        "(Dar, Geva, Gupta & Berant 2023). This notebook reads the shipped models that way:\n\n"
        "1. head circuits: OV (source token → promoted token), QK (query token × key token), copying, previous-token "
        "and induction scores on `toy-induction-2l`, whose circuit is known;\n"
        "2. the logit lens on `toy-mixed`, and MLP neurons / arbitrary directions read as tokens;\n"
        "3. the tuned lens, trained here in seconds, against the logit lens;\n"
        "4. fine-tuning vectors: what a short fine-tune changed, in tokens;\n"
        "5. cross-model alignment of layers through the shared vocabulary.\n\n"
        "Nothing of size |V| × |V| is ever built: projections are kept as two low-rank factors."
    ),
    code(
        "import torch, mechwork\n"
        "from mechwork.projection import project, head_scores, induction_qk, logit_lens\n"
        "from mechwork.projection.plots import copying_bar\n"
        "from mechwork.data import vocab as V\n"
        "torch.set_num_threads(1)\n"
        "ind = mechwork.load_model('toy-induction-2l')\n"
        "scores = head_scores(ind)\n"
        "print(scores.to_string(index=False, float_format=lambda v: f'{v:.2f}'))\n"
        "copying_bar(scores)"
    ),
    md(
        "Layer 0 head 0 has the highest previous-token score (its positional QK form attends to the previous "
        "position), the layer-1 heads score high on induction (their QK form, composed with L0H0's OV, matches a "
        "query token with the key whose *previous* token is the same), and L1H0 / L1H2 copy (positive-eigenvalue "
        "fraction of the full OV circuit near 1). The OV circuit of L1H0 on a few names and nonce words:"
    ),
    code(
        "ov = project(ind, 'ov', layer=1, head=0)\n"
        "print(ov)\n"
        "words = ['Mary', 'John', 'park', 'ba', 'ki', 'mu']\n"
        "for w in words[:3]:\n"
        "    print(f'{w:>5} ->', ', '.join(t for t, _ in ov.top(5, row=w)))\n"
        "ov.plot(words, words)"
    ),
    code(
        "pool = list(V.INDUCTION_POOL)\n"
        "for via in [(0, 0), (0, 3)]:\n"
        "    vals, _, _ = induction_qk(ind, 1, 0, via=via).table(pool, pool)\n"
        "    hit = (vals.argmax(-1) == torch.arange(len(pool))).float().mean()\n"
        "    print(f'L1H0 through L{via[0]}H{via[1]}: best key = the previous-token match for {hit:.0%} of query tokens')"
    ),
    md("## 2. The logit lens, neurons and directions on `toy-mixed`"),
    code(
        "model = mechwork.load_model('toy-mixed')\n"
        "lens = logit_lens(model, 'When Mary and John went to the store , John gave a drink to', pos=None)\n"
        "print(lens.summary().to_string(index=False, float_format=lambda v: f'{v:.3f}'))\n"
        "lens.heatmap(model, 'kl')"
    ),
    md(
        "A neuron chosen only from activations and the style labels of the generated language (the most "
        "positive-style-selective neuron of layer 2) promotes that style's words:"
    ),
    code(
        "from mechwork.core.hooks import capture\n"
        "st = mechwork.tasks.get('style').prompts(160, seed=7)\n"
        "acts = capture(model, st.clean, ['mlp_post.2'])['blocks.2.mlp.hook_post'][torch.arange(160), st.pos]\n"
        "pos = st.labels == 1\n"
        "neuron = int(((acts[pos].mean(0) - acts[~pos].mean(0)) / acts.std(0)).argmax())\n"
        "top = project(model, 'neuron_out', layer=2, neuron=neuron).top(10)\n"
        "print(f'L2N{neuron} promotes:', [t for t, _ in top])\n"
        "print('positive-lexicon words among them:', sum(t in V.STYLE_WORDS[1] for t, _ in top))"
    ),
    md(
        "Any direction is read the same way once you say where it lives: here a difference-of-means steering "
        "vector (positive minus negative style) at `resid_post.2`, given as a plain tensor."
    ),
    code(
        "resid = capture(model, st.clean, ['resid_post.2'])['blocks.2.hook_resid_post'][torch.arange(160), st.pos]\n"
        "steer = resid[pos].mean(0) - resid[~pos].mean(0)\n"
        "d = project(model, torch.stack([steer, -steer]), site='resid_post.2', labels=['positive', 'negative'])\n"
        "for row in d.row_labels:\n"
        "    print(f'{row:>8}:', [t for t, _ in d.top(8, row=row)])"
    ),
    md(
        "## 3. The tuned lens\n\n"
        "One affine translator per layer, zero-initialised (so it starts as the logit lens), trained by "
        "KL(final ‖ lens) on the model's own activations. A hundred steps take seconds here."
    ),
    code(
        "from mechwork.projection import train_tuned_lens, compare_lenses, TunedLens\n"
        "from mechwork.projection.tuned import held_out_tokens\n"
        "tuned = train_tuned_lens(model, steps=100, batch_size=8, lr=3e-3, progress=False)\n"
        "table = compare_lenses(model, held_out_tokens(model), tuned)\n"
        "print(table[['layer', 'kl_to_final_logit', 'kl_to_final_tuned']].to_string(index=False, float_format=lambda v: f'{v:.3f}'))\n"
        "better = (table.kl_to_final_tuned < table.kl_to_final_logit)[:-1].all()\n"
        "print('tuned lens lower KL at every layer but the last:', bool(better))"
    ),
    code(
        "import tempfile, pathlib\n"
        "folder = pathlib.Path(tempfile.mkdtemp()) / 'toy-mixed-lens'\n"
        "tuned.save(folder)\n"
        "print(sorted(p.name for p in folder.iterdir()))\n"
        "TunedLens.load(folder, model=model)(model, 'the day began . it was a', pos=None).heatmap(model, 'entropy')"
    ),
    md(
        "## 4. Fine-tuning vectors\n\n"
        "Fine-tune a copy of `toy-mixed` for a few steps on positive-style stories only, then read the difference "
        "of each layer's MLP values in vocabulary space."
    ),
    code(
        "import copy, torch.nn.functional as F\n"
        "from mechwork.data.corpus import Corpus\n"
        "from mechwork.projection import finetune_vectors\n"
        "torch.manual_seed(0)\n"
        "ft = copy.deepcopy(model).train()\n"
        "for p in ft.parameters():\n"
        "    p.requires_grad_(True)\n"
        "opt = torch.optim.Adam(ft.parameters(), lr=1e-3)\n"
        "corpus = Corpus(seed=5, mix={'style': 1.0}, options={'style': {'style': 1}})\n"
        "for _ in range(20):\n"
        "    tok, mask = corpus.batch(16, 64)\n"
        "    logits = ft(tok)\n"
        "    loss = F.cross_entropy(logits[:, :-1][mask[:, :-1]], tok[:, 1:][mask[:, :-1]])\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n"
        "fv = finetune_vectors(model, ft.eval())\n"
        "for comp in ('L2.mlp', 'L3.mlp', 'unembed'):\n"
        "    print(f'{comp:>8}:', [t for t, _ in fv.top(comp, 8)])"
    ),
    md(
        "## 5. Aligning layers across models\n\n"
        "A copy of `toy-mixed` with its blocks shuffled and its residual basis rotated (a rotation that fixes the "
        "all-ones direction, so the unshuffled copy computes the same function). Raw parameters no longer "
        "correspond; read in vocabulary space they do, and the Hungarian algorithm recovers the order."
    ),
    code(
        "from mechwork.projection import align, permuted_copy\n"
        "order = [2, 0, 3, 1]\n"
        "al = align(model, permuted_copy(model, order, seed=1))\n"
        "print('expected      ', [order.index(i) for i in range(4)])\n"
        "print(al.to_dataframe()[['param', 'matching', 'matching_raw']].to_string(index=False))\n"
        "al.plot()"
    ),
    md(
        "Two models trained from different seeds are the real test of the method; `benchmarks/RESULTS.md` "
        "(projection section) reports it on small models trained for the purpose. The same views export to "
        "self-contained HTML with `mechwork.viz.save_html(fig, 'file.html')`, and every step here has a CLI "
        "counterpart: `mechwork project MODEL lens|head L.H|neuron L.N|direction FILE|scores`, "
        "`mechwork project align A B`, `mechwork lens train MODEL --out DIR`."
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/08_embedding_space.ipynb")
print("wrote notebooks/08_embedding_space.ipynb")
