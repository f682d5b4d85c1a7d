"""Scorers: pure functions ``(completion, answer, **meta) -> Score``, looked up by answer kind.

| kind | correct when |
| --- | --- |
| number | the last number in the completion equals the gold number |
| choice | the letter the completion explicitly chooses is the gold letter (never guessed) |
| exact | the completion, or its last line, equals the gold text (case, spacing ignored) |
| regex | the gold regex matches the whole completion or its last line |
| named | of the item's candidate answers (``choices``), the first one the completion names is the gold |
| math | the final answer (last ``\\boxed{}``, else "The answer is X") equals the gold after normalisation |
| python_tests | the code in the completion passes the tests in the sandbox |

New kinds register with ``@scorer("name")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from t2cli.tasks.sandbox import run_python
from t2cli.tasks.types import Score, TaskError

Scorer = Callable[..., Score]
_SCORERS: dict[str, Scorer] = {}
_REFERENCES: dict[str, Callable[..., str | None]] = {}


def scorer(kind: str, reference: Callable[..., str | None] | None = None) -> Callable[[Scorer], Scorer]:
    """Register a scorer for ``kind``; ``reference(answer, **meta)`` writes the gold answer as a completion."""

    def register(fn: Scorer) -> Scorer:
        if kind in _SCORERS:
            raise ValueError(f"scorer '{kind}' is already registered")
        _SCORERS[kind] = fn
        _REFERENCES[kind] = reference or (lambda answer, **meta: None)
        return fn

    return register


def scorer_kinds() -> list[str]:
    """The registered answer kinds, sorted."""
    return sorted(_SCORERS)


def get_scorer(kind: str) -> Scorer:
    """The scorer registered for ``kind``; TaskError listing the valid kinds otherwise."""
    try:
        return _SCORERS[kind]
    except KeyError:
        raise TaskError(f"unknown answer kind '{kind}'", hint=f"use one of: {', '.join(scorer_kinds())}") from None


def reference_completion(kind: str, answer: str, **meta) -> str | None:
    """The gold answer written the way prompts ask for it, or None where a kind cannot write one (regex)."""
    get_scorer(kind)
    return _REFERENCES[kind](answer, **meta)


# --- number -------------------------------------------------------------------------------

# A number not glued to a word or a decimal point before it: "-3", "$18", "1,234", "18.0".
# Thousands separators only in groups of three, so "1,2,3" is three numbers.
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")


def parse_number(text: str) -> Fraction | None:
    """The value of a number written like "1,234", "$18", "-3.50"; None if ``text`` is not one number."""
    match = _NUMBER.fullmatch(text.strip())
    if not match:
        return None
    sign, digits, decimals = match.groups()
    return Fraction(("-" if sign else "") + digits.replace(",", "") + (decimals or ""))


def last_number(text: str) -> str | None:
    """The last number in ``text`` as written, without "$" and thousands commas; None if there is none."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    sign, digits, decimals = matches[-1].groups()
    return ("-" if sign else "") + digits.replace(",", "") + (decimals or "")


def _number_reference(answer: str, **meta) -> str:
    return f"Answer: {answer}"


@scorer("number", reference=_number_reference)
def score_number(completion: str, answer: str, **meta) -> Score:
    """Correct when the last number in the completion equals ``answer`` numerically."""
    gold = parse_number(answer)
    if gold is None:
        raise TaskError(f"gold answer {answer!r} is not a number", hint="number answers look like 18, -3.5 or 1,234")
    found = last_number(completion)
    if found is None:
        return Score(False, None, "no number in the completion")
    correct = abs(Fraction(found) - gold) <= Fraction(1, 10**6)
    return Score(correct, found, "equal" if correct else f"{found} != {answer}")


# --- choice -------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def extract_choice(completion: str, n_choices: int | None = None, choices: Sequence[str] | None = None) -> str | None:
    """The letter the completion explicitly chooses, or None; never a guess.

    In order: the last "Answer: B" / "the answer is (B)" / ``\\boxed{B}``; else
    the last line that is only a letter ("B", "B.", "(B)"); else a completion
    that starts with "B." / "(B)" / "B)"; else a completion equal to one
    choice's text. Only letters of the available choices count.
    """
    n = n_choices or (len(choices) if choices else len(_LETTERS))
    letter = f"[{_LETTERS[:n]}]"
    explicit = [
        rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?({letter})\)?\s*\}}?\s*\}}",
        rf"(?i:answer)\s*(?:(?i:is)|:|=)?\s*(?i:option|choice)?\s*[:\-]?\s*[*_(\[\s]*({letter})(?![A-Za-z])",
    ]
    hits = [(m.start(), m.group(1)) for pattern in explicit for m in re.finditer(pattern, completion)]
    if hits:
        return max(hits)[1]
    for line in reversed(completion.splitlines()):
        bare = re.fullmatch(rf"[(\[]?({letter})[)\].:]?", line.strip().strip("*_#` \t"))
        if bare:
            return bare.group(1)
    start = re.match(rf"\s*[*_]*[(\[]?({letter})[)\].:](?:\s|$)", completion)
    if start:
        return start.group(1)
    if choices:
        said = _plain(completion).rstrip(".")
        same = [i for i, text in enumerate(choices) if _plain(text).rstrip(".") == said]
        if len(same) == 1 and same[0] < n:
            return _LETTERS[same[0]]
    return None


