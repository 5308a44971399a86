"""Tasks over the generated language (``ioi``, ``induction``, ``gender``, ``style``).

>>> task = mechwork.tasks.get("ioi")
>>> batch = task.prompts(64, seed=0)            # clean, corrupted, answer, wrong, pos
>>> task.metric(model(batch.clean), batch).mean()
"""

from __future__ import annotations

import difflib
from typing import Any

from ..core.errors import MechworkError
from .base import PromptBatch, Task, gather_last, logit_diff
from .language import IOI, GenderAgreement, Induction, Style

_REGISTRY: dict[str, type[Task]] = {"ioi": IOI, "induction": Induction, "gender": GenderAgreement, "style": Style}


class TaskNotFoundError(MechworkError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def names() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> Task:
    """A task by name; keyword options configure it (e.g. ``get("induction", segment_len=8)``)."""
    if isinstance(name, Task):
        return name
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TaskNotFoundError(f"unknown task {name!r}; known tasks: {', '.join(names())}.{hint}")
    return _REGISTRY[name](**options)


def register(name: str, cls: type[Task]) -> None:
    """Register a task class under ``name``."""
    _REGISTRY[name] = cls


__all__ = [
    "get",
    "names",
    "register",
    "Task",
    "PromptBatch",
    "IOI",
    "Induction",
    "GenderAgreement",
    "Style",
    "gather_last",
    "logit_diff",
    "TaskNotFoundError",
]
