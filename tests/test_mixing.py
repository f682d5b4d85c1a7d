"""Mixing: the formulas on tiny tensors, the method registry, and `t2 mix` through the CLI.

The CLI tests register experts directly (a base-model row and random z vectors):
`t2 mix` never loads a model, so none is needed.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.errors import UsageError
from t2cli.experts import mixing
from t2cli.experts.mixing import MixingError, check_weights, get_mixing_method, mix, mixing_method, role_groups
from t2cli.home import open_registry
from t2cli.svf.expert import ExpertConfig, load_expert, register_expert
from tests.registry_support import add_base_model

runner = CliRunner()
MATRICES = {"model.layers.0.mlp.up_proj": 3, "model.layers.0.self_attn.q_proj": 4}


def t2(*args: str):
    return runner.invoke(app, list(args))


def _one_error(result, exit_code: int) -> str:
    """Exit code as expected, one 'error:' line (plus an optional hint), no traceback; returns the error line."""
    assert result.exit_code == exit_code, result.output
    text = result.stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, text
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return lines[0]


# --------------------------------------------------------------------------- maths


def test_linear_is_the_weighted_sum() -> None:
    a = {"m": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor([0.5, 1.5])}
    b = {"m": torch.tensor([3.0, 0.0, 1.0]), "n": torch.tensor([1.0, 1.0])}
    z = mix([a, b], [0.25, 0.5], "linear")
    assert torch.allclose(z["m"], torch.tensor([0.25 + 1.5, 0.5, 0.75 + 0.5]))
    assert torch.allclose(z["n"], torch.tensor([0.125 + 0.5, 0.375 + 0.5]))
    assert z["m"].dtype == torch.float32


def test_task_arithmetic_adds_changes_to_the_identity() -> None:
    a = {"m": torch.tensor([1.2, 0.8, 1.0])}
    b = {"m": torch.tensor([1.0, 1.4, 0.5])}
    z = mix([a, b], [1.0, -0.5], "task-arithmetic")
    # 1 + 1.0 * (a - 1) - 0.5 * (b - 1)
    assert torch.allclose(z["m"], torch.tensor([1.2, 0.8 - 0.2, 1.25]))
    # Weights (1, 0) give expert a back; all-zero weights give the identity.
    assert torch.allclose(mix([a, b], [1.0, 0.0], "task-arithmetic")["m"], a["m"])
    assert torch.equal(mix([a, b], [0.0, 0.0], "task-arithmetic")["m"], torch.ones(3))


def test_per_group_weights_pick_a_row_per_matrix() -> None:
    a = {"m": torch.tensor([1.0, 1.0]), "n": torch.tensor([2.0])}
    b = {"m": torch.tensor([3.0, 5.0]), "n": torch.tensor([4.0])}
    alpha = torch.tensor([[1.0, 0.0], [0.25, 0.75]])  # group 0: only a; group 1: mostly b
    z = mix([a, b], alpha, "linear", groups={"m": 0, "n": 1})
    assert torch.equal(z["m"], a["m"])
    assert torch.allclose(z["n"], torch.tensor([0.5 + 3.0]))


def test_role_groups_share_a_role_across_layers() -> None:
    names = [
        f"model.layers.{layer}.{module}"
        for layer in range(2)
        for module in ("self_attn.q_proj", "mlp.down_proj", "mlp.up_proj")
    ]
    groups, group_of = role_groups(names, "llama", 2)
    assert groups == ["attn.q", "mlp.up", "mlp.down"]
    assert group_of["model.layers.0.mlp.down_proj"] == group_of["model.layers.1.mlp.down_proj"] == 2
    with pytest.raises(MixingError):
        role_groups(["lm_head"], "llama", 2)


def test_method_registry_decorator_and_unknown_names(monkeypatch) -> None:
    monkeypatch.setattr(mixing, "_METHODS", dict(mixing._METHODS))

    @mixing_method("max", formula="z' = max_k z_k")
    def elementwise_max(stack: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Largest multiplier of any expert."""
        return stack.max(dim=0).values

    assert get_mixing_method("max").description == "Largest multiplier of any expert."
    z = mix([{"m": torch.tensor([1.0, 3.0])}, {"m": torch.tensor([2.0, 0.0])}], [1.0, 1.0], "max")
    assert torch.equal(z["m"], torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError):
        mixing_method("max", formula="")(elementwise_max)
    with pytest.raises(MixingError) as info:
        get_mixing_method("slerp")
    assert "linear" in info.value.hint and "task-arithmetic" in info.value.hint


@pytest.mark.parametrize(
    ("method", "weights", "error"),
    [
        ("linear", [0.5], UsageError),
        ("linear", [0.5, float("nan")], MixingError),
        ("linear", [float("inf"), 0.5], MixingError),
        ("linear", [-0.5, 1.0], MixingError),
        ("linear", [0.0, 0.0], MixingError),
        ("task-arithmetic", [0.0, 0.0], MixingError),
    ],
)
def test_bad_weights_are_refused(method: str, weights: list[float], error: type) -> None:
    with pytest.raises(error):
        check_weights(method, weights, ["a", "b"])


def test_negative_weights_are_allowed_where_the_method_allows_them() -> None:
    assert check_weights("task-arithmetic", [1.0, -0.5], ["a", "b"]).allows_negative


# --------------------------------------------------------------------------- the CLI


