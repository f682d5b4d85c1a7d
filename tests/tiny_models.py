"""Build tiny random causal LMs of each supported architecture and save them as HF folders."""

from __future__ import annotations

from pathlib import Path

import torch

# Shapes are deliberately uneven (q != k/v rows, MLP wide) so shape grouping and wide/tall
# matrices are exercised; all small enough that a full decomposition takes well under a second.
COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def _config(arch: str):
    from transformers import Gemma3TextConfig, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    if arch == "llama":
        return LlamaConfig(**COMMON, architectures=["LlamaForCausalLM"])
    if arch == "qwen2":
        return Qwen2Config(**COMMON, architectures=["Qwen2ForCausalLM"])
    if arch == "mistral":
        return MistralConfig(**COMMON, architectures=["MistralForCausalLM"])
    if arch == "gemma":
        return GemmaConfig(**COMMON, head_dim=8, architectures=["GemmaForCausalLM"])
    if arch == "gemma3":
        return Gemma3TextConfig(**COMMON, head_dim=8, architectures=["Gemma3ForCausalLM"])
    raise ValueError(arch)


ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "gemma3")


def build_tiny_model(arch: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random model of ``arch`` (safetensors + config) into ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch))
    model.save_pretrained(folder)
    return folder
