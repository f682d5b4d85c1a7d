"""Build tiny random vision-language models of the families t2 supports, and image inputs for them.

Configs are written in code (no download): a 2-block language model and a 2-block vision
tower, small enough that a full decomposition takes well under a second. Image inputs are
made from a drawn PIL image by each family's own image processor (the Pillow backend,
which needs no torchvision), with the image placeholder tokens laid out as the family's
processor would.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny_models import build_tiny_tokenizer

VLM_FAMILIES = ("idefics3", "qwen2_vl", "qwen2_5_vl", "llava", "gemma3")
# Each family's weights seed. Tests ask that a random model's greedy answer change with the picture and the
# expert; the tiny Qwen2-VL of seed 1 answers "4" to every picture, the one of seed 3 does not.
VLM_SEEDS = {"idefics3": 0, "qwen2_vl": 3, "qwen2_5_vl": 2, "llava": 3, "gemma3": 4}

IMAGE_SIZE = 32  # pixels, square
# Ids past the character tokenizer's (< 90), inside the vocabulary: image placeholders and Qwen's markers.
IMAGE_TOKEN, VISION_START, VISION_END, VIDEO_TOKEN = 120, 121, 122, 123
# Gemma 3 writes <start_of_image> for an image in the text and expands it to these markers around its image tokens.
GEMMA3_BOI, GEMMA3_EOI = 124, 125
GEMMA3_IMAGE_TOKENS = 4  # mm_tokens_per_image: (32 / 8)^2 patches average-pooled to 2 x 2

_TEXT = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_CLIP_LIKE_VISION = dict(
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
)
# Qwen's multimodal rotary sections (temporal, height, width) sum to head_dim / 2 = 4.
_MROPE = {"rope_type": "default", "mrope_section": [1, 1, 2]}
_QWEN_IDS = dict(
    image_token_id=IMAGE_TOKEN,
    video_token_id=VIDEO_TOKEN,
    vision_start_token_id=VISION_START,
    vision_end_token_id=VISION_END,
)


def _config(family: str):
    from transformers import Gemma3Config, Idefics3Config, LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    if family == "idefics3":  # SmolVLM-256M/500M
        return Idefics3Config(
            text_config=dict(model_type="llama", **_TEXT),
            vision_config=_CLIP_LIKE_VISION,
            scale_factor=2,
            image_token_id=IMAGE_TOKEN,
            architectures=["Idefics3ForConditionalGeneration"],
        )
    if family == "qwen2_vl":
        return Qwen2VLConfig(
            text_config=dict(**_TEXT, rope_scaling=_MROPE),
            vision_config=dict(
                depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4, spatial_merge_size=2
            ),
            **_QWEN_IDS,
            architectures=["Qwen2VLForConditionalGeneration"],
        )
    if family == "qwen2_5_vl":
        return Qwen2_5_VLConfig(
            text_config=dict(**_TEXT, rope_scaling=_MROPE),
            vision_config=dict(
                depth=2,
                hidden_size=16,
                intermediate_size=24,
                num_heads=2,
                out_hidden_size=32,
                patch_size=4,
                spatial_merge_size=2,
                fullatt_block_indexes=[1],
                window_size=16,
            ),
            **_QWEN_IDS,
            architectures=["Qwen2_5_VLForConditionalGeneration"],
        )
    if family == "llava":
        return LlavaConfig(
            text_config=dict(model_type="llama", **_TEXT),
            vision_config=dict(model_type="clip_vision_model", projection_dim=16, **_CLIP_LIKE_VISION),
            image_token_id=IMAGE_TOKEN,
            architectures=["LlavaForConditionalGeneration"],
        )
    if family == "gemma3":  # Gemma 3 4B-27B: a SigLIP tower, a pooled projector, sliding-window attention
        return Gemma3Config(
            # one sliding-window block and one global block, as Gemma 3 interleaves them (5:1 in the real models)
            text_config=dict(
                **_TEXT, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"]
            ),
            vision_config=dict(**_CLIP_LIKE_VISION),
            mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
            image_token_index=IMAGE_TOKEN,
            boi_token_index=GEMMA3_BOI,
            eoi_token_index=GEMMA3_EOI,
            architectures=["Gemma3ForConditionalGeneration"],
        )
    raise ValueError(family)


# Qwen2-VL's processor also needs a video processor, which transformers makes with torchvision: it does not
# import beside the CPU torch of .venv; scripts/vision_check.sh runs these tests where it does.
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Families whose processor builds from local parts here (a tiny_vlm_dirs folder then holds it).
BUILT_PROCESSORS = ("llava", "idefics3", "gemma3") + (("qwen2_vl",) if HAS_TORCHVISION else ())
# What tests parametrize over: Qwen2-VL skipped, with the reason, where its processor cannot be built.
PROCESSOR_FAMILIES = (
    "llava",
    "idefics3",
    "gemma3",
    pytest.param(
        "qwen2_vl",
        marks=pytest.mark.skipif(
            not HAS_TORCHVISION,
            reason="Qwen2-VL's processor needs torchvision, absent here: bash scripts/vision_check.sh runs it",
        ),
    ),
)

# The tokens each family's processor writes around or for an image, at ids the model knows.
_IMAGE_TOKENS = {
    "llava": {"<image>": IMAGE_TOKEN},
    "idefics3": {
        "<image>": IMAGE_TOKEN,
        "<fake_token_around_image>": 124,
        "<global-img>": 125,
        "<end_of_utterance>": 126,
    },
    "gemma3": {"<image_soft_token>": IMAGE_TOKEN, "<start_of_image>": GEMMA3_BOI, "<end_of_image>": GEMMA3_EOI},
    "qwen2_vl": {
        "<|image_pad|>": IMAGE_TOKEN,
        "<|vision_start|>": VISION_START,
        "<|vision_end|>": VISION_END,
        "<|video_pad|>": VIDEO_TOKEN,
    },
}
# Gemma 3's processor reads its image markers from the tokenizer's named special tokens.
_NAMED_TOKENS = {
    "gemma3": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
}


def vlm_chat_template(image_part: str) -> str:
    """ChatML with content parts: ``{"type": "image"}`` becomes ``image_part``, text parts their text."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_part + "{% "
        "elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_tiny_vlm(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random VLM of ``family`` (config + safetensors + a character tokenizer) into ``folder``.

    For ``BUILT_PROCESSORS`` the folder also gets the family's processor (its image processor,
    the tokenizer with the image tokens, a chat template with image parts), as a Hub snapshot has.
    """
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(_config(family))
    if family == "gemma3":  # its projector matrix starts at zero, which would drop every image: make it random
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    model.save_pretrained(folder)
    build_tiny_tokenizer(folder, extra=_IMAGE_TOKENS.get(family), named=_NAMED_TOKENS.get(family))
    if family in BUILT_PROCESSORS:
        build_tiny_processor(family, folder)
    return folder


def build_tiny_processor(family: str, folder: Path) -> None:
    """Save ``family``'s processor into ``folder`` from local parts: image processor + the folder's tokenizer."""
    from transformers import AutoTokenizer, Gemma3Processor, Idefics3Processor, LlavaProcessor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if family == "llava":
        processor = LlavaProcessor(
            image_processor=LlavaImageProcessorPil(
                size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
            ),
            tokenizer=tokenizer,
            patch_size=8,
            vision_feature_select_strategy="default",  # the CLS token is dropped: 16 image tokens
            num_additional_image_tokens=1,
            chat_template=vlm_chat_template("<image>"),
        )
    elif family == "idefics3":
        processor = Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(
                do_image_splitting=False,
                size={"longest_edge": IMAGE_SIZE},
                max_image_size={"longest_edge": IMAGE_SIZE},
            ),
            tokenizer=tokenizer,
            image_seq_len=4,  # (32 / 8)^2 patches merged by scale_factor^2 = 4
            chat_template=vlm_chat_template("<image>"),
        )
    elif family == "gemma3":
        processor = Gemma3Processor(
            image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
            tokenizer=tokenizer,
            image_seq_length=GEMMA3_IMAGE_TOKENS,
            chat_template=vlm_chat_template("<start_of_image>"),
        )
    elif family == "qwen2_vl":  # needs torchvision (HAS_TORCHVISION): its video processor is built with it
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        side = IMAGE_SIZE * IMAGE_SIZE
        processor = Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(
                patch_size=4, temporal_patch_size=2, merge_size=2, size={"shortest_edge": side, "longest_edge": side}
            ),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2),
            chat_template=vlm_chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
        )
    else:
        raise ValueError(family)
    processor.save_pretrained(folder)


def drawn_image():
    """A 32x32 picture: a red rectangle and a blue disc on white."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([3, 4, 18, 14], fill="red")
    draw.ellipse([16, 18, 28, 30], fill="blue")
    return image