def _expert(
    registry,
    name: str,
    base_id: int,
    fingerprint: str,
    *,
    seed: int,
    matrices=MATRICES,
    targets: str = "all",
    task: str | None = None,
) -> dict[str, torch.Tensor]:
    base_name = {"1" * 64: "one", "2" * 64: "two"}[fingerprint]
    generator = torch.Generator().manual_seed(seed)
    z = {m: 1.0 + 0.3 * torch.randn(r, generator=generator) for m, r in matrices.items()}
    config = ExpertConfig(
        name=name,
        base_model={"name": base_name, "fingerprint": fingerprint},
        targets=targets,
        num_matrices=len(z),
        task=task,
    )
    register_expert(registry, z, config, base_model_id=base_id, decomposition_id=None)
    return z


@pytest.fixture()
def experts():
    """Experts a, b, c of base model one; d of another base model; e of model one with other matrices."""
    with open_registry() as registry:
        one = add_base_model(registry, "1" * 64, "one").id
        two = add_base_model(registry, "2" * 64, "two").id
        zs = {
            "a": _expert(registry, "a", one, "1" * 64, seed=1, task="gsm8k"),
            "b": _expert(registry, "b", one, "1" * 64, seed=2, task="gsm8k"),
            "c": _expert(registry, "c", one, "1" * 64, seed=3, task="mbpp"),
            "d": _expert(registry, "d", two, "2" * 64, seed=4),
            "e": _expert(
                registry, "e", one, "1" * 64, seed=5, targets="mlp", matrices={"model.layers.0.mlp.up_proj": 3}
            ),
        }
    return zs


def test_mix_registers_the_formula_with_lineage(experts) -> None:
    result = t2("mix", "a", "b", "c", "--weights", "0.5,0.3,0.2", "--name", "abc")
    assert result.exit_code == 0, result.output
    assert "abc" in result.stdout
    with open_registry() as registry:
        mixed = load_expert(registry, "abc")
        from t2cli.experts.catalog import get_expert

        info = get_expert(registry, "abc")
    for matrix in MATRICES:
        expected = (
            0.5 * experts["a"][matrix].double()
            + 0.3 * experts["b"][matrix].double()
            + 0.2 * experts["c"][matrix].double()
        )
        assert torch.allclose(mixed.z[matrix].double(), expected, atol=1e-6), matrix
    assert info.kind == "mixture" and mixed.config.kind == "mixture"
    assert sorted(info.parents) == [("a", 0.5, "mixed"), ("b", 0.3, "mixed"), ("c", 0.2, "mixed")]
    mixture = mixed.config.parametrization["mixture"]
    assert mixed.config.parametrization["adaptation"] == "manual"
    assert mixture["method"] == "linear" and mixture["alphas"] == [0.5, 0.3, 0.2]
    assert mixture["experts"] == ["a", "b", "c"] and mixture["granularity"] == "expert"
    assert mixed.config.base_model.fingerprint == "1" * 64
    assert mixed.config.task is None  # the parents disagree (gsm8k, gsm8k, mbpp)


def test_mix_task_arithmetic_with_a_negative_weight_and_default_name(experts) -> None:
    result = t2("mix", "a", "b", "--method", "task-arithmetic", "--weights", "1.0,-0.5", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["name"] == "mix-a-b" and payload["weights"] == [1.0, -0.5]
    with open_registry() as registry:
        mixed = load_expert(registry, "mix-a-b")
    for matrix in MATRICES:
        expected = 1 + (experts["a"][matrix] - 1) - 0.5 * (experts["b"][matrix] - 1)
        assert torch.allclose(mixed.z[matrix], expected, atol=1e-6)
    assert mixed.config.task == "gsm8k"  # both parents are gsm8k experts
    # The default name does not collide: a second mix gets a suffix.
    again = t2("mix", "a", "b", "--json")
    assert json.loads(again.stdout)["name"] == "mix-a-b-2" and json.loads(again.stdout)["weights"] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("args", "exit_code", "phrase"),
    [
        (["a", "b", "--weights", "0.5"], 2, "1 weights for 2 experts"),
        (["a", "b", "--weights", "0.5,x"], 2, "'x' is not a number"),
        (["a", "b", "--weights", "-0.5,1"], 2, "needs weights >= 0"),
        (["a", "b", "--weights", "nan,1"], 2, "the weight of 'a' is nan"),
        (["a", "b", "--weights", "1,inf"], 2, "the weight of 'b' is inf"),
        (["a", "b", "--weights", "0,0"], 2, "every mixing weight is 0"),
        (["a", "d"], 1, "belongs to base model two"),
        (["a", "e"], 1, "adapt different matrices"),
        (["a", "b", "--method", "slerp"], 2, "unknown mixing method 'slerp'"),
        (["a"], 2, "at least two experts"),
        (["a", "a"], 2, "named twice"),
        (["a", "nope"], 1, "no expert named 'nope'"),
        (["a", "b", "--name", "c"], 1, "already exists"),
    ],
)
def test_mix_refuses_bad_input_with_one_line(experts, args: list[str], exit_code: int, phrase: str) -> None:
    with open_registry() as registry:
        before = registry.status().rows["experts"]
    line = _one_error(t2("mix", *args), exit_code)
    assert phrase in line, line
    with open_registry() as registry:
        assert registry.status().rows["experts"] == before  # nothing registered


def test_mix_help_has_examples() -> None:
    result = t2("mix", "--help")
    assert result.exit_code == 0 and "Example" in result.output
