"""The AnomalyGPT face's training hooks: optimiser and schedule, set-up, the step, the instruction mix.

The losses, synthesis and schedule themselves live in ``training/`` (free of Lightning where possible);
this is the glue that feeds them the trainer's batches, epochs and datamodule, as the original trains.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from anomalib.data import Batch
from torchvision.transforms.v2 import Compose, Resize

from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME
from anomalib_agpt.data.instructions import InstructionMix, load_instruction_data
from anomalib_agpt.model.pre_processing import ClipPreProcessor, dataset_augmentations
from anomalib_agpt.model.references import load_reference_images
from anomalib_agpt.module.options import TrainingOptions
from anomalib_agpt.training.recipe import (
    epoch_seeded,
    instruction_loss,
    rotation_reference_memory,
    set_trainable,
    synthesis_settings,
    training_losses,
    warmup_decay,
)

logger = logging.getLogger(__name__)

ADAMW_BETAS = (0.9, 0.95)  # the original's


class FittingHooks:
    """Training of the AnomalyGPT face: a mixin before ``AnomalibModule`` in its bases."""

    model: Any
    pre_processor: Any
    class_name: str | None
    resize_mode: str
    training_options: TrainingOptions
    seed: int
    _instruction_mix: InstructionMix | None
    _training_references: dict[str | None, torch.Tensor]
    _previous_train_image: torch.Tensor | None

    def configure_optimizers(self) -> dict[str, Any] | None:
        """AdamW (betas 0.9/0.95) over the trainable parts, warm-up then linear decay per step."""
        options = self.training_options
        if not options.parts:
            return None
        parameters = [p for p in self.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        optimizer = torch.optim.AdamW(
            parameters,
            lr=options.learning_rate,
            betas=ADAMW_BETAS,
            weight_decay=options.weight_decay,
        )
        steps = int(self.trainer.estimated_stepping_batches)  # type: ignore[attr-defined]
        scheduler = warmup_decay(optimizer, steps, options.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        """When training: load what trains, squash the train set's images, shuffle its loader by (seed, epoch).

        The synthesis randomness is keyed on (seed, epoch, image); with the batch order a function of
        the epoch too, a run resumed at an epoch boundary ends with the weights of an uninterrupted one.
        """
        options = self.training_options
        if stage != "fit" or not options.parts:
            return
        if options.instruction_data is not None:  # checked whole before any weights of the head load
            samples = load_instruction_data(options.instruction_data, options.instruction_images)
            self._instruction_mix = InstructionMix(samples, self.seed)
            logger.info("AnomalyGPT: %d instruction samples from %s", len(samples), options.instruction_data)
        # Before configure_optimizers: the head's trainable parts must exist when the optimiser is built.
        self.prepare(load_llm=bool(options.head_parts))  # type: ignore[attr-defined]
        set_trainable(self.model, options.parts)
        self._training_references = {}
        datamodule = self._datamodule()  # type: ignore[attr-defined]
        self._squash_training_images(datamodule)
        if datamodule is not None and hasattr(datamodule, "train_dataloader"):
            original = type(datamodule).train_dataloader.__get__(datamodule)
            trainer = self.trainer  # type: ignore[attr-defined]
            datamodule.train_dataloader = lambda: epoch_seeded(
                original(), self.seed, trainer.world_size, trainer.global_rank
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Normal images and their synthetic twins -> focal + dice on every tap map (+ answer loss)."""
        options = self.training_options
        trains_head = bool(options.head_parts)
        one_shot_prompts = trains_head and options.few_shot_prompt_probability > 0
        categories = self._sample_categories(batch)
        ask = self.asked_question  # type: ignore[attr-defined]
        if categories is None:  # one class: the model's
            class_names = None
            settings = synthesis_settings(options.synthesis, self.model.class_name)
            question: str | list[str] = ask()
            reference = self._training_reference_memory(batch) if one_shot_prompts else None
        else:  # each sample its own category's class name, synthesis settings, question and reference
            class_name_of = self._class_name_from_context  # type: ignore[attr-defined]
            names = {c: class_name_of(c) or DEFAULT_CLASS_NAME for c in dict.fromkeys(categories)}
            class_names = [names[c] for c in categories]
            settings = [synthesis_settings(options.synthesis, name) for name in class_names]
            question = [ask(c) for c in categories]
            reference = [self._training_reference_memory(batch, c) for c in categories] if one_shot_prompts else None
        losses = training_losses(
            self.model,
            batch.image,
            batch.image_path,
            settings,
            (self.seed, self.current_epoch, batch_idx),  # type: ignore[attr-defined]
            {"pixel": options.pixel_loss_weight, "lm": options.lm_loss_weight},
            head_question=question if trains_head else None,
            few_shot_prompt_probability=options.few_shot_prompt_probability,
            reference_memory=reference,
            class_names=class_names,
            previous_image=self._previous_train_image,
        )
        self._previous_train_image = batch.image[-1].detach().clone()
        if "decoder" in options.parts:
            self.model.mark_anchors_trained()
        total = losses.total
        log = self.log  # type: ignore[attr-defined]
        if self._instruction_mix is not None:
            instruction = self._instruction_loss(self._instruction_mix, batch, batch_idx)
            total = (total + options.lm_loss_weight * instruction) / 2
            log("train_instruction_loss", instruction, batch_size=batch.image.shape[0])
        log("train_pixel_loss", losses.pixel, batch_size=losses.batch_size)
        if losses.answer is not None:
            log("train_lm_loss", losses.answer, batch_size=losses.batch_size)
        log("train_loss", total, prog_bar=True, batch_size=losses.batch_size)
        return total

    def on_train_epoch_start(self) -> None:
        """Each epoch's first patch source is from its own first batch (a resumed epoch starts the same)."""
        self._previous_train_image = None

    def _instruction_loss(self, mix: InstructionMix, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The answer loss on this step's instruction samples, one per normal image of the batch.

        Their images take the training images' pre-processing (squashed to the model's side).
        """
        pre_processor = self.pre_processor
        if isinstance(pre_processor, ClipPreProcessor) and pre_processor.train_transform is not None:
            transform = pre_processor.train_transform
        else:  # a user's pre-processor: its transform, then one size for the batch
            side = self.model.image_size
            steps = [pre_processor.transform] if pre_processor is not None and pre_processor.transform else []
            transform = Compose([*steps, Resize((side, side))])
        trainer = self.trainer  # type: ignore[attr-defined]
        mixed = mix.batch(
            self.current_epoch,  # type: ignore[attr-defined]
            batch_idx,
            batch.image.shape[0],
            transform,
            trainer.world_size,
            trainer.global_rank,
            device=batch.image.device,
        )
        images = mixed.images.to(dtype=batch.image.dtype)
        return instruction_loss(self.model, images, mixed.questions, mixed.answers)

    def _squash_training_images(self, datamodule: Any) -> None:  # noqa: ANN401
        """Resize the train set with the pre-processor's training resize (squash), as the original trains.

        anomalib's datamodules resize every subset in the dataset with the evaluation transform's resize
        (before collation); this swaps it on the train set only, after the datamodule's set-up.
        """
        resize = self.pre_processor.train_resize if isinstance(self.pre_processor, ClipPreProcessor) else None
        train_data = getattr(datamodule, "train_data", None)
        if resize is None or train_data is None:
            return
        train_data.augmentations = dataset_augmentations(getattr(datamodule, "train_augmentations", None), resize)

    def _sample_categories(self, batch: Batch) -> list[str] | None:
        """Each sample's category when the train set has several (a ``category_of`` datamodule, no ``class_name``)."""
        category_of = getattr(self._datamodule(), "category_of", None)  # type: ignore[attr-defined]
        if self.class_name or category_of is None or batch.image_path is None:
            return None
        return [category_of(path) for path in batch.image_path]

    def _training_reference_memory(self, batch: Batch, category: str | None = None) -> torch.Tensor:
        """The prompt learner's 1-shot training reference in 4 rotations, encoded on first use (per category).

        The first normal image of the datamodule's train set (of ``category``'s samples, in a multi-class
        one) in sorted order, through the evaluation pre-processing (the original takes the first file of
        the class's ``train/good`` and pre-processes it as at test time); without a train set, the first
        image of the first batch.
        """
        references = self._training_references
        if category not in references:
            references[category] = self._encode_training_reference(batch, category)
        return references[category]

    def _encode_training_reference(self, batch: Batch, category: str | None) -> torch.Tensor:
        """One category's (or the train set's) first normal image, in 4 rotations, encoded."""
        path = self._first_normal_training_image(category)
        if path is None:
            logger.warning("AnomalyGPT: no train set for the 1-shot training reference; using a batch image.")
            reference = batch.image[0]
        else:
            transform = self.pre_processor.transform if self.pre_processor is not None else None
            logger.info("AnomalyGPT: 1-shot training reference (4 rotations): %s", path)
            reference = load_reference_images([path], transform, resize_mode=self.resize_mode)[0]
        reference = reference.to(device=batch.image.device, dtype=batch.image.dtype)
        return rotation_reference_memory(self.model, reference)

    def _first_normal_training_image(self, category: str | None = None) -> str | None:
        """The datamodule's first normal train image (of ``category``) in sorted path order, if there is a train set."""
        datamodule = self._datamodule()  # type: ignore[attr-defined]
        train_data = getattr(datamodule, "train_data", None)
        samples = getattr(train_data, "samples", None)
        if samples is None or "image_path" not in samples:
            return None
        if "label_index" in samples:
            samples = samples[samples.label_index == 0]
        paths = sorted(str(path) for path in samples.image_path)
        if category is not None:
            paths = [path for path in paths if datamodule.category_of(path) == category]
        return paths[0] if paths else None
