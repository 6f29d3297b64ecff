"""anomalib's image visualizer plus AnomalyGPT's text answer, and labelled verdicts, under the panels.

``ExplanationVisualizer`` draws exactly what :class:`anomalib.visualization.ImageVisualizer` draws (through the same
``visualize_image_item`` call) and, when an item carries an ``explanation``, adds a white band below it: verdict badges
that each say where they come from, the answer word-wrapped to the image width and a grey note on how to read them.

* ``answer: Anomalous`` / ``answer: Normal`` -- the original's rule: 'Yes' in the answer means anomalous.
* ``score > threshold: Anomalous`` / ``score <= threshold: Normal`` -- the image score against anomalib's fitted
  threshold; only when the model's post-processor has one (no fitted threshold: no score verdict).

Both sources can disagree (the score threshold also draws the Pred Mask outline), so neither is shown unlabelled.
:func:`verdicts` and :func:`compose_band` compose what is drawn; the web demo shows the same labels. Items without
an explanation give ImageVisualizer's image unchanged, and the PNGs are saved under the same names.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item
from PIL import Image, ImageDraw, ImageFont

from anomalib_agpt.explanation.conversation import is_anomalous_answer

if TYPE_CHECKING:
    from anomalib.data import ImageBatch, ImageItem, NumpyImageBatch, NumpyImageItem
    from lightning.pytorch import LightningModule, Trainer

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

ANOMALOUS_COLOR = (200, 30, 30)
NORMAL_COLOR = (30, 150, 50)
BAND_BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
BADGE_TEXT_COLOR = (255, 255, 255)
NOTE_COLOR = (90, 90, 90)

ANSWER_SOURCE = "answer"
"""What an answer verdict is labelled with: the original's rule, 'Yes' in the answer means anomalous."""
SCORE_ABOVE = "score > threshold"
SCORE_NOT_ABOVE = "score ≤ threshold"
"""What score verdicts are labelled with: anomalib's rule, anomalous when the score is above the fitted threshold."""
_FONT_FALLBACKS = {"≤": "<=", "≥": ">="}
"""Characters Pillow's built-in font lacks (drawn as empty boxes), and what is drawn instead."""


@dataclass(frozen=True)
class Verdict:
    """Normal or anomalous, and what decided it (``source``: :data:`ANSWER_SOURCE`, :data:`SCORE_ABOVE`, ...)."""

    source: str
    anomalous: bool

    @property
    def label(self) -> str:
        """``Anomalous`` or ``Normal``."""
        return "Anomalous" if self.anomalous else "Normal"

    @property
    def text(self) -> str:
        """``answer: Normal``, ``score > threshold: Anomalous``: the verdict with its source."""
        return f"{self.source}: {self.label}"


@dataclass(frozen=True)
class Band:
    """What the explanation band shows, top to bottom: verdict badges, the answer's lines, a note."""

    verdicts: list[Verdict]
    lines: list[str]
    note: str = ""
    note_lines: list[str] = field(default_factory=list)


def answer_verdict(answer: str | None) -> Verdict | None:
    """The verdict of a text answer by the original's rule ('Yes' in it: anomalous); None without an answer."""
    if not answer or not answer.strip():
        return None
    return Verdict(ANSWER_SOURCE, is_anomalous_answer(answer))


def score_verdict(score: float | None, threshold: float | None) -> Verdict | None:
    """The verdict of an image score against a fitted threshold (anomalib's ``score > threshold``); None without."""
    if score is None or threshold is None or not math.isfinite(threshold) or not math.isfinite(score):
        return None
    anomalous = score > threshold
    return Verdict(SCORE_ABOVE if anomalous else SCORE_NOT_ABOVE, anomalous)


def verdicts(answer: str | None, score: float | None, threshold: float | None) -> list[Verdict]:
    """The labelled verdicts there are: the answer's (with an answer), then the score's (with a fitted threshold)."""
    return [v for v in (answer_verdict(answer), score_verdict(score, threshold)) if v is not None]


