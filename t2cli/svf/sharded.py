"""FSDP-sharded SVF training (``t2 train --shard fsdp``): models that do not fit one GPU.

Data-parallel training (t2cli/runtime/distributed.py) holds the whole model, its factors, W'
and dL/dW' on every rank. Here PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``,
one unit per decoder layer plus the root) shards the model's parameters over the
ranks, and the SVF state is sharded the same way as DTensors: the base weight W, U
and S/Vh of each target matrix. z is tiny and stays replicated (a plain tensor on
every rank, its gradient summed by ``Dist.all_reduce_grads`` as in data parallelism).

Each target ``nn.Linear`` becomes an ``SVFLinear`` whose FSDP parameter ``weight``
holds the *live* weights: W'(z), composed once per step by ``ShardedSVF.refresh``.
Each rank composes only its own rows, W'[rows] = W[rows] + U[rows] diag(S (z - 1)) Vh,
which needs its local shards of W and U and one all-gather of Vh (``full_tensor``).
Rollouts and the loss then run on W' like on any FSDP model (each layer gathered
for its forward, freed after).

The gradient never materialises W' or dL/dW'. With y = x W'^T and upstream gradient g,
dL/dz_k = S_k * sum_t (g_t . U[:, k]) (x_t . Vh[k, :]): ``_SVFLinearGrad`` computes it
in its backward from the two (tokens x r) projections, gathering U and Vh of that one
matrix for the moment. Its forward saves only x (as nn.Linear does).

FSDP's collectives need every rank to run the same forwards: rollouts use
``synced_gpus`` generation and every rank generates (and backpropagates) the same
number of batches, padding with dummy work whose results are dropped.

A vision-language model (LLaVA, Idefics3...) is built as the image-text model class t2's
one-process path loads, and filled from checkpoints stored under older names
(``language_model.model.*``) with transformers' own renaming rules. Only its language model
is sharded (its decoder layers the units, as for a text model); the vision tower and the
projector are replicated, whole on every rank and outside FSDP (``_image_side``). So whether a
rank's batch holds pictures (a padding batch, a text item) never changes the collectives it
runs, and transformers' ``generate`` may encode the pictures before the model's first forward
(it does in 5.x), where FSDP has gathered nothing: the image tensors go with each rank's own
prompts through the same calls as in one process.
SVF targets stay in the language model (``--targets`` naming vision-tower or projector
matrices is refused before anything loads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as td
from safetensors.torch import load_file
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn import functional as F

from t2cli.decompose.engine import decompose_model, factor_blobs, find_decomposition, register_base_model
from t2cli.errors import T2Error
from t2cli.models.hashing import HashCache
from t2cli.models.identity import model_identity
from t2cli.models.load import load_tokenizer
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import PART_NAMES, is_vision_language, select_targets
from t2cli.models.weights import SafetensorsWeights
from t2cli.runtime.distributed import Dist, DistributedError
from t2cli.svf.adaptable import Adaptable, weights_folder
from t2cli.svf.model import SVFError, ZVectors

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from transformers import PreTrainedModel

    from registry import Registry

SHARDINGS = ("none", "fsdp")


# --------------------------------------------------------------------------- the adapted layer


@dataclass
class MatrixShards:
    """One target matrix's SVF state on this rank: local row shards of W and U, sharded DTensors S, Vh."""

    W: DTensor  # (m, n) base dtype, rows sharded as FSDP shards the live ``weight``
    U: DTensor  # (m, r) float32, rows sharded like W
    S: DTensor  # (r,) float32
    Vh: DTensor  # (r, n) float32

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])


class _SVFLinearGrad(torch.autograd.Function):
    """y = x W'^T with dL/dz from x and dL/dy (no dL/dW'); dL/dx as nn.Linear."""

    @staticmethod
    def forward(ctx, x, weight, bias, z, layer):
        ctx.layer = layer
        ctx.save_for_backward(x, weight)  # weight: FSDP's unsharded parameter, gathered again for backward
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_z = ctx.layer.z_gradient(x, grad) if ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_z, None


