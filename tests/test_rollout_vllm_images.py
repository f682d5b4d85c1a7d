"""The vLLM rollout on image tasks with a vision-language model, against the fake ``vllm`` of test_rollout_vllm.py.

The fake's engine stands in for vLLM's multimodal processing the way vLLM 0.33 does it: it takes
``{"prompt_token_ids", "multi_modal_data": {"image": [...]}}``, refuses images without a tokenizer
or past ``limit_mm_per_prompt``, and expands each placeholder itself (``FakeVLLM.expand``; here
the tiny LLaVA's rule, one ``<image>`` -> 16). Its model's ``load_weights`` maps names with the
``hf_to_vllm_mapper`` prefixes of vLLM's ``LlavaForConditionalGeneration`` and refuses names its
parameters do not have. The real vLLM's processing and loader: tests/test_vllm_contract.py.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from t2cli.models.targets import LAYOUTS, is_vision_language, select_targets
from t2cli.runtime.generation import sample_key
from t2cli.runtime.multimodal import image_messages
from t2cli.tasks import get_task
from t2cli.tasks.types import TaskItem
from tests.test_rollout_vllm import EOS, LAUNCHER_VARS, FakeVLLM, build_fake_vllm
from tests.vlm_models import IMAGE_TOKEN

LLAVA_IMAGE_TOKENS = 16  # the tiny LLaVA: (32 / 8)^2 patches, CLS dropped ("default" feature strategy)
# vllm/model_executor/models/llava.py (0.33.0) LlavaForConditionalGeneration.hf_to_vllm_mapper
LLAVA_MAPPER = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}
# The names vLLM's LLaVA loads the tiny model's language-model matrices under (before fusing q/k/v, gate/up).
LLAVA_LOADABLE = {
    f"language_model.model.layers.{layer}.{module}.weight"
    for layer in range(2)
    for module in LAYOUTS["llava"].roles.values()
}


def llava_expansion(ids: list[int], images: list[Any]) -> list[int]:
    """vLLM's prompt update for LLaVA: each ``<image>`` becomes one ``<image>`` per image feature."""
    assert ids.count(IMAGE_TOKEN) == len(images), "one placeholder per image, not expanded yet"
    assert all(isinstance(image, Image.Image) for image in images)
    return [t for i in ids for t in ([IMAGE_TOKEN] * LLAVA_IMAGE_TOKENS if i == IMAGE_TOKEN else [i])]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    for var in LAUNCHER_VARS:  # no torchrun variables; whatever the adapter sets is removed after the test
        monkeypatch.setenv(var, "placeholder")
        monkeypatch.delenv(var)
    state = FakeVLLM()
    state.expand = llava_expansion
    state.mapper, state.loadable = LLAVA_MAPPER, LLAVA_LOADABLE
    for name, mod in build_fake_vllm(state).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return state


@pytest.fixture()
def llava(tiny_vlm_dirs: dict[str, Path]):
    """The tiny LLaVA loaded for SVF (tokenizer and processor included)."""
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable

    with open_registry() as registry:
        return load_adaptable(registry, str(tiny_vlm_dirs["llava"]), device="cpu")


def make_rollout(folder: Path, tokenizer, **overrides: Any):
    from t2cli.train.rollout_vllm import VLLMRollout

    args: dict[str, Any] = dict(dtype="float32", seed=7, device="cpu", max_images=2)
    args.update(overrides)
    return VLLMRollout(folder, tokenizer, **args)


def picture(path: Path, colour: str) -> Path:
    Image.new("RGB", (20, 12), colour).save(path)
    return path


def mixed_items(tmp_path: Path) -> list[TaskItem]:
    """Two pictures, one picture, none: the prompts of one step of a task that mixes them."""
    from t2cli.tasks.images import ImageFile

    red, blue, green = (ImageFile(picture(tmp_path / f"{c}.png", c)) for c in ("red", "blue", "green"))
    return [
        TaskItem("a", "Which colour is first?", "red", "exact", images=(red, blue)),
        TaskItem("b", "What colour?", "green", "exact", images=(green,)),
        TaskItem("c", "2+2=?", "4", "exact"),
    ]


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- names pushed into a VLM


@pytest.mark.parametrize("model_type", sorted(t for t in LAYOUTS if is_vision_language(t)))
def test_vllm_takes_w_prime_of_the_language_model_under_t2s_loaded_names(model_type: str) -> None:
    from t2cli.train.rollout_vllm import vllm_weight_name

    matrices = select_targets(model_type, 2, "all", vision_layers=2)
    names = [vllm_weight_name(m) for m in matrices]
    assert names == [f"{m.name}.weight" for m in matrices] and len(names) == 14
    first = {"idefics3": "model.text_model", "smolvlm": "model.text_model"}.get(model_type, "model.language_model")
    assert names[0] == f"{first}.layers.0.self_attn.q_proj.weight"


