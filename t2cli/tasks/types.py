"""The task data types and the ``Task`` base class.

A task turns a dataset into ``TaskItem``s (user message + gold answer + scorer
kind) with fixed, seeded train/valid/test splits, and scores completions with
the scorer named by each item's ``kind`` (see ``t2cli.tasks.scorers``).
"""

from __future__ import annotations

import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from t2cli.errors import T2Error, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image

    from t2cli.runtime.multimodal import ImagePrompt

SPLITS = ("train", "valid", "test")
# One seed for every seeded split; changing it changes which items are held out, so never do.
SPLIT_SEED = 2501_06252
R = TypeVar("R")


class TaskError(T2Error):
    """A task name, task file or task data that cannot be used."""


class UnknownTask(TaskError, UsageError):
    """A task name or split that does not exist (a value the user typed: exit code 2)."""


@dataclass(frozen=True)
class Score:
    """The verdict on one completion: ``extracted`` is the answer found in it (None when none was)."""

    correct: bool
    extracted: str | None
    reason: str


class ItemImage(Protocol):
    """One image shown with an item, opened only when a caller needs its pixels.

    Implementations (``t2cli.tasks.images``) are frozen dataclasses, so items compare and
    hash by where their images come from, never by decoded pixels.
    """

    @property
    def source(self) -> str:
        """Where the image comes from, for messages and model cards (a path, a generator's scene)."""
        ...

    def open(self) -> Image:
        """The image as an RGB PIL image."""
        ...


@dataclass(frozen=True)
class TaskItem:
    """One question of a task.

    ``prompt`` is the user message (instructions included) before the chat
    template, which the caller applies. ``kind`` names the scorer; ``meta``
    holds what that scorer needs besides the gold ``answer`` (e.g. ``choices``,
    ``tests``) and is passed to it as keyword arguments. ``images`` are shown
    with the prompt, in order (empty for a text item).
    """

    id: str
    prompt: str
    answer: str
    kind: str
    meta: dict = field(default_factory=dict)
    images: tuple[ItemImage, ...] = ()