class SVFLinear(nn.Module):
    """A target ``nn.Linear`` under FSDP: forward with the live W'(z), gradient into the bound z.

    ``weight`` (and ``bias``) are the linear's own parameters, frozen, sharded by FSDP with
    the decoder layer. The SVF state (``shards``) and z are set by ``ShardedSVF``; they are
    no module state, so FSDP neither gathers them with the layer nor saves them.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.shards: MatrixShards | None = None
        self.z: torch.Tensor | None = None  # bound for the loss phase only
        self.use_base = False  # the KL reference forward reads W, not W'

    def loaded_shards(self) -> MatrixShards:
        """The SVF state ``load_sharded_adaptable`` sets; a clear error if it is used before."""
        if self.shards is None:
            raise SVFError("this SVFLinear has no SVF state yet", "build it with load_sharded_adaptable")
        return self.shards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_base:
            # Reference forward (no grad): this matrix's W gathered for the moment.
            return F.linear(x, self.loaded_shards().W.full_tensor(), self.bias)
        if self.z is None or not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _SVFLinearGrad.apply(x, self.weight, self.bias, self.z, self)

    def z_gradient(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """dL/dz = S * sum over tokens of (g U) * (x Vh^T), in float32."""
        shards = self.loaded_shards()
        U, Vh = shards.U.full_tensor(), shards.Vh.full_tensor()
        projected_in = x.reshape(-1, self.in_features).float() @ Vh.T  # (tokens, r)
        projected_out = grad.reshape(-1, self.out_features).float() @ U  # (tokens, r)
        return shards.S.full_tensor() * (projected_in * projected_out).sum(dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, svf rank={self.shards.rank if self.shards else '?'}"


# --------------------------------------------------------------------------- the sharded model


class ShardedSVF:
    """An FSDP-sharded causal LM whose target matrices are ``SVFLinear``; the counterpart of ``SVFModel``."""

    def __init__(
        self, model: nn.Module, layers: Mapping[str, SVFLinear], mesh: DeviceMesh, units: Sequence[FSDPModule] = ()
    ) -> None:
        self.model = model
        self.layers = dict(layers)
        self.mesh = mesh
        self.units = list(units)  # the decoder layers, one FSDP unit each
        self.gather_in_adapted = False  # adapted() blocks (validation) gather the model once (--fsdp-gather-rollouts)
        self._gathered = False

    @property
    def ranks(self) -> dict[str, int]:
        return {name: layer.loaded_shards().rank for name, layer in self.layers.items()}

    def trainable_z(self) -> ZVectors:
        """z = 1 for every matrix, float32, on this rank's device, requiring gradients (replicated)."""
        device = next(iter(self.layers.values())).loaded_shards().S.to_local().device
        return {name: torch.ones(r, device=device, requires_grad=True) for name, r in self.ranks.items()}

    @torch.no_grad()
    def refresh(self, z: Mapping[str, torch.Tensor] | None) -> None:
        """Compose the live weights W'(z) (None: W), each rank its own rows; checked finite on every rank."""
        if self._gathered:  # the gathered copies would keep the old weights
            raise RuntimeError("refresh() inside gathered(): compose first, then gather")
        finite: list[torch.Tensor] = []  # one flag per matrix, read once (no host sync per matrix)
        for name, layer in self.layers.items():
            local = _sharded(layer.weight, name).to_local()
            shards = layer.loaded_shards()
            base = shards.W.to_local()
            if z is None or name not in z:
                local.copy_(base)
                continue
            scale = shards.S.full_tensor() * (z[name].detach().to(torch.float32) - 1.0)
            delta = (shards.U.to_local() * scale) @ shards.Vh.full_tensor()  # my rows of U diag(s) Vh
            composed = (base.to(torch.float32) + delta).to(local.dtype)
            finite.append(torch.isfinite(composed).all())
            local.copy_(composed)
        if not _all_true(bool(torch.stack(finite).all()) if finite else True, self.mesh):
            self.refresh(None)
            raise SVFError("adapting the model gives non-finite weights", "the expert's z values are too large")

    def restore(self) -> None:
        self.refresh(None)

    @contextmanager
    def adapted(self, z: Mapping[str, torch.Tensor] | None, *, key: str | None = None) -> Iterator[None]:
        """Run a block with z composed into the live weights (None: W); W is back afterwards."""
        self.refresh(z)
        try:
            if self.gather_in_adapted:
                with self.gathered():
                    yield
            else:
                yield
        finally:
            self.refresh(None)

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Keep every decoder layer all-gathered for the block (rollouts), instead of gathering it per forward.

        Generation runs one forward per token; sharded, each of them all-gathers every layer.
        Gathered once, the block's forwards communicate nothing, at the cost of holding the
        whole live model on every rank meanwhile (``--fsdp-gather-rollouts``).
        """
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        self._gathered = True
        try:
            yield
        finally:
            self._gathered = False
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)

    @contextmanager
    def bound(self, z: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Forwards inside the block backpropagate into ``z`` (the loss phase)."""
        for name, layer in self.layers.items():
            layer.z = z.get(name)
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.z = None

    def base_forward(self, **inputs: torch.Tensor):
        """A forward with the base weights W (the KL reference), whatever is composed now."""
        for layer in self.layers.values():
            layer.use_base = True
        try:
            with torch.no_grad():
                return self.model(**inputs)
        finally:
            for layer in self.layers.values():
                layer.use_base = False