def test_the_names_pushed_are_those_vllms_llava_loader_takes(fake_vllm: FakeVLLM, llava) -> None:
    from t2cli.train.loop import _push_weights
    from t2cli.train.rollout_vllm import vllm_weight_name

    rollout = make_rollout(llava.identity.ref.path, llava.tokenizer)
    targets = select_targets("llava", 2, "all", vision_layers=2)
    pushed = {m.name: vllm_weight_name(m) for m in targets}
    _push_weights(
        rollout, pushed, llava.svf, llava.svf.composed({n: f.S * 0 + 1 for n, f in llava.svf.factors.items()})
    )
    (loaded,) = [entry[1] for entry in fake_vllm.log if entry[0] == "load_weights"]
    mapped = {name.replace("model.language_model.", "language_model.model.", 1) for name, _ in loaded}
    assert mapped == LLAVA_LOADABLE  # every matrix, each under a name vLLM's LlavaForConditionalGeneration takes
    # The fake is strict: text-model names would not load into a LLaVA.
    with pytest.raises(ValueError, match="no module or parameter named 'model.layers.0.mlp.up_proj.weight'"):
        rollout.push_weights({"model.layers.0.mlp.up_proj.weight": torch.ones(48, 32)})


@pytest.mark.parametrize("spec, part", [("vision", "vision tower"), ("projector", "projector")])
def test_image_side_targets_are_refused_from_the_config(tiny_vlm_dirs: dict[str, Path], spec: str, part: str) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, check_vllm_targets, vllm_weight_name

    with pytest.raises(RolloutBackendError) as caught:
        check_vllm_targets(str(tiny_vlm_dirs["llava"]), spec)
    assert "--rollout vllm pushes W' into the language model only" in caught.value.message
    assert f"in the {part}" in caught.value.message and "--targets all" in caught.value.hint
    (matrix, *_) = select_targets("llava", 2, spec, vision_layers=2)
    with pytest.raises(RolloutBackendError, match=f"{matrix.name} in the {part}"):
        vllm_weight_name(matrix)
    check_vllm_targets(str(tiny_vlm_dirs["llava"]), r"language_model\.layers\.1\.")  # a regex in the language model
    check_vllm_targets("/no/such/model", "all")  # named language groups need no config


# --------------------------------------------------------------------------- the engine and its requests


def test_a_vlm_engine_keeps_its_tokenizer_and_limits_images_per_prompt(fake_vllm: FakeVLLM, llava) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    make_rollout(llava.identity.ref.path, llava.tokenizer, max_images=3)
    kwargs = fake_vllm.engine.kwargs
    # vLLM's multimodal processors refuse skip_tokenizer_init; 999 images (vLLM's default) would be profiled for
    assert kwargs["skip_tokenizer_init"] is False and kwargs["limit_mm_per_prompt"] == {"image": 3}
    with pytest.raises(RolloutBackendError, match="max_images must be 0 or more"):
        make_rollout(llava.identity.ref.path, llava.tokenizer, max_images=-1)
    with pytest.raises(RolloutBackendError, match="engine_kwargs may not set limit_mm_per_prompt"):
        make_rollout(llava.identity.ref.path, llava.tokenizer, engine_kwargs={"limit_mm_per_prompt": {"image": 9}})


