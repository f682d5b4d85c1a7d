"""Tasks with images: the custom format's ``image`` field, the generated ``shapes`` task, the
TextVQA / OK-VQA loaders on a fake HF cache, and the task/model modality check."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.models.targets import select_targets
from t2cli.tasks import TaskError, get_task, list_tasks, unlisted_task_names
from t2cli.tasks.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageFile
from t2cli.tasks.modality import check_task_fits_model
from t2cli.tasks.shapes import COLOURS, SIZE
from t2cli.tasks.vision_tasks import Shapes
from t2cli.tasks.vqa_tasks import score_vqa
from tests.hf_cache import populate_hf_cache

# ---------------------------------------------------------------- the custom format's image field


def png(path: Path, size: tuple[int, int] = (8, 6), colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_task(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def line(**extra) -> dict:
    return {"prompt": "What colour is it?", "answer": "red", "kind": "exact", **extra}


def test_image_paths_are_relative_to_the_file_and_open_lazily(tmp_path: Path) -> None:
    png(tmp_path / "pics" / "a.png")
    png(tmp_path / "pics" / "b.jpg", colour="blue")
    path = write_task(
        tmp_path / "seen.jsonl",
        [
            line(image="pics/a.png", split="test"),
            line(image=["pics/a.png", "pics/b.jpg"], split="train"),
            line(split="train"),
        ],
    )
    task = get_task(str(path))
    (one,) = task.split("test")
    assert one.images == (ImageFile((tmp_path / "pics" / "a.png").resolve()),)
    two, text = task.split("train")
    assert [i.source for i in two.images] == [str((tmp_path / "pics" / n).resolve()) for n in ("a.png", "b.jpg")]
    assert text.images == ()  # a line without an image is a text item
    opened = two.images[1].open()
    assert opened.mode == "RGB" and opened.size == (8, 6) and opened.getpixel((0, 0))[2] > 200
    assert task.uses_images()


def test_text_tasks_have_no_images() -> None:
    assert not get_task("addition").uses_images()
    assert all(item.images == () for item in get_task("addition").split("valid"))


def _bad_cases(tmp_path: Path) -> dict[str, tuple[object, str]]:
    """Name -> (the line's image field, what the message must say)."""
    (tmp_path / "notes.png").write_text("not a picture")
    truncated = png(tmp_path / "truncated.png", size=(64, 64)).read_bytes()
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (tmp_path / "folder.png").mkdir()
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_IMAGE_BYTES + 1))
    # A small file that declares too many pixels (a decompression bomb): refused from its header.
    wide = MAX_IMAGE_PIXELS // 1000 + 1
    Image.new("1", (wide, 1000)).save(tmp_path / "huge.png")
    return {
        "missing": ("nowhere.png", "'nowhere.png' (" + str(tmp_path / "nowhere.png") + ") does not exist"),
        "not an image": ("notes.png", "is not an image Pillow can read"),
        "truncated": ("truncated.png", "is not a readable image"),
        "a folder": ("folder.png", "is not a file"),
        "too many bytes": ("big.png", f"over the {MAX_IMAGE_BYTES // 1_000_000} MB limit"),
        "too many pixels": ("huge.png", f"{wide}x1000 pixels, over the {MAX_IMAGE_PIXELS // 1_000_000} million pixel"),
        "in a list": (["ok.png", "nowhere.png"], "'nowhere.png'"),
        "empty list": ([], "'image' must be a path or a non-empty list of paths"),
        "not a path": (3, "'image' must be a path or a non-empty list of paths"),
    }