def _all_true(flag: bool, mesh: DeviceMesh) -> bool:
    value = torch.tensor([0.0 if flag else 1.0], device=mesh.device_type)
    td.all_reduce(value, group=mesh.get_group())
    return float(value[0]) == 0.0


# --------------------------------------------------------------------------- building it


def check_sharding(shard: str, dist: Dist) -> None:
    """Refuse ``--shard`` values that cannot work here, with one line each."""
    if shard not in SHARDINGS:
        raise T2Error(f"unknown --shard {shard!r}", f"use one of {', '.join(SHARDINGS)}")
    if shard == "fsdp" and not dist.enabled:
        raise DistributedError(
            "--shard fsdp splits the model over several processes, but this is one process",
            "launch with torchrun --nproc-per-node N (or accelerate launch), or drop --shard",
        )


def load_sharded_adaptable(
    registry: Registry, model: str | None, *, targets: str, dtype: str | None, dist: Dist
) -> Adaptable[ShardedSVF]:
    """Load ``model`` sharded over the job's ranks with FSDP2, its targets as ``SVFLinear``.

    Rank 0 decomposes first if needed (as ``load_adaptable`` does); then every rank builds
    the model on the meta device (no weights anywhere), shards it, and reads only its own
    rows of each tensor from the safetensors files and factor blobs, one tensor at a time:
    no process ever holds the whole model.
    """
    prepared = dist.main_first(lambda: _prepare(registry, model, targets, dist))
    ref, identity, base_id, decomposition_id, folder, blobs = prepared
    from transformers import AutoConfig  # noqa: PLC0415 - heavy: transformers (~2 s), only when building the model

    config = AutoConfig.from_pretrained(folder)
    source = SafetensorsWeights(folder)
    net, layers, mesh, units, names = _build_sharded(
        folder, config, _model_dtype(config, dtype), list(blobs), dist, source
    )
    _load_weights(net, source, names, mesh)
    _load_factors(registry, blobs, layers, mesh)
    svf = ShardedSVF(net, layers, mesh, units)
    return Adaptable(
        identity=identity,
        base_model_id=base_id,
        decomposition_id=decomposition_id,
        targets=targets,
        model=net,
        tokenizer=load_tokenizer(ref),
        svf=svf,
        device=dist.device,
    )


def _prepare(registry: Registry, model: str | None, targets: str, dist: Dist) -> tuple[Any, ...]:
    """Resolve the model, decompose it (rank 0) or find its decomposition (others); its weights folder and target names."""
    ref = resolve_model(model)
    identity = model_identity(ref, HashCache(registry.home / "cache" / "file-hashes.json"))
    check_sharded_targets(identity.model_type, identity.num_layers, identity.vision_layers, targets)
    # GGUF weights are read through t2's dequantised safetensors copy: rank 0, first in, writes it; the
    # others find it (or, with a node-local T2_HOME, write their node's own).
    folder = weights_folder(registry, identity)
    if not SafetensorsWeights.usable(folder):
        raise T2Error(
            f"--shard fsdp reads the weights from safetensors files, and {ref.location} has none",
            "save the model with save_pretrained(..., safe_serialization=True) first",
        )
    if dist.is_main:
        summary = decompose_model(registry, model, targets=targets, device=dist.device)
        base_id, decomposition_id = register_base_model(registry, identity).id, summary.decomposition_id
    else:
        base_id, decomposition_id = find_decomposition(registry, identity, targets)
    return ref, identity, base_id, decomposition_id, folder, factor_blobs(registry, decomposition_id)


def check_sharded_targets(model_type: str, num_layers: int, vision_layers: int, targets: str) -> None:
    """Refuse, in one line, ``--targets`` that name vision-tower or projector matrices: FSDP adapts the language model.

    The image side of a vision-language model is replicated outside FSDP (``_build_sharded``), and
    ``SVFLinear`` composes W' on the sharded rows of an FSDP parameter: it has no replicated form.
    """
    if not vision_layers:
        return
    chosen = select_targets(model_type, num_layers, targets, vision_layers=vision_layers)
    image_side = sorted({m.part for m in chosen} - {"language"})
    if image_side:
        parts = " and ".join(PART_NAMES[part] for part in image_side)
        raise T2Error(
            f"--shard fsdp adapts the language model only, and --targets {targets!r} names matrices of the {parts}",
            "train those targets without --shard (data parallel), or pick language-model targets (all, attn, mlp)",
        )