class Task(ABC):
    """A named benchmark with fixed splits and a scorer.

    Subclasses set the class attributes and implement ``_build_splits``; they are
    registered by name with ``@register_task`` (``t2cli.tasks.lookup``).
    """

    name: str = ""
    category: str = ""
    description: str = ""
    source: str = ""  # where the data comes from, for docs and model cards
    system_prompt: str | None = None
    max_new_tokens: int = 512
    aliases: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._splits: dict[str, list[TaskItem]] | None = None

    @abstractmethod
    def _build_splits(self) -> dict[str, list[TaskItem]]:
        """Load the data and return ``{"train": [...], "valid": [...], "test": [...]}`` deterministically."""

    def split(self, split: str) -> list[TaskItem]:
        """The items of one split ("train", "valid" or "test"); the same list on every call."""
        if split not in SPLITS:
            raise UnknownTask(f"unknown split '{split}' for task '{self.name}'", hint=f"use one of {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self._build_splits()
        return list(self._splits[split])

    def uses_images(self) -> bool:
        """Whether any item of any split is shown with an image (a vision-language model is then needed)."""
        return any(item.images for split in SPLITS for item in self.split(split))

    def split_sizes(self) -> dict[str, int]:
        """Number of items in each split."""
        return {name: len(self.split(name)) for name in SPLITS}

    def sample_train(self, n: int, rng: random.Random) -> list[TaskItem]:
        """``n`` training items drawn with ``rng``: without repetition until the split is used up, then again."""
        train = self.split("train")
        if not train:
            raise TaskError(f"task '{self.name}' has no training items", hint='add items with "split": "train"')
        out: list[TaskItem] = []
        while len(out) < n:
            out.extend(rng.sample(train, min(n - len(out), len(train))))
        return out

    def score(self, item: TaskItem, completion: str) -> Score:
        """Score one completion of ``item`` with the scorer its ``kind`` names."""
        from t2cli.tasks.scorers import get_scorer  # noqa: PLC0415 - cycle: scorers imports Score from this module

        return get_scorer(item.kind)(completion, item.answer, **item.meta)

    def score_batch(self, items: Sequence[TaskItem], completions: Sequence[str]) -> list[Score]:
        """Score completions in order; code items run in parallel sandboxes (one per CPU core)."""
        if len(items) != len(completions):
            raise ValueError(f"{len(items)} items but {len(completions)} completions")
        if not any(item.kind == "python_tests" for item in items):
            return [self.score(item, c) for item, c in zip(items, completions)]
        # Threads suffice: each sandbox is a separate process, the threads only wait on it.
        with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
            return list(pool.map(self.score, items, completions))

    def correct(self, items: Sequence[TaskItem], completions: Sequence[str]) -> list[bool]:
        """Whether each completion answers its item (``score_batch`` verdicts, in order)."""
        return [score.correct for score in self.score_batch(items, completions)]

    def require_text_only(self, items: Sequence[TaskItem] | None = None, *, path: str = "this command") -> None:
        """TaskError, one line, when this task (or just ``items``) shows images and ``path`` feeds text only.

        Every path of t2 (train with either rollout, replicated or FSDP; eval, ``t2 eval --strategy``,
        ``t2 adapt``) feeds images to a vision-language model (``image_prompts``); a path that rendered
        an image task's prompts as text would answer it without its pictures, and its accuracy would
        measure nothing: ``prompts`` calls this as the guard against that.
        """
        if any(item.images for item in items) if items is not None else self.uses_images():
            raise TaskError(
                f"task '{self.name}' shows images, and {path} feeds text only",
                hint="train or evaluate image tasks with `t2 train` / `t2 eval --base|--expert` on a "
                "vision-language model (docs/vlm.md)",
            )

    def prompts(self, tokenizer, items: Sequence[TaskItem]) -> list[str]:  # tokenizer: PreTrainedTokenizerBase
        """The chat-formatted prompts of ``items`` under this task's system prompt, ready to generate from."""
        from t2cli.runtime.generation import render_prompt  # noqa: PLC0415 - heavy: pulls torch (~2 s); task data does not need it

        self.require_text_only(items, path="a text prompt")
        return [render_prompt(tokenizer, item.prompt, self.system_prompt) for item in items]

    def image_prompts(self, processor, items: Sequence[TaskItem]) -> list[ImagePrompt]:  # processor: ProcessorMixin
        """``items`` with their images, through a vision-language model's processor and chat template."""
        from t2cli.runtime.multimodal import encode_image_prompt  # noqa: PLC0415 - heavy: pulls torch (~2 s); task data does not need it

        return [
            encode_image_prompt(processor, item.prompt, [image.open() for image in item.images], self.system_prompt)
            for item in items
        ]

    def reference_completion(self, item: TaskItem) -> str | None:
        """The gold answer written the way the prompt asks for it (for tests and few-shot examples).

        None where the kind cannot write one (regex).
        """
        from t2cli.tasks.scorers import reference_completion  # noqa: PLC0415 - cycle: scorers imports Score from this module

        return reference_completion(item.kind, item.answer, **item.meta)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def seeded_split(
    records: Sequence[R], sizes: dict[str, int], seed_key: str, key: Callable[[R], str]
) -> dict[str, list[R]]:
    """Shuffle ``records`` with a fixed seed and cut them into splits of ``sizes`` (test first, then valid).

    Records are sorted by ``key`` (a stable source id) first, so the result does not
    depend on the order the data was read in; ``train`` takes whatever is left
    when its size is not given.
    """
    ordered = sorted(records, key=lambda record: _natural_key(key(record)))
    random.Random(f"{SPLIT_SEED}:{seed_key}").shuffle(ordered)
    n_test, n_valid = sizes.get("test", 0), sizes.get("valid", 0)
    n_train = sizes.get("train", len(ordered) - n_test - n_valid)
    if min(n_test, n_valid, n_train) < 0 or n_test + n_valid + n_train > len(ordered):
        raise TaskError(f"'{seed_key}' has {len(ordered)} items, fewer than its splits need ({sizes})")
    return {
        "train": ordered[n_test + n_valid : n_test + n_valid + n_train],
        "valid": ordered[n_test : n_test + n_valid],
        "test": ordered[:n_test],
    }


def _natural_key(text: str) -> list:
    # "doc/2" sorts before "doc/10"; text and number parts never compare with each other.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]
