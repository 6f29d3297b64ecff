"""anomalib's image visualizer plus AnomalyGPT's text answer under the panels.

``ExplanationVisualizer`` draws exactly what :class:`anomalib.visualization.ImageVisualizer` draws (through the same
``visualize_image_item`` call) and, when an item carries an ``explanation``, adds a white band below it with a verdict
badge ("Anomalous" in red / "Normal" in green, by the original's rule: 'Yes' in the answer means anomalous) and the
answer word-wrapped to the image width. Items without an explanation give ImageVisualizer's image unchanged, and the
PNGs are saved under the same names.
"""

from __future__ import annotations

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
    """``ImageVisualizer`` whose images also show the model's text answer and the verdict it implies.

    Takes the same arguments, with the same defaults, as :class:`anomalib.visualization.ImageVisualizer`. Each saved
    PNG is one image: ImageVisualizer's panels (image, anomaly-map overlay, predicted-mask overlay by default) and,
    for items with an ``explanation``, a band under them with a red "Anomalous" or green "Normal" badge and the
    answer wrapped to the image width.

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

    def render(self, item: ImageItem | NumpyImageItem) -> Image.Image | None:
        """ImageVisualizer's image of ``item``, with the explanation band under it when the item has an answer."""
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
        return self.add_explanation(image, str(explanation))

    def add_explanation(self, image: Image.Image, explanation: str) -> Image.Image:
        """``image`` with a band below it: the verdict badge, then ``explanation`` wrapped to the image width."""
        font = load_font(self.font_size)
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        anomalous = is_anomalous_answer(explanation)
        verdict = "Anomalous" if anomalous else "Normal"

        ascent_box = font.getbbox("Ag")
        line_height = ascent_box[3] + self.line_spacing
        badge_box = measure.textbbox((0, 0), verdict, font=font)
        badge_width = badge_box[2] + 2 * self.padding
        badge_height = ascent_box[3] + self.padding
        lines = wrap_text(explanation, font, max(image.width - 2 * self.padding, 1))
        band_height = self.padding + badge_height + self.padding + len(lines) * line_height + self.padding

        out = Image.new("RGB", (image.width, image.height + band_height), BAND_BACKGROUND)
        out.paste(image.convert("RGB"), (0, 0))
        draw = ImageDraw.Draw(out)
        top = image.height + self.padding
        draw.rectangle(
            (self.padding, top, self.padding + badge_width - 1, top + badge_height - 1),
            fill=ANOMALOUS_COLOR if anomalous else NORMAL_COLOR,
        )
        draw.text((2 * self.padding, top + self.padding // 2), verdict, font=font, fill=BADGE_TEXT_COLOR)
        y = top + badge_height + self.padding
        for line in lines:
            draw.text((self.padding, y), line, font=font, fill=TEXT_COLOR)
            y += line_height
        return out

    def visualize(
        self,
        predictions: ImageItem | NumpyImageItem | ImageBatch | NumpyImageBatch,
    ) -> Image.Image | list[Image.Image | None] | None:
        """As ``ImageVisualizer.visualize``, with the explanation band (see :meth:`render`)."""
        from anomalib.data import ImageBatch, ImageItem, NumpyImageBatch, NumpyImageItem

        if isinstance(predictions, (ImageItem, NumpyImageItem)):
            return self.render(predictions)
        if isinstance(predictions, (ImageBatch, NumpyImageBatch)):
            images = [self.render(item) for item in predictions]  # type: ignore[arg-type]
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
        """Save one PNG per item, named as ImageVisualizer names them."""
        del pl_module, outputs, batch_idx, dataloader_idx  # Unused, as in ImageVisualizer.
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        dataset_name = getattr(datamodule, "name", None) if datamodule else None
        category = getattr(datamodule, "category", None) if datamodule else None
        for item in batch:
            image = self.render(item)  # type: ignore[arg-type]
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