def _choice_reference(answer: str, **meta) -> str:
    return f"Answer: {answer}"


@scorer("choice", reference=_choice_reference)
def score_choice(completion: str, answer: str, choices: Sequence[str] | None = None, **meta) -> Score:
    """Correct when the chosen letter (see ``extract_choice``) is ``answer``; no letter found is wrong."""
    gold = answer.strip().upper()
    found = extract_choice(completion, choices=choices)
    if found is None:
        return Score(False, None, "no choice letter found")
    return Score(found == gold, found, "equal" if found == gold else f"{found} != {gold}")


# --- exact and regex ----------------------------------------------------------------------


def _plain(text: str) -> str:
    return " ".join(text.split()).casefold()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@scorer("exact", reference=lambda answer, **meta: answer)
def score_exact(completion: str, answer: str, **meta) -> Score:
    """Correct when the completion or its last line equals ``answer``, ignoring case and spacing."""
    gold = _plain(answer)
    for candidate in (completion, _last_line(completion)):
        if _plain(candidate) == gold:
            return Score(True, candidate.strip(), "equal")
    return Score(False, _last_line(completion) or None, "not equal")


def first_mentioned(text: str, candidates: Sequence[str], pattern: Callable[[str], re.Pattern[str]]) -> str | None:
    """The candidate whose ``pattern`` matches earliest in ``text``, or None.

    At one position the longer candidate wins, then the one listed first. Shared by ``named``
    (whole words) and the dispatch task's ``category`` (``t2cli.tasks.dispatch_task``).
    """
    best: tuple[int, int, str] | None = None
    for candidate in candidates:
        match = pattern(candidate).search(text)
        if match and (best is None or (match.start(), -len(candidate)) < best[:2]):
            best = (match.start(), -len(candidate), candidate)
    return best[2] if best else None


def _whole_word(choice: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w]){re.escape(choice)}(?![\w])", re.IGNORECASE)


def first_named(completion: str, choices: Sequence[str]) -> str | None:
    """The candidate in ``choices`` that ``completion`` names first (whole words, case ignored), or None."""
    return first_mentioned(completion, choices, _whole_word)


@scorer("named", reference=lambda answer, **meta: answer)
def score_named(completion: str, answer: str, choices: Sequence[str] = (), **meta) -> Score:
    """Correct when the first candidate the completion names (``first_named``) is ``answer``.

    For short free-form answers drawn from a known set (the people of a story, Python's type
    names): "Ben has the key now." names Ben; a completion naming no candidate is wrong. What is
    scored is which answer the model gives, not whether it obeys "answer with the name only".
    """
    if not choices:
        raise TaskError("a 'named' item needs its candidate answers in meta['choices']")
    found = first_named(completion, choices)
    if found is None:
        return Score(False, None, "names no candidate")
    correct = found.casefold() == answer.casefold()
    return Score(correct, found, "equal" if correct else f"{found} != {answer}")


@scorer("regex")
def score_regex(completion: str, answer: str, **meta) -> Score:
    """Correct when the regex ``answer`` matches the whole stripped completion or its last line."""
    try:
        pattern = re.compile(answer, re.DOTALL)
    except re.error as exc:
        raise TaskError(f"gold answer {answer!r} is not a valid regular expression: {exc}") from None
    for candidate in (completion.strip(), _last_line(completion)):
        if pattern.fullmatch(candidate):
            return Score(True, candidate, "matches")
    return Score(False, _last_line(completion) or None, "no match")


# --- math ---------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed X``; None if there is none."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    rest = text[start + len("\\boxed") :]
    if not rest.lstrip().startswith("{"):
        bare = re.match(r"\s+([^\s$]+)", rest)
        return bare.group(1) if bare else None
    depth = 0
    open_at = rest.index("{")
    for i in range(open_at, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : i]
    return None  # unbalanced: the completion was cut off


