"""The zoo: small models mechwork ships, trained by ``mechwork zoo train NAME`` on the generated corpus.

Each folder here holds ``config.json``, ``model.safetensors`` (fp32), ``tokenizer/`` and ``card.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig, TrainConfig

ZOO_DIR = Path(__file__).resolve().parent
VOCAB_SIZE = 213  # len(mechwork.data.vocab.all_words()); checked by the tests


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.name


ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "toy-mixed",
            "4-layer transformer with MLPs trained on the whole generated corpus (IOI, gender agreement, style, induction)",
            ModelConfig(
                name="toy-mixed",
                n_layers=4,
                d_model=128,
                n_heads=4,
                d_head=32,
                d_mlp=512,
                n_ctx=64,
                d_vocab=VOCAB_SIZE,
                seed=0,
            ),
            # induction needs its share and long segments to form induction heads within the budget (20% of the
            # data with segments of 5-16 left the repeated half at 3.0 nats vs 4.9 after 4000 steps)
            TrainConfig(
                steps=5000,
                batch_size=64,
                lr=1e-3,
                weight_decay=0.01,
                warmup=200,
                seed=0,
                mix={"ioi": 0.25, "gender": 0.15, "style": 0.25, "induction": 0.35},
                doc_options={"induction": {"segment_range": (8, 24), "prefix_range": (0, 10)}},
            ),
        ),
        ZooEntry(
            "toy-induction-2l",
            "2-layer attention-only transformer trained on repeated random segments (induction heads)",
            ModelConfig(
                name="toy-induction-2l",
                n_layers=2,
                d_model=64,
                n_heads=4,
                d_head=16,
                n_ctx=64,
                d_vocab=VOCAB_SIZE,
                attn_only=True,
                seed=0,
            ),
            # lr 1e-3 and long segments (8-24) give the canonical circuit (layer-0 previous-token heads, layer-1
            # induction heads); lr 3e-3 or segments of 5-16 gave offset/"averaging" circuits instead
            TrainConfig(
                steps=4000,
                batch_size=64,
                lr=1e-3,
                weight_decay=0.01,
                warmup=100,
                seed=0,
                mix={"induction": 1.0},
                doc_options={"induction": {"segment_range": (8, 24), "prefix_range": (0, 10)}},
            ),
        ),
    )
}
DEFAULT = "toy-mixed"
