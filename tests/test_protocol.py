"""``protocol="paper"``: each choice of the original evaluation, against an expectation written out here."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback
from PIL import Image
from torchvision import tv_tensors

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import make_synthetic_mvtec, read_rgb_image
from anomalib_agpt.errors import MissingFileError, OptionError
from anomalib_agpt.explanation.metrics import AnswerAccuracy, answer_is_right
from anomalib_agpt.model import protocol
from anomalib_agpt.model.pre_processing import ClipResize
from anomalib_agpt.model.references import round_reference_images

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

CATEGORY = "washer"


@pytest.fixture(scope="module")
def twenty_train_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MVTec-layout category with 20 numbered normal training images (000.png ... 019.png)."""
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=(CATEGORY,),
        num_train=20,
        num_test_good=2,
        num_test_defect=1,
        image_size=64,
    )


def datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=4, eval_batch_size=4, num_workers=0)


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------
def test_mvtec_round_picks_4_round_plus_j(twenty_train_images: Path) -> None:
    good = twenty_train_images / CATEGORY / "train" / "good"
    assert round_reference_images(twenty_train_images, CATEGORY, "mvtec", 1, 3) == [good / "012.png"]
    assert round_reference_images(twenty_train_images, CATEGORY, "mvtec", 4, 3) == [
        good / "012.png",
        good / "013.png",
        good / "014.png",
        good / "015.png",
    ]
    assert round_reference_images(twenty_train_images, CATEGORY, "mvtec", 2, 0) == [good / "000.png", good / "001.png"]
    with pytest.raises(MissingFileError, match=r"reference_round=5 .*020\.png"):
        round_reference_images(twenty_train_images, CATEGORY, "mvtec", 1, 5)


def test_visa_round_skips_4_round_train_rows_of_the_class_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "split_csv").mkdir()
    rows = [("candle", "test", f"candle/Data/Images/Anomaly/{i:03d}.JPG") for i in range(3)]
    rows += [("pcb1", "train", f"pcb1/Data/Images/Normal/{i:04d}.JPG") for i in range(70)]
    rows += [("candle", "train", f"candle/Data/Images/Normal/{i:04d}.JPG") for i in (9, 3, 7, 1)]  # file order
    rows += [("candle", "train", f"candle/Data/Images/Normal/{i:04d}.JPG") for i in range(100, 160)]
    with (tmp_path / "split_csv" / "1cls.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows([(obj, split, "normal", image, "") for obj, split, image in rows])
    # candle's train rows: 9, 3, 7, 1, 100, 101, ...; round 14 skips 56 of them: 152, 153
    assert round_reference_images(tmp_path, "candle", "visa", 2, 14) == [
        tmp_path / "candle/Data/Images/Normal/0152.JPG",
        tmp_path / "candle/Data/Images/Normal/0153.JPG",
    ]
    assert round_reference_images(tmp_path, "candle", "visa", 3, 0) == [
        tmp_path / f"candle/Data/Images/Normal/{i:04d}.JPG" for i in (9, 3, 7)
    ]
    with pytest.raises(OptionError, match=r"it has 64"):
        round_reference_images(tmp_path, "candle", "visa", 1, 16)
    with pytest.raises(MissingFileError, match=r"1cls\.csv"):
        round_reference_images(tmp_path / "elsewhere", "candle", "visa", 1, 14)


def test_few_shot_source_and_reference_round_together_are_refused(weights: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="both choose the references"):
        make_model(**weights, k_shot=1, few_shot_source=tmp_path, reference_round=3)
    with pytest.raises(OptionError, match=r"protocol='papers'"):
        make_model(**weights, protocol="papers")


def test_paper_encodes_the_originals_references_and_its_maps_equal_the_default_models(
    weights: dict[str, Any], twenty_train_images: Path
) -> None:
    """Under paper, 1-shot uses train/good/012.png; on CPU the tensor path equals a default model's (<= 1e-6)."""
    paper = make_model(**weights, k_shot=1, protocol="paper")
    data = datamodule(twenty_train_images)
    data.setup()
    paper._datamodule = lambda: data  # type: ignore[method-assign]
    paper.prepare()

    default = make_model(**weights, k_shot=1, class_name=paper.model.class_name)
    reference = read_rgb_image(twenty_train_images / CATEGORY / "train" / "good" / "012.png")
    default.model.set_references(default.pre_processor.transform(reference.unsqueeze(0)))
    default.model.set_class_name(paper.model.class_name)

    queries = torch.stack(
        [
            default.pre_processor.transform(read_rgb_image(path))
            for path in sorted((twenty_train_images / CATEGORY / "test").rglob("*.png"))
        ]
    )
    torch.testing.assert_close(paper.model.reference_memory, default.model.reference_memory, rtol=0, atol=1e-6)
    ours, theirs = paper.model(queries), default.model(queries)
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.pred_score, theirs.pred_score, rtol=0, atol=1e-6)
    assert paper.model.encoder_dtype == "auto"  # fp16 on CUDA only
    assert paper.model.vision_encoder.visual.conv1.weight.dtype == torch.float32  # on CPU: fp32


