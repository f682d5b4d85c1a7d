"""Target selection is explicit per architecture and never matches by accident."""

from __future__ import annotations

import pytest

from t2cli.errors import TargetError
from t2cli.models.targets import LAYOUTS, candidate_matrices, select_targets, targets_key


@pytest.mark.parametrize("model_type", sorted(LAYOUTS))
def test_all_is_attention_plus_mlp_for_every_supported_architecture(model_type: str) -> None:
    chosen = select_targets(model_type, 2, "all")
    assert len(chosen) == 2 * 7
    assert {m.role for m in chosen} == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    blocks = LAYOUTS[model_type].block_prefix  # model.layers.{layer}. (a VLM: its language model's blocks)
    assert chosen[0].name == blocks.format(layer=0) + "self_attn.q_proj"
    assert chosen[-1].weight_name == blocks.format(layer=1) + "mlp.down_proj.weight"


def test_groups_split_attention_and_mlp() -> None:
    attn = select_targets("llama", 4, "attn")
    mlp = select_targets("llama", 4, "mlp")
    assert len(attn) == 16 and all(m.role.startswith("attn.") for m in attn)
    assert len(mlp) == 12 and all(m.role.startswith("mlp.") for m in mlp)


def test_regex_picks_layers_and_roles() -> None:
    chosen = select_targets("qwen2", 30, r"layers\.(1[0-9])\.mlp\.down_proj")
    assert [m.layer for m in chosen] == list(range(10, 20))
    assert {m.role for m in chosen} == {"mlp.down"}


def test_regex_never_reaches_outside_transformer_blocks() -> None:
    # "embed" and "lm_head" exist in every model but are not candidates.
    with pytest.raises(TargetError, match="matches no matrix"):
        select_targets("llama", 2, "embed|lm_head|norm")


def test_invalid_regex_is_a_clear_error() -> None:
    with pytest.raises(TargetError, match="not a valid regular expression"):
        select_targets("llama", 2, "layers.(")


def test_unsupported_architecture_lists_supported_ones() -> None:
    with pytest.raises(TargetError) as info:
        candidate_matrices("gpt2", 2)
    assert "gpt2" in info.value.message and "llama" in (info.value.hint or "")


def test_targets_key_depends_on_set_and_dtype_not_order() -> None:
    assert targets_key(["a", "b"], "float32") == targets_key(["b", "a"], "float32")
    assert targets_key(["a", "b"], "float32") != targets_key(["a", "b"], "float64")
    assert targets_key(["a"], "float32") != targets_key(["a", "b"], "float32")
