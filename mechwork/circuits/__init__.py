"""Circuits: edge attribution (EAP, EAP-IG, exact edge patching), SAE-latent graphs, pruning by influence,
faithfulness, and export (Neuronpedia JSON, node-link JSON, GraphML, DOT, self-contained HTML).

>>> import mechwork
>>> from mechwork.circuits import attribute_edges, Graph
>>> model = mechwork.load_model("toy-mixed")
>>> batch = mechwork.tasks.get("ioi").prompts(32, seed=0)
>>> g = attribute_edges(model, batch, method="eap-ig")        # every edge, q/k/v inputs separate
>>> circuit = g.prune(influence=0.8)                           # circuit-tracer's influence rule
>>> circuit.faithfulness(model, batch).value                   # edges outside patched to the corrupted run
>>> circuit.save("ioi.json"); circuit.save("ioi.html")        # Neuronpedia JSON, offline interactive view
>>> attribute_edges(model, batch, method="eap", per_position=True)  # nodes at token positions
>>> attribute_latents(model, batch, saes={"blocks.1.hook_resid_post": mechwork.sae.load(path)})  # SAE latents

The bridge (TransformerBridge, TransformerLens 3.9) refuses ``use_split_qkv_input`` for plain attention; the
per-head q/k/v inputs are emulated there and checked against the model's own values (see :mod:`.structure`).
"""

from .attribute import METHODS, attribute_edges
from .build import from_scores
from .faithful import CircuitFaithfulness, FaithfulnessCurve, faithfulness, faithfulness_curve, plot_curves
from .graph import Graph, GraphEdge, GraphNode
from .latents import attribute_latents
from .neuronpedia import SCHEMA as NEURONPEDIA_SCHEMA
from .prune import influence, prune
from .structure import Structure, UnsupportedModelError

__all__ = [
    "attribute_edges",
    "attribute_latents",
    "faithfulness",
    "faithfulness_curve",
    "plot_curves",
    "CircuitFaithfulness",
    "FaithfulnessCurve",
    "influence",
    "prune",
    "NEURONPEDIA_SCHEMA",
    "METHODS",
    "Graph",
    "GraphNode",
    "GraphEdge",
    "from_scores",
    "Structure",
    "UnsupportedModelError",
]
