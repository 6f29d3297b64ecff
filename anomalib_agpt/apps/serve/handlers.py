"""Request handlers of the web demo: an image (+ references, class name, question) in; map, mask, score, answer out.

They sit on :class:`~anomalib_agpt.module.chat.AnomalyGPTChat` and need no web library, so the page's behaviour
is tested without a browser. Every handler returns an :class:`Analysis`: bad input becomes its
``message`` (never an exception or a stack trace), so one bad request cannot take the server down.

Uploads are checked (size, header) in :mod:`~anomalib_agpt.apps.serve.uploads` before anything is decoded,
and the images the page shows are drawn in :mod:`~anomalib_agpt.apps.serve.display`.

Verdicts are labelled with where they come from (:mod:`anomalib_agpt.callbacks.visualizer`'s rules):
``answer: ...`` from the model's first answer, ``score > threshold: ...`` from the image score, and the
latter only when the model has a fitted threshold.

Model work is cached: an uploaded image is encoded once (keyed by its content), a follow-up question
reuses that encoding, a class-name switch only recomputes the map from the kept features, and
reference images are encoded again only when they change.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anomalib_agpt.apps.serve.display import DISPLAY_SIDE, model_view, render, to_display
from anomalib_agpt.apps.serve.uploads import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    MB,
    BadInputError,
    check_image_file,
    limit_pil_decoding,
    read_upload,
)
from anomalib_agpt.callbacks.visualizer import Verdict, score_threshold, score_verdict, verdicts
from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME, category_to_class_name
from anomalib_agpt.errors import AnomalyGPTError, OptionError
from anomalib_agpt.explanation.questions import default_question
from anomalib_agpt.model.references import load_reference_images
from anomalib_agpt.module.chat import AnomalyGPTChat
from anomalib_agpt.module.lightning_model import AnomalyGPT
from anomalib_agpt.weights.checkpoints import file_digest

__all__ = [
    "CACHE_SIZE",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DISPLAY_SIDE",
    "MAX_CLASS_NAME_CHARS",
    "MAX_QUESTION_CHARS",
    "MAX_REFERENCES",
    "MB",
    "SCORES_ONLY_MESSAGE",
    "Analysis",
    "BadInputError",
    "History",
    "ServeSession",
    "limit_pil_decoding",
]
"""The handlers' names, and the upload limits, ``BadInputError``, ``DISPLAY_SIDE`` and ``limit_pil_decoding``
that moved to :mod:`.uploads` and :mod:`.display` but are still imported from here."""

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
MAX_CLASS_NAME_CHARS = 64
MAX_REFERENCES = 16
CACHE_SIZE = 8
"""Encoded images kept for follow-up questions."""

SCORES_ONLY_MESSAGE = (
    "Scores only: no LLM is configured, so there is no answer. Explanations need an LLM: start the server "
    "with `--llm <LLM folder> --pandagpt-checkpoint <PandaGPT delta>` (see the README's weights table)."
)

History = list[tuple[str, str]]
_CLASS_NAME = re.compile(r"[\w .\-]+")


@dataclass
class Analysis:
    """What the page shows after a request; ``None`` fields have nothing to show (e.g. after bad input)."""

    image: np.ndarray | None = None
    """The part of the upload the model sees (RGB uint8, long side :data:`DISPLAY_SIDE`)."""
    heatmap: np.ndarray | None = None
    """The anomaly map in colour over ``image``."""
    mask: np.ndarray | None = None
    """The predicted mask drawn over ``image`` (red fill and outline)."""
    pred_mask: np.ndarray | None = None
    """The predicted mask itself (bool, the size of ``image``)."""
    score: float | None = None
    """The image score, as ``model(image).pred_score`` gives it (normalised when thresholds were fitted)."""
    threshold: float | None = None
    """The fitted threshold ``score`` is compared with (0.5 after normalisation); None: none was fitted."""
    history: History = field(default_factory=list)
    """The conversation so far: ``(question, answer)`` turns."""
    message: str = ""
    """Markdown for the page's status line: what went wrong, or notes on what is shown."""
    ok: bool = True
    """False when ``message`` reports a problem."""

    @property
    def answer(self) -> str | None:
        """The latest answer, if any."""
        return self.history[-1][1] if self.history else None

    @property
    def first_answer(self) -> str | None:
        """The answer to the analysed question (the conversation's first), which the answer verdict reads."""
        return self.history[0][1] if self.history else None

    @property
    def is_anomalous(self) -> bool | None:
        """The score's verdict (``score > threshold``); None without a fitted threshold: no score verdict."""
        verdict = score_verdict(self.score, self.threshold)
        return verdict.anomalous if verdict else None

    @property
    def verdicts(self) -> list[Verdict]:
        """``answer: ...`` (with an answer) and ``score > threshold: ...`` (with a fitted threshold), labelled."""
        return verdicts(self.first_answer, self.score, self.threshold)

    @property
    def score_text(self) -> str:
        """The score and the threshold it is compared with, for the page (no verdict: that is :attr:`verdicts`)."""
        if self.score is None:
            return ""
        if self.threshold is None:
            return f"{self.score:.3f} (no fitted threshold)"
        return f"{self.score:.3f} (threshold {self.threshold:.3f})"