# --------------------------------------------------------------------------------------------
# Class name, question, decoding, precision, accuracy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("questions", "expected_class"),
    [
        ({CATEGORY: "A textile sample. Is there any anomaly in the image?"}, "tile"),
        ({CATEGORY: "Look at this pcb3 board. Is there any anomaly in the image?"}, "pcb"),
        ({CATEGORY: "Is there any anomaly in the image?"}, "object"),
    ],
)
def test_paper_takes_the_class_name_from_the_question_asked_verbatim(
    weights: dict[str, Any], twenty_train_images: Path, questions: dict[str, str], expected_class: str
) -> None:
    model = make_model(**weights, protocol="paper", questions=questions)
    data = datamodule(twenty_train_images)
    model._datamodule = lambda: data  # type: ignore[method-assign]
    model.prepare()
    assert model.asked_question() == questions[CATEGORY]
    assert model.model.class_name == expected_class
    assert make_model(**weights, protocol="paper", questions=questions, class_name="screw").model.class_name == "screw"


def test_default_protocol_keeps_the_category_as_class_name(weights: dict[str, Any], twenty_train_images: Path) -> None:
    model = make_model(**weights, questions={CATEGORY: "A textile sample. Is there any anomaly in the image?"})
    data = datamodule(twenty_train_images)
    model._datamodule = lambda: data  # type: ignore[method-assign]
    model.prepare()
    assert model.model.class_name == CATEGORY
    assert model.asked_question() == "A textile sample. Is there any anomaly in the image?"


def test_decoding_per_protocol_and_dataset_with_explicit_values_winning() -> None:
    assert protocol.decoding("anomalib", "mvtec") == protocol.Decoding(False, 0.1, 1.0, 128)
    assert protocol.decoding("paper", "mvtec") == protocol.Decoding(True, 0.1, 1.0, 512)
    assert protocol.decoding("paper", "visa") == protocol.Decoding(True, 0.01, 1.0, 512)
    assert protocol.decoding("paper", None) == protocol.Decoding(True, 0.1, 1.0, 512)
    assert protocol.decoding("paper", "visa", do_sample=False, max_new_tokens=64) == protocol.Decoding(
        False, 0.01, 1.0, 64
    )


def test_paper_sets_the_dataset_dependent_choices_at_set_up(weights: dict[str, Any], twenty_train_images: Path) -> None:
    model = make_model(**weights, protocol="paper", top_p=0.5)
    data = datamodule(twenty_train_images)
    model._datamodule = lambda: data  # type: ignore[method-assign]
    model.prepare()
    assert model.model.generation == {"do_sample": True, "top_p": 0.5, "temperature": 1.0, "max_new_tokens": 512}
    assert make_model(**weights).model.generation["do_sample"] is False


