"""Write notebooks/01_getting_started.ipynb (kept as code so the notebook stays reviewable)."""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Getting started with mechwork\n\n"
        "mechwork ships small models trained on a generated language whose ground truth is known. This notebook "
        "loads the default model, lists its activation sites, runs the IOI task, reads the logit lens, projects a "
        "head's weights into vocabulary space and ablates a head with a hook."
    ),
    nbf.v4.new_code_cell(
        "import torch, mechwork\n"
        "torch.set_num_threads(1)\n"
        "model = mechwork.load_model('toy-mixed')          # HookedTransformer; backend='bridge' for TransformerBridge\n"
        "print(type(model).__name__, model.cfg.n_layers, 'layers', model.cfg.d_model, 'd_model')\n"
        "[(s.name, s.alias, s.shape) for s in mechwork.sites(model)][:8]"
    ),
    nbf.v4.new_markdown_cell("Every site has a full hook name and a short alias; unknown names fail with suggestions."),
    nbf.v4.new_code_cell(
        "print(mechwork.site(model, 'z.2'))\n"
        "try:\n"
        "    mechwork.site(model, 'blocks.2.hook_resid_pots')\n"
        "except mechwork.SiteError as e:\n"
        "    print(e)"
    ),
    nbf.v4.new_markdown_cell("## Tokens and predictions"),
    nbf.v4.new_code_cell(
        "prompt = 'When Mary and John went to the store , John gave a drink to'\n"
        "print(model.to_str_tokens(prompt))\n"
        "probs = model(model.to_tokens(prompt))[0, -1].softmax(-1)\n"
        "top = probs.topk(5)\n"
        "[(model.to_single_str_token(int(i)), round(float(p), 3)) for p, i in zip(top.values, top.indices)]"
    ),
    nbf.v4.new_markdown_cell(
        "## Tasks\n\n`mechwork.tasks.get(name)` gives seeded clean/corrupted prompts with answers and a metric. IOI prompts "
        "use name pairs the model never saw together in training."
    ),
    nbf.v4.new_code_cell(
        "task = mechwork.tasks.get('ioi')\n"
        "batch = task.prompts(128, seed=0)\n"
        "print(batch.texts()[0], '->', model.to_single_str_token(int(batch.answer[0])))\n"
        "task.evaluate(model, n=128, seed=0)"
    ),
    nbf.v4.new_markdown_cell("## Logit lens: where does the answer appear?"),
    nbf.v4.new_code_cell(
        "lens = mechwork.projection.logit_lens(model, batch.clean, pos=batch.pos)\n"
        "ld = lens.logit_diff(batch.answer, batch.wrong)\n"
        "print(dict(zip(lens.labels, ld.mean(1).round(decimals=2).tolist())))\n"
        "fig = lens.plot(ld, title='IOI logit difference by layer')\n"
        "fig"
    ),
    nbf.v4.new_markdown_cell(
        "## Weights in vocabulary space\n\nWhich heads copy the token they attend to? The OV circuit `W_E W_OV W_U` of a copying head has a strong diagonal."
    ),
    nbf.v4.new_code_cell(
        "scores = {(l, h): mechwork.projection.project(model, 'ov', layer=l, head=h).diagonal_score()\n"
        "          for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}\n"
        "best = max(scores, key=scores.get)\n"
        "print('most copying head', best, round(scores[best], 2))\n"
        "mechwork.projection.project(model, 'ov', layer=best[0], head=best[1]).top_pairs(5)"
    ),
    nbf.v4.new_markdown_cell("## Hooks: ablate a head\n\nZero one head's output (`hook_z`) and watch the IOI metric."),
    nbf.v4.new_code_cell(
        "def ablate(layer, head):\n"
        "    def hook(z, hook):\n"
        "        z[:, :, head] = 0\n"
        "        return z\n"
        "    with model.hooks(fwd_hooks=[(mechwork.site(model, f'z.{layer}').name, hook)]):\n"
        "        return task.metric(model(batch.clean), batch).mean().item()\n"
        "base = task.metric(model(batch.clean), batch).mean().item()\n"
        "effects = {(l, h): round(ablate(l, h) - base, 2) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}\n"
        "sorted(effects.items(), key=lambda kv: kv[1])[:4]"
    ),
    nbf.v4.new_markdown_cell(
        "## Your own prompts\n\n`mechwork.tasks.from_pairs` turns your clean/corrupted prompts (text, through the "
        "model's own tokenizer) into a `PromptBatch` that every capability takes; with `answers`/`wrong` the metric is "
        "their logit difference. Pairs must tokenise to the same length (the error shows both tokenisations)."
    ),
    nbf.v4.new_code_cell(
        "mine = mechwork.tasks.from_pairs(\n"
        "    model,\n"
        "    clean=['When Mary and John went to the store , John gave a drink to',\n"
        "           'When Tom and Anna went to the park , Anna gave a book to'],\n"
        "    corrupted=['When Mary and John went to the store , Mary gave a drink to',\n"
        "               'When Tom and Anna went to the park , Tom gave a book to'],\n"
        "    answers=['Mary', 'Tom'], wrong=['John', 'Anna'])\n"
        "result = mechwork.patching.activation_patch(model, mine, sites='resid_pre', per='position')\n"
        "print(mine)\n"
        "result"
    ),
    nbf.v4.new_markdown_cell(
        "## Any model, any tokenizer\n\n`load_model` also takes local Hugging Face folders (GPT-2, Pythia, LLaMA ...) "
        "and the real all-MiniLM-L6-v2 encoder. MiniLM's checkpoint has no language-model head, so it loads "
        "*headless*: its output is the last hidden state, logit-based capabilities refuse it, and `from_pairs` "
        "without answers measures the cosine similarity of the mean-pooled sentence embedding with the clean one. "
        "Tasks render through the model's tokenizer (`[CLS] ... [SEP]` here)."
    ),
    nbf.v4.new_code_cell(
        "encoder = mechwork.load_model('all-MiniLM-L6-v2')\n"
        "print(mechwork.core.model_kind(encoder).name)\n"
        "pairs = mechwork.tasks.from_pairs(encoder, clean=['the cat sat on the mat'], corrupted=['the dog sat on the mat'])\n"
        "emb = mechwork.patching.activation_patch(encoder, pairs, sites='resid_pre', per='position')\n"
        "print(mechwork.core.str_tokens(encoder, pairs.clean[0]))\n"
        "print('corrupted similarity', round(emb.corrupted, 3), '| restored by patching position 2 of layer 0:',\n"
        "      round(float(emb.scores[0, 2]), 3))\n"
        "gender = mechwork.tasks.get('gender').prompts(4, seed=0, model=encoder)\n"
        "[mechwork.core.str_tokens(encoder, gender.clean[i][gender.mask[i]]) for i in range(2)]"
    ),
    nbf.v4.new_code_cell(
        "try:\n"
        "    mechwork.projection.logit_lens(encoder, 'the cat sat')\n"
        "except mechwork.MechworkError as e:\n"
        "    print(type(e).__name__, str(e)[:160], '...')"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbf.write(nb, "notebooks/01_getting_started.ipynb")
print("wrote notebooks/01_getting_started.ipynb")