def test_image_requests_carry_each_items_images_in_order_and_completions_come_back_in_item_order(
    fake_vllm: FakeVLLM, llava, tmp_path: Path
) -> None:
    from t2cli.train.rollout_vllm import NO_PLACEHOLDER, vision_prompts

    items = mixed_items(tmp_path)
    system = "Answer in one word."
    processor = llava.processor()
    prompts = vision_prompts(processor, items, system)
    rollout = make_rollout(llava.identity.ref.path, llava.tokenizer)
    keys = [sample_key(3, 1, i, j) for i in range(3) for j in range(2)]
    # Each completion names its request: the key's rank, then how many image features its prompt held.
    fake_vllm.respond = lambda ids, params: [4 + keys.index(params.seed), 4 + ids.count(IMAGE_TOKEN) % 50, EOS]

    gens = rollout.generate(prompts, max_new_tokens=5, temperature=0.9, per_prompt=2, sample_keys=keys)

    ((_, requests, params),) = [entry for entry in fake_vllm.log if entry[0] == "generate"]
    assert len(requests) == 6
    for k, request in enumerate(requests):
        item = items[k // 2]
        text = processor.apply_chat_template(
            image_messages(item.prompt, len(item.images), system), tokenize=False, add_generation_prompt=True
        )
        # The chat-templated prompt tokenised alone: one placeholder per image, vLLM expands them.
        assert request["prompt_token_ids"] == llava.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert request["prompt_token_ids"].count(IMAGE_TOKEN) == len(item.images)
        sent = request.get("multi_modal_data", {}).get("image", [])
        assert len(sent) == len(item.images)
        assert all(same_pixels(s, image.open()) for s, image in zip(sent, item.images))  # the item's, in order
    assert "multi_modal_data" not in requests[4]  # a text item of the task: no images
    assert [p.seed for p in params] == keys
    assert all(p.logit_bias == {IMAGE_TOKEN: NO_PLACEHOLDER} for p in params)  # placeholders are never generated

    # The prompts the loss re-scores are the HF backend's: the processor's ids with the image tensors.
    expected = [prompt.encoded for prompt in prompts for _ in range(2)]
    assert gens.prompt_ids == [e.ids for e in expected]
    assert [p.count(IMAGE_TOKEN) for p in gens.prompt_ids] == [32, 32, 16, 16, 0, 0]
    assert list(gens.image_prompts) == expected
    assert gens.completion_ids == [[4 + k, 4 + [32, 32, 16, 16, 0, 0][k], EOS] for k in range(6)]  # item order
    assert len(gens.texts) == 6 and gens.per_prompt == 2


def test_vision_prompts_encode_as_the_task_does_for_the_hf_backend(llava) -> None:
    from t2cli.train.rollout_vllm import vision_prompts

    task = get_task("shapes")
    items = task.split("test")[:3]
    ours = vision_prompts(llava.processor(), items, task.system_prompt)
    theirs = task.image_prompts(llava.processor(), items)
    for prompt, hf in zip(ours, theirs):
        assert prompt.encoded.ids == hf.ids and prompt.encoded.tensors.keys() == hf.tensors.keys()
        assert all(torch.equal(prompt.encoded.tensors[key], hf.tensors[key]) for key in hf.tensors)
        assert llava_expansion(prompt.ids, list(prompt.images)) == hf.ids  # vLLM's expansion of what it is sent


def test_a_prompt_vllm_expands_otherwise_than_the_processor_is_refused(
    fake_vllm: FakeVLLM, llava, tmp_path: Path
) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, vision_prompts

    fake_vllm.expand = lambda ids, images: [t for i in ids for t in ([i] * 15 if i == IMAGE_TOKEN else [i])]
    rollout = make_rollout(llava.identity.ref.path, llava.tokenizer)
    prompts = vision_prompts(llava.processor(), mixed_items(tmp_path)[1:2], None)
    with pytest.raises(RolloutBackendError) as caught:
        rollout.generate(prompts, max_new_tokens=3)
    assert "vLLM expanded prompt 0 to" in caught.value.message and "processor gives" in caught.value.message
    assert "--rollout hf" in caught.value.hint


def test_images_past_the_engines_limit_or_on_a_text_engine_are_refused(
    fake_vllm: FakeVLLM, llava, tmp_path: Path
) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, vision_prompts

    prompts = vision_prompts(llava.processor(), mixed_items(tmp_path), None)
    with pytest.raises(RolloutBackendError, match="a prompt shows 2 images; this vLLM engine takes at most 1"):
        make_rollout(llava.identity.ref.path, llava.tokenizer, max_images=1).generate(prompts, max_new_tokens=3)
    with pytest.raises(RolloutBackendError, match="built for a text model"):
        make_rollout(llava.identity.ref.path, llava.tokenizer, max_images=None).generate(prompts, max_new_tokens=3)
    assert not [entry for entry in fake_vllm.log if entry[0] == "generate"]


# --------------------------------------------------------------------------- wired into t2 train


def test_training_on_shapes_with_vllm_rollouts_sends_the_steps_pictures_and_pushes_the_language_model(
    fake_vllm: FakeVLLM, llava
) -> None:
    from t2cli.home import open_registry
    from t2cli.train.loop import TrainConfig, train

    task = get_task("shapes")
    fake_vllm.respond = lambda ids, params: [14 + (params.seed or 0) % 5, EOS]
    config = TrainConfig(
        task="shapes",
        name="shapes-vllm",
        steps=2,
        prompts_per_step=2,
        samples_per_prompt=2,
        eval_every=2,
        valid_size=2,
        max_new_tokens=3,
        kl_coef=0.1,  # every completion is re-scored with its pictures (the KL term's forward)
        seed=5,
        device="cpu",
        rollout="vllm",
    )
    with open_registry() as registry:
        result = train(registry, llava, task, config)
    engine = fake_vllm.engine
    assert engine.kwargs["limit_mm_per_prompt"] == {"image": 1} and engine.kwargs["skip_tokenizer_init"] is False

    pushes = [entry[1] for entry in fake_vllm.log if entry[0] == "load_weights"]
    assert len(pushes) == 4  # validation at step 0, steps 1 and 2, validation at step 2
    assert all(
        sorted(name for name, _ in push) == sorted(m.weight_name for m in select_targets("llava", 2)) for push in pushes
    )

    calls = [entry for entry in fake_vllm.log if entry[0] == "generate"]
    assert len(calls) == 4
    rng = random.Random(config.seed)  # the loop's item draws, step by step
    for step, call in ((1, calls[1]), (2, calls[2])):
        items = task.sample_train(config.prompts_per_step, rng)
        requests, params = call[1], call[2]
        assert len(requests) == 4
        for k, request in enumerate(requests):
            (sent,) = request["multi_modal_data"]["image"]
            assert same_pixels(sent, items[k // 2].images[0].open())
        assert [p.seed for p in params] == [sample_key(config.seed, step, i, j) for i in range(2) for j in range(2)]
    valid = task.split("valid")[:2]
    assert [
        same_pixels(r["multi_modal_data"]["image"][0], item.images[0].open()) for r, item in zip(calls[0][1], valid)
    ] == [True, True]
    assert len(result.history) == 2
