"""The optional instruction mix: the user's PandaGPT/LLaVA JSON, its samples per step, their loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image
from torchvision.transforms.v2.functional import normalize

from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.data.instructions import InstructionMix, InstructionSample, load_instruction_data
from anomalib_agpt.errors import MissingFileError, OptionError
from anomalib_agpt.explanation.llm_head import LLMHead
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD
from anomalib_agpt.module import fitting
from anomalib_agpt.training import recipe

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

CATEGORY = "washer"
HEAD = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)}
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
SIZES = [(50, 40), (31, 64), (224, 224), (90, 60), (64, 64), (40, 100)]


def conversation(index: int) -> list[dict[str, str]]:
    return [
        {"from": "human", "value": f"What is in picture {index}?"},
        {"from": "gpt", "value": f"Picture {index} shows a {'red' if index % 2 else 'blue'} square."},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "Nothing else."},
    ]


@pytest.fixture(scope="module")
def instruction_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images of different sizes (one without a suffix in the PandaGPT JSON) and both JSON styles."""
    root = tmp_path_factory.mktemp("instructions")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index:03d}.jpg", quality=95)
    pandagpt = [{"image_name": f"{i:03d}", "conversation": conversation(i)} for i in range(len(SIZES))]
    llava = []
    for i in range(len(SIZES)):
        turns = conversation(i)
        turns[0] = {"from": "human", "value": "<image>\n" + turns[0]["value"]}
        llava.append({"id": str(i), "image": f"images/{i:03d}.jpg", "conversations": turns})
    (root / "pandagpt.json").write_text(json.dumps(pandagpt))
    (root / "llava.json").write_text(json.dumps(llava))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"), categories=(CATEGORY,), num_train=4, num_test_good=1, num_test_defect=1
    )