CASES = [
    "missing",
    "not an image",
    "truncated",
    "a folder",
    "too many bytes",
    "too many pixels",
    "in a list",
    "empty list",
    "not a path",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_image_names_the_file_and_line(tmp_path: Path, case: str) -> None:
    png(tmp_path / "ok.png")
    image, message = _bad_cases(tmp_path)[case]
    path = write_task(tmp_path / "bad.jsonl", [line(image="ok.png"), line(image=image)])
    with pytest.raises(TaskError) as raised:
        get_task(str(path))
    assert f"{path} line 2: " in str(raised.value)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("case", ["missing", "not an image", "too many pixels"])
def test_a_bad_image_fails_the_command_in_one_line_and_writes_nothing(tmp_path: Path, t2_home: Path, case: str) -> None:
    image, message = _bad_cases(tmp_path)[case]
    path = write_task(tmp_path / "bad.jsonl", [line(image=image)])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["eval", "--task", str(path), "--base", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 1, result.output
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1 and "bad.jsonl line 1: image" in error_lines[0] and message in error_lines[0]
    assert not t2_home.exists()  # no registry, no run, nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------- the generated shapes task

# sha256 of "id\tprompt\tanswer\tscene" lines, sorted, per split: the questions, answers and pictures
# of every item are pinned, not only which ids are in which split (tests/test_split_pins.py).
PINNED_SHAPES_CONTENT = {
    "train": "fcada1e1c37d30ac8e6c05f861cbf759b0547bf59a6abb813cb8e09fe91af097",
    "valid": "c0f6342ec544a06d42eb724542f8c969e2fc6b00681db3b3d2c5ddcb537ba969",
    "test": "761d5f904124f1c23668771110168d1f1a2cbd637756bdf79cf4b961244ca95f",
}


def content_hashes(task) -> dict[str, str]:
    return {
        split: hashlib.sha256(
            "\n".join(
                sorted(f"{i.id}\t{i.prompt}\t{i.answer}\t{[img.source for img in i.images]}" for i in task.split(split))
            ).encode()
        ).hexdigest()
        for split in ("train", "valid", "test")
    }


def test_shapes_is_listed_with_its_category_sizes_and_scorer() -> None:
    task = next(t for t in list_tasks() if t.name == "shapes")
    assert task.category == "vision"
    assert task.split_sizes() == {"train": 1000, "valid": 100, "test": 400}
    assert {item.kind for split in ("train", "valid", "test") for item in task.split(split)} == {"exact"}
    assert all(len(item.images) == 1 for item in task.split("test"))
    assert task.uses_images()


def test_shapes_items_and_pictures_are_pinned() -> None:
    assert content_hashes(get_task("shapes")) == PINNED_SHAPES_CONTENT


def test_shapes_pictures_are_byte_identical_when_drawn_again() -> None:
    fresh = Shapes()  # a new instance generates every item again
    for a, b in zip(get_task("shapes").split("valid")[:20], fresh.split("valid")[:20]):
        assert a == b
        first, second = a.images[0].open(), b.images[0].open()
        assert first.size == (SIZE, SIZE) and first.tobytes() == second.tobytes()


def test_shapes_splits_are_disjoint_pictures() -> None:
    task = get_task("shapes")
    seen = {split: {(i.prompt, i.images) for i in task.split(split)} for split in ("train", "valid", "test")}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["valid"] and not seen["valid"] & seen["test"]


def test_shapes_gold_scores_and_a_wrong_answer_does_not() -> None:
    task = get_task("shapes")
    for item in task.split("test"):
        assert task.score(item, task.reference_completion(item) or "").correct
        assert task.score(item, f"The answer is:\n{item.answer.upper()}").correct
        wrong = {"left": "right", "right": "left", "0": "1"}.get(item.answer, "0")
        assert not task.score(item, wrong).correct


def test_shapes_questions_need_the_picture() -> None:
    """The same question text comes back with different answers: text alone cannot answer it."""
    task = get_task("shapes")
    answers: dict[str, Counter] = defaultdict(Counter)
    for item in task.split("train"):
        answers[item.prompt][item.answer] += 1
    types = Counter(item.meta["question_type"] for item in task.split("train"))
    assert set(types) == {"count", "colour", "shape", "position"} and min(types.values()) >= 200
    for prompt, counts in answers.items():
        if sum(counts.values()) >= 10:
            assert len(counts) >= 2, f"{prompt!r} always has the answer {counts}"
    # The best a model can do from the text: each question's most common answer on train, scored on test.
    # Chance is 1/4 for counts (0-3) and colours, 1/3 for shapes, 1/2 for left/right.
    best = {prompt: counts.most_common(1)[0][0] for prompt, counts in answers.items()}
    hits: dict[str, list[bool]] = defaultdict(list)
    for item in task.split("test"):
        hits[item.meta["question_type"]].append(best.get(item.prompt) == item.answer)
    text_only = {kind: sum(h) / len(h) for kind, h in hits.items()}
    ceiling = {"count": 0.4, "colour": 0.4, "shape": 0.55, "position": 0.65}
    assert all(text_only[kind] < ceiling[kind] for kind in ceiling), text_only


def _objects(image: Image.Image) -> list[tuple[str, str, float]]:
    """(colour, shape, centre x) of each blob of non-white pixels, read from the pixels alone."""
    pixels = image.load()
    seen: set[tuple[int, int]] = set()
    found = []
    for y in range(SIZE):
        for x in range(SIZE):
            if (x, y) in seen or pixels[x, y] == (255, 255, 255):
                continue
            colour = pixels[x, y]
            stack, blob = [(x, y)], []
            seen.add((x, y))
            while stack:
                px, py = stack.pop()
                blob.append((px, py))
                for nx, ny in ((px + 1, py), (px - 1, py), (px, py + 1), (px, py - 1)):
                    if 0 <= nx < SIZE and 0 <= ny < SIZE and (nx, ny) not in seen and pixels[nx, ny] == colour:
                        seen.add((nx, ny))
                        stack.append((nx, ny))
            xs, ys = [p[0] for p in blob], [p[1] for p in blob]
            fill = len(blob) / ((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            name = next(n for n, rgb in COLOURS.items() if rgb == colour)
            found.append((name, shape, (max(xs) + min(xs)) / 2))
    return found


def test_shapes_answers_are_what_the_picture_shows() -> None:
    """Each gold answer is recomputed from the drawn pixels (blobs, their colour, fill and place)."""
    for item in get_task("shapes").split("test")[:120]:
        objects = _objects(item.images[0].open())
        kind = item.meta["question_type"]
        words = item.prompt.split("?")[0].split()
        if kind == "count":
            colour, shape = words[2], words[3].rstrip("s")
            answer = str(sum((c, s) == (colour, shape) for c, s, _ in objects))
        elif kind == "colour":
            (answer,) = [c for c, s, _ in objects if s == words[-1]]
        elif kind == "shape":
            (answer,) = [s for c, s, _ in objects if c == words[4]]
        else:
            (x,) = [x for c, s, x in objects if (c, s) == (words[2], words[3])]
            answer = "left" if x < SIZE / 2 else "right"
        assert answer == item.answer, (item.id, item.prompt, objects)


# ---------------------------------------------------------------- TextVQA / OK-VQA from the HF cache


def _jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _vqa_parquet(path: Path, first_id: int, n: int) -> None:
    """Rows in the schema of lmms-lab's Parquet files (extra columns as they have them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue"]
    table = pa.table(
        {
            "image_id": [f"img{first_id + i}" for i in range(n)],
            "question_id": pa.array([first_id + i for i in range(n)], pa.int32()),
            "question": [f"What colour is sign {first_id + i}?" for i in range(n)],
            "image": pa.array(
                [{"bytes": _jpeg(colours[i % 3]), "path": f"img{first_id + i}.jpg"} for i in range(n)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "answers": [[colours[i % 3]] * 8 + ["a " + colours[(i + 1) % 3]] * 2 for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=3)


@pytest.fixture()
def vqa_cache(hf_cache: Path, tmp_path: Path) -> Path:
    textvqa, okvqa = tmp_path / "textvqa-src", tmp_path / "okvqa-src"
    _vqa_parquet(textvqa / "data" / "train-00000-of-00001.parquet", 0, 8)
    _vqa_parquet(textvqa / "data" / "validation-00000-of-00002.parquet", 100, 10)
    _vqa_parquet(textvqa / "data" / "validation-00001-of-00002.parquet", 110, 10)
    _vqa_parquet(okvqa / "data" / "val2014-00000-of-00001.parquet", 500, 40)
    populate_hf_cache(hf_cache, "lmms-lab/textvqa", textvqa, repo_type="dataset")
    populate_hf_cache(hf_cache, "lmms-lab/OK-VQA", okvqa, repo_type="dataset")
    return hf_cache


def test_textvqa_reads_the_cached_parquet_files(vqa_cache: Path) -> None:
    from t2cli.tasks.vqa_tasks import TextVQA

    task = TextVQA()
    assert task.split_sizes() == {"train": 8, "valid": 2, "test": 18}
    item = next(i for i in task.split("train") if i.id == "textvqa/train/4")
    assert item.prompt == "What colour is sign 4?\nAnswer the question using a single word or phrase."
    assert item.answer == "green" and item.kind == "vqa" and len(item.meta["answers"]) == 10
    picture = item.images[0].open()
    assert picture.size == (12, 10) and picture.getpixel((5, 5))[1] > 100  # green, from row 4 of the file
    assert task.score(item, "Green.").correct
    assert not task.score(item, "blue").correct  # only 2 annotators said "a blue"
    ids = {split: {i.id.split("/")[2] for i in task.split(split)} for split in ("valid", "test")}
    assert not ids["valid"] & ids["test"] and len(ids["valid"] | ids["test"]) == 20


def test_okvqa_is_split_from_its_one_published_split(vqa_cache: Path) -> None:
    from t2cli.tasks.vqa_tasks import OKVQA

    task = OKVQA()
    assert task.split_sizes() == {"train": 2, "valid": 2, "test": 36}
    assert get_task("ok-vqa").name == "okvqa"
    assert task.uses_images()


def test_vqa_sets_are_not_listed_so_listing_never_needs_them() -> None:
    assert unlisted_task_names() == ["okvqa", "textvqa"]
    assert not {"okvqa", "textvqa"} & {t.name for t in list_tasks()}


@pytest.mark.parametrize(("name", "repo"), [("textvqa", "lmms-lab/textvqa"), ("okvqa", "lmms-lab/OK-VQA")])
def test_absent_vqa_files_say_what_to_put_where(hf_cache: Path, name: str, repo: str) -> None:
    from t2cli.tasks.vqa_tasks import OKVQA, TextVQA

    task = {"textvqa": TextVQA, "okvqa": OKVQA}[name]()
    with pytest.raises(TaskError) as raised:
        task.split("test")
    assert f"has no dataset {repo}" in str(raised.value) and str(hf_cache) in str(raised.value)
    assert f"hf download {repo} --repo-type dataset --include 'data/" in str(raised.value.hint)


def test_a_cached_vqa_set_missing_a_split_names_it(hf_cache: Path, tmp_path: Path) -> None:
    from t2cli.tasks.vqa_tasks import TextVQA

    _vqa_parquet(tmp_path / "src" / "data" / "train-00000-of-00001.parquet", 0, 4)
    populate_hf_cache(hf_cache, "lmms-lab/textvqa", tmp_path / "src", repo_type="dataset")
    with pytest.raises(TaskError, match="has no files matching 'data/validation-\\*.parquet'"):
        TextVQA().split("train")


def test_vqa_scoring_needs_three_annotators() -> None:
    answers = ["two"] * 3 + ["2 dogs"] * 2 + ["three"] * 5
    assert score_vqa("2", "3", answers=answers).correct  # "two" normalises to "2"
    assert score_vqa("Three.", "3", answers=answers).correct
    assert not score_vqa("2 dogs", "3", answers=answers).correct
    assert not score_vqa("", "3", answers=answers).correct


# ---------------------------------------------------------------- tasks and models that do not fit


def test_an_image_task_on_a_text_model_is_refused() -> None:
    targets = select_targets("llama", 2)
    with pytest.raises(
        TaskError, match=r"task 'shapes' shows images, but tiny-llama \(model_type llama\) is a text-only model"
    ):
        check_task_fits_model(get_task("shapes"), "tiny-llama", "llama", targets)
    check_task_fits_model(get_task("addition"), "tiny-llama", "llama", targets)


def test_a_text_task_cannot_train_a_vision_tower() -> None:
    vision = select_targets("idefics3", 2, "vision", vision_layers=2)
    with pytest.raises(TaskError, match="task 'addition' has no images, but the targets adapt the vision of tiny-vlm"):
        check_task_fits_model(get_task("addition"), "tiny-vlm", "idefics3", vision)
    check_task_fits_model(get_task("shapes"), "tiny-vlm", "idefics3", vision)
    # The language model of a VLM answers text tasks as a text model does.
    check_task_fits_model(get_task("addition"), "tiny-vlm", "idefics3", select_targets("idefics3", 2, vision_layers=2))


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--task", "shapes", "--steps", "1"],
        ["eval", "--task", "shapes", "--base"],
    ],
    ids=["train", "eval"],
)
def test_an_image_task_on_a_text_model_is_refused_before_anything_is_written(
    tiny_llama: Path, t2_home: Path, command: list[str]
) -> None:
    # Read from the model's config: refused before the registry opens (no decomposition, no run, no expert).
    result = CliRunner().invoke(app, [*command, "--model", str(tiny_llama)])
    assert result.exit_code == 1, result.output
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, result.output
    assert "task 'shapes' shows images, but" in error_lines[0] and "is a text-only model" in error_lines[0]
    assert not t2_home.exists()


def test_a_text_task_for_a_vision_tower_is_refused_before_anything_is_written(
    tiny_vlm_dirs: dict[str, Path], t2_home: Path
) -> None:
    model = str(tiny_vlm_dirs["llava"])
    result = CliRunner().invoke(app, ["train", "--task", "addition", "--targets", "vision", "--model", model])
    assert result.exit_code == 1, result.output
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, result.output
    assert "task 'addition' has no images, but the targets adapt the vision" in error_lines[0]
    assert not t2_home.exists()


def test_fsdp_takes_an_image_task_on_a_vision_language_model_only(
    tiny_vlm_dirs: dict[str, Path], tiny_llama: Path, t2_home: Path
) -> None:
    # --shard fsdp feeds each rank's pictures to the sharded model (tests/test_vlm_sharded.py): the
    # image task passes the task checks, and one process is then refused for being one process.
    fsdp = ["train", "--task", "shapes", "--shard", "fsdp", "--model"]
    on_vlm = CliRunner().invoke(app, [*fsdp, str(tiny_vlm_dirs["llava"])])
    assert on_vlm.exit_code == 1, on_vlm.output
    assert "--shard fsdp splits the model over several processes" in on_vlm.output
    assert "shows images" not in on_vlm.output
    on_text = CliRunner().invoke(app, [*fsdp, str(tiny_llama)])  # a text model still cannot see the pictures
    assert on_text.exit_code == 1, on_text.output
    assert "task 'shapes' shows images, but" in on_text.output and "is a text-only model" in on_text.output


def test_vllm_rollouts_take_an_image_task_on_a_vlm_but_not_image_side_targets(
    tiny_vlm_dirs: dict[str, Path], t2_home: Path
) -> None:
    # vLLM feeds the pictures (t2cli/train/rollout_vllm.py); it takes W' of the language model only.
    model = str(tiny_vlm_dirs["llava"])
    command = ["train", "--task", "shapes", "--rollout", "vllm", "--model", model, "--device", "cpu"]
    vision = CliRunner().invoke(app, [*command, "--targets", "vision"])
    assert vision.exit_code == 1, vision.output
    error_lines = [ln for ln in vision.output.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, vision.output
    assert "--rollout vllm pushes W' into the language model only" in error_lines[0]
    assert not t2_home.exists()  # refused from the config, before the registry opens
    language = CliRunner().invoke(app, command)  # images are no reason to refuse: only this machine's missing GPU
    assert language.exit_code == 1, language.output
    assert "shows images" not in language.output
    assert "--rollout vllm needs a CUDA GPU; the training device is cpu" in " ".join(language.output.split())


def test_prompts_refuse_items_with_images(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    task = get_task(str(write_task(tmp_path / "t.jsonl", [line(image="ok.png")])))
    with pytest.raises(TaskError, match="shows images"):
        task.prompts(None, task.split("test") or task.split("train"))