def test_paper_precision_choices() -> None:
    assert protocol.llm_dtype("paper", None) == "auto_fp16"
    assert protocol.llm_dtype("anomalib", None) == "auto"
    assert protocol.llm_dtype("paper", "bf16") == "bf16"
    assert protocol.encoder_dtype("paper", None) == "auto"
    assert protocol.encoder_dtype("anomalib", None) == "fp32"
    from anomalib_agpt.explanation.llm_loading import resolve_dtype

    assert resolve_dtype("auto_fp16", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto_fp16", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


ANSWERS = [
    # (answer, label, right under anomalib, right under paper)
    ("No, there is no anomaly in the image.", 0, True, True),
    ("Yes, there is an anomaly in the image, at the top left of the image.", 1, True, True),
    ("Yes, there is an anomaly.", 0, False, False),
    ("No anomaly here.", 1, False, False),
    ("I cannot tell.", 0, True, False),  # neither word: normal for anomalib, wrong for the paper's count
    ("I cannot tell.", 1, False, False),
    ("No. Yes, there is one.", 0, False, True),  # both words: the paper's count finds 'No'
    ("No. Yes, there is one.", 1, True, True),
]


@pytest.mark.parametrize(("answer", "label", "anomalib_rule", "paper_rule"), ANSWERS)
def test_accuracy_rules_on_hand_written_answers(answer: str, label: int, anomalib_rule: bool, paper_rule: bool) -> None:
    assert answer_is_right(answer, label, "anomalib") is anomalib_rule
    assert answer_is_right(answer, label, "paper") is paper_rule


def test_answer_accuracy_metric_counts_by_its_rule() -> None:
    answers = [a for a, *_ in ANSWERS]
    labels = torch.tensor([label for _, label, *_ in ANSWERS])
    for rule, column in (("anomalib", 2), ("paper", 3)):
        metric = AnswerAccuracy(rule=rule, strict=False)
        metric.update(SimpleNamespace(explanation=answers, gt_label=labels))
        assert metric.compute().item() == pytest.approx(sum(row[column] for row in ANSWERS) / len(ANSWERS))


def _accuracy_rules(model: AnomalyGPT) -> list[str]:
    return [metric.rule for metric in model.evaluator.test_metrics if isinstance(metric, AnswerAccuracy)]


def test_paper_evaluator_uses_the_papers_count(weights: dict[str, Any]) -> None:
    """The evaluator each model builds counts by its protocol (fails if the model passes a fixed rule)."""
    explain = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA), "explain": True}
    assert _accuracy_rules(make_model(**weights, **explain, protocol="paper")) == ["paper"]
    assert _accuracy_rules(make_model(**weights, **explain)) == ["anomalib"]
    assert make_model(**weights, protocol="paper", explain=False).hparams["protocol"] == "paper"


def test_protocol_questions_and_round_are_hyperparameters_lightning_saves(
    weights: dict[str, Any], tmp_path: Path
) -> None:
    questions = {CATEGORY: "Anything odd here? Is there any anomaly in the image?"}
    model = make_model(**weights, k_shot=1, protocol="paper", questions=questions, reference_round=2)
    saved = (
        model.hparams["protocol"],
        model.hparams["explanation"].questions,
        model.hparams["few_shot"].reference_round,
    )
    assert saved == ("paper", questions, 2)


@pytest.mark.cuda
def test_paper_runs_towers_and_llm_in_fp16_on_cuda(weights: dict[str, Any], expected: dict[str, Any]) -> None:
    """On CUDA, paper's towers and LLM are fp16 (the original's precision); maps stay close to fp32's."""
    from .conftest import FIXTURES, PANDAGPT_DELTA

    explain = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA), "class_name": "bottle"}
    paper = make_model(**weights, **explain, protocol="paper").to("cuda")
    default = make_model(**weights, **explain).to("cuda")
    pixels = next(iter(expected["queries"].values()))["pixel_values"].to("cuda")
    ours, theirs = paper.model(pixels), default.model(pixels)
    assert paper.model.vision_encoder.visual.conv1.weight.dtype == torch.float16
    assert paper.model.ensure_llm_head().llm.dtype == torch.float16
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=0, atol=2e-2)  # fp16 towers vs fp32


