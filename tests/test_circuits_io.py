"""Circuits: export round trips, the Neuronpedia JSON Schema, HTML escaping, the CLI, bad input, a GPT-2 BPE
folder and the MiniLM refusal."""

from __future__ import annotations

import json

import jsonschema
import networkx as nx
import pytest
import torch

import mechwork
from mechwork.circuits import NEURONPEDIA_SCHEMA, Graph, GraphEdge, GraphNode, attribute_edges
from mechwork.cli import main
from mechwork.core.errors import ConfigError, DataError, MechworkError, ShapeError, SiteError
from mechwork.tasks import PromptBatch


@pytest.fixture(scope="module")
def ioi_graph(toy_mixed):
    batch = mechwork.tasks.get("ioi").prompts(8, seed=0)
    return attribute_edges(toy_mixed, batch, method="eap").prune(top_n=30)


def test_round_trips(ioi_graph, toy_mixed, tmp_path):
    for fmt, name in [("neuronpedia", "g.json"), ("node-link", "g.nodelink.json"), ("graphml", "g.graphml")]:
        path = ioi_graph.save(tmp_path / name, format=fmt)
        back = Graph.load(path, model=toy_mixed)
        assert back.equals(ioi_graph), fmt
        assert back.metadata["pruning"] == ioi_graph.metadata["pruning"]
    G = nx.read_graphml(tmp_path / "g.graphml")
    assert G.number_of_edges() == ioi_graph.n_edges and G.number_of_nodes() == ioi_graph.n_nodes


