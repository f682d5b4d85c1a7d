"""Scenes of coloured shapes drawn with Pillow, and questions that only the picture answers.

A scene is a few shapes (circle, square, triangle; red, green, blue, yellow) in distinct cells
of a 3 x 3 grid on a white square, so shapes never touch and can be counted. Everything is
drawn from a ``random.Random`` the caller seeds: the same seed gives the same scene, question
and, drawn again, the same pixels. Nothing is stored on disk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 96  # pixels per side
GRID = 3  # cells per side; one shape per cell
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 30), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("count", "colour", "shape", "position")
_CELL = SIZE // GRID
_RADIUS = 10  # half the side of a shape's bounding box
_JITTER = 3  # how far a shape's centre may move from its cell's centre


@dataclass(frozen=True)
class Shape:
    """One shape: what it is, its colour, and its centre in pixels."""

    kind: str
    colour: str
    x: int
    y: int


@dataclass(frozen=True)
class Scene:
    """A drawn picture (an ``ItemImage``): its shapes are kept, its pixels made on ``open``."""

    shapes: tuple[Shape, ...]

    @property
    def source(self) -> str:
        return "generated: " + ", ".join(f"{s.colour} {s.kind} at ({s.x}, {s.y})" for s in self.shapes)

    def open(self) -> Image.Image:
        image = Image.new("RGB", (SIZE, SIZE), "white")
        draw = ImageDraw.Draw(image)
        for s in self.shapes:
            box = (s.x - _RADIUS, s.y - _RADIUS, s.x + _RADIUS, s.y + _RADIUS)
            fill = COLOURS[s.colour]
            if s.kind == "circle":
                draw.ellipse(box, fill=fill)
            elif s.kind == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon(
                    [(s.x, s.y - _RADIUS), (s.x - _RADIUS, s.y + _RADIUS), (s.x + _RADIUS, s.y + _RADIUS)], fill=fill
                )
        return image


@dataclass(frozen=True)
class ShapeQuestion:
    """A question about a scene, its gold answer (one word or a digit) and the question's type."""

    scene: Scene
    question: str
    answer: str
    type: str


def random_scene(rng: random.Random, n_min: int = 2, n_max: int = 5, fixed: tuple[Shape, ...] = ()) -> Scene:
    """``n_min``..``n_max`` shapes in distinct random cells: the ``fixed`` kinds and colours
    (their positions are ignored) and others of random kind and colour."""
    n = max(rng.randint(n_min, n_max), len(fixed))
    cells = sorted(rng.sample(range(GRID * GRID), n))
    looks = [(f.kind, f.colour) for f in fixed]
    looks += [(rng.choice(SHAPES), rng.choice(sorted(COLOURS))) for _ in range(n - len(fixed))]
    rng.shuffle(looks)
    shapes = []
    for cell, (kind, colour) in zip(cells, looks):
        row, col = divmod(cell, GRID)
        x = col * _CELL + _CELL // 2 + rng.randint(-_JITTER, _JITTER)
        y = row * _CELL + _CELL // 2 + rng.randint(-_JITTER, _JITTER)
        shapes.append(Shape(kind, colour, x, y))
    return Scene(tuple(shapes))


def random_question(rng: random.Random, question_type: str) -> ShapeQuestion:
    """A scene and a question of ``question_type`` about it; scenes that cannot pose it are drawn again."""
    if question_type == "count":
        return _count_question(rng)
    while True:
        scene = random_scene(rng)
        question = _ask(rng, scene, question_type)
        if question is not None:
            return question


def _count_question(rng: random.Random) -> ShapeQuestion:
    # The count is drawn first (0-3, equally often), then a scene with exactly that many of the
    # asked kind and colour: no answer is the likely one, so the text alone does not give it.
    kind, colour, n = rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.randint(0, 3)
    while True:
        scene = random_scene(rng, fixed=(Shape(kind, colour, 0, 0),) * n)
        if sum((s.kind, s.colour) == (kind, colour) for s in scene.shapes) == n:
            text = f"How many {colour} {kind}s are in the image? Answer with the number only."
            return ShapeQuestion(scene, text, str(n), "count")


def _ask(rng: random.Random, scene: Scene, question_type: str) -> ShapeQuestion | None:
    shapes = scene.shapes
    if question_type == "colour":
        unique = [k for k in SHAPES if sum(s.kind == k for s in shapes) == 1]
        if not unique:
            return None
        kind = rng.choice(unique)
        colour = next(s.colour for s in shapes if s.kind == kind)
        return ShapeQuestion(scene, f"What colour is the {kind}? Answer with one word.", colour, question_type)
    if question_type == "shape":
        unique = [c for c in sorted(COLOURS) if sum(s.colour == c for s in shapes) == 1]
        if not unique:
            return None
        colour = rng.choice(unique)
        kind = next(s.kind for s in shapes if s.colour == colour)
        text = f"What shape is the {colour} object? Answer with one word: circle, square or triangle."
        return ShapeQuestion(scene, text, kind, question_type)
    if question_type == "position":
        # A shape alone of its kind and colour, in the left or right column (never the middle one).
        candidates = [
            s
            for s in shapes
            if sum((t.kind, t.colour) == (s.kind, s.colour) for t in shapes) == 1 and s.x // _CELL != GRID // 2
        ]
        if not candidates:
            return None
        s = rng.choice(candidates)
        side = "left" if s.x < SIZE // 2 else "right"
        text = f"Is the {s.colour} {s.kind} on the left or on the right of the image? Answer with one word."
        return ShapeQuestion(scene, text, side, question_type)
    raise ValueError(f"unknown question type {question_type!r}")
