"""Safety: local Hugging Face folders load safetensors only (never pickle); figure titles are HTML-escaped."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.viz import escape_text, heatmap, layer_line, save_html


@pytest.fixture
def pickle_only_folder(tmp_path):
    """A tiny GPT-2 folder whose weights exist only as a pickled ``pytorch_model.bin``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=mechwork.data.vocab_size(), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    folder = tmp_path / "gpt2-bin"
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    state = GPT2LMHeadModel.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    mechwork.data.save_tokenizer(folder)
    return folder


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_pickle_only_folder_is_refused_without_unpickling(pickle_only_folder, backend, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("torch.load was called: a pickled file was opened")

    monkeypatch.setattr(torch, "load", no_pickle)
    with pytest.raises(mechwork.CheckpointError, match=r"pytorch_model\.bin.*safetensors only.*save_pretrained"):
        mechwork.load_model(pickle_only_folder, backend=backend)


def test_folder_with_both_formats_loads_the_safetensors(pickle_only_folder, monkeypatch):
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel.from_pretrained(pickle_only_folder, use_safetensors=False).save_pretrained(pickle_only_folder)
    assert (pickle_only_folder / "model.safetensors").is_file()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    model = mechwork.load_model(pickle_only_folder, backend="hooked")
    assert model.cfg.d_model == 16


def _layout_titles(fig) -> list[str]:
    lay = fig.layout
    return [lay.title.text, lay.xaxis.title.text, lay.yaxis.title.text]


def test_axis_titles_are_escaped(tmp_path):
    evil = "<b>resid</b> & <img src=x onerror=alert(1)>"
    fig = heatmap(torch.zeros(2, 2), x=["a", "b"], y=["c", "d"], title=evil, xlabel=evil, ylabel=evil)
    assert _layout_titles(fig) == [escape_text(evil)] * 3
    assert escape_text(evil) == "&lt;b&gt;resid&lt;/b&gt; &amp; &lt;img src=x onerror=alert(1)&gt;"
    line = layer_line(torch.zeros(3, 2), ["0", "1", "2"], title=evil, ylabel=evil)
    assert _layout_titles(line) == [escape_text(evil), "layer", escape_text(evil)]
    text = save_html(fig, tmp_path / "f.html").read_text()
    assert "<img src=x" not in text and "\\u003cimg src=x" not in text


def test_erasure_sweep_figure_escapes_user_labels():
    from mechwork.erasure.plots import plot_sweep

    evil = "<i>leace</i>"
    rows = [
        {"site": None, "gender_accuracy": 0.9},
        {
            "site": "resid_post.0",
            "method": "leace",
            "label": evil,
            "linear_accuracy": 0.5,
            "majority": 0.5,
            "gender_accuracy": 0.6,
        },
    ]
    fig = plot_sweep(rows, concept_task="<gender>", tasks=())
    names = [t.name for t in fig.data]
    assert "&lt;i&gt;leace&lt;/i&gt;: linear probe" in names and not any("<i>" in n for n in names)
    assert fig.layout.annotations[0].text.startswith("&lt;gender&gt;")
