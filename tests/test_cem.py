"""CEM: the optimiser on synthetic fitness, and `t2 adapt` end to end on a tiny random Llama."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from t2cli.adapt.cem import (
    PAPER_CEM,
    AdaptConfig,
    CEMConfig,
    FewShotScore,
    adapt,
    cem_search,
    latest_cem_mixture,
    select_shots,
)
from t2cli.cli.app import app
from t2cli.errors import T2Error, UsageError
from t2cli.experts.mixing import mix
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import ExpertConfig, load_expert, register_expert

runner = CliRunner()


# --------------------------------------------------------------------------- the optimiser


def test_cem_finds_the_optimum_of_a_quadratic_bowl() -> None:
    optimum = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)  # a point of the simplex, inside [0, 1]^3
    calls = []

    def fitness(alpha: torch.Tensor) -> float:
        calls.append(alpha)
        return -float(((alpha - optimum) ** 2).sum())

    result = cem_search(fitness, 3, CEMConfig(population=32, elite_ratio=0.2, generations=30, seed=0))
    assert torch.allclose(result.best_alpha, optimum, atol=0.03), result.best_alpha
    assert result.evaluations == len(calls) == 32 * 30
    assert all(float(a.min()) >= 0.0 and float(a.max()) <= 1.0 for a in calls)  # clamped to the bounds
    bests = [stats.best_so_far for stats in result.history]
    assert bests == sorted(bests) and bests[-1] == result.best_fitness  # elitism: never gets worse
    assert result.history[-1].spread < result.history[0].spread  # the distribution narrowed


def test_cem_optimum_on_the_boundary_is_reached_by_clamping() -> None:
    result = cem_search(
        lambda a: -float(((a - torch.tensor([1.0, 0.0])) ** 2).sum()),
        2,
        CEMConfig(population=16, generations=10, seed=1),
    )
    assert torch.allclose(result.best_alpha, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-6)


def test_tuple_fitness_breaks_ties_by_the_second_component() -> None:
    # Accuracy is a step (1 when a0 > 0.5); among the accurate candidates the second value prefers a1 = 0.3.
    def fitness(alpha: torch.Tensor) -> tuple[float, float]:
        return (1.0 if alpha[0] > 0.5 else 0.0, -float((alpha[1] - 0.3) ** 2))

    result = cem_search(fitness, 2, CEMConfig(population=24, elite_ratio=0.25, generations=15, seed=2))
    assert result.best_fitness[0] == 1.0 and float(result.best_alpha[0]) > 0.5
    assert abs(float(result.best_alpha[1]) - 0.3) < 0.03


def test_cem_is_deterministic_for_a_seed_and_nan_fitness_ranks_last() -> None:
    def fitness(alpha: torch.Tensor) -> float:
        return float("nan") if alpha[0] < 0.2 else -float(alpha.sum())

    config = CEMConfig(population=6, generations=3, seed=7)
    first, second = cem_search(fitness, 2, config), cem_search(fitness, 2, config)
    assert torch.equal(first.best_alpha, second.best_alpha) and first.best_fitness == second.best_fitness
    assert float(first.best_alpha[0]) >= 0.2  # a NaN candidate is never the best
    other = cem_search(fitness, 2, CEMConfig(population=6, generations=3, seed=8))
    assert not torch.equal(first.best_alpha, other.best_alpha)


def test_reevaluated_best_takes_a_population_slot() -> None:
    seen = []
    result = cem_search(
        lambda a: seen.append(a) or -float(a.sum()), 2, CEMConfig(population=4, generations=3, reevaluate_best=True)
    )
    assert result.evaluations == 12
    assert torch.equal(seen[4], seen[int(torch.stack(seen[:4]).sum(1).argmin())])  # generation 2 slot 0 = best of 1


@pytest.mark.parametrize(
    ("config", "n_elite"),
    [
        (replace(PAPER_CEM, generations=1, min_std=0.0), 6),  # the paper's 32 x 0.2
        (CEMConfig(population=8, elite_ratio=0.1, generations=1, min_std=0.0), 2),  # never fewer than two
    ],
)
def test_the_gaussian_is_refitted_to_the_best_candidates(config: CEMConfig, n_elite: int) -> None:
    """After a generation the sampling std is the spread of the ``n_elite`` best candidates, no more, no fewer."""
    target = torch.tensor([0.9, 0.1, 0.4], dtype=torch.float64)

    def score(alpha: torch.Tensor) -> float:
        return -float(((alpha - target) ** 2).sum())

    seen: list[torch.Tensor] = []
    result = cem_search(lambda alpha: seen.append(alpha) or score(alpha), 3, config)
    ranked = sorted(seen, key=score, reverse=True)

    def spread(k: int) -> float:
        return float(torch.stack(ranked[:k]).std(dim=0, unbiased=False).mean())

    assert len(seen) == config.population
    assert result.history[0].spread == pytest.approx(spread(n_elite), rel=1e-9)
    assert abs(spread(n_elite) - spread(n_elite - 1)) > 1e-3 and abs(spread(n_elite) - spread(n_elite + 1)) > 1e-3
    assert torch.equal(result.best_alpha, ranked[0])


@pytest.mark.parametrize(
    "bad",
    [
        dict(population=1),
        dict(generations=0),
        dict(elite_ratio=0.0),
        dict(elite_ratio=1.5),
        dict(init_std=0.0),
        dict(lower=1.0, upper=0.0),
        dict(init_mean=float("nan")),
    ],
)
def test_bad_cem_settings_are_refused(bad) -> None:
    with pytest.raises(UsageError):
        CEMConfig(**bad)


# --------------------------------------------------------------------------- adapt on a tiny model


@pytest.fixture()
def digits_file(tmp_path: Path) -> Path:
    path = tmp_path / "digits.jsonl"
    lines = [json.dumps({"id": f"q{i}", "prompt": f"Say {i}.", "answer": str(i), "kind": "number"}) for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def two_experts(tiny_llama: Path):
    """Two random experts (z = 1 + noise) on the tiny Llama; returns their names."""
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        for seed, name in enumerate(("alpha-x", "beta-x")):
            generator = torch.Generator().manual_seed(100 + seed)
            z = {n: 1.0 + 0.5 * torch.randn(f.S.shape, generator=generator) for n, f in adaptable.svf.factors.items()}
            config = ExpertConfig(
                name=name, base_model=adaptable.base_model_record(), targets="all", num_matrices=len(z), task="digits"
            )
            register_expert(
                registry, z, config, base_model_id=adaptable.base_model_id, decomposition_id=adaptable.decomposition_id
            )
    return ["alpha-x", "beta-x"]


def _base_params(adaptable) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in adaptable.model.named_parameters()}


def _assert_base_weights(adaptable, before: dict[str, torch.Tensor]) -> None:
    after = dict(adaptable.model.named_parameters())
    assert all(torch.equal(before[name], after[name].detach()) for name in before)
    assert adaptable.svf.active is None


def test_adapt_registers_the_best_mixture_and_restores_the_base_weights(
    tiny_llama: Path, two_experts, digits_file: Path
) -> None:
    from t2cli.tasks import get_task

    task = get_task(str(digits_file))
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        before = _base_params(adaptable)
        experts = [load_expert(registry, n) for n in two_experts]
        items = select_shots(task, None, 0, whole_file=True)
        config = AdaptConfig(
            name="digits-cem", task="digits", cem=CEMConfig(population=4, generations=2, seed=3), max_new_tokens=3
        )
        generations = []
        result = adapt(registry, adaptable, task, items, experts, config, on_generation=generations.append)
        _assert_base_weights(adaptable, before)
        mixed = load_expert(registry, "digits-cem")
        assert latest_cem_mixture(registry, "digits", adaptable.base_model_id) == "digits-cem"
        assert latest_cem_mixture(registry, str(digits_file), adaptable.base_model_id) == "digits-cem"
        assert latest_cem_mixture(registry, "gsm8k", adaptable.base_model_id) is None
        assert latest_cem_mixture(registry, "digits", adaptable.base_model_id + 1) is None
    assert len(generations) == 2 and result.evaluations == 8
    assert len(result.shots) == 6 and sorted(mixed.config.training["shots"]) == sorted(item.id for item in items)
    assert mixed.config.kind == "mixture" and mixed.config.task == "digits"
    assert mixed.config.parametrization["adaptation"] == "cem"
    assert [(p["name"], p["relation"]) for p in mixed.config.parents] == [("alpha-x", "mixed"), ("beta-x", "mixed")]
    alphas = mixed.config.parametrization["mixture"]["alphas"]
    assert [p["weight"] for p in mixed.config.parents] == alphas and all(0.0 <= a <= 1.0 for a in alphas)
    assert mixed.config.training["cem"]["population"] == 4 and len(mixed.config.training["history"]) == 2
    assert mixed.config.metrics["fewshot_accuracy"] == result.fitness.accuracy
    assert "base_fewshot_accuracy" in mixed.config.metrics
    expected = mix([e.z for e in experts], alphas, "linear")
    for name, vector in expected.items():  # the registered z is the recorded alphas' mixture
        assert torch.allclose(mixed.z[name], vector, atol=1e-5), name


def test_adapt_per_matrix_uses_one_weight_per_expert_per_role(tiny_llama: Path, two_experts, digits_file: Path) -> None:
    from t2cli.tasks import get_task

    task = get_task(str(digits_file))
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        experts = [load_expert(registry, n) for n in two_experts]
        config = AdaptConfig(
            name="digits-roles",
            task="digits",
            per_matrix=True,
            baselines=False,
            cem=CEMConfig(population=3, generations=1),
            max_new_tokens=2,
        )
        result = adapt(registry, adaptable, task, task.split("train")[:2], experts, config)
        mixed = load_expert(registry, "digits-roles")
    mixture = mixed.config.parametrization["mixture"]
    assert (
        result.groups == mixture["groups"] == ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]
    )
    assert mixture["granularity"] == "role" and len(mixture["alphas"]) == 7 and len(mixture["alphas"][0]) == 2
    down = torch.tensor(mixture["alphas"][6])
    name = "model.layers.2.mlp.down_proj"
    assert torch.allclose(mixed.z[name], down[0] * experts[0].z[name] + down[1] * experts[1].z[name], atol=1e-5)


def test_a_crash_mid_search_registers_nothing_and_restores_weights(
    tiny_llama: Path, two_experts, digits_file: Path
) -> None:
    from t2cli.tasks import get_task

    task = get_task(str(digits_file))

    def crash(generation: int, index: int) -> None:
        if generation == 2 and index == 1:
            raise KeyboardInterrupt

    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        before = _base_params(adaptable)
        experts = [load_expert(registry, n) for n in two_experts]
        rows = registry.status().rows
        config = AdaptConfig(
            name="crashed", task="digits", baselines=False, cem=CEMConfig(population=3, generations=3), max_new_tokens=2
        )
        with pytest.raises(KeyboardInterrupt):
            adapt(registry, adaptable, task, task.split("train"), experts, config, on_candidate=crash)
        _assert_base_weights(adaptable, before)
        assert registry.status().rows == rows


def test_fitness_failure_inside_generation_restores_weights(
    tiny_llama: Path, two_experts, digits_file: Path, monkeypatch
) -> None:
    import t2cli.adapt.cem as cem  # cem calls generate through its own binding
    from t2cli.tasks import get_task

    task = get_task(str(digits_file))
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        before = _base_params(adaptable)
        experts = [load_expert(registry, n) for n in two_experts]

        def broken(*args, **kwargs):
            assert adaptable.svf.active is not None  # it is called with the mixture applied
            raise RuntimeError("out of memory")

        monkeypatch.setattr(cem, "generate", broken)
        config = AdaptConfig(name="broken", task="digits", baselines=False, cem=CEMConfig(population=2, generations=1))
        with pytest.raises(RuntimeError):
            adapt(registry, adaptable, task, task.split("train"), experts, config)
        _assert_base_weights(adaptable, before)


def test_latest_cem_mixture_ignores_manual_mixtures_and_takes_the_newest(two_experts) -> None:
    with open_registry() as registry:
        base = load_expert(registry, "alpha-x")
        for name, adaptation in (("old", "cem"), ("new", "cem"), ("manual", "manual")):
            config = ExpertConfig(
                name=name,
                base_model=base.config.base_model,
                targets="all",
                num_matrices=len(base.z),
                kind="mixture",
                task="gsm8k",
                parametrization={"stored": "effective_multiplier", "adaptation": adaptation},
            )
            register_expert(registry, base.z, config, base_model_id=base.base_model_id, decomposition_id=None)
        assert latest_cem_mixture(registry, "gsm8k", base.base_model_id) == "new"
        assert latest_cem_mixture(registry, "math", base.base_model_id) == "new"  # an alias of gsm8k
        assert latest_cem_mixture(registry, "mbpp", base.base_model_id) is None


def test_adapt_cli_end_to_end(tiny_llama: Path, two_experts, digits_file: Path) -> None:
    result = runner.invoke(
        app,
        [
            "adapt",
            "--fewshot",
            str(digits_file),
            "--task",
            "digits",
            "--model",
            str(tiny_llama),
            "--device",
            "cpu",
            "--population",
            "3",
            "--generations",
            "2",
            "--max-new-tokens",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "digits-cem" in result.stdout and "best so far" in result.stdout
    with open_registry() as registry:
        mixed = load_expert(registry, "digits-cem")
        from t2cli.experts.catalog import get_expert

        info = get_expert(registry, "digits-cem")
    assert sorted(p[0] for p in info.parents) == two_experts and all(p[2] == "mixed" for p in info.parents)
    assert mixed.config.parametrization["adaptation"] == "cem" and mixed.config.task == "digits"
    assert mixed.config.training["source"] == f"file {digits_file}"
    # The default experts are the model's non-mixture experts: the mixture just made is not one of them.
    again = runner.invoke(
        app,
        [
            "adapt",
            "--fewshot",
            str(digits_file),
            "--model",
            str(tiny_llama),
            "--device",
            "cpu",
            "--population",
            "2",
            "--generations",
            "1",
            "--max-new-tokens",
            "1",
            "--json",
        ],
    )
    assert again.exit_code == 0, again.output
    payload = json.loads(again.stdout)
    assert payload["name"] == "digits-cem-2" and payload["experts"] == two_experts


@pytest.mark.parametrize(
    ("args", "exit_code", "phrase"),
    [
        ([], 2, "give --task TASK or --fewshot FILE.jsonl"),
        (["--task", "nope-task"], 2, "unknown task 'nope-task'"),
        (["--task", "gsm8k", "--experts", "alpha-x"], 2, "at least two experts"),
        (["--task", "gsm8k", "--experts", "alpha-x,ghost"], 1, "no expert named 'ghost'"),
        (["--task", "gsm8k", "--population", "1"], 2, "--population must be at least 2"),
        (["--task", "gsm8k", "--experts", "alpha-x,beta-x", "--method", "slerp"], 2, "unknown mixing method"),
        (["--task", "gsm8k", "--experts", "alpha-x,beta-x", "--name", "beta-x"], 1, "already exists"),
    ],
)
def test_adapt_refuses_bad_input_with_one_line(
    two_experts, tiny_llama: Path, args, exit_code: int, phrase: str
) -> None:
    result = runner.invoke(app, ["adapt", *args, "--model", str(tiny_llama), "--device", "cpu"])
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("loading")]
    assert lines[0].startswith("error: ") and phrase in lines[0], result.stderr
    assert len(lines) <= 2 and "Traceback" not in result.stderr


def test_shots_come_from_train_and_are_seeded() -> None:
    from t2cli.tasks import get_task

    task = get_task("arithmetic")
    shots = select_shots(task, 10, seed=0)
    train_ids = {item.id for item in task.split("train")}
    assert len(shots) == 10 and all(item.id in train_ids for item in shots)
    assert [i.id for i in select_shots(task, 10, seed=0)] == [i.id for i in shots]
    assert [i.id for i in select_shots(task, 10, seed=1)] != [i.id for i in shots]
    with pytest.raises(T2Error):
        select_shots(task, 0, seed=0)


def test_fewshot_score_orders_accuracy_before_likelihood() -> None:
    assert FewShotScore(0.5, -9.0) > FewShotScore(0.4, -0.1) > FewShotScore(0.4, -0.2)


def test_adapt_help_has_examples() -> None:
    result = runner.invoke(app, ["adapt", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--per-matrix" in result.output