def image_inputs(family: str) -> dict[str, Any]:
    """Model inputs for one prompt with one image: text ids around the image's placeholder tokens."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = drawn_image()
    before, after = [1, 40, 41, 42], [43, 44, 45, 2]  # "<bos> ... <image> ... <eos>" as character ids
    inputs: dict[str, Any]
    if family == "idefics3":
        processor = Idefics3ImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}
        )
        inputs = dict(processor(images=[[image]], return_tensors="pt"))
        # (32 / 8)^2 patches, merged by scale_factor^2 = 4 into 4 tokens.
        placeholder = [IMAGE_TOKEN] * 4
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        side = IMAGE_SIZE * IMAGE_SIZE
        processor = Qwen2VLImageProcessorPil(
            patch_size=4, temporal_patch_size=2, merge_size=2, size={"shortest_edge": side, "longest_edge": side}
        )
        inputs = dict(processor(images=[image], return_tensors="pt"))
        t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
        placeholder = [VISION_START] + [IMAGE_TOKEN] * (t * h * w // 4) + [VISION_END]
    elif family == "llava":
        processor = LlavaImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        inputs = dict(processor(images=[image], return_tensors="pt"))
        placeholder = [IMAGE_TOKEN] * (IMAGE_SIZE // 8) ** 2  # one token per patch (the CLS token is dropped)
    elif family == "gemma3":
        processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        inputs = {"pixel_values": processor(images=[image], return_tensors="pt")["pixel_values"]}
        placeholder = [GEMMA3_BOI] + [IMAGE_TOKEN] * GEMMA3_IMAGE_TOKENS + [GEMMA3_EOI]
    else:
        raise ValueError(family)
    ids = torch.tensor([before + placeholder + after])
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    if family in ("qwen2_vl", "qwen2_5_vl"):  # the processor's modality map for multimodal RoPE: 1 = image token
        inputs["mm_token_type_ids"] = (ids == IMAGE_TOKEN).long()
    if family == "gemma3":  # Gemma 3's processor marks image tokens for bidirectional attention among them
        inputs["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return inputs
