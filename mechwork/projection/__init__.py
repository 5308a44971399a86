"""Embedding-space projection: the logit and tuned lenses, weights and directions read in vocabulary space,
head scores, fine-tuning vectors and cross-model layer alignment (METHODS section 4).

>>> lens = mechwork.projection.logit_lens(model, "When Mary and John went to the store , John gave a drink to")
>>> lens.summary()                                   # per layer: KL to final, entropy, answer rank/prob
>>> p = mechwork.projection.project(model, "ov", layer=1, head=0)   # factored, never |V| x |V|
>>> p.top(10, row="Mary"), p.top_pairs(10), p.plot(["Mary", "John"], ["Mary", "John"])
>>> mechwork.projection.project(model, sae_decoder_rows, site="resid_post.2").top(10, row=0)
>>> tuned = mechwork.projection.train_tuned_lens(model); tuned(model, prompts).summary()
>>> mechwork.projection.align(model_a, model_b).matching["all"]
"""

from .align import Alignment, align, permuted_copy
from .finetune import FinetuneVectors, finetune_vectors
from .lens import LensResult, LogitLens, logit_lens
from .scores import copying_score, head_scores, induction_qk, induction_score, positional_pattern, prev_token_score
from .tuned import TunedLens, TunedLensConfig, compare_lenses, train_tuned_lens
from .weights import Projection, project

__all__ = [
    "logit_lens",
    "LensResult",
    "LogitLens",
    "project",
    "Projection",
    "copying_score",
    "prev_token_score",
    "positional_pattern",
    "induction_qk",
    "induction_score",
    "head_scores",
    "TunedLens",
    "TunedLensConfig",
    "train_tuned_lens",
    "compare_lenses",
    "finetune_vectors",
    "FinetuneVectors",
    "align",
    "Alignment",
    "permuted_copy",
]
