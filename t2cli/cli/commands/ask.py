"""``t2 ask``: answer prompts with self-adapted weights (pass 1 picks the z, pass 2 answers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from t2cli.cli.console import err
from t2cli.cli.options import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    RouterOpt,
    RouterTemperatureOpt,
    TopKOpt,
    complete_experts,
)
from t2cli.errors import UsageError


def ask_cmd(
    prompt: Annotated[str | None, typer.Argument(help="The prompt (or use -f FILE).", show_default=False)] = None,
    model: ModelOpt = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="Pass 1: auto (the learned router when the model has one, else base weights), none, expert:NAME, "
            "prompt, classifier, cem, router or router-soft.",
        ),
    ] = "auto",
    task: Annotated[str | None, typer.Option("--task", "-t", help="cem: the task whose CEM mixture to use.")] = None,
    classifier: Annotated[
        str | None,
        typer.Option(
            "--classifier",
            help="classifier: the dispatch expert (default: the latest trained with --task dispatch).",
            autocompletion=complete_experts,
        ),
    ] = None,
    pass1: Annotated[
        str,
        typer.Option(
            "--pass1",
            help="prompt/classifier: generate the classification and parse it (the paper's way), "
            "or score each category after 'Classification: \\boxed{' (one prefill, always a category).",
        ),
    ] = "generate",
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the answer (0 = greedy).")] = 0.0,
    show_dispatch: Annotated[
        bool,
        typer.Option(
            "--show-dispatch", "--verbose", "-v", help="Print pass 1's choice, its reason and the timings on stderr."
        ),
    ] = False,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            help='Answer every prompt of FILE (JSON lines with "prompt" and an optional "image", or one prompt '
            "per line); - reads stdin.",
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            "-i",
            help="An image shown with PROMPT (repeat for several); needs a vision-language model.",
            show_default=False,
        ),
    ] = None,
    router: RouterOpt = None,
    router_temperature: RouterTemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Answer PROMPT in two passes: pass 1 chooses the expert (or mixture), pass 2 answers with it.

    The answer streams to stdout; the base weights are restored afterwards, even after an error.

    --json prints one line per prompt: prompt, answer, strategy, choice, category, weights, reason,
    timings (dispatch_s, switch_s, generate_s, total_s), tokens, and images (their paths) when the
    prompt had some. See docs/ask.md.

    Examples:

      t2 ask "What is 17 * 23?" --show-dispatch           # the base model picks the category

      t2 ask "Write is_prime(n) in Python." --strategy expert:mbpp-svf

      t2 ask "Which gas do plants absorb?" --strategy classifier --json

      t2 ask "What is 17 * 23?" --pass1 score -v          # pass 1 scores the categories instead

      t2 ask "What is 38 + 47?" --strategy router -v       # the learned router reads the hidden states

      t2 ask "Why is the sky blue?" --strategy router-soft --top-k 2 --json

      t2 ask -f questions.jsonl --strategy cem --task arc-challenge --json > answers.jsonl

      t2 ask "What colour is the square?" --image photo.png --model smolvlm-256m

      cat prompts.txt | t2 ask -f - --strategy none
    """
    from t2cli.ask.engine import (  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)
        Asker,
        AskSettings,
        Question,
        check_prompt_text,
        question_images,
        read_questions,
    )
    from t2cli.ask.strategies import expert_model, parse_strategy  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    if (prompt is None) == (file is None):
        raise UsageError("give either a PROMPT or -f FILE", 'e.g. t2 ask "What is 2 + 2?"  or  t2 ask -f prompts.txt')
    if image and file is not None:
        raise UsageError(
            "--image goes with a PROMPT, not with -f FILE",
            'give each JSON line of FILE its own "image" field (a path relative to FILE, or a list of paths)',
        )
    settings = AskSettings(
        strategy=strategy,
        task=task,
        classifier=classifier,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        pass1=pass1,
        router=router,
        router_temperature=router_temperature,
        top_k=top_k,
    )
    if file is not None:
        folder = None if file == "-" else Path(file).expanduser().parent  # images are named relative to FILE
        questions = read_questions(_read_input(file), "stdin" if file == "-" else file, folder)
    elif prompt is not None:  # one of the two, checked above
        check_prompt_text(prompt)
        questions = [Question(prompt, question_images(image or []))]
    batch = file is not None
    with open_registry() as registry:
        info, arg = parse_strategy(strategy)
        if model is None and info.name == "expert" and arg is not None:
            model = expert_model(registry, arg)
        asker = Asker(registry, settings, model=model, device=device, expect_images=any(q.images for q in questions))
        if asker.installed is not None and asker.installed.changed:
            err.print(asker.installed.summary(asker.prepared.model_name), markup=False)
        for number, question in enumerate(questions, 1):  # every prompt is checked before the model is loaded
            asker.check_prompt(question.prompt, f"prompt {number}" if batch else "the prompt", question.images)
        if show_dispatch:
            err.print(f"loading {asker.prepared.model_name}...", markup=False)
        for number, question in enumerate(questions, 1):
            if batch and not as_json:
                err.print(f"[{number}/{len(questions)}] {_clip(question.prompt)}", markup=False)
            result = asker.ask(
                question.prompt,
                images=question.images,
                on_text=None if as_json else lambda piece: typer.echo(piece, nl=False),
            )
            if as_json:
                typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
            else:
                typer.echo("")
            if show_dispatch:
                t = result.timings
                rate = result.tokens / t.generate_s if t.generate_s > 0 else 0.0
                err.print(
                    f"pass 1 ({result.strategy}, {t.dispatch_s:.2f} s) -> {result.choice}: {result.reason}",
                    markup=False,
                )
                err.print(
                    f"switch {t.switch_s * 1000:.1f} ms{' (cached)' if result.cached else ''} · pass 2 "
                    f"{t.generate_s:.2f} s, {result.tokens} tokens ({rate:.1f} tok/s) · total {t.total_s:.2f} s",
                    markup=False,
                )


def _read_input(file: str) -> bytes:
    """The bytes of the input file, or of stdin for "-"."""
    from t2cli.ask.engine import AskError  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)

    if file == "-":
        return typer.get_binary_stream("stdin").read()
    path = Path(file).expanduser()
    if not path.is_file():
        raise AskError(
            f"input file {file} does not exist" if not path.exists() else f"{file} is not a file",
            "pass a text or JSON-lines file, or - for stdin",
        )
    return path.read_bytes()


def _clip(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def register(app: typer.Typer) -> None:
    app.command("ask")(ask_cmd)