def test_neuronpedia_schema_and_conventions(ioi_graph, tmp_path):
    d = json.loads(ioi_graph.save(tmp_path / "my graph.json").read_text())
    jsonschema.validate(d, NEURONPEDIA_SCHEMA)
    assert d["metadata"]["slug"] == "my-graph" and d["metadata"]["scan"] == "toy-mixed"
    ids = {n["node_id"] for n in d["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in d["links"])
    logit = [n for n in d["nodes"] if n["feature_type"] == "logit"]
    assert len(logit) == 1 and logit[0]["is_target_logit"] and logit[0]["layer"] == "5"
    assert logit[0]["node_id"].startswith("5_") and logit[0]["jsNodeId"].startswith("L_") and "(p=" in logit[0]["clerp"]
    heads = [n for n in d["nodes"] if n["feature_type"] == "attention head"]
    assert heads and all(n["node_id"] == f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in heads)
    emb = [n for n in d["nodes"] if n["feature_type"] == "embedding"]
    assert emb and all(n["layer"] == "E" and n["node_id"].startswith("E_") for n in emb)
    inf = sorted(n["influence"] for n in d["nodes"])
    assert 0 < inf[0] and inf[-1] == pytest.approx(1.0)
    bad = dict(d, nodes=[{k: v for k, v in d["nodes"][0].items() if k != "ctx_idx"}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, NEURONPEDIA_SCHEMA)


def test_dot_and_html_escape_tokens(tmp_path):
    evil = "<script>alert('x')</script>"
    nodes = [
        GraphNode("input", "input", -1, 3, label=evil, top_tokens=[evil, '"quote"']),
        GraphNode('a0.h0"', "head", 0, 0, score=1.0, label=evil, top_tokens=[evil]),
        GraphNode("logits", "logits", 1),
    ]
    edges = [GraphEdge("input", 'a0.h0"', 0.5, "q"), GraphEdge('a0.h0"', "logits", -1.0, "logits")]
    g = Graph(nodes, edges, {"model": evil, "prompt": evil, "prompt_tokens": [evil], "n_layers": 1, "level": "edge"})
    page = g.save(tmp_path / "g.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert page.count("<script") == 2  # our JSON data block and our code, nothing else
    assert "</script>" not in page.split('id="mw-data">')[1].split("</script>")[0]
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    fig_html = g.plot().to_html(include_plotlyjs=False)
    assert "<script>alert" not in fig_html
    dot = g.save(tmp_path / "g.dot").read_text()
    assert '"a0.h0\\""' in dot and "digraph" in dot
    d = json.loads(g.save(tmp_path / "g.json").read_text())
    jsonschema.validate(d, NEURONPEDIA_SCHEMA)
    assert Graph.load(tmp_path / "g.json").equals(g)


def test_cli_end_to_end(tmp_path, capsys):
    out, page = tmp_path / "ind.json", tmp_path / "ind.html"
    argv = ["circuit", "toy-induction-2l", "--task", "induction", "--method", "eap", "--n", "8"]
    assert main(argv + ["--prune", "influence=0.9", "--out", str(out), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "faithfulness" in text and "wrote" in text
    jsonschema.validate(json.loads(out.read_text()), NEURONPEDIA_SCHEMA)
    assert "mw-data" in page.read_text()
    assert main(["circuit", "show", str(out)]) == 0
    assert "edges" in capsys.readouterr().out
    lat = tmp_path / "lat.json"
    sae = "sae_checkpoints/toy-mixed/blocks.{}.hook_resid_post"
    assert (
        main(
            ["circuit", "toy-mixed", "--sae", sae.format(1), "--sae", sae.format(2), "--scan", "500", "--out", str(lat)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "latent" in text and "faithfulness" in text
    jsonschema.validate(json.loads(lat.read_text()), NEURONPEDIA_SCHEMA)
    assert any(n["feature_type"] == "sae latent" for n in json.loads(lat.read_text())["nodes"])
    assert main(["circuit", "toy-mixed", "--method", "relp", "--level", "edge"]) == 2
    assert "scores nodes" in capsys.readouterr().err
    assert main(["circuit", "toy-mixed", "--prune", "influence=1.5", "--n", "4", "--method", "eap"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["circuit", "--help"])
    assert "example" in capsys.readouterr().out


def test_bad_input(toy_mixed, toy_induction, ioi_graph, tmp_path):
    path = ioi_graph.save(tmp_path / "g.json")
    with pytest.raises(DataError, match="n_layers"):
        Graph.load(path, model=toy_induction)  # a graph of another model
    d = json.loads(path.read_text())
    d["nodes"][1]["mechwork"]["id"] = "a9.h9"
    d["links"] = [x for x in d["links"] if d["nodes"][1]["node_id"] not in (x["source"], x["target"])]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="a9.h9"):
        Graph.load(tmp_path / "bad.json", model=toy_mixed)
    foreign = Graph(
        [GraphNode("a9.h9", "head", 1, 9), GraphNode("logits", "logits", 4)],
        [GraphEdge("a9.h9", "logits", 1.0, "logits")],
        {},
    )
    batch = mechwork.tasks.get("ioi").prompts(4, seed=0)
    with pytest.raises(DataError, match="a9.h9"):
        foreign.faithfulness(toy_mixed, batch)
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a graph"):
        Graph.load(tmp_path / "x.json")
    (tmp_path / "t.json").write_text('{"metadata": {')
    with pytest.raises(MechworkError):
        Graph.load(tmp_path / "t.json")
    for kw in ({"influence": 0.0}, {"influence": 1.5}, {"influence": 0.8, "edge_influence": 0}, {"top_n": 0}, {}):
        with pytest.raises(ConfigError):
            ioi_graph.prune(**kw)
    empty = ioi_graph.subgraph([])
    assert empty.faithfulness(toy_mixed, batch).value == pytest.approx(0.0, abs=1e-3)  # nothing kept = corrupted
    with pytest.raises(DataError, match="no edges"):
        mechwork.circuits.faithfulness_curve(empty, toy_mixed, batch)
    with pytest.raises(ShapeError, match="one value per prompt"):
        attribute_edges(toy_mixed, batch, lambda logits, b: mechwork.tasks.logit_diff(logits, b).mean())
    with pytest.raises(ConfigError, match="method"):
        attribute_edges(toy_mixed, batch, method="acdc")
    sae = mechwork.sae.load("sae_checkpoints/toy-mixed/blocks.1.hook_resid_post")
    with pytest.raises(ShapeError, match="per-token shape"):
        mechwork.circuits.attribute_latents(toy_mixed, batch, saes={"blocks.1.attn.hook_z": sae})  # per-head site
    with pytest.raises(SiteError):
        mechwork.circuits.attribute_latents(toy_mixed, batch, saes={"blocks.9.hook_resid_post": sae})
    with pytest.raises(ShapeError, match="width"):
        mechwork.circuits.attribute_latents(toy_induction, batch, saes={"blocks.1.hook_resid_post": sae})


@pytest.mark.parametrize("fixture", ["gpt2_model", "gpt2_bridge"])
def test_gpt2_bpe_folder(request, fixture):
    """A GPT-2-style folder with a byte-level BPE (tests/conftest.py): prompts through its own tokenizer."""
    model = request.getfixturevalue(fixture)
    batch = mechwork.tasks.from_pairs(
        model,
        clean=["When Mary and John went to the store, John gave a drink to", "Then Sarah and David walked home, David gave a map to"],
        corrupted=["When Mary and John went to the store, Mary gave a drink to", "Then Sarah and David walked home, Sarah gave a map to"],
        answers=[" Mary", " Sarah"],
        wrong=[" John", " David"],
    )  # fmt: skip
    eap = attribute_edges(model, batch, method="eap")
    exact = attribute_edges(model, batch, method="exact")
    a, b = eap.weights(), torch.tensor([exact.edge_dict()[e.id] for e in eap.edges], dtype=torch.float64)
    assert float(b.abs().max()) > 0 and torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    toks = eap.metadata["prompt_tokens"]
    assert " Mary" in toks and eap.metadata["answer_token"] == " Mary"
    assert "mw-data" in eap.to_html()


def test_minilm_is_refused(minilm):
    batch = PromptBatch(
        task="custom", clean=torch.tensor([[101, 2000, 102]]), corrupted=torch.tensor([[101, 2001, 102]]),
        answer=torch.tensor([5]), wrong=torch.tensor([6]), pos=torch.tensor([2]),
    )  # fmt: skip
    with pytest.raises(mechwork.UnsupportedModelError, match="LM head"):
        attribute_edges(minilm, batch, lambda logits, b: logits[:, -1, 0])
    with pytest.raises(mechwork.UnsupportedModelError, match="LM head"):
        mechwork.circuits.attribute_latents(minilm, batch, saes={"x": None})