# --------------------------------------------------------------------------------------------
# 1. Reading the user's file
# --------------------------------------------------------------------------------------------
def test_pandagpt_and_llava_files_give_each_image_s_first_question_and_answer(instruction_root: Path) -> None:
    pandagpt = load_instruction_data(instruction_root / "pandagpt.json", instruction_root / "images")
    llava = load_instruction_data(instruction_root / "llava.json")  # names relative to the JSON's folder
    expected = [
        InstructionSample(
            image_path=instruction_root / "images" / f"{i:03d}.jpg",
            question=f"What is in picture {i}?",
            answer=f"Picture {i} shows a {'red' if i % 2 else 'blue'} square.",
        )
        for i in range(len(SIZES))
    ]
    assert pandagpt == expected
    assert llava == expected


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_bad_file_is_refused_naming_the_file_the_entry_and_what_was_expected(
    instruction_root: Path, tmp_path: Path
) -> None:
    images = instruction_root / "images"
    good = {"image": "000.jpg", "conversations": conversation(0)}
    with pytest.raises(MissingFileError, match=r"instruction_data '.*nowhere\.json' does not exist"):
        load_instruction_data(tmp_path / "nowhere.json", images)
    with pytest.raises(OptionError, match=r"broken\.json' is not valid JSON: .* line 2, column"):
        load_instruction_data(write(tmp_path / "broken.json", '[\n{"image": }]'), images)
    with pytest.raises(OptionError, match="holds no samples"):
        load_instruction_data(write(tmp_path / "empty.json", []), images)
    with pytest.raises(
        OptionError, match=r"entry 1: no image name; expected one of the keys \['image_name', 'image'\]"
    ):
        load_instruction_data(write(tmp_path / "no_image.json", [good, {"conversations": conversation(1)}]), images)
    turns = conversation(0)
    with pytest.raises(OptionError, match="entry 0: expected the first turn to be a question"):
        load_instruction_data(
            write(tmp_path / "swapped.json", [{"image": "000.jpg", "conversations": turns[1:]}]), images
        )
    with pytest.raises(OptionError, match="entry 0: expected conversation or conversations to be a list"):
        load_instruction_data(
            write(tmp_path / "one_turn.json", [{"image": "000.jpg", "conversation": turns[:1]}]), images
        )
    missing = [good, {"image": "lost.jpg", "conversations": turns}, {"image": "gone", "conversations": turns}]
    with pytest.raises(MissingFileError, match=r"2 of 3 images are missing under .*, e\.g\. '.*lost\.jpg'"):
        load_instruction_data(write(tmp_path / "missing.json", missing), images)
    with pytest.raises(MissingFileError, match=r"instruction_images '.*nope' is not a folder"):
        load_instruction_data(write(tmp_path / "ok.json", [good]), tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# 2. Which samples a step takes
# --------------------------------------------------------------------------------------------
def test_an_epoch_takes_every_sample_once_in_a_fresh_order_and_processes_take_different_ones() -> None:
    samples = [InstructionSample(Path(f"{i}.jpg"), "q", "a") for i in range(10)]
    mix = InstructionMix(samples, seed=7)
    epoch0 = [index for step in range(5) for index in mix.indices(epoch=0, step=step, count=2)]
    assert sorted(epoch0) == list(range(10))  # each sample once in the epoch's first pass
    epoch1 = [index for step in range(5) for index in mix.indices(epoch=1, step=step, count=2)]
    assert sorted(epoch1) == list(range(10))
    assert epoch1 != epoch0
    assert mix.indices(0, 3, 2) == InstructionMix(samples, seed=7).indices(0, 3, 2)  # a resumed run: the same
    assert mix.indices(0, 5, 2) == epoch0[:2]  # a set shorter than the epoch wraps around
    # DDP: step s of rank r is the (s * replicas + r)-th slice of the epoch's order
    ranks = [mix.indices(0, step, 2, replicas=2, rank=rank) for step in range(2) for rank in range(2)]
    assert [index for chunk in ranks for index in chunk] == epoch0[:8]


# --------------------------------------------------------------------------------------------
# 3. The loss, through a real training step
# --------------------------------------------------------------------------------------------
def squashed_like_pil(path: Path, side: int) -> torch.Tensor:
    """The original's training pre-processing, independently: PIL bicubic to side x side, CLIP normalisation."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    return normalize(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255, CLIP_MEAN, CLIP_STD)


def test_a_step_averages_the_anomaly_loss_and_the_answer_loss_of_one_instruction_sample_per_image(
    weights: dict[str, Any],
    data_root: Path,
    instruction_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {"lm": []}
    lm_loss, training_losses, instruction_loss = LLMHead.lm_loss, recipe.training_losses, recipe.instruction_loss

    def lm_loss_spy(self: LLMHead, embedding: Any, prompt_map: Any, questions: Any, answers: Any) -> Any:
        loss = lm_loss(self, embedding, prompt_map, questions, answers)
        seen["lm"].append({"map": prompt_map.detach().clone(), "q": list(questions), "a": list(answers)})
        return loss

    def training_losses_spy(*args: Any, **kwargs: Any) -> Any:
        seen["anomaly"] = training_losses(*args, **kwargs)
        return seen["anomaly"]

    def instruction_loss_spy(model: Any, images: torch.Tensor, questions: Any, answers: Any) -> torch.Tensor:
        seen["images"] = images.detach().clone()
        seen["instruction"] = instruction_loss(model, images, questions, answers)
        return seen["instruction"]

    monkeypatch.setattr(LLMHead, "lm_loss", lm_loss_spy)
    monkeypatch.setattr(fitting, "training_losses", training_losses_spy)
    monkeypatch.setattr(fitting, "instruction_loss", instruction_loss_spy)
    model = make_model(
        **weights,
        **HEAD,
        trainable=["decoder", "prompt_learner"],
        few_shot_prompt_probability=0.0,
        instruction_data=instruction_root / "pandagpt.json",
        instruction_images=instruction_root / "images",
        seed=3,
    )
    datamodule = MVTecAD(root=data_root, category=CATEGORY, train_batch_size=2, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, max_steps=1, limit_val_batches=0, **QUIET)
    engine.fit(model=model, datamodule=datamodule)

    samples = load_instruction_data(instruction_root / "pandagpt.json", instruction_root / "images")
    chosen = [samples[i] for i in InstructionMix(samples, seed=3).indices(epoch=0, step=0, count=2)]
    # one instruction sample per normal image of the batch, pre-processed as the original trains
    expected_images = torch.stack([squashed_like_pil(sample.image_path, 224) for sample in chosen])
    torch.testing.assert_close(seen["images"], expected_images, rtol=0, atol=1e-5)
    anomaly_call, instruction_call = seen["lm"]
    assert len(anomaly_call["q"]) == 4  # two normal images and their synthetic twins
    assert instruction_call["q"] == [sample.question for sample in chosen]
    assert instruction_call["a"] == [sample.answer for sample in chosen]
    # the instruction prompt map is the zero-shot map against 'object': an untrained model's inference map
    reference = make_model(**weights, class_name="object").model.eval()
    with torch.no_grad():
        expected_map = reference(seen["images"]).anomaly_map
    torch.testing.assert_close(instruction_call["map"], expected_map, rtol=0, atol=1e-5)
    anomaly_total = float(seen["anomaly"].total)
    instruction = float(seen["instruction"])
    metrics = engine.trainer.callback_metrics
    assert float(metrics["train_instruction_loss"]) == pytest.approx(instruction, rel=1e-6)
    assert float(metrics["train_loss"]) == pytest.approx((anomaly_total + instruction) / 2, rel=1e-6)
    assert math.isfinite(instruction)
    assert instruction > 0


def test_instruction_data_needs_a_trained_head_part_and_a_good_file_before_training(
    weights: dict[str, Any], data_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(OptionError, match=r"instruction_data='x\.json' trains through the answer loss"):
        make_model(**weights, trainable=["decoder"], instruction_data="x.json")
    model = make_model(**weights, **HEAD, trainable=["prompt_learner"], instruction_data=tmp_path / "nowhere.json")
    datamodule = MVTecAD(root=data_root, category=CATEGORY, train_batch_size=2, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, max_steps=1, limit_val_batches=0, **QUIET)
    with pytest.raises(MissingFileError, match=r"nowhere\.json' does not exist"):
        engine.fit(model=model, datamodule=datamodule)
    assert model.model.llm_head is None  # refused before the LLM loaded
