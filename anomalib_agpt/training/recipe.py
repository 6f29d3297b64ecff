"""Training AnomalyGPT on normal images: synthetic batches, what trains, optimiser, delta files."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER
from anomalib_agpt.model import checkpoints as ckpt
from anomalib_agpt.model.anomaly_maps import (
    few_shot_map,
    few_shot_similarity,
    normalise_memory,
    zero_shot_logits,
    zero_shot_probabilities,
)
from anomalib_agpt.model.checkpoints import DECODER_PREFIX, PROMPT_LEARNER_PREFIX
from anomalib_agpt.model.encoder import VisionFeatures
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD
from anomalib_agpt.model.torch_model import AnomalyGPTModel
from anomalib_agpt.training.loss import pixel_loss
from anomalib_agpt.training.synthesis import SynthesisSettings, object_settings, synthesize, texture_settings

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
    """Texture settings for texture classes (or when asked), object settings otherwise."""
    if mode == "texture" or (mode == "auto" and (class_name or "") in TEXTURE_CLASSES):
        return texture_settings()
    return object_settings()


@dataclass
class SyntheticBatch:
    """Normal images followed by their synthetic twins, with masks and target answers."""

    images: torch.Tensor
    masks: torch.Tensor
    answers: list[str]


def _sample_key(path: str | None, fallback: int) -> int:
    """A stable per-image key, so an image gets the same anomaly in an epoch whatever the order."""
    return zlib.crc32(path.encode()) if path else fallback


def make_synthetic_batch(
    images: torch.Tensor,
    paths: Sequence[str] | None,
    settings: SynthesisSettings,
    seed: int,
    epoch: int,
) -> SyntheticBatch:
    """From CLIP-normalised normal images: ``[normals..., anomalous twins...]``, masks, answers.

    Randomness comes from ``(seed, epoch, image key)``; the patch source is the next image of the
    batch (the image itself, flipped, for a batch of one).
    """
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    raw = (images * std + mean).clamp(0, 1).float().cpu()
    twins, masks, answers = [], [], []
    for index in range(raw.shape[0]):
        source = raw[(index + 1) % raw.shape[0]] if raw.shape[0] > 1 else raw[index].flip(-1)
        key = _sample_key(paths[index] if paths else None, index)
        sample = synthesize(raw[index], source, settings, np.random.default_rng([seed, epoch, key]))
        twins.append(sample.image)
        masks.append(sample.mask)
        answers.append(sample.answer)
    anomalous = (torch.stack(twins).to(images.device) - mean) / std
    return SyntheticBatch(
        images=torch.cat([images, anomalous.to(images.dtype)]),
        masks=torch.cat([torch.zeros_like(torch.stack(masks)), torch.stack(masks)]).to(images.device),
        answers=[NORMAL_ANSWER] * raw.shape[0] + answers,
    )


def rotation_reference_map(
    model: AnomalyGPTModel,
    reference: torch.Tensor,
    features: VisionFeatures,
    size: tuple[int, int],
) -> torch.Tensor:
    """1-shot map of every image against one normal reference in 4 rotations (AnomalyGPT's training)."""
    rotations = torch.stack([torch.rot90(reference, turns, dims=(-2, -1)) for turns in range(4)])
    with torch.no_grad():
        memory = normalise_memory(model.encode(rotations).patch_tokens)
    return few_shot_map(few_shot_similarity(features.patch_tokens, memory), size)


@dataclass
class TrainingLosses:
    """One training step's losses: the weighted total to optimise, and its parts to log."""

    total: torch.Tensor
    pixel: torch.Tensor
    answer: torch.Tensor | None
    batch_size: int


def training_losses(
    model: AnomalyGPTModel,
    images: torch.Tensor,
    paths: Sequence[str] | None,
    settings: SynthesisSettings,
    step: tuple[int, int, int],
    weights: Mapping[str, float],
    head_question: str | None = None,
    few_shot_prompt_probability: float = 0.5,
) -> TrainingLosses:
    """Normal images and their synthetic twins -> focal + dice on every tap map (+ the answer loss).

    ``step`` is (seed, epoch, batch index): the synthesis and the prompt map's choice are keyed on it.
    ``head_question`` (the question the head answers) turns the answer loss on; the prompt learner then
    sees the 1-shot map of a normal image of the batch in 4 rotations with ``few_shot_prompt_probability``,
    else the zero-shot map, as the original trains.
    """
    seed, epoch, batch_idx = step
    synthetic = make_synthetic_batch(images, paths, settings, seed, epoch)
    size = tuple(synthetic.images.shape[-2:])
    with torch.no_grad():
        features = model.encode(synthetic.images)
    model.set_class_name(None)  # 'object' unless the class was set
    logits = zero_shot_logits(model.decoder(features.patch_tokens), model.text_features)
    probabilities = zero_shot_probabilities(logits, size)
    pixel = pixel_loss(probabilities, synthetic.masks)
    total = weights["pixel"] * pixel
    answer = None
    if head_question is not None:
        prompt_map = torch.stack([p[:, 1:] for p in probabilities]).mean(dim=0)
        if np.random.default_rng([seed, epoch, batch_idx]).random() < few_shot_prompt_probability:
            prompt_map = rotation_reference_map(model, images[0], features, size)
        questions = [head_question] * len(synthetic.answers)
        answer = model.ensure_llm_head().lm_loss(features.embedding, prompt_map, questions, synthetic.answers)
        total = total + weights["lm"] * answer
    return TrainingLosses(total, pixel, answer, synthetic.images.shape[0])


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


def warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero."""
    warmup = max(1, round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


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
