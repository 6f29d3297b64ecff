"""A conversation about one image: the first answer, then follow-up questions with history."""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.data import InferenceBatch

from anomalib_agpt.data.images import read_rgb_image
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import multi_turn_prompt
from anomalib_agpt.module.lightning_model import AnomalyGPT


class AnomalyGPTChat:
    """Chat about one image with AnomalyGPT, in the multi-turn format its LLM was trained on.

    The image is encoded once; every question reuses its features and anomaly map.

    Example:
        >>> chat = AnomalyGPTChat(model, "bottle.png")  # doctest: +SKIP
        >>> chat.ask("Is there any anomaly in the image?")  # doctest: +SKIP
        'Yes, there is an anomaly in the image, at the top left of the image.'
        >>> chat.ask("What kind of defect is it?")  # doctest: +SKIP

    """

    def __init__(self, model: AnomalyGPT, image: str | Path | torch.Tensor, load_llm: bool = True) -> None:
        """Encode ``image`` once; ``load_llm=False`` keeps a scores-only model usable (no :meth:`ask`)."""
        self.model = model.eval()
        model.prepare(load_llm=load_llm)
        raw = read_rgb_image(image) if isinstance(image, str | Path) else image
        pixels = raw.unsqueeze(0) if raw.ndim == 3 else raw
        if model.pre_processor is not None:
            pixels = model.pre_processor.transform(pixels)
        torch_model = model.model
        with torch.no_grad():
            self._features = torch_model.encode(pixels.to(torch_model.reference_memory.device))
        self._size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        self.scores: InferenceBatch = self.rescore()
        self.history: list[tuple[str, str]] = []

    def rescore(self) -> InferenceBatch:
        """Recompute map and score from the kept features after the class name or references changed.

        The image is not encoded again and the history is kept: the caller decides whether to reset it.
        """
        with torch.no_grad():
            self.scores = self.model.model.scores(self._features, self._size)
        return self.scores

    def ask(self, question: str) -> str:
        """Answer ``question`` given the conversation so far, and remember the turn."""
        if not question.strip():
            msg = "the question is empty."
            raise OptionError(msg)
        torch_model = self.model.model
        prompt = multi_turn_prompt(self.history, question)
        with torch.no_grad():
            inputs = torch_model.llm_inputs(self._features, self.scores.anomaly_map, prompt)
            answer = torch_model.ensure_llm_head().generate(*inputs, **torch_model.generation)[0]
        self.history.append((question, answer))
        return answer

    def reset(self) -> None:
        """Forget the conversation (the image stays encoded)."""
        self.history.clear()