@dataclass
class _Encoded:
    """One uploaded image: its chat (features kept), its display view and the setting its map was made in."""

    chat: AnomalyGPTChat
    view: np.ndarray
    context: tuple[str | None, tuple[str, ...]]


class ServeSession:
    """The served model and the handlers the page calls; one per server, safe to call from several threads.

    Args:
        model: The model to serve (weights, a restored checkpoint or the demo preset). Its LLM, when it
            has one, is loaded here, before the first request.
        max_image_pixels: Largest image (width x height) accepted; larger uploads get a message.
        max_upload_mb: Largest file accepted, in MB (of :data:`MB` bytes); larger files get a message.
        cache_size: Encoded images kept for follow-up questions.

    Example:
        >>> session = ServeSession(model)  # doctest: +SKIP
        >>> first = session.analyse("bottle.png", [], "bottle", "")  # doctest: +SKIP
        >>> first.heatmap.shape, first.score, first.answer  # doctest: +SKIP
        >>> session.follow_up("bottle.png", [], "bottle", "Where is it?", first.history)  # doctest: +SKIP

    """

    def __init__(
        self,
        model: AnomalyGPT,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if max_image_pixels <= 0 or not max_upload_mb > 0:
            msg = f"--max-image-pixels ({max_image_pixels}) and --max-upload-mb ({max_upload_mb}) must be positive."
            raise OptionError(msg)
        self.model = model.eval()
        self.max_image_pixels = max_image_pixels
        self.max_upload_bytes = int(max_upload_mb * MB)
        self.cache_size = cache_size
        self.explains = model.model.llm_spec is not None or model.model.llm_head is not None
        model.prepare(load_llm=self.explains)
        self.default_class_name = model.model.class_name or DEFAULT_CLASS_NAME
        post = model.post_processor
        self.calibrated = bool(
            post is not None
            and all(
                torch.isfinite(getattr(post, name, torch.tensor(float("nan")))) for name in ("pixel_min", "pixel_max")
            )
        )
        self.threshold = score_threshold(model)
        """The fitted image threshold scores are compared with; None: no score verdict."""
        self._default_memory = model.model.reference_memory.clone()
        self._references: tuple[str, ...] = ()
        self._encoded: OrderedDict[str, _Encoded] = OrderedDict()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------
    # Handlers (the page's events)
    # ----------------------------------------------------------------------------------------
    def question_for(self, class_name: str | None = None) -> str:
        """The question asked when the page's question box is empty: the model's, else the class's default."""
        return self.model.explanation_options.question or default_question(self._class_name(class_name))

    def preview(self, image: str | Path | None) -> Analysis:
        """The uploaded image as the model will see it, or why it cannot be used (shown on upload)."""
        if image is None:
            return Analysis()
        try:
            path = self._check(image)
            return Analysis(image=to_display(model_view(read_upload(path), self.model.resize_mode)))
        except AnomalyGPTError as error:
            return Analysis(message=str(error), ok=False)

    def analyse(
        self,
        image: str | Path | None,
        references: Sequence[str | Path] | None,
        class_name: str | None,
        question: str | None,
    ) -> Analysis:
        """Map, mask, score and the answer to ``question`` (empty: :meth:`question_for`); a new conversation."""
        return self._guarded(lambda: self._analyse(image, references, class_name, question))

    def follow_up(
        self,
        image: str | Path | None,
        references: Sequence[str | Path] | None,
        class_name: str | None,
        question: str | None,
        history: Sequence[Sequence[str]] | None,
    ) -> Analysis:
        """Answer ``question`` after the ``history`` turns about the same image (reusing its encoding)."""
        return self._guarded(lambda: self._follow_up(image, references, class_name, question, history))

    # ----------------------------------------------------------------------------------------
    # Implementation
    # ----------------------------------------------------------------------------------------
    def _guarded(self, handler: Callable[[], Analysis]) -> Analysis:
        """Run a handler under the model lock; bad input and unexpected failures become a message."""
        try:
            with self._lock:
                return handler()
        except AnomalyGPTError as error:  # BadInputError and the product's other user errors
            return Analysis(message=str(error), ok=False)
        except Exception as error:
            logger.exception("anomalib-agpt serve: request failed")
            message = (
                f"Internal error ({type(error).__name__}: {error}). The server keeps running; its log has the details."
            )
            return Analysis(message=message, ok=False)

    def _analyse(
        self,
        image: str | Path | None,
        references: Sequence[str | Path] | None,
        class_name: str | None,
        question: str | None,
    ) -> Analysis:
        encoded = self._encode(image, references, class_name)
        encoded.chat.reset()
        analysis = self._render(encoded)
        if not self.explains:
            analysis.message = _join(SCORES_ONLY_MESSAGE, analysis.message)
            return analysis
        question = _check_question(question) if question and question.strip() else self.question_for(class_name)
        return self._ask(encoded, question, analysis)

    def _follow_up(
        self,
        image: str | Path | None,
        references: Sequence[str | Path] | None,
        class_name: str | None,
        question: str | None,
        history: Sequence[Sequence[str]] | None,
    ) -> Analysis:
        if not self.explains:
            raise BadInputError(SCORES_ONLY_MESSAGE)
        if not question or not question.strip():
            msg = "The question is empty: type a follow-up question first."
            raise BadInputError(msg)
        question = _check_question(question)
        turns = _check_history(history)
        encoded = self._encode(image, references, class_name)
        encoded.chat.history[:] = turns
        return self._ask(encoded, question, self._render(encoded))

    def _ask(self, encoded: _Encoded, question: str, analysis: Analysis) -> Analysis:
        """Add the answer to ``analysis``; a failed answer keeps the map and says why."""
        try:
            encoded.chat.ask(question)
        except ValueError as error:
            analysis.message, analysis.ok = f"No answer: {error} Clear the conversation and ask again.", False
        analysis.history = list(encoded.chat.history)
        return analysis

    def _encode(
        self,
        image: str | Path | None,
        references: Sequence[str | Path] | None,
        class_name: str | None,
    ) -> _Encoded:
        """The cached chat of ``image``, its map up to date with the class name and references."""
        path = self._check(image)
        reference_paths = [self._check(r, "reference image") for r in references or []]
        if len(reference_paths) > MAX_REFERENCES:
            msg = f"{len(reference_paths)} reference images; this page takes up to {MAX_REFERENCES}."
            raise BadInputError(msg)
        self._use_class_name(self._class_name(class_name))
        self._use_references(reference_paths)
        context = (self.model.model.class_name, self._references)
        key = file_digest(path)
        encoded = self._encoded.get(key)
        if encoded is None:
            raw = read_upload(path)
            chat = AnomalyGPTChat(self.model, raw, load_llm=self.explains)
            encoded = _Encoded(chat, to_display(model_view(raw, self.model.resize_mode)), context)
            self._encoded[key] = encoded
            while len(self._encoded) > self.cache_size:
                self._encoded.popitem(last=False)
        elif encoded.context != context:
            encoded.chat.rescore()
            encoded.context = context
        self._encoded.move_to_end(key)
        return encoded

    def _render(self, encoded: _Encoded) -> Analysis:
        post = self.model.post_processor
        scores = post(encoded.chat.scores) if post is not None else encoded.chat.scores
        heatmap, drawn, mask = render(encoded.view, scores, stretch=not self.calibrated)
        score = float(scores.pred_score.reshape(-1)[0])
        verdict = score_verdict(score, self.threshold)
        if verdict is None and not self.calibrated:
            note = (
                "The model has no fitted thresholds: no score verdict, and the heatmap colours are stretched to "
                "this image's own range."
            )
        elif verdict is None:
            note = "No score verdict: the model has no fitted image threshold. Heatmap colours: normalised scores."
        elif self.calibrated:
            note = "Heatmap colours: normalised scores (0.5 is the fitted threshold)."
        else:
            note = "Heatmap colours are stretched to this image's own range (no fitted normalisation)."
        return Analysis(
            image=encoded.view,
            heatmap=heatmap,
            mask=drawn,
            pred_mask=mask,
            score=score,
            threshold=self.threshold,
            message=note,
        )

    def _check(self, path: str | Path | None, what: str = "image") -> Path:
        """:func:`check_image_file` with this server's limits."""
        return check_image_file(path, self.max_image_pixels, what, self.max_upload_bytes)

    def _class_name(self, class_name: str | None) -> str:
        """The page's class name, checked; empty means the model's own."""
        name = (class_name or "").strip()
        if not name:
            return self.default_class_name
        if len(name) > MAX_CLASS_NAME_CHARS or not _CLASS_NAME.fullmatch(name):
            msg = (
                f"Class name '{name[:MAX_CLASS_NAME_CHARS]}': use up to {MAX_CLASS_NAME_CHARS} letters, digits, "
                "spaces, '_', '-' or '.' (e.g. 'metal nut')."
            )
            raise BadInputError(msg)
        return category_to_class_name(name)

    def _use_class_name(self, class_name: str) -> None:
        """Text features for ``class_name`` (computed once per switch); also what ``prepare`` keeps."""
        self.model.class_name = class_name
        self.model.model.set_class_name(class_name)

    def _use_references(self, paths: Sequence[Path]) -> None:
        """Few-shot memory from ``paths`` (encoded only when they change); none: the model's own."""
        key = tuple(file_digest(path) for path in paths)
        if key == self._references:
            return
        if paths:
            transform = self.model.pre_processor.transform if self.model.pre_processor is not None else None
            try:
                images = load_reference_images(paths, transform)
            except ValueError as error:
                raise BadInputError(str(error)) from error
            self.model.model.set_references(images)
        else:
            self.model.model.reference_memory = self._default_memory
        self._references = key


def _check_question(question: str) -> str:
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        msg = f"The question has {len(question)} characters; ask in at most {MAX_QUESTION_CHARS}."
        raise BadInputError(msg)
    return question


def _check_history(history: Sequence[Sequence[str]] | None) -> History:
    try:
        return [(str(question), str(answer)) for question, answer in history or []]
    except (TypeError, ValueError) as error:
        msg = "The conversation on the page is malformed: clear it and ask again."
        raise BadInputError(msg) from error


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)
