"""Fine-tuning vectors, cross-model alignment, views and the CLI of mechwork.projection."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import mechwork
from mechwork.cli import main
from mechwork.core.errors import ConfigError
from mechwork.data import vocab as V
from mechwork.data.corpus import Corpus
from mechwork.projection import logit_lens, project
from mechwork.projection.align import align, kernel_corr, permuted_copy
from mechwork.projection.finetune import finetune_vectors


# ------------------------------------------------------------------------------------------ fine-tuning vectors
@pytest.fixture(scope="module")
def positive_finetune(toy_mixed):
    """toy-mixed fine-tuned briefly on positive-style stories only."""
    torch.manual_seed(0)
    ft = copy.deepcopy(toy_mixed).train()
    for p in ft.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(ft.parameters(), lr=1e-3)
    corpus = Corpus(seed=5, mix={"style": 1.0}, options={"style": {"style": 1}})
    for _ in range(20):
        tok, mask = corpus.batch(16, 64)
        logits = ft(tok)
        loss = F.cross_entropy(logits[:, :-1][mask[:, :-1]], tok[:, 1:][mask[:, :-1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ft.eval()


def test_finetune_vector_ranks_the_tuned_style_first(toy_mixed, positive_finetune):
    fv = finetune_vectors(toy_mixed, positive_finetune)
    pos = [toy_mixed.to_single_token(w) for w in V.STYLE_WORDS[1]]
    neg = [toy_mixed.to_single_token(w) for w in V.STYLE_WORDS[0]]
    for comp in ("L2.mlp", "L3.mlp"):  # the top layers
        s = fv.scores[comp]
        auc = float((s[pos][:, None] > s[neg][None, :]).float().mean())
        assert auc > 0.8, (comp, auc)
        r = fv.rank(comp)
        assert r[pos].float().mean() < r[neg].float().mean()
    assert fv.neurons(2).shape == (512, 213)
    assert "L2.mlp" in repr(fv) and "<table" in fv._repr_html_()


def test_finetune_vector_of_identical_checkpoints_is_zero(toy_mixed, toy_induction):
    fv = finetune_vectors(toy_mixed, copy.deepcopy(toy_mixed))
    assert all(float(v.abs().max()) == 0 for v in fv.scores.values())
    with pytest.raises(ConfigError, match="differ"):
        finetune_vectors(toy_mixed, toy_induction)


# ------------------------------------------------------------------------------------------ alignment
def test_kernel_corr_is_pearson_over_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    Ea, Eb = torch.randn(50, 6, generator=g), torch.randn(50, 9, generator=g)
    xa, xb = torch.randn(3, 6, generator=g), torch.randn(4, 9, generator=g)
    want = torch.corrcoef(torch.cat([xa @ Ea.T, xb @ Eb.T]))[:3, 3:]
    torch.testing.assert_close(kernel_corr(xa, xb, Ea.double(), Eb.double()).float(), want, rtol=1e-4, atol=1e-5)


def test_alignment_recovers_permuted_rotated_layers(toy_mixed):
    same = permuted_copy(toy_mixed, [0, 1, 2, 3], seed=1)
    toks = mechwork.tasks.get("ioi").prompts(4, seed=0).clean
    with torch.inference_mode():  # a rotation fixing the all-ones direction keeps the function
        torch.testing.assert_close(same(toks), toy_mixed(toks), rtol=1e-3, atol=1e-3)
    order = [2, 0, 3, 1]  # block i of the copy is block order[i] of the original
    other = permuted_copy(toy_mixed, order, seed=1)
    al = align(toy_mixed, other)
    expected = [order.index(i) for i in range(4)]
    for kind in ("K", "V", "WQ", "WK", "WV", "WO", "all"):
        assert al.accuracy(expected, kind=kind) == 1.0, kind
    assert al.accuracy(expected, raw=True) < 1.0  # the raw parameters no longer correspond
    assert al.to_dataframe().shape[0] == 7


def test_alignment_bad_input(toy_mixed, toy_induction):
    with pytest.raises(ConfigError, match="needs MLPs"):
        align(toy_induction, toy_induction, params=("K",))
    with pytest.raises(ConfigError, match="unknown parameter"):
        align(toy_mixed, toy_mixed, params=("Q",))
    with pytest.raises(ConfigError, match="permutation"):
        permuted_copy(toy_mixed, [0, 1, 1, 2])


# ------------------------------------------------------------------------------------------ views
EVIL = "<script>alert(1)</script>"


def test_views_escape_every_token(toy_mixed, tmp_path):
    from mechwork.projection.plots import alignment_heatmap, top_table
    from mechwork.viz import save_html

    class EvilTokens:
        def __init__(self, inner):
            self.inner = inner

        def decode(self, ids, **kw):
            return f"{EVIL}{ids[0]}"

        def convert_ids_to_tokens(self, ids):
            return [f"{EVIL}{i}" for i in ids]

        def __getattr__(self, name):
            return getattr(self.inner, name)

    evil = copy.copy(toy_mixed)
    evil.tokenizer = EvilTokens(toy_mixed.tokenizer)
    r = logit_lens(evil, torch.tensor([[1, 5, 6, 7]]), pos=None)
    figs = [
        r.heatmap(evil, "kl"),
        project(evil, "ov", layer=1, head=0).plot([5, 6], [7, 8]),
        top_table(project(evil, "neuron_out", layer=2, neuron=3)),
        alignment_heatmap(align(toy_mixed, permuted_copy(toy_mixed, [1, 0, 2, 3]), params=("WO",))),
    ]
    for i, fig in enumerate(figs):
        path = save_html(fig, tmp_path / f"f{i}.html")
        text = path.read_text()
        assert "<script>alert" not in text and "plotly" in text.lower()
        js = fig.to_json()  # plotly's JSON would hide a raw "<" as \u003c in the file: check the figure itself
        assert "<script>" not in js and "\\u003cscript" not in js
        if i < 3:
            assert "&lt;script&gt;" in js


# ------------------------------------------------------------------------------------------ CLI
def test_cli_project_actions(capsys, tmp_path):
    assert main(["project", "toy-induction-2l", "head", "1.0", "--ov", "--json", "--k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["what"] == "ov L1H0" and len(out["top_pairs"]) == 3 and out["copying_score"] > 0.7
    assert (
        main(
            [
                "project",
                "head",
                "toy-induction-2l",
                "0.0",
                "--qk",
                "--rows",
                "Mary",
                "--html",
                str(tmp_path / "qk.html"),
            ]
        )
        == 0
    )
    assert "previous-token score" in capsys.readouterr().out and (tmp_path / "qk.html").is_file()
    assert main(["project", "toy-mixed", "neuron", "2.5", "--k", "4"]) == 0
    assert "value_promotes" in capsys.readouterr().out
    assert main(["project", "toy-mixed", "lens", "--prompt", "When Mary and John went to the store", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lenses"]["logit"]["kl_to_final"][-1] == pytest.approx(0.0, abs=1e-5)
    from mechwork.core.io import save_tensors

    save_tensors(tmp_path / "v.safetensors", {"vector": torch.randn(2, 128), "other": torch.randn(3)})
    assert (
        main(
            [
                "project",
                "toy-mixed",
                "direction",
                str(tmp_path / "v.safetensors"),
                "--key",
                "vector",
                "--site",
                "resid_post.2",
            ]
        )
        == 0
    )
    assert "dir1" in capsys.readouterr().out
    assert main(["project", "toy-mixed", "direction", str(tmp_path / "v.safetensors")]) == 2
    assert "--key" in capsys.readouterr().err
    assert main(["project", "toy-mixed", "head", "1.9"]) == 2
    assert "head in [0, 4)" in capsys.readouterr().err
    assert main(["project", "toy-mixed", "scores", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 16


def test_cli_lens_train_then_read(capsys, tmp_path):
    out = tmp_path / "lens"
    assert (
        main(
            [
                "lens",
                "train",
                "toy-induction-2l",
                "--out",
                str(out),
                "--steps",
                "5",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "kl_to_final_tuned" in text and (out / "cfg.json").is_file()
    assert main(["project", "toy-induction-2l", "lens", "--tuned", str(out), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["lenses"]) == {"logit", "tuned"}
    assert main(["project", "toy-mixed", "lens", "--tuned", str(out)]) == 2
    assert "cannot read this model" in capsys.readouterr().err


def test_alignment_recovers_layers_of_two_seeds():
    """Two small models trained from different seeds (tests/data/align-seeds, recipe in their card.json): the
    kernelised correlation recovers the layer order, the raw-parameter correlation does not."""
    from pathlib import Path

    root = Path(__file__).parent / "data" / "align-seeds"
    a, b = (mechwork.load_model(root / s, device="cpu", backend="hooked") for s in ("s1", "s2"))
    al = align(a, b)
    assert al.matching["all"] == [0, 1, 2, 3]
    assert al.accuracy(raw=True) < 0.5
    assert al.accuracy(kind="V") == 1.0 and al.accuracy(kind="WO") == 1.0  # write-side parameters align best


def test_cli_project_align(capsys, tmp_path):
    from pathlib import Path

    root = Path(__file__).parent / "data" / "align-seeds"
    html = tmp_path / "align.html"
    assert main(["project", "align", str(root / "s1"), str(root / "s2"), "--json", "--html", str(html)]) == 0
    out = json.loads(capsys.readouterr().out.split("\nfigure written")[0])
    assert [r["matching"] for r in out["table"] if r["param"] == "all"] == [[0, 1, 2, 3]]
    assert html.is_file()
    assert main(["project", "align", "toy-mixed", "toy-induction-2l", "--json"]) == 0  # same vocabulary, no MLPs in B
    capsys.readouterr()
