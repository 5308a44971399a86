"""The word lists of mechwork's generated language, with the ground truth each word carries.

Everything here is a constant: the vocabulary, and therefore every token id, is the same on every machine.
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = SPECIALS

FEMALE_NAMES = (
    "Mary",
    "Anna",
    "Emma",
    "Sarah",
    "Laura",
    "Julia",
    "Alice",
    "Kate",
    "Lucy",
    "Rose",
    "Clara",
    "Eva",
    "Grace",
    "Helen",
    "Irene",
    "Jane",
    "Lily",
    "Nora",
    "Olivia",
    "Sophie",
)
MALE_NAMES = (
    "John",
    "James",
    "Tom",
    "David",
    "Peter",
    "Paul",
    "Mark",
    "Luke",
    "Adam",
    "Ben",
    "Carl",
    "Dan",
    "Eric",
    "Frank",
    "George",
    "Henry",
    "Jack",
    "Leo",
    "Max",
    "Sam",
)
NAMES = FEMALE_NAMES + MALE_NAMES
#: gender of every name: 0 = female, 1 = male
GENDER = {**{n: 0 for n in FEMALE_NAMES}, **{n: 1 for n in MALE_NAMES}}
PRONOUNS = ("she", "he")  # indexed by gender

PLACES = (
    "store",
    "park",
    "school",
    "market",
    "beach",
    "garden",
    "library",
    "station",
    "cafe",
    "museum",
    "office",
    "river",
)
OBJECTS = ("drink", "book", "ball", "letter", "gift", "key", "bag", "flower", "ring", "cake", "map", "coin")

#: style lexicons: index i of POSITIVE and NEGATIVE are antonyms; the two sets are disjoint
POSITIVE_ADJ = (
    "happy",
    "lovely",
    "bright",
    "kind",
    "warm",
    "calm",
    "good",
    "sweet",
    "great",
    "nice",
    "gentle",
    "cheerful",
    "fresh",
    "beautiful",
    "wonderful",
    "joyful",
)
NEGATIVE_ADJ = (
    "sad",
    "awful",
    "dark",
    "cruel",
    "cold",
    "angry",
    "bad",
    "bitter",
    "terrible",
    "nasty",
    "harsh",
    "gloomy",
    "stale",
    "ugly",
    "horrible",
    "miserable",
)
POSITIVE_VERB = ("laughed", "smiled", "sang", "cheered")
NEGATIVE_VERB = ("cried", "frowned", "shouted", "groaned")
STYLES = ("negative", "positive")  # label 0 / 1
STYLE_WORDS = {
    0: frozenset(NEGATIVE_ADJ + NEGATIVE_VERB),
    1: frozenset(POSITIVE_ADJ + POSITIVE_VERB),
}

#: nonce words: content-free tokens for the random segments of induction documents
NONCE = tuple(c + v for c in ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t") for v in ("a", "e", "i", "u"))
#: tokens that random (induction) segments are drawn from
INDUCTION_POOL = NONCE + NAMES + PLACES + OBJECTS

IOI_VERBS = ("gave", "handed", "sent", "passed", "showed", "offered", "threw", "lent", "tossed", "brought")
GENDER_ACTIONS = ("found", "wanted", "bought", "saw", "lost", "needed")

FUNCTION_WORDS = (
    ",",
    ".",
    "a",
    "the",
    "to",
    "and",
    "at",
    "When",
    "After",
    "While",
    "Then",
    "Later",
    "Today",
    "went",
    "got",
    "arrived",
    "were",
    "walked",
    "met",
    "ran",
    "came",
    "stopped",
    "together",
    "because",
    "so",
    "when",
    "until",
    "was",
    "stayed",
    "into",
    "then",
    "later",
    "day",
    "began",
    "it",
    "everyone",
    "felt",
    "looked",
    "story",
)


def all_words() -> list[str]:
    """Every word of the language in a fixed order (specials first); its index is the token id."""
    seen: dict[str, None] = {}
    for group in (
        SPECIALS,
        FUNCTION_WORDS,
        NAMES,
        PRONOUNS,
        PLACES,
        OBJECTS,
        IOI_VERBS,
        GENDER_ACTIONS,
        POSITIVE_ADJ,
        NEGATIVE_ADJ,
        POSITIVE_VERB,
        NEGATIVE_VERB,
        NONCE,
    ):
        for w in group:
            seen.setdefault(w, None)
    return list(seen)
