"""Lean Lightning checkpoints for AnomalyGPT: trained parameters and buffers only, options as plain data.

Frozen weights (a 4.5 GB encoder, a 14 GB LLM) come back from the weight files, so a checkpoint holds
what training or set-up made: the decoder and head parts that learned, text features, the reference
memory, thresholds. Checkpoints written before the option groups (0.1, 0.2) load with their flat
hyper-parameters translated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from anomalib.models.components import AnomalibModule
from anomalib.utils.serialization import anomalib_safe_globals
from torch import nn

from anomalib_agpt.errors import CheckpointError
from anomalib_agpt.model.pre_processing import upgrade_transform_spec
from anomalib_agpt.module.legacy_options import group_flat_options, reject_flat_options
from anomalib_agpt.module.options import merged_options, plain_options

HEAD_PREFIX = "model.llm_head."
EVALUATOR_PREFIX = "evaluator."
PRE_PROCESSOR_CONFIG = "anomalib_pre_processor_config"  # where anomalib keeps the transform spec
HYPER_PARAMETERS = "hyper_parameters"


def saved_options(checkpoint_path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint's saved options in the groups' form (memory-mapped: the tensors are not read)."""
    with anomalib_safe_globals():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only, mmap=True)
    return group_flat_options(checkpoint.get(HYPER_PARAMETERS) or {})


class LeanCheckpoints:
    """Checkpoint hooks of the AnomalyGPT face: a mixin before ``AnomalibModule`` in its bases.

    Not an ``AnomalibModule`` itself, so anomalib's model discovery does not list it as a model.
    """

    model: Any

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,  # noqa: ANN401 - torch's map_location types
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,  # noqa: ANN401
    ) -> AnomalibModule:
        """Lightning's load, with options saved flat (before 0.3) put into their groups.

        ``kwargs`` override the saved options; a group passed as a mapping updates the saved one field by
        field (``weights={"imagebind_checkpoint": ...}`` keeps the saved heads). Flat options are refused.
        """
        reject_flat_options(kwargs)
        options = merged_options(saved_options(checkpoint_path, weights_only), kwargs)
        return super().load_from_checkpoint(  # type: ignore[misc]
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **options,
        )

    def _frozen_parameters(self) -> dict[str, nn.Parameter]:
        """Frozen parameters under every name they have (tied weights, e.g. an LLM's lm_head, included)."""
        return {n: p for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen weights (they come back from the weight files) and metric states; keep the class name.

        An evaluator's metric buffers (e.g. AUPRO's ``fpr_limit``) are the run's measuring set-up, not
        the model: a model restored with another evaluator must still load. The option groups are saved as
        plain mappings, which load without unpickling this package's classes.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint[HYPER_PARAMETERS] = plain_options(checkpoint.get(HYPER_PARAMETERS, {}))
        frozen = set(self._frozen_parameters())
        state = {
            k: v for k, v in checkpoint["state_dict"].items() if k not in frozen and not k.startswith(EVALUATOR_PREFIX)
        }
        state |= {HEAD_PREFIX + k: v for k, v in self.model.pending_head_state.items()}
        checkpoint["state_dict"] = state
        checkpoint["anomalygpt_class_name"] = self.model.class_name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint against everything that is not a frozen weight, then add those.

        The frozen weights are put back as the very parameter objects, so the strict load that
        follows copies nothing (a memory-mapped 4.5 GB encoder stays mapped) and still checks
        every key.
        """
        pre_processing = checkpoint.get(PRE_PROCESSOR_CONFIG)
        if pre_processing:
            pre_processing["transform"] = upgrade_transform_spec(pre_processing.get("transform"))
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if self.model.llm_head is None:  # trained head weights wait until the head loads (lazily)
            head_keys = [k for k in state if k.startswith(HEAD_PREFIX)]
            self.model.pending_head_state = {k.removeprefix(HEAD_PREFIX): state[k] for k in head_keys}
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(EVALUATOR_PREFIX)}  # metric set-up, not model
        own_state = self.state_dict()
        own_metrics = {k: v for k, v in own_state.items() if k.startswith(EVALUATOR_PREFIX)}
        frozen = self._frozen_parameters()
        own = set(own_state)
        missing = sorted(own - set(frozen) - set(own_metrics) - set(state))
        unexpected = sorted(set(state) - own)
        if missing or unexpected:
            msg = (
                "Lightning checkpoint does not match this AnomalyGPT (were the weight files or sizes "
                f"changed?): missing {missing or 'nothing'}; unexpected {unexpected or 'nothing'}."
            )
            raise CheckpointError(msg)
        checkpoint["state_dict"] = {**frozen, **own_metrics, **state}
        self.model.class_name = checkpoint.get("anomalygpt_class_name", self.model.class_name)