def score_threshold(module: object) -> float | None:
    """The threshold ``module``'s post-processed image scores are compared with, or None when none was fitted.

    anomalib's ``PostProcessor`` starts with NaN thresholds and fits them on validation; until then it still
    labels scores (raw score > 0.5), which is no verdict. Once fitted, its ``pred_label`` compares the
    post-processed score with ``normalized_image_threshold`` (0.5 by default), with or without
    normalisation, and so does the verdict here: it never contradicts anomalib's label.
    """
    post = getattr(module, "post_processor", None)
    threshold = getattr(post, "image_threshold", None)
    if threshold is None or not getattr(post, "enable_thresholding", True) or not math.isfinite(float(threshold)):
        return None
    return float(post.normalized_image_threshold)


def drawable(text: str) -> str:
    """``text`` with the characters Pillow's built-in font lacks spelled in ASCII (``≤`` as ``<=``)."""
    for char, replacement in _FONT_FALLBACKS.items():
        text = text.replace(char, replacement)
    return text


@functools.lru_cache(maxsize=8)
def load_font(size: int) -> Font:
    """Pillow's built-in font at ``size`` pixels, or the fixed-size bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def wrap_text(text: str, font: Font, max_width: float) -> list[str]:
    """Greedy word wrap of ``text`` so that no line is wider than ``max_width`` pixels in ``font``.

    Newlines in ``text`` start new lines; a word wider than a line is split between characters.
    """
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if measure(candidate, font=font) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while measure(word, font=font) > max_width and len(word) > 1:
                cut = max(
                    (end for end in range(1, len(word)) if measure(word[:end], font=font) <= max_width),
                    default=1,
                )
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


class ExplanationVisualizer(ImageVisualizer):
    """``ImageVisualizer`` whose images also show the model's text answer and labelled verdicts.

    Takes the same arguments, with the same defaults, as :class:`anomalib.visualization.ImageVisualizer`. Each saved
    PNG is one image: ImageVisualizer's panels (image, anomaly-map overlay, predicted-mask overlay by default) and,
    for items with an ``explanation``, a band under them: an ``answer: Anomalous`` (red) or ``answer: Normal``
    (green) badge, beside it a ``score > threshold: Anomalous`` / ``score ≤ threshold: Normal`` badge when the
    model has a fitted threshold, the answer wrapped to the image width, and a note saying what each badge means.

    Example:
        >>> visualizer = ExplanationVisualizer(field_size=(256, 256))
        >>> image = visualizer.render(next(iter(batch)))  # PIL image or None

    """

    font_size: int = 15
    padding: int = 8
    line_spacing: int = 4

    def __init__(
        self,
        fields: list[str] | None = None,
        overlay_fields: list[tuple[str, list[str]]] | None = None,
        field_size: tuple[int, int] = (256, 256),
        fields_config: dict[str, dict[str, Any]] | None = None,
        overlay_fields_config: dict[str, dict[str, Any]] | None = None,
        text_config: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            fields=fields,
            overlay_fields=overlay_fields,
            field_size=field_size,
            fields_config=fields_config,
            overlay_fields_config=overlay_fields_config,
            text_config=text_config,
            output_dir=output_dir,
        )

    def render(self, item: ImageItem | NumpyImageItem, threshold: float | None = None) -> Image.Image | None:
        """ImageVisualizer's image of ``item``, with the explanation band under it when the item has an answer.

        ``threshold`` is the fitted image threshold ``item.pred_score`` is compared with (:func:`score_threshold`
        of the model; the hooks pass it); None: no score verdict.
        """
        image = visualize_image_item(
            item,
            fields=self.fields,
            overlay_fields=self.overlay_fields,
            field_size=self.field_size,
            fields_config=self.fields_config,
            overlay_fields_config=self.overlay_fields_config,
            text_config=self.text_config,
        )
        explanation = getattr(item, "explanation", None)
        if image is None or not explanation:
            return image
        score = getattr(item, "pred_score", None)
        return self.add_explanation(image, str(explanation), None if score is None else float(score), threshold)

    @property
    def shows_pred_mask(self) -> bool:
        """Whether the panels draw the predicted mask (a field or an overlay)."""
        return "pred_mask" in (self.fields or []) or any("pred_mask" in over for _, over in self.overlay_fields or [])

    def compose_band(
        self,
        explanation: str,
        score: float | None = None,
        threshold: float | None = None,
        width: int | None = None,
    ) -> Band:
        """The band's content: :func:`verdicts`, the answer and the note, wrapped to ``width`` pixels (if given).

        The note says what each badge means; without a fitted ``threshold`` it says there is no score verdict.
        """
        shown = verdicts(explanation, score, threshold)
        mask = self.shows_pred_mask
        if any(verdict.source != ANSWER_SOURCE for verdict in shown):
            outline = "; the Pred Mask outline uses the fitted pixel threshold" if mask else ""
            note = f"answer: 'Yes' in the model's text. score: the image score against the fitted threshold{outline}."
        else:
            outline = ", and the Pred Mask is not from a fitted threshold" if mask else ""
            note = f"answer: 'Yes' in the model's text. No fitted threshold: no score verdict{outline}."
        if width is None:
            return Band(shown, [explanation], note, [note])
        font = load_font(self.font_size)
        max_width = max(width - 2 * self.padding, 1)
        return Band(shown, wrap_text(drawable(explanation), font, max_width), note, wrap_text(note, font, max_width))

    def add_explanation(
        self,
        image: Image.Image,
        explanation: str,
        score: float | None = None,
        threshold: float | None = None,
    ) -> Image.Image:
        """``image`` with a band below it: labelled verdict badges, the answer and the note (:meth:`compose_band`)."""
        font = load_font(self.font_size)
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        band = self.compose_band(explanation, score, threshold, image.width)

        ascent_box = font.getbbox("Ag")
        line_height = ascent_box[3] + self.line_spacing
        badge_height = ascent_box[3] + self.padding
        text_lines = len(band.lines) + len(band.note_lines)
        band_height = self.padding + badge_height + self.padding + text_lines * line_height + self.padding

        out = Image.new("RGB", (image.width, image.height + band_height), BAND_BACKGROUND)
        out.paste(image.convert("RGB"), (0, 0))
        draw = ImageDraw.Draw(out)
        top = image.height + self.padding
        left = self.padding
        for verdict in band.verdicts:
            text = drawable(verdict.text)
            badge_width = measure.textbbox((0, 0), text, font=font)[2] + 2 * self.padding
            draw.rectangle(
                (left, top, left + badge_width - 1, top + badge_height - 1),
                fill=ANOMALOUS_COLOR if verdict.anomalous else NORMAL_COLOR,
            )
            draw.text((left + self.padding, top + self.padding // 2), text, font=font, fill=BADGE_TEXT_COLOR)
            left += badge_width + self.padding
        y = top + badge_height + self.padding
        for line, color in [(line, TEXT_COLOR) for line in band.lines] + [(n, NOTE_COLOR) for n in band.note_lines]:
            draw.text((self.padding, y), line, font=font, fill=color)
            y += line_height
        return out

    def visualize(
        self,
        predictions: ImageItem | NumpyImageItem | ImageBatch | NumpyImageBatch,
        threshold: float | None = None,
    ) -> Image.Image | list[Image.Image | None] | None:
        """As ``ImageVisualizer.visualize``, with the explanation band (see :meth:`render`)."""
        from anomalib.data import ImageBatch, ImageItem, NumpyImageBatch, NumpyImageItem

        if isinstance(predictions, (ImageItem, NumpyImageItem)):
            return self.render(predictions, threshold)
        if isinstance(predictions, (ImageBatch, NumpyImageBatch)):
            images = [self.render(item, threshold) for item in predictions]  # type: ignore[arg-type]
            return images[0] if len(images) == 1 else images
        msg = (
            f"Unsupported input type: {type(predictions)}. "
            "Expected ImageItem, NumpyImageItem, ImageBatch, or NumpyImageBatch."
        )
        raise TypeError(msg)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save one PNG per item, named as ImageVisualizer names them; score verdicts from ``pl_module``'s threshold."""
        del outputs, batch_idx, dataloader_idx  # Unused, as in ImageVisualizer.
        threshold = score_threshold(pl_module)
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        dataset_name = getattr(datamodule, "name", None) if datamodule else None
        category = getattr(datamodule, "category", None) if datamodule else None
        for item in batch:
            image = self.render(item, threshold)  # type: ignore[arg-type]
            if image is None:
                continue
            filename = generate_output_filename(
                input_path=item.image_path or "",
                output_path=self.output_dir,
                dataset_name=dataset_name,
                category=category,
            )
            image.save(filename)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """As :meth:`on_test_batch_end`."""
        self.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