def _model_dtype(config: Any, dtype: str | None) -> torch.dtype:
    """``--dtype`` if given, else the checkpoint's own (float32 when its config names none)."""
    if dtype is not None:
        return getattr(torch, dtype)
    stored = getattr(config, "dtype", None)
    if isinstance(stored, torch.dtype):
        return stored
    return getattr(torch, str(stored)) if stored else torch.float32


def _build_sharded(
    folder: Path, config: Any, dtype: torch.dtype, target_names: Sequence[str], dist: Dist, source: SafetensorsWeights
) -> tuple[PreTrainedModel, dict[str, SVFLinear], DeviceMesh, list[FSDPModule], dict[str, str]]:
    """The model on the meta device, targets swapped for ``SVFLinear``, FSDP2 units applied, this rank's memory allocated.

    Also returns, per parameter, the name of the checkpoint tensor that fills it (``_checkpoint_names``).
    """
    from accelerate import init_empty_weights  # noqa: PLC0415 - heavy: accelerate, only for --shard fsdp
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415 - heavy: FSDP/DTensor (~1 s), only for --shard fsdp
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText  # noqa: PLC0415 - heavy: transformers (~2 s), only when building the model

    # The class t2cli.models.load gives a one-process model: transformers 5 maps most VLM configs to no causal LM.
    auto = AutoModelForImageTextToText if is_vision_language(config.model_type) else AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):  # buffers (rotary frequencies) are computed, not stored
        net = auto.from_config(config, dtype=dtype)
    net.tie_weights()  # on the meta device transformers leaves tied embeddings untied (lm_head = embed_tokens)
    net.eval().requires_grad_(False)
    net.generation_config = _generation_config(folder, net)
    # Before fully_shard: transformers finds its renaming rules by the model's class names, which FSDP changes.
    names = _checkpoint_names(net, source)

    layers = {name: _swap_linear(net, name) for name in target_names}
    mesh = init_device_mesh(torch.device(dist.device).type, (dist.world_size,))
    decoder = net.get_decoder()  # the language model (the whole model's own for a text model)
    # One FSDP unit per decoder layer (the classes transformers never splits across devices), then the root.
    # A VLM lists its vision tower's blocks among those classes too: only the language model's are units.
    unit_classes = set(getattr(net, "_no_split_modules", None) or [])
    decoder_layers = [m for m in decoder.modules() if type(m).__name__ in unit_classes]
    if not decoder_layers:
        raise T2Error(
            f"cannot find the decoder layers of this {config.model_type} model for FSDP", "train it without --shard"
        )
    units = [fully_shard(layer, mesh=mesh) for layer in decoder_layers]  # the same modules, now FSDP units
    fully_shard(net, mesh=mesh, ignored_params=_image_side(net) if is_vision_language(config.model_type) else None)

    buffers = {name: buf for name, buf in net.named_buffers()}
    net.to_empty(device=dist.device)
    for name, buf in buffers.items():  # to_empty left them uninitialised: put the computed values back
        owner, _, attr = name.rpartition(".")
        net.get_submodule(owner)._buffers[attr] = buf.to(dist.device)
    return net, layers, mesh, units, names


def _image_side(net: PreTrainedModel) -> set[nn.Parameter]:
    """A VLM's parameters outside its language model and LM head: the vision tower and projector, replicated.

    Replicated, they run no collective: a rank whose batch has no picture (padding, a text item)
    skips them without leaving its peers waiting, and ``generate`` can run the vision tower
    outside the model's forward (``_prepare_multimodal_encoder_kwargs_for_generation`` in
    transformers 5), where sharded parameters would not be gathered. They are small beside the
    language model (LLaVA-NeXT-8B: 0.33B in the CLIP tower and projector, 0.6 GiB in bfloat16, of 8.4B).
    """
    language = {id(p) for p in net.get_decoder().parameters()}
    head = net.get_output_embeddings()
    language |= {id(p) for p in head.parameters()} if head is not None else set()
    return {p for p in net.parameters() if id(p) not in language}