# --------------------------------------------------------------------------------------------
# Ground-truth masks
# --------------------------------------------------------------------------------------------
def test_mask_rules_on_a_hand_made_mask() -> None:
    """One defect pixel at (1, 1) of a 4 x 4 mask, halved: antialiased bilinear weights per axis are
    (3/7, 3/7, 1/7) for output 0 and (1/7, 3/7, 3/7) for output 1, so output (0, 0) holds 9/49 = 0.18,
    (0, 1) and (1, 0) 3/49 = 0.06, (1, 1) 1/49 = 0.02; nearest neighbour samples (0, 0), (0, 2), (2, 0), (2, 2)."""
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[1, 1] = 1

    def resized(threshold: float | None) -> list[list[int]]:
        return ClipResize(2, crop=False, mask_threshold=threshold)(tv_tensors.Mask(mask)).tolist()

    assert resized(None) == [[0, 0], [0, 0]]  # anomalib: the defect vanishes
    assert resized(protocol.PAPER_MASK_THRESHOLD["mvtec"]) == [[1, 0], [0, 0]]  # > 0.1
    assert resized(protocol.PAPER_MASK_THRESHOLD["visa"]) == [[1, 1], [1, 1]]  # > 0.01


def test_paper_mask_rule_equals_pil_resize_then_threshold() -> None:
    """The original's operations on a non-square mask (PIL bilinear to short side 24, centre crop, > 0.1)."""
    mask = torch.zeros(40, 56, dtype=torch.uint8)
    mask[5:9, 10:30] = 1
    mask[20, 3:50] = 1  # a one-pixel scratch: nearest neighbour keeps or drops it by where it falls
    mask[30:38, 40:44] = 1
    pil = Image.fromarray(mask.numpy() * 255).resize((33, 24), Image.BILINEAR)  # 24 * 56 / 40 = 33.6 -> 33
    left = round((33 - 24) / 2)
    expected = torch.from_numpy(np.asarray(pil)[:, left : left + 24] / 255 > 0.1)
    ours = ClipResize(24, crop=True, mask_threshold=0.1)(tv_tensors.Mask(mask)).bool()
    nearest = ClipResize(24, crop=True)(tv_tensors.Mask(mask)).bool()
    assert int((ours != expected).sum()) <= 2  # PIL's 8-bit rounding may flip a pixel at 0.1 exactly
    assert int((nearest != expected).sum()) > 20


def test_paper_ground_truth_reaches_the_test_batches(
    weights: dict[str, Any], twenty_train_images: Path, tmp_path: Path
) -> None:
    """Engine.test under paper: the masks the metrics read are the original's (64 px masks upscaled to 224)."""
    masks = {}
    for name in ("anomalib", "paper"):
        kept = _KeepMasks()
        engine = Engine(
            logger=False, devices=1, callbacks=[kept], enable_progress_bar=False, default_root_dir=Path(".")
        )
        # a worker process: it copies the dataset when the test loop starts, before the evaluation hooks run
        data = MVTecAD(root=twenty_train_images, category=CATEGORY, eval_batch_size=4, num_workers=1)
        engine.test(model=make_model(**weights, protocol=name), datamodule=data)
        masks[name] = kept.masks
    defect = next(path for path in masks["paper"] if "/good/" not in path)
    mask_file = (
        twenty_train_images / CATEGORY / "ground_truth" / Path(defect).parent.name / f"{Path(defect).stem}_mask.png"
    )
    raw = np.asarray(Image.open(mask_file).convert("L"))
    pil = np.asarray(Image.fromarray(((raw > 0) * 255).astype(np.uint8)).resize((224, 224), Image.BILINEAR))
    expected = torch.from_numpy(pil / 255 > 0.1)
    assert int((masks["paper"][defect] != expected).sum()) <= 4
    assert int((masks["anomalib"][defect] != expected).sum()) > 20  # nearest neighbour: a narrower mask


class _KeepMasks(Callback):
    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        for path, mask in zip(outputs.image_path, outputs.gt_mask, strict=True):
            self.masks[path] = mask.reshape(mask.shape[-2:]).bool().cpu()
