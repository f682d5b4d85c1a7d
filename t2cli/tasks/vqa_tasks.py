"""The paper's visual question answering sets, read from the HF cache when they are there.

TextVQA (``lmms-lab/textvqa``) and OK-VQA (``lmms-lab/OK-VQA``) as their Parquet files lay
them out: ``data/<split>-NNNNN-of-NNNNN.parquet``, one row per question with ``question_id``,
``question``, ``answers`` (the ten annotators' answers) and ``image`` (``{"bytes", "path"}``, the
encoded picture). The files are never downloaded here; reading them needs pyarrow (the
``vqa`` extra). Images stay in the Parquet files until an item's ``open`` reads them.

Scoring (kind ``vqa``) is the binary form of the VQA accuracy: correct when at least three
annotators gave the answer (VQA accuracy 1), after a reduced VQA normalisation (case,
punctuation, articles, number words).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from t2cli.tasks.hf_datasets import cached_dataset_files
from t2cli.tasks.lookup import register_task
from t2cli.tasks.scorers import scorer
from t2cli.tasks.types import Score, Task, TaskError, TaskItem, seeded_split

VQA_PROMPT = "Answer the question using a single word or phrase."
MIN_AGREEING = 3  # annotators who must have given an answer for it to count (VQA accuracy 1)
_NUMBERS = {
    w: str(i)
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
_ARTICLES = {"a", "an", "the"}


def normalize_vqa(text: str) -> str:
    """Lower case, no punctuation (a decimal point kept), no articles, number words as digits."""
    text = re.sub(r"(?<!\d)\.(?!\d)|[^\w\s.]", " ", text.strip().casefold())
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def _vqa_reference(answer: str, **meta) -> str:
    return answer


@scorer("vqa", reference=_vqa_reference)
def score_vqa(completion: str, answer: str, answers: list[str] | None = None, **meta) -> Score:
    """Correct when the completion (or its last line), normalised, was given by >= 3 annotators.

    Without ``answers`` (a custom item) the gold ``answer`` alone is the reference.
    """
    votes = Counter(normalize_vqa(a) for a in (answers if answers else [answer] * MIN_AGREEING))
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    for candidate in (completion, lines[-1] if lines else ""):
        said = normalize_vqa(candidate)
        if said and votes[said] >= MIN_AGREEING:
            return Score(True, said, f"{votes[said]} of {sum(votes.values())} annotators")
    said = normalize_vqa(lines[-1]) if lines else ""
    return Score(False, said or None, f"{votes[said]} of {sum(votes.values())} annotators" if said else "empty")


@dataclass(frozen=True)
class ParquetImage:
    """The picture in one row of a Parquet file (an ``ItemImage``), read when opened."""

    path: Path
    row_group: int
    row: int

    @property
    def source(self) -> str:
        return f"{self.path} row group {self.row_group} row {self.row}"

    def open(self) -> Image.Image:
        cell = _image_column(self.path, self.row_group)[self.row]
        if not cell or not cell.get("bytes"):
            raise TaskError(f"{self.source} has no image bytes", hint="download the dataset's files again")
        with Image.open(io.BytesIO(cell["bytes"])) as image:
            return image.convert("RGB")


@lru_cache(maxsize=2)
def _image_column(path: Path, row_group: int) -> list[dict]:
    # Items are usually read in file order, so keeping the last row group or two avoids
    # re-reading it for every one of its rows.
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional: pyarrow, the [vqa] extra

    return pq.ParquetFile(path).read_row_group(row_group, columns=["image"]).column("image").to_pylist()


@dataclass(frozen=True)
class VqaRow:
    """One question of a VQA Parquet file, its image left in the file."""

    question_id: str
    question: str
    answers: tuple[str, ...]
    image: ParquetImage


def read_vqa_rows(files: list[Path], label: str) -> list[VqaRow]:
    """Every row of ``files`` with the question, its answers and where its image is."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional: pyarrow, the [vqa] extra
    except ImportError:
        raise TaskError(
            f"{label} is stored as Parquet, which needs pyarrow",
            hint="run `pip install 't2cli[vqa]'` (or pip install pyarrow)",
        ) from None
    rows = []
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["question_id", "question", "answers"])
                for row, record in enumerate(table.to_pylist()):
                    answers = tuple(str(a) for a in record["answers"] or ())
                    image = ParquetImage(path, group, row)
                    rows.append(VqaRow(str(record["question_id"]), str(record["question"]), answers, image))
        except (OSError, KeyError, ValueError) as exc:
            raise TaskError(
                f"{label}: cannot read {path}: {exc}",
                hint="the file should have question_id, question, answers and image columns; download it again",
            ) from None
    return rows


def vqa_item(task: str, split: str, row: VqaRow) -> TaskItem:
    """A VQA row as a task item: the gold is the most common answer, all of them go to the scorer."""
    normalised = Counter(normalize_vqa(a) for a in row.answers if normalize_vqa(a))
    if not normalised:
        raise TaskError(f"{task} question {row.question_id} has no answers", hint="use a split with answers")
    return TaskItem(
        id=f"{task}/{split}/{row.question_id}",
        prompt=f"{row.question.strip()}\n{VQA_PROMPT}",
        answer=normalised.most_common(1)[0][0],
        kind="vqa",
        meta={"answers": list(row.answers)},
        images=(row.image,),
    )


@register_task("textvqa", category="vision", description="TextVQA: questions about text in photos", listed=False)
class TextVQA(Task):
    """TextVQA: ``train`` is its train split; its validation split (the usual test set, since the
    test split's answers are hidden) gives one tenth to ``valid`` (seeded) and the rest to ``test``."""

    repo_id = "lmms-lab/textvqa"
    source = "HF cache `lmms-lab/textvqa` `data/{train,validation}-*.parquet`: 34602 train, 5000 validation"
    max_new_tokens = 16

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        files = cached_dataset_files(
            self.repo_id, {"train": "data/train-*.parquet", "validation": "data/validation-*.parquet"}, label="TextVQA"
        )
        train = read_vqa_rows(files["train"], "TextVQA")
        held_out = read_vqa_rows(files["validation"], "TextVQA")
        parts = seeded_split(
            held_out,
            {"valid": len(held_out) // 10, "test": len(held_out) - len(held_out) // 10, "train": 0},
            self.name,
            key=lambda r: r.question_id,
        )
        parts["train"] = train
        return {split: [vqa_item(self.name, split, r) for r in rows] for split, rows in parts.items()}


@register_task(
    "okvqa",
    aliases=("ok-vqa",),
    category="vision",
    description="OK-VQA: questions needing outside knowledge",
    listed=False,
)
class OKVQA(Task):
    """OK-VQA: only its val2014 split (5046 questions) is published with answers; it is seeded
    into 5% train (few-shot adaptation), 5% valid and 90% test, as the paper evaluates on it."""

    repo_id = "lmms-lab/OK-VQA"
    source = "HF cache `lmms-lab/OK-VQA` `data/val2014-*.parquet`: 5046 questions"
    max_new_tokens = 16

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        files = cached_dataset_files(self.repo_id, {"val2014": "data/val2014-*.parquet"}, label="OK-VQA")
        rows = read_vqa_rows(files["val2014"], "OK-VQA")
        n = len(rows)
        parts = seeded_split(
            rows,
            {"train": n // 20, "valid": n // 20, "test": n - 2 * (n // 20)},
            self.name,
            key=lambda r: r.question_id,
        )
        return {split: [vqa_item(self.name, split, r) for r in part] for split, part in parts.items()}