def _checkpoint_names(net: PreTrainedModel, source: SafetensorsWeights) -> dict[str, str]:
    """For each parameter of ``net``, the checkpoint tensor that holds it: the renaming ``from_pretrained`` applies.

    A VLM checkpoint may store other names than its modules' (llava-hf: ``language_model.model.*`` for
    ``model.language_model.*``). transformers renames them on load with rules it registers per model
    class (``conversion_mapping``); they are applied here as its loader applies them, including its
    fallback to a key's own name. A checkpoint whose tensors need converting (fused, split), not only
    renaming, is refused.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping  # noqa: PLC0415 - heavy: transformers (~2 s), only when building the model
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key  # noqa: PLC0415 - heavy: transformers, only when building the model

    transforms = get_model_conversion_mapping(net)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expected = net.state_dict()  # meta tensors: the names are what is read
    prefix = net.base_model_prefix
    names: dict[str, str] = {}
    for key in source.names():
        renamed, converted = rename_source_key(key, renamings, converters, prefix, expected)
        if renamed not in expected and key in expected:  # transformers' own fallback: the key needed no renaming
            renamed, converted = rename_source_key(key, [], [], prefix, expected)
        if converted is not None:
            raise T2Error(
                f"tensor {key} of this checkpoint must be converted ({converted}), not only renamed, to load",
                "--shard fsdp reads tensors as stored: train this model without --shard",
            )
        names.setdefault(renamed, key)
    return names


def _swap_linear(net: nn.Module, name: str) -> SVFLinear:
    owner, _, attr = name.rpartition(".")
    parent = net.get_submodule(owner)
    linear = getattr(parent, attr, None)
    if not isinstance(linear, nn.Linear):
        raise SVFError(f"the model has no linear matrix {name!r}", "the decomposition belongs to another model")
    layer = SVFLinear(linear)
    setattr(parent, attr, layer)
    return layer


def _generation_config(folder: Path, net: nn.Module):
    from transformers import GenerationConfig  # noqa: PLC0415 - heavy: transformers (~2 s), only when building the model

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return net.generation_config


@torch.no_grad()
def _load_weights(net: nn.Module, source: SafetensorsWeights, names: Mapping[str, str], mesh: DeviceMesh) -> None:
    """Each parameter's local shard (a replicated one whole) from the safetensors files, one full tensor at a time.

    ``names``: parameter -> checkpoint tensor (``_checkpoint_names``).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor  # noqa: PLC0415 - heavy: FSDP/DTensor (~1 s), only for --shard fsdp

    for name, param in net.named_parameters():  # tied weights (lm_head = embed_tokens) appear once
        stored = names.get(name)
        if stored is None:
            raise T2Error(
                f"the weights in {source.folder} have no tensor for {name!r}",
                "--shard fsdp reads checkpoints saved by transformers (under module names or names it renames)",
            )
        full = source.get(stored)
        if tuple(full.shape) != tuple(param.shape):
            raise T2Error(f"tensor {stored} is {tuple(full.shape)} in the files but {tuple(param.shape)} in the model")
        if isinstance(param, DTensor):
            shard = distribute_tensor(full.to(param.dtype), mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(shard.to_local())
        else:  # the replicated image side of a VLM (``_image_side``)
            param.copy_(full)


def _sharded(tensor: torch.Tensor, name: str) -> DTensor:
    """``tensor`` as the DTensor FSDP made of it; a clear error if FSDP left it whole."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415 - heavy: FSDP/DTensor, only for --shard fsdp

    if not isinstance(tensor, DTensor):
        raise DistributedError(f"FSDP did not shard {name}", "train it without --shard")
    return tensor


def _own_shard(full: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """This rank's rows of ``full`` as a Shard(0) DTensor that owns its memory.

    ``distribute_tensor`` returns a view into ``full`` when the rows are contiguous, which
    would keep every rank holding every full matrix: the shard is copied out instead.
    """
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor  # noqa: PLC0415 - heavy: FSDP/DTensor (~1 s), only for --shard fsdp

    view = distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None)
    return DTensor.from_local(
        view.to_local().clone(), mesh, view.placements, run_check=False, shape=view.shape, stride=view.stride()
    )


def _load_factors(
    registry: Registry, blobs: Mapping[str, str], layers: Mapping[str, SVFLinear], mesh: DeviceMesh
) -> None:
    """Each target's W rows (copied from the loaded weights) and its U, S, Vh shards (one blob at a time)."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415 - heavy: FSDP/DTensor (~1 s), only for --shard fsdp

    for name, layer in layers.items():
        tensors = load_file(str(registry.blobs.path(blobs[name])))
        weight = _sharded(layer.weight, name)  # loaded with W
        base = DTensor.from_local(
            weight.to_local().clone(),
            mesh,
            weight.placements,
            run_check=False,
            shape=weight.shape,
            stride=weight.stride(),
        )
        factors = {key: _own_shard(tensors[key].to(torch.float32), mesh) for key in ("U", "S", "Vh")}
        del tensors
        if factors["U"].to_local().shape[0] != base.to_local().shape[0]:
            raise DistributedError(f"FSDP sharded {name} unlike its factors", "train it without --shard")
        layer.shards = MatrixShards(W=base, **factors)
