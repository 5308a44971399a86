"""Tasks: the generated language's (``ioi``, ``induction``, ``gender``, ``style``), your own registered ones,
and your own prompts.

>>> task = mechwork.tasks.get("ioi")
>>> batch = task.prompts(64, seed=0, model=model)  # rendered through the model's tokenizer
>>> task.metric(model(batch.clean), batch).mean()
>>> mine = mechwork.tasks.from_pairs(model, clean=[...], corrupted=[...], answers=[" Mary"], wrong=[" John"])
>>> texts = mechwork.tasks.from_texts(model, ["she smiled", "he frowned"], labels=[0, 1])
"""

from __future__ import annotations

import difflib
from typing import Any

from ..core.errors import ConfigError, MechworkError
from .base import Task
from .batch import PromptBatch, embedding_similarity, gather_last, logit_diff, mean_pool
from .custom import from_pairs, from_texts
from .language import IOI, GenderAgreement, Induction, Style

_REGISTRY: dict[str, type[Task]] = {"ioi": IOI, "induction": Induction, "gender": GenderAgreement, "style": Style}


class TaskNotFoundError(MechworkError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def names() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_REGISTRY)


def get(name: str | Task, **options: Any) -> Task:
    """A task by name; keyword options configure it (e.g. ``get("induction", segment_len=8)``)."""
    if isinstance(name, Task):
        return name
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TaskNotFoundError(f"unknown task {name!r}; known tasks: {', '.join(names())}.{hint}")
    return _REGISTRY[name](**options)


def register(name: str, cls: type[Task], *, overwrite: bool = False) -> None:
    """Register your own task class (a :class:`Task` subclass implementing ``_items``) under ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"register() needs a Task subclass, got {cls!r}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
        raise ConfigError(f"a task named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = cls


__all__ = [
    "get",
    "names",
    "register",
    "from_pairs",
    "from_texts",
    "Task",
    "PromptBatch",
    "IOI",
    "Induction",
    "GenderAgreement",
    "Style",
    "gather_last",
    "logit_diff",
    "mean_pool",
    "embedding_similarity",
    "TaskNotFoundError",
]
