"""Generated code tasks: the Python type of a literal (trained) and of an expression (held out).

The 135M embedded model cannot write MBPP programs and stays at chance on the multiple-choice
code sets, but it half-knows Python's types: asked free-form it names the right type for 28% of
literals (test split, n = 300). ``python-types`` is what the starter bank's code expert learns;
``python-types-expr`` asks the same question of expressions (``7 // 2``, ``'owl'.split()``),
which no expert is trained on (bench/t2_table.py).
"""

from __future__ import annotations

import random

from t2cli.tasks.generated import HELD_OUT_SIZES, GeneratedTask, Question
from t2cli.tasks.lookup import register_task

TYPE_NAMES = ("int", "float", "str", "list", "dict", "tuple", "bool", "NoneType", "set")
WORDS = (
    "cat", "dog", "fox", "owl", "bee", "cow", "hen", "pig", "ant", "elk", "yak", "bat", "emu", "ram", "eel",
    "red", "blue", "tree", "lamp", "rock", "milk", "rain", "moon", "star", "ship", "door", "book", "fish", "salt",
)  # fmt: skip
_ASK = "In Python, what is the type of `{code}`? Answer with the type name only."


def _word(rng: random.Random) -> str:
    return repr(rng.choice(WORDS))


def _literal(rng: random.Random, type_name: str) -> str:
    """Python source of a literal of ``type_name``."""
    small = lambda: str(rng.randint(0, 99))
    return {
        "int": lambda: str(rng.randint(-999, 9999)),
        "float": lambda: f"{rng.randint(-99, 999)}.{rng.randint(0, 99)}",
        "str": lambda: rng.choice([_word(rng), repr(f"{rng.choice(WORDS)} {rng.choice(WORDS)}"), repr(small())]),
        "list": lambda: (
            "[" + ", ".join(rng.choice([small, lambda: _word(rng)])() for _ in range(rng.randint(1, 4))) + "]"
        ),
        "dict": lambda: "{" + ", ".join(f"{_word(rng)}: {small()}" for _ in range(rng.randint(1, 3))) + "}",
        "tuple": lambda: (
            "(" + ", ".join(rng.choice([small, lambda: _word(rng)])() for _ in range(rng.randint(2, 4))) + ")"
        ),
        "bool": lambda: rng.choice(["True", "False"]),
        "NoneType": lambda: "None",
        "set": lambda: "{" + ", ".join(rng.sample([str(i) for i in range(20)], rng.randint(1, 4))) + "}",
    }[type_name]()


def _expression_forms(rng: random.Random) -> list[str]:
    """Python sources of expressions whose type takes a step of evaluation to know, on fresh operands."""
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    w = _word(rng)
    return (
        [
            f"{a} / {b}", f"{a} // {b}", f"{a} * {b}", f"{a} % {b}", f"{a} + 0.5", f"float({a})", f"int('{a}')",
            f"str({a})", f"len({w})", f"{w} * {a % 4 + 2}", f"{w}.upper()", f"{w} + {w}", f"{w}.split()",
            f"{a} > {b}", f"{a} == {b}", f"{w} in {w}", f"[{a}] + [{b}]", f"list({w})", f"({a}, {b})",
            f"tuple([{a}, {b}])", f"set([{a}, {b}])", f"dict(a={a})", f"{{{w}: {a}}}.get({w})", f"sorted([{a}, {b}])",
            f"abs(-{a})", f"round({a}.5)", f"max({a}, {b})", f"print({a})", f"bool({a})", f"{w}.find('a')",
        ]
    )  # fmt: skip


@register_task("python-types", category="code", description="The Python type of a literal, named free-form (generated)")
class PythonTypes(GeneratedTask):
    """``In Python, what is the type of `[3, 'owl']`?``: each of the nine types drawn equally often (``True``,
    ``False`` and ``None`` are the only literals of theirs, so those two types are rare once questions are distinct)."""

    source = "generated: literals of Python's nine built-in value types"

    def question(self, rng: random.Random) -> Question:
        type_name = rng.choice(TYPE_NAMES)
        return Question(_ASK.format(code=_literal(rng, type_name)), type_name, TYPE_NAMES)


@register_task(
    "python-types-expr",
    category="code",
    description="The Python type of an expression (held out: 20 few-shot items, 300 test)",
)
class PythonTypesOfExpressions(GeneratedTask):
    """``In Python, what is the type of `7 // 2`?``: the gold is ``type(eval(code)).__name__``."""

    source = "generated: 30 expression forms over random operands (evaluated for the gold)"
    sizes = HELD_OUT_SIZES

    def question(self, rng: random.Random) -> Question:
        # The type first, then a form of that type: each type as likely as the others (mostly `int` otherwise).
        by_type: dict[str, list[str]] = {}
        for code in _expression_forms(rng):
            value = eval(code, {"__builtins__": _SAFE_BUILTINS}, {})
            by_type.setdefault(type(value).__name__, []).append(code)
        type_name = rng.choice(sorted(by_type))
        return Question(_ASK.format(code=rng.choice(by_type[type_name])), type_name, TYPE_NAMES)


# The builtins the expressions call; print is replaced so that evaluating print(...) writes nothing.
_SAFE_BUILTINS = {
    "float": float, "int": int, "str": str, "len": len, "list": list, "tuple": tuple, "set": set, "dict": dict,
    "sorted": sorted, "abs": abs, "round": round, "max": max, "bool": bool, "print": lambda *args: None,
}  # fmt: skip
