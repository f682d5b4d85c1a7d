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


def build_tiny_model(arch: str, folder: Path, seed: int = 0, *, initializer_range: float | None = None) -> Path:
    """Save a tiny random model of ``arch`` (safetensors + config) into ``folder``.

    ``initializer_range``: the std of the random weights (default: the architecture's, 0.02); a large
    one (0.5) gives logits far from uniform, which z can move within a few training steps.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _config(arch)
    if initializer_range is not None:
        config.initializer_range = initializer_range
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2  # the tiny tokenizer's ids
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    model.save_pretrained(folder)
    build_tiny_tokenizer(folder)
    return folder


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(
    folder: Path,
    extra: dict[str, int] | None = None,
    chat_template: str | None = None,
    named: dict[str, str] | None = None,
) -> Path:
    """A character-level tokenizer (digits, letters, punctuation) with a ChatML template, vocab < 128.

    ``extra``: more special tokens at given ids (a VLM's image placeholders, past the characters' ids).
    ``named``: attributes naming some of them (``image_token`` -> ``"<image_soft_token>"``), as Gemma 3's has.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ +-*/=?.,:;!'\"()\n")
    vocab = {token: i for i, token in enumerate(specials + chars)} | (extra or {})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # characters join back without spaces
    tokenizer.add_special_tokens(specials + list(extra or {}))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<unk>",
        extra_special_tokens=named or {},
    )
    fast.chat_template = chat_template or CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return folder
