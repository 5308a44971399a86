"""Write notebooks/05_circuits.ipynb (kept as code so the notebook stays reviewable)."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(
        "# Circuits: edges, latents, pruning, export\n\n"
        "Two shipped models with known behaviour: the IOI circuit of `toy-mixed` (*When Sarah and David went to the "
        "river, Sarah showed a map to* → *David*) and the induction circuit of `toy-induction-2l`. We score every "
        "edge between components (embeddings, heads through their **q, k, v** inputs, MLPs, logits) with EAP, "
        "EAP-IG and exact edge patching, prune with circuit-tracer's influence rule, check faithfulness, build an "
        "SAE-latent graph, and export Neuronpedia JSON, GraphML, DOT and a self-contained interactive HTML view."
    ),
    code(
        "import torch, json, tempfile, pathlib, mechwork\n"
        "from mechwork.circuits import attribute_edges, attribute_latents, faithfulness_curve, plot_curves, Graph\n"
        "torch.set_num_threads(1)\n"
        "out = pathlib.Path(tempfile.mkdtemp())\n"
        "model = mechwork.load_model('toy-mixed')\n"
        "task = mechwork.tasks.get('ioi')\n"
        "batch = task.prompts(16, seed=0)\n"
        "print(batch.texts()[0], '->', model.to_single_str_token(int(batch.answer[0])))"
    ),
    md(
        "## 1. Edge attribution on IOI\n\n"
        "EAP costs two forwards and one backward; EAP-IG averages the gradients over 8 points between the corrupted "
        "and the clean input embeddings; exact edge patching runs one patched copy per (edge, prompt), many per "
        "forward. Scores are the change of the logit difference when the edge alone carries the corrupted value."
    ),
    code(
        "graphs = {m: attribute_edges(model, batch, task, method=m, steps=8) for m in ('eap', 'eap-ig', 'exact')}\n"
        "truth = graphs['exact'].edge_dict()\n"
        "for m, g in graphs.items():\n"
        "    a = torch.tensor([e.weight for e in g.edges]); b = torch.tensor([truth[e.id] for e in g.edges])\n"
        "    print(f\"{m:7} {g.metadata['cost']['forwards']:3} fwd {g.metadata['cost']['backwards']:2} bwd   \"\n"
        '          f"Pearson vs exact {torch.corrcoef(torch.stack([a, b]))[0, 1]:.3f}")\n'
        "print(graphs['eap-ig'].summary())"
    ),
    md("## 2. Prune and check: faithfulness against circuit size"),
    code(
        "curves = [faithfulness_curve(g, model, batch, task, label=m) for m, g in graphs.items()]\n"
        "for c in curves: print(c.label, 'edges for 0.8:', c.smallest(0.8), 'of', c.n_total)\n"
        "plot_curves(curves, title='IOI on toy-mixed: faithfulness of the top-n edges')"
    ),
    code(
        "circuit = graphs['eap-ig'].prune(influence=0.9, edge_influence=0.99)\n"
        "f = circuit.faithfulness(model, batch, task)\n"
        "print(circuit, f)\n"
        "circuit.plot()"
    ),
    md(
        "## 3. Export\n\n"
        "Neuronpedia / circuit-tracer JSON (validated against the schema in `mechwork.circuits.NEURONPEDIA_SCHEMA`), "
        "GraphML and node-link JSON through networkx, DOT text, and a self-contained HTML page (hover a node: its "
        "score and top tokens in embedding space; click: its edges; the slider hides weak edges)."
    ),
    code(
        "import jsonschema\n"
        "for name in ('ioi.json', 'ioi.graphml', 'ioi.dot', 'ioi.html'):\n"
        "    circuit.save(out / name)\n"
        "jsonschema.validate(json.loads((out / 'ioi.json').read_text()), mechwork.circuits.NEURONPEDIA_SCHEMA)\n"
        "print(Graph.load(out / 'ioi.json', model=model).equals(circuit), sorted(p.name for p in out.iterdir()))\n"
        "from IPython.display import HTML\n"
        "HTML(circuit.to_html())"
    ),
    md(
        "## 4. Induction on `toy-induction-2l`: K-composition\n\n"
        "The induction head finds *where* to copy from through its **key** input, which reads the previous-token "
        "head's output. Among the edges into layer-1 heads, the strongest should be previous-token head → K."
    ),
    code(
        "ind_model = mechwork.load_model('toy-induction-2l')\n"
        "ind_task = mechwork.tasks.get('induction')\n"
        "ind = ind_task.prompts(8, seed=0)\n"
        "_, cache = ind_model.run_with_cache(ind.clean, names_filter='blocks.0.attn.hook_pattern')\n"
        "prev = int(cache['blocks.0.attn.hook_pattern'].diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2)).argmax())\n"
        "g = attribute_edges(ind_model, ind, ind_task, method='exact')\n"
        "into = sorted([e for e in g.edges if e.dst.startswith('a1.')], key=lambda e: -abs(e.weight))[:5]\n"
        "print('previous-token head: a0.h%d' % prev)\n"
        "for e in into: print(f'{e.id:22} {e.weight:+.3f}')\n"
        "g.prune(top_n=12).save(out / 'induction.html')"
    ),
    md(
        "Per position: with `per_position=True` (EAP) a head at query position *p* receives its key and value edges "
        "from every earlier position, so the K-composition edge shows *where* the induction head looks. Summed over "
        "positions the edges are the component edges above (`aggregate()`)."
    ),
    code(
        "gp = attribute_edges(ind_model, ind, ind_task, method='eap', per_position=True)\n"
        "top = max((e for e in gp.edges if e.dst.startswith('a1.') and e.kind == 'k'), key=lambda e: abs(e.weight))\n"
        "print(gp, '\\n top key edge:', top.id, f'{top.weight:+.3f}')\n"
        "pp = gp.prune(influence=0.9)\n"
        "pp.save(out / 'induction_positions.html')\n"
        "pp"
    ),
    md(
        "## 5. An SAE-latent graph\n\n"
        "With the shipped TopK SAEs spliced at `resid_post.1` and `resid_post.2`, nodes are the active latents per "
        "position plus each site's reconstruction error; edges are direct effects (activation × gradient with the "
        "other sites' latents held as nodes). Labels: each latent's best ground-truth tag from a latent scan of "
        "generated text (the corpus tags every word with its role) and its top tokens in embedding space. "
        "Faithfulness: latents and error terms outside the circuit take their corrupted-prompt values."
    ),
    code(
        "from mechwork.circuits.latents import parse_sae_args\n"
        "saes = parse_sae_args(['sae_checkpoints/toy-mixed/blocks.1.hook_resid_post',\n"
        "                       'sae_checkpoints/toy-mixed/blocks.2.hook_resid_post'])\n"
        "scans = {site: mechwork.sae.latent_stats(sae, model=model, n_tokens=4000) for site, sae in saes.items()}\n"
        "one = task.prompts(1, seed=0)\n"
        "lat = attribute_latents(model, one, task, saes=saes, max_targets=16, scans=scans)\n"
        "small = lat.prune(influence=0.6)\n"
        "print(lat, '\\n', small)\n"
        "print(small.faithfulness(model, one, task, saes=saes))\n"
        "for n in small.top_nodes(6):\n"
        "    print(f'{n.id:24} act {n.activation or 0:6.2f} score {n.score:+.3f} {n.label[:40]:40} {n.top_tokens[:3]}')\n"
        "small.save(out / 'latents.json'); small.save(out / 'latents.html')\n"
        "print(sorted(p.name for p in out.iterdir()))"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/05_circuits.ipynb")
print("wrote notebooks/05_circuits.ipynb")