def extract_math_answer(completion: str) -> str | None:
    """The final answer: the last ``\\boxed{}``, else the last "The answer is X" / "Answer: X"."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    said = list(re.finditer(r"(?i)answer(?: is|:)\s*(.+)", completion))
    if not said:
        return None
    text = said[-1].group(1).strip()
    if text.startswith("$"):
        inner = re.match(r"\$+([^$]+)\$+", text)
        return inner.group(1).strip() if inner else text.strip("$ ")
    return re.split(r"\.(?:\s|$)", text)[0].strip() or None


def normalize_math(text: str) -> str:
    """A canonical form of a math answer, so that equal answers written differently compare equal.

    Drops ``$``, spaces, ``\\left``/``\\right``, ``\\!``, degrees, ``%``, units in
    ``\\text{ ...}`` after a number, a leading ``x=``, a trailing "."; rewrites
    ``dfrac``/``tfrac`` as ``frac``, ``\\frac12`` as ``\\frac{1}{2}``, ``\\sqrt2`` as
    ``\\sqrt{2}``, "1,234" as "1234". Idempotent.
    """
    previous, current = None, text
    while current != previous:  # until nothing changes: makes the result idempotent
        previous, current = current, _normalize_once(current)
    return current


def _normalize_once(s: str) -> str:
    s = s.strip().replace("\n", "")
    s = re.sub(r"\\[!,;:]", "", s)  # thin spaces, also inside numbers: 10,\!080
    s = re.sub(r"(?<!\\)\\ ", "", s)
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ", "", s)
    s = s.replace("\\%", "").replace("%", "")
    # Units after a number or a closing brace: "5.4 \text{ cents}", "864 \mbox{ inches}^2".
    s = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z ]*\}(?:\^\{?\d\}?)?$", "", s)
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = re.sub(r"^[a-zA-Z](?:=(?!=)|\\in)(?=.)", "", s)  # "x=5" -> "5", "x\in[-2,7]" -> "[-2,7]"
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d|[a-zA-Z](?![a-zA-Z]))", r"\\sqrt{\1}", s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # "(C)" -> "C"
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s


def math_number(text: str) -> Fraction | None:
    """The value of a normalised answer that is a plain number, fraction or mixed number; else None."""
    num = r"(\d+(?:\.\d+)?)"
    patterns = (
        (rf"(-?){num}", lambda a: Fraction(a[1])),
        (rf"(-?)\\frac\{{{num}\}}\{{{num}\}}", lambda a: Fraction(a[1]) / Fraction(a[2])),
        (rf"(-?){num}/{num}", lambda a: Fraction(a[1]) / Fraction(a[2])),
        (r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", lambda a: int(a[1]) + Fraction(int(a[2]), int(a[3]))),
    )
    for pattern, value in patterns:
        match = re.fullmatch(pattern, text)
        if match:
            groups = match.groups()
            try:
                result = value(groups)
            except ZeroDivisionError:
                return None
            return -result if groups[0] else result
    return None


def math_equal(predicted: str, gold: str) -> bool:
    """Equal after ``normalize_math``, or both plain numbers/fractions within 1e-6."""
    a, b = normalize_math(predicted), normalize_math(gold)
    if a == b:
        return True
    x, y = math_number(a), math_number(b)
    return x is not None and y is not None and abs(x - y) <= Fraction(1, 10**6)


@scorer("math", reference=lambda answer, **meta: f"The final answer is $\\boxed{{{answer}}}$.")
def score_math(completion: str, answer: str, **meta) -> Score:
    """Correct when the final answer (see ``extract_math_answer``) equals ``answer`` (see ``math_equal``)."""
    found = extract_math_answer(completion)
    if found is None:
        return Score(False, None, "no \\boxed{} or 'The answer is' found")
    correct = math_equal(found, answer)
    return Score(correct, found, "equal" if correct else f"{normalize_math(found)} != {normalize_math(answer)}")


# --- python_tests -------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code of the last fenced block (python or untagged; a block cut off at the end counts), else everything."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    python = [body for lang, body in blocks if lang in ("", "python", "py", "python3")]
    if python:
        return python[-1]
    return completion if not blocks else blocks[-1][1]


def build_program(code: str, tests: Sequence[str], setup: str = "", prefix: str = "") -> str:
    """The test program: ``prefix`` (e.g. a function header with imports), the code, ``setup``, the tests.

    Code whose first line is indented is taken as the body of the function that
    ``prefix`` opens (HumanEval style); otherwise it follows ``prefix`` as new code.
    """
    first = next((line for line in code.splitlines() if line.strip()), "")
    joined = prefix + code if prefix and first[:1] in (" ", "\t") else f"{prefix}\n\n{code}" if prefix else code
    return "\n\n".join([joined, setup, "\n".join(tests)]) + "\n"


def _code_reference(answer: str, solution: str | None = None, **meta) -> str | None:
    return f"```python\n{solution}\n```" if solution is not None else None


@scorer("python_tests", reference=_code_reference)
def score_python_tests(
    completion: str,
    answer: str,
    tests: Sequence[str] = (),
    setup: str = "",
    prefix: str = "",
    timeout_s: float = 5.0,
    **meta,
) -> Score:
    """Correct when the completion's code passes every test, run in the sandbox (``t2cli.tasks.sandbox``)."""
    if not tests:
        raise TaskError("a python_tests item has no tests", hint='give each item a non-empty "tests" list')
    code = extract_code(completion)
    if not code.strip():
        return Score(False, None, "no code in the completion")
    result = run_python(build_program(code, tests, setup, prefix), timeout_s=timeout_s)
    return Score(result.ok, code, result.reason)
