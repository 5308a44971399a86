"""Document generators of the generated language, each word tagged with the ground truth it carries.

Four document kinds:

``ioi``
    "When Mary and John went to the store , John gave a drink to Mary ." over 10 templates of equal
    length, both name orders (ABBA and BABA); 20% of the unordered name pairs never occur in training.
``gender``
    "Mary went to the park because she found a key ." -- the pronoun agrees with the name's gender.
``style``
    "the day began ." followed by 2-4 sentences all written in one style (positive or negative lexicon,
    disjoint word sets), so the style is a document-level concept that can be detected and steered.
``induction``
    ``[random prefix] [segment] [segment] [random suffix]`` with random segment length and start.

Every word carries a tag ``kind:role`` (e.g. ``ioi:IO``, ``style:adj+``, ``induction:second``), the ground
truth that SAE latents and probes are scored against.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import vocab as V

IOI_TEMPLATES = (
    "When {A} and {B} went to the {P} , {S} gave a {O} to",
    "When {A} and {B} got to the {P} , {S} handed a {O} to",
    "After {A} and {B} arrived at the {P} , {S} sent a {O} to",
    "While {A} and {B} were at the {P} , {S} passed a {O} to",
    "Then {A} and {B} walked to the {P} , {S} showed a {O} to",
    "Later {A} and {B} met at the {P} , {S} offered a {O} to",
    "{A} and {B} went to the {P} together , {S} threw a {O} to",
    "Today {A} and {B} ran to the {P} and {S} lent a {O} to",
    "When {A} and {B} came to the {P} , {S} tossed a {O} to",
    "After {A} and {B} stopped at the {P} , {S} brought a {O} to",
)
GENDER_TEMPLATES = (
    "{N} went to the {P} because",
    "{N} ran to the {P} so",
    "{N} got to the {P} and",
    "{N} was at the {P} when",
    "{N} stayed at the {P} until",
    "{N} walked into the {P} because",
)
STYLE_OPENER: str = "the day began ."
STYLE_SENTENCES = (
    "the {P} was {ADJ} .",
    "the {O} was {ADJ} .",
    "{N} was {ADJ} .",
    "{N} felt {ADJ} at the {P} .",
    "it was a {ADJ} day .",
    "everyone {VERB} at the {P} .",
    "{N} {VERB} and felt {ADJ} .",
    "the {O} looked {ADJ} and {ADJ} .",
)
#: style prompts for the style task: a context sentence (6 words) then a head whose next word is an adjective
STYLE_PROMPT_CONTEXTS = ("it was a {ADJ} day .", "everyone {VERB} at the {P} .", "{N} {VERB} and felt {ADJ} .")
STYLE_PROMPT_HEADS = ("the {P} was", "the {O} was")

# Segments of 8-24 tokens: with shorter ones (5-16) small models learn offset / context-averaging shortcuts
# instead of the previous-token -> induction-head circuit (observed while training the zoo).
INDUCTION_PREFIX = (0, 10)
INDUCTION_SEGMENT = (8, 24)
INDUCTION_SUFFIX = (0, 4)

DEFAULT_MIX = {"ioi": 0.35, "gender": 0.2, "style": 0.25, "induction": 0.2}
_HOLDOUT_SEED = 20240611
HOLDOUT_FRACTION = 0.2


@dataclass
class Doc:
    """One generated document: its words, a tag per word, and the factors that generated it."""

    kind: str
    words: list[str]
    tags: list[str]
    factors: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(self.words)


def ioi_pair_split() -> tuple[frozenset[frozenset[str]], frozenset[frozenset[str]]]:
    """Unordered IOI name pairs split into (train, held-out); fixed for all time (own seed)."""
    pairs = [frozenset(p) for p in itertools.combinations(V.NAMES, 2)]
    rng = random.Random(_HOLDOUT_SEED)
    rng.shuffle(pairs)
    n_test = int(round(HOLDOUT_FRACTION * len(pairs)))
    return frozenset(pairs[n_test:]), frozenset(pairs[:n_test])


_TRAIN_PAIRS, _TEST_PAIRS = ioi_pair_split()
_PAIR_LISTS: dict[str, list[tuple[str, str]]] = {
    "train": sorted((a, b) for a, b in map(sorted, _TRAIN_PAIRS)),
    "test": sorted((a, b) for a, b in map(sorted, _TEST_PAIRS)),
}
_PAIR_LISTS["all"] = sorted(_PAIR_LISTS["train"] + _PAIR_LISTS["test"])


def _fill(
    template: str, slots: Mapping[str, str | list[str]], role_of: dict[str, str], kind: str
) -> tuple[list[str], list[str]]:
    """Fill ``{X}`` slots of a template; ``slots`` values that are lists are consumed in order (repeated slots)."""
    words, tags = [], []
    counters: dict[str, int] = {}
    for tok in template.split():
        if tok.startswith("{") and tok.endswith("}"):
            key = tok[1:-1]
            val = slots[key]
            if isinstance(val, list):
                i = counters.get(key, 0)
                counters[key] = i + 1
                val = val[i]
            words.append(val)
            tags.append(f"{kind}:{role_of.get(key, key.lower())}")
        else:
            words.append(tok)
            tags.append(f"{kind}:text")
    return words, tags


def ioi_doc(
    rng: random.Random, *, split: str = "train", template: int | None = None, pair: tuple[str, str] | None = None
) -> Doc:
    """An IOI sentence: ``template`` filled with an (IO, S) name pair from ``split`` and its IO answer."""
    t = rng.randrange(len(IOI_TEMPLATES)) if template is None else template
    pair = rng.choice(_PAIR_LISTS[split]) if pair is None else pair
    io, s = (pair[0], pair[1]) if rng.random() < 0.5 else (pair[1], pair[0])
    abba = rng.random() < 0.5  # ABBA: IO first ("When IO and S ..., S gave ... to IO"); BABA: S first
    a, b = (io, s) if abba else (s, io)
    place, obj = rng.choice(V.PLACES), rng.choice(V.OBJECTS)
    roles = {"A": "IO" if abba else "S1", "B": "S1" if abba else "IO", "S": "S2", "P": "place", "O": "object"}
    words, tags = _fill(IOI_TEMPLATES[t], {"A": a, "B": b, "S": s, "P": place, "O": obj}, roles, "ioi")
    words += [io, "."]
    tags += ["ioi:answer", "ioi:text"]
    return Doc(
        "ioi",
        words,
        tags,
        {"template": t, "io": io, "s": s, "order": "ABBA" if abba else "BABA", "place": place, "object": obj},
    )


def gender_doc(rng: random.Random, *, template: int | None = None, name: str | None = None) -> Doc:
    """A sentence whose pronoun agrees with the gender of the name that opens it (plus, half the time, a second)."""
    t = rng.randrange(len(GENDER_TEMPLATES)) if template is None else template
    name = rng.choice(V.NAMES) if name is None else name
    g = V.GENDER[name]
    pron = V.PRONOUNS[g]
    words, tags = _fill(
        GENDER_TEMPLATES[t], {"N": name, "P": rng.choice(V.PLACES)}, {"N": "name", "P": "place"}, "gender"
    )
    words += [pron, rng.choice(V.GENDER_ACTIONS), "a", rng.choice(V.OBJECTS), "."]
    tags += ["gender:pronoun", "gender:text", "gender:text", "gender:object", "gender:text"]
    if rng.random() < 0.5:
        words += ["then", pron, rng.choice(V.GENDER_ACTIONS), "the", rng.choice(V.OBJECTS), "."]
        tags += ["gender:text", "gender:pronoun", "gender:text", "gender:text", "gender:object", "gender:text"]
    return Doc("gender", words, tags, {"template": t, "name": name, "gender": g})


def _style_slots(rng: random.Random, style: int) -> dict[str, list[str]]:
    adj = V.POSITIVE_ADJ if style == 1 else V.NEGATIVE_ADJ
    verb = V.POSITIVE_VERB if style == 1 else V.NEGATIVE_VERB
    return {
        "ADJ": [rng.choice(adj) for _ in range(2)],
        "VERB": [rng.choice(verb)],
        "P": [rng.choice(V.PLACES)],
        "O": [rng.choice(V.OBJECTS)],
        "N": [rng.choice(V.NAMES)],
    }


def _style_roles(style: int) -> dict[str, str]:
    s = "+" if style == 1 else "-"
    return {"ADJ": f"adj{s}", "VERB": f"verb{s}", "P": "place", "O": "object", "N": "name"}


def style_doc(rng: random.Random, *, style: int | None = None, n_sentences: int | None = None) -> Doc:
    """A short story: the neutral opener then 2-4 sentences all in one style (0 negative, 1 positive)."""
    style = rng.randrange(2) if style is None else style
    n = rng.randint(2, 4) if n_sentences is None else n_sentences
    words = STYLE_OPENER.split()
    tags = ["style:opener"] * len(words)
    for _ in range(n):
        w, t = _fill(rng.choice(STYLE_SENTENCES), _style_slots(rng, style), _style_roles(style), "style")
        words += w
        tags += t
    return Doc("style", words, tags, {"style": style, "n_sentences": n})


def induction_doc(
    rng: random.Random,
    *,
    prefix_len: int | None = None,
    segment_len: int | None = None,
    suffix_len: int | None = None,
    pool: tuple[str, ...] = V.INDUCTION_POOL,
    prefix_range: tuple[int, int] = INDUCTION_PREFIX,
    segment_range: tuple[int, int] = INDUCTION_SEGMENT,
    suffix_range: tuple[int, int] = INDUCTION_SUFFIX,
) -> Doc:
    """``[prefix] [segment] [segment] [suffix]`` of random pool tokens; lengths drawn from the ranges unless given."""
    p = rng.randint(*prefix_range) if prefix_len is None else prefix_len
    L = rng.randint(*segment_range) if segment_len is None else segment_len
    s = rng.randint(*suffix_range) if suffix_len is None else suffix_len
    seg = [rng.choice(pool) for _ in range(L)]
    words = [rng.choice(pool) for _ in range(p)] + seg + seg + [rng.choice(pool) for _ in range(s)]
    tags = ["induction:prefix"] * p + ["induction:first"] * L + ["induction:second"] * L + ["induction:suffix"] * s
    return Doc("induction", words, tags, {"prefix_len": p, "segment_len": L, "suffix_len": s, "start": p})


GENERATORS = {"ioi": ioi_doc, "gender": gender_doc, "style": style_doc, "induction": induction_doc}
