"""Patching: activation patching, attribution patching (AtP), relevance patching (RelP) and integrated
gradients behind one interface, plus faithfulness of node sets.

>>> import mechwork
>>> from mechwork.patching import activation_patch, attribution_patch, relevance_patch, integrated_gradients
>>> model = mechwork.load_model("toy-mixed")
>>> batch = mechwork.tasks.get("ioi").prompts(32, seed=0)
>>> ap = activation_patch(model, batch, sites="z", per="head")       # ground truth, batched forwards
>>> relp = relevance_patch(model, batch, sites="z", per="head")      # 2 forwards + 1 backward
>>> relp.correlation(ap), ap.top(3), ap.plot()

All four take ``(model, batch, metric, *, sites, per, direction)`` and return a :class:`PatchResult`:
scores per cell with named axes (``[component,] layer[, pos][, head]``), ``.to_dataframe()``, ``.top(n)``,
``.plot()``, ``.normalized()``, ``.correlation(other)``, ``.save(path)``.
"""

from .activation import activation_patch, default_rows, plan_chunks
from .faithfulness import Faithfulness, faithfulness, faithfulness_curve, faithfulness_many
from .gradients import QUADRATURES, attribution_patch, integrated_gradients, quadrature, relevance_patch
from .grid import GROUPS, PER, Node
from .lrp import DEFAULT_RULES, RULES, lrp, lrp_hooks, parse_rules
from .plot import plot_comparison
from .result import PatchResult
from .runs import Context, eval_metric, forward_rows, prepare

METHODS = {
    "activation": activation_patch,
    "attribution": attribution_patch,
    "atp": attribution_patch,
    "relevance": relevance_patch,
    "relp": relevance_patch,
    "ig": integrated_gradients,
    "integrated_gradients": integrated_gradients,
}

__all__ = [
    "activation_patch",
    "attribution_patch",
    "relevance_patch",
    "integrated_gradients",
    "PatchResult",
    "Node",
    "faithfulness",
    "faithfulness_curve",
    "faithfulness_many",
    "Faithfulness",
    "lrp",
    "lrp_hooks",
    "parse_rules",
    "RULES",
    "DEFAULT_RULES",
    "PER",
    "GROUPS",
    "QUADRATURES",
    "quadrature",
    "plot_comparison",
    "METHODS",
    # building blocks for methods built on patching (mechwork.circuits): validated base/source runs with their
    # caches, resumed forwards with hooks, chunk planning, metric checking
    "Context",
    "prepare",
    "forward_rows",
    "plan_chunks",
    "default_rows",
    "eval_metric",
]
