"""Training AnomalyGPT on normal images: synthetic batches, what trains, optimiser, delta files."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler

from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER
from anomalib_agpt.model.anomaly_maps import (
    few_shot_map,
    few_shot_similarity,
    normalise_memory,
    zero_shot_logits,
    zero_shot_probabilities,
)
from anomalib_agpt.model.encoder import NUM_TAPS, VisionFeatures
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD
from anomalib_agpt.model.torch_model import AnomalyGPTModel
from anomalib_agpt.training.loss import pixel_loss
from anomalib_agpt.training.synthesis import (
    SynthesisSettings,
    object_settings,
    settings_for,
    synthesize,
    texture_settings,
)
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.checkpoints import DECODER_PREFIX, PROMPT_LEARNER_PREFIX

TrainablePart = Literal["decoder", "prompt_learner", "lora", "llama_proj", "llm"]
SynthesisMode = Literal["auto", "object", "texture"]

TEXTURE_CLASSES = frozenset({"carpet", "grid", "leather", "tile", "wood", "weave"})
"""Classes whose synthetic patches use the texture settings (MVTec AD's textures, the demo's weave)."""


def set_trainable(model: AnomalyGPTModel, parts: Sequence[TrainablePart]) -> None:
    """Freeze everything, then unfreeze ``parts`` (the LLM parts need the head loaded)."""
    model.requires_grad_(False)
    head = model.llm_head
    for part in parts:
        if part == "decoder":
            model.decoder.requires_grad_(True)
            if model.learned_anchors:  # no text tower: the anchors the maps compare with train with the decoder
                model.text_features.requires_grad_(True)
            continue
        if head is None:
            msg = f"trainable part '{part}' belongs to the explanation head: pass llm and pandagpt_checkpoint."
            raise OptionError(msg)
        if part == "prompt_learner":
            head.prompt_learner.requires_grad_(True)
        elif part == "llama_proj":
            head.llama_proj.requires_grad_(True)
        elif part == "llm":
            head.llm.requires_grad_(True)
        elif part == "lora":
            for name, parameter in head.llm.named_parameters():
                parameter.requires_grad_(".lora_" in name)
        else:
            msg = f"trainable part '{part}' is unknown; expected decoder, prompt_learner, lora, llama_proj or llm."
            raise OptionError(msg)


def synthesis_settings(mode: SynthesisMode, class_name: str | None) -> SynthesisSettings:
    """The generator settings for training on ``class_name``.

    ``auto``: the class's own entry in AnomalyGPT's tables (MVTec AD, VisA) via ``settings_for``; a class
    without one gets the texture defaults if it is in ``TEXTURE_CLASSES``, else the object defaults.
    ``object`` / ``texture``: that kind's defaults, whatever the class.
    """
    if mode == "auto":
        return settings_for(class_name, "texture" if (class_name or "") in TEXTURE_CLASSES else "object")
    return texture_settings() if mode == "texture" else object_settings()


@dataclass
class SyntheticBatch:
    """Normal images followed by their synthetic twins, with masks and target answers."""

    images: torch.Tensor
    masks: torch.Tensor
    answers: list[str]


SAMPLE_KEY_PARTS = 4
"""Path parts that name an image inside its dataset (category/train/good/000.png): not where the data lives."""


def _sample_key(path: str | None, fallback: int) -> int:
    """A stable per-image key, so an image gets the same anomaly in an epoch whatever the order or data folder."""
    if not path:
        return fallback
    return zlib.crc32("/".join(Path(path).parts[-SAMPLE_KEY_PARTS:]).encode())


def make_synthetic_batch(
    images: torch.Tensor,
    paths: Sequence[str] | None,
    settings: SynthesisSettings | Sequence[SynthesisSettings],
    seed: int,
    epoch: int,
    previous: torch.Tensor | None = None,
    normalisation: tuple[Sequence[float], Sequence[float]] = (CLIP_MEAN, CLIP_STD),
) -> SyntheticBatch:
    """From normalised normal images: ``[normals..., anomalous twins...]``, masks, answers.

    ``normalisation``: the ``(mean, std)`` the images carry (the tower's: CLIP's for ImageBind); the
    anomalies are drawn on the 8-bit-range pixels and normalised back the same way.

    ``settings``: one for all images, or one per image (a multi-class batch: each its class's).

    Randomness comes from ``(seed, epoch, image key)``. The patch source is the image served just
    before, as in the original: the previous image of the batch, and for the first one ``previous``
    (the last normal image of the previous step, CLIP-normalised like ``images``); without it (an
    epoch's first step) the batch's last image, or for a batch of one the image itself, flipped.
    """
    mean = torch.tensor(normalisation[0], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation[1], device=images.device).view(1, 3, 1, 1)
    raw = (images * std + mean).clamp(0, 1).float().cpu()
    if previous is not None:
        before = (previous.to(images.device).unsqueeze(0) * std + mean).clamp(0, 1).float().cpu()[0]
    else:
        before = raw[-1] if raw.shape[0] > 1 else raw[0].flip(-1)
    twins, masks, answers = [], [], []
    for index in range(raw.shape[0]):
        source = raw[index - 1] if index > 0 else before
        key = _sample_key(paths[index] if paths else None, index)
        own = settings if isinstance(settings, SynthesisSettings) else settings[index]
        sample = synthesize(raw[index], source, own, np.random.default_rng([seed, epoch, key]))
        twins.append(sample.image)
        masks.append(sample.mask)
        answers.append(sample.answer)
    anomalous = (torch.stack(twins).to(images.device) - mean) / std
    return SyntheticBatch(
        images=torch.cat([images, anomalous.to(images.dtype)]),
        masks=torch.cat([torch.zeros_like(torch.stack(masks)), torch.stack(masks)]).to(images.device),
        answers=[NORMAL_ANSWER] * raw.shape[0] + answers,
    )


def rotation_reference_memory(model: AnomalyGPTModel, reference: torch.Tensor) -> torch.Tensor:
    """Memory of one pre-processed normal ``(3, S, S)`` image in its 4 rotations: ``(L, 4 N, W)`` unit rows."""
    rotations = torch.stack([torch.rot90(reference, turns, dims=(-2, -1)) for turns in range(4)])
    with torch.no_grad():
        return normalise_memory(model.encode(rotations).patch_tokens)


def rotation_reference_map(
    memory: torch.Tensor,
    features: VisionFeatures,
    size: tuple[int, int],
) -> torch.Tensor:
    """1-shot map of every image against the rotated reference's memory (AnomalyGPT's training)."""
    return few_shot_map(few_shot_similarity(features.patch_tokens, memory), size)


@dataclass
class TrainingLosses:
    """One training step's losses: the weighted total to optimise, and its parts to log."""

    total: torch.Tensor
    pixel: torch.Tensor
    answer: torch.Tensor | None
    batch_size: int


def per_class_zero_shot_logits(
    model: AnomalyGPTModel, decoded: Sequence[torch.Tensor], class_names: Sequence[str]
) -> torch.Tensor:
    """:func:`zero_shot_logits` with each image's own class's text features: ``(L, B, 2, g, g)``.

    Each class's logits are those :func:`zero_shot_logits` gives with ``model.text_features_for(class)``.
    """
    return _per_image(class_names, lambda name: zero_shot_logits(decoded, model.text_features_for(name)), dim=1)


def _per_image(keys: Sequence[Any], compute: Callable[[Any], torch.Tensor], dim: int) -> torch.Tensor:
    """``compute(key)`` for every distinct key (once each), image ``i`` taken from its key's result along ``dim``."""
    results = {key: compute(key) for key in dict.fromkeys(keys)}
    return torch.stack([results[key].select(dim, index) for index, key in enumerate(keys)], dim=dim)


def training_losses(
    model: AnomalyGPTModel,
    images: torch.Tensor,
    paths: Sequence[str] | None,
    settings: SynthesisSettings | Sequence[SynthesisSettings],
    step: tuple[int, int, int],
    weights: Mapping[str, float],
    head_question: str | Sequence[str] | None = None,
    few_shot_prompt_probability: float = 0.5,
    reference_memory: torch.Tensor | Sequence[torch.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    previous_image: torch.Tensor | None = None,
) -> TrainingLosses:
    """Normal images and their synthetic twins -> focal + dice on every tap map (+ the answer loss).

    ``step`` is (seed, epoch, batch index): the synthesis and the prompt map's choice are keyed on it.
    ``head_question`` (the question the head answers) turns the answer loss on; the prompt learner then
    sees, with ``few_shot_prompt_probability``, the 1-shot map against ``reference_memory`` (a normal
    image of the class in 4 rotations, :func:`rotation_reference_memory`), else the zero-shot map, as
    the original trains.

    A multi-class batch gives, per image of ``images``: ``class_names`` (the zero-shot logits use each
    image's class's text features), ``settings``, ``head_question`` and ``reference_memory`` (its
    class's). Without ``class_names`` the model's current class serves every image.
    ``previous_image``: the last normal image of the previous step (the first image's patch source).
    """
    if head_question is not None and reference_memory is None and few_shot_prompt_probability > 0:
        msg = "training the explanation head needs reference_memory (see rotation_reference_memory)."
        raise ValueError(msg)
    seed, epoch, batch_idx = step
    synthetic = make_synthetic_batch(images, paths, settings, seed, epoch, previous_image, model.pixel_normalisation)
    size = tuple(synthetic.images.shape[-2:])
    with torch.no_grad():
        features = model.encode(synthetic.images)
    pixel, probabilities = decoder_pixel_loss(model, features, synthetic.masks, class_names)
    total = weights["pixel"] * pixel
    answer = None
    if head_question is not None:
        prompt_map = zero_shot_prompt_map(probabilities)
        if np.random.default_rng([seed, epoch, batch_idx]).random() < few_shot_prompt_probability:
            prompt_map = _reference_map(reference_memory, features, size)
        if isinstance(head_question, str):
            questions = [head_question] * len(synthetic.answers)
        else:
            questions = [*head_question, *head_question]
        answer = model.ensure_llm_head().lm_loss(features.embedding, prompt_map, questions, synthetic.answers)
        total = total + weights["lm"] * answer
    return TrainingLosses(total, pixel, answer, synthetic.images.shape[0])


def decoder_pixel_loss(
    model: AnomalyGPTModel,
    features: VisionFeatures,
    masks: torch.Tensor,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Focal + dice of every tap's zero-shot map of encoded ``[normals, twins]`` against their masks.

    Returns the loss and the per-tap ``(B, 2, H, W)`` probabilities (the prompt learner's input).
    ``class_names``: one per normal image (each twin takes its image's); ``None``: the model's class.
    """
    model.set_class_name(None)  # 'object' unless the class was set
    decoded = model.decoder(features.patch_tokens)
    if class_names is None:
        logits = zero_shot_logits(decoded, model.text_features)
    else:
        logits = per_class_zero_shot_logits(model, decoded, [*class_names, *class_names])
    probabilities = zero_shot_probabilities(logits, tuple(masks.shape[-2:]))
    return pixel_loss(probabilities, masks), probabilities


def zero_shot_prompt_map(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """The prompt learner's zero-shot input: the abnormal channel averaged over the taps, ``(B, 1, H, W)``."""
    return torch.stack([p[:, 1:] for p in probabilities]).mean(dim=0)


def instruction_loss(
    model: AnomalyGPTModel, images: torch.Tensor, questions: Sequence[str], answers: Sequence[str]
) -> torch.Tensor:
    """The answer loss on instruction samples, as the original's instruction batches: no pixel loss.

    The prompt learner sees the zero-shot map against the ``object`` text features (whatever the
    class of the anomaly batches), so gradients reach it and the decoder through the answers only.
    """
    with torch.no_grad():
        features = model.encode(images)
    logits = zero_shot_logits(model.decoder(features.patch_tokens), model.text_features_for(DEFAULT_CLASS_NAME))
    prompt_map = zero_shot_prompt_map(zero_shot_probabilities(logits, tuple(images.shape[-2:])))
    return model.ensure_llm_head().lm_loss(features.embedding, prompt_map, questions, answers)


def _reference_map(
    memory: torch.Tensor | Sequence[torch.Tensor], features: VisionFeatures, size: tuple[int, int]
) -> torch.Tensor:
    """The 1-shot prompt map against one memory, or against each image's own (twins share their image's)."""
    if isinstance(memory, torch.Tensor):
        return rotation_reference_map(memory, features, size)
    memories = [*memory, *memory]
    by_id = {id(m): m for m in memories}
    return _per_image([id(m) for m in memories], lambda key: rotation_reference_map(by_id[key], features, size), 0)


def epoch_seeded(loader: DataLoader, seed: int, replicas: int = 1, rank: int = 0) -> DataLoader:
    """The same loader shuffled by ``(seed, epoch)``, so an epoch sees one order whether or not the run resumed.

    torch's ``DistributedSampler`` draws each epoch's order from ``seed + epoch``; Lightning calls its
    ``set_epoch`` before every epoch (also after a resume) and keeps it as it is under DDP, which is
    why the replica count and rank are passed in.
    """
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=DistributedSampler(loader.dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


WARMUP_MIN_STEPS = 10
"""The original's floor on the warm-up length: ``max(10, int(total_steps * warmup_rate))``."""


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length as the original sets DeepSpeed's ``warmup_num_steps``: the share, floored, at least 10."""
    return max(WARMUP_MIN_STEPS, int(total_steps * warmup_ratio))


def warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """DeepSpeed's ``WarmupDecayLR`` (``warmup_type="log"``, minimum 0) as the original configures it.

    Step ``s`` (from 0) runs at ``lr * log(s + 1) / log(W)`` while ``s < W`` (so the first step at 0),
    then at ``lr * (T - s) / (T - W)``, down to 0 at ``T = total_steps``; ``W`` is :func:`warmup_steps`.
    """
    warmup = warmup_steps(total_steps, warmup_ratio)
    inverse_log_warmup = 1.0 / math.log(warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return inverse_log_warmup * math.log(step + 1)
        return max(0.0, (total_steps - step) / max(1.0, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def fresh_decoder_delta(
    vision_width: int, embed_dim: int, seed: int, num_layers: int = NUM_TAPS
) -> dict[str, torch.Tensor]:
    """A newly initialised decoder as ``image_decoder.fc.*`` tensors (float32), to train from scratch.

    Each ``Linear(vision_width -> embed_dim)`` is drawn as ``torch.nn.Linear`` initialises (weight
    and bias uniform in +-1/sqrt(vision_width)), as the original's fresh decoder is, from a
    generator seeded by ``seed``: layer by layer, weight then bias.
    """
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(vision_width)
    state = {}
    for index in range(num_layers):
        weight = torch.empty(embed_dim, vision_width).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(embed_dim).uniform_(-bound, bound, generator=generator)
        state[f"{DECODER_PREFIX}fc.{index}.weight"] = weight
        state[f"{DECODER_PREFIX}fc.{index}.bias"] = bias
    return state


def anomalygpt_delta(model: AnomalyGPTModel) -> dict[str, torch.Tensor]:
    """``image_decoder.*`` and ``prompt_learner.*`` tensors in the released file's layout (fp16).

    Without a loaded explanation head, the prompt learner is carried over from the delta the model
    was built from, so a fine-tuned decoder never silently drops it.
    """
    state = {DECODER_PREFIX + k: v for k, v in model.decoder.state_dict().items()}
    if model.llm_head is not None:
        state |= {PROMPT_LEARNER_PREFIX + k: v for k, v in model.llm_head.prompt_learner.state_dict().items()}
    elif model.anomalygpt_source is not None:
        source = ckpt.load_state_dict_file(model.anomalygpt_source, "anomalygpt_checkpoint")
        state |= {k: v for k, v in source.items() if k.startswith(PROMPT_LEARNER_PREFIX)}
    return {key: value.detach().to("cpu", torch.float16).clone() for key, value in state.items()}


def save_anomalygpt_delta(model: AnomalyGPTModel, path: str | Path) -> Path:
    """Write a delta that ``anomalygpt_checkpoint=`` (and the original code) loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(anomalygpt_delta(model), path)
    return path
