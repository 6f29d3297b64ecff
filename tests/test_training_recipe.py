"""Training as the original trains: schedule, patch source, squashed images, 1-shot reference, from scratch, config."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from PIL import Image
from torchvision.transforms.v2 import Normalize

from anomalib_agpt.apps.configs import resolve_config_flags
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.errors import OptionError
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD, ClipResize
from anomalib_agpt.module import fitting
from anomalib_agpt.training.recipe import anomalygpt_delta, make_synthetic_batch, warmup_decay
from anomalib_agpt.training.synthesis import object_settings, synthesize

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA, make_model

CATEGORY = "washer"
HEAD = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)}
CONFIG = Path(__file__).parents[1] / "configs" / "paper" / "mvtec_train.yaml"
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=(CATEGORY,),
        num_train=4,
        num_test_good=2,
        num_test_defect=1,
        image_size=96,
    )


@pytest.fixture(scope="module")
def tall_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set with every image and mask cut to 96 high x 64 wide (squash and crop differ)."""
    root = make_synthetic_mvtec(
        tmp_path_factory.mktemp("tall"),
        categories=(CATEGORY,),
        num_train=4,
        num_test_good=2,
        num_test_defect=1,
        image_size=96,
    )
    for path in (root / CATEGORY).rglob("*.png"):
        with Image.open(path) as image:
            tall = image.crop((16, 0, 80, 96))
        tall.save(path)
    return root


def datamodule_of(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


def clip_pixels(path: str, crop: bool) -> torch.Tensor:
    """A file as the model sees it, written out here: PIL-exact bicubic resize to 224 (crop or squash), CLIP norm."""
    resized = ClipResize(224, crop=crop)(read_image(path, as_tensor=True))
    return Normalize(mean=CLIP_MEAN, std=CLIP_STD)(resized)


# --------------------------------------------------------------------------------------------
# 1. DeepSpeed's WarmupDecayLR
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "ratio", "warmup"), [(300, 0.1, 30), (55, 0.1, 10), (109, 0.1, 10), (40, 0.0, 10)])
def test_schedule_is_deepspeeds_log_warmup_then_linear_decay(total: int, ratio: float, warmup: int) -> None:
    """lr(s) = log(s + 1) / log(W) for s < W, W = max(10, int(ratio T)); then (T - s) / (T - W), to 0 at T."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = warmup_decay(optimizer, total_steps=total, warmup_ratio=ratio)
    rates = []
    for _ in range(total + 2):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [
        1e-3 * (math.log(step + 1) / math.log(warmup) if step < warmup else max(0.0, (total - step) / (total - warmup)))
        for step in range(total + 2)
    ]
    assert rates == pytest.approx(expected, abs=1e-15)
    assert rates[0] == 0.0  # DeepSpeed's first step runs at warmup_min_lr
    assert rates[warmup] == pytest.approx(1e-3)
    assert rates[total] == rates[total + 1] == 0.0


# --------------------------------------------------------------------------------------------
# 2. The patch source: the previous image of the batch
# --------------------------------------------------------------------------------------------
def test_patch_source_is_the_previous_image_of_the_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    blocks = torch.rand(3, 3, 8, 8, generator=generator).repeat_interleave(8, -1).repeat_interleave(8, -2)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    images = (blocks - mean) / std
    raw = (images * std + mean).clamp(0, 1)  # what the batch de-normalises to
    paths = ["a.png", "b.png", "c.png"]
    batch = make_synthetic_batch(images, paths, object_settings(), seed=4, epoch=2)

    def twin(index: int, source: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng([4, 2, zlib.crc32(paths[index].encode())])
        return (synthesize(raw[index], source, object_settings(), rng).image - mean) / std

    previous = torch.stack([twin(index, raw[(index - 1) % 3]) for index in range(3)])
    following = torch.stack([twin(index, raw[(index + 1) % 3]) for index in range(3)])
    torch.testing.assert_close(batch.images[3:], previous, rtol=0, atol=1e-5)
    assert not torch.allclose(batch.images[3:], following, atol=1e-3)  # the source matters: the test can tell

    single = make_synthetic_batch(images[:1], paths[:1], object_settings(), seed=4, epoch=2)
    torch.testing.assert_close(single.images[1:], twin(0, raw[0].flip(-1)).unsqueeze(0), rtol=0, atol=1e-5)

    # after the epoch's first step, the first image's source is the previous step's last image
    served = make_synthetic_batch(images[:1], paths[:1], object_settings(), seed=4, epoch=2, previous=images[2])
    torch.testing.assert_close(served.images[1:], twin(0, raw[2]).unsqueeze(0), rtol=0, atol=1e-5)
    served = make_synthetic_batch(images[:2], paths[:2], object_settings(), seed=4, epoch=2, previous=images[2])
    torch.testing.assert_close(served.images[2:], previous[:2], rtol=0, atol=1e-5)  # c is before a, a before b


def test_steps_pass_their_last_image_on_within_an_epoch(
    weights: dict[str, Any], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    make = fitting.training_losses

    def spy(model: Any, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append({"images": images.clone(), "previous": kwargs.get("previous_image")})
        return make(model, images, *args, **kwargs)

    monkeypatch.setattr(fitting, "training_losses", spy)
    model = make_model(**weights, trainable=["decoder"])
    datamodule = MVTecAD(root=data_root, category=CATEGORY, train_batch_size=1, num_workers=0)
    Engine(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, **QUIET).fit(
        model=model, datamodule=datamodule
    )
    assert len(calls) == 4
    for epoch_start in (0, 2):  # each epoch's first step has none: it starts as a resumed epoch would
        assert calls[epoch_start]["previous"] is None
        torch.testing.assert_close(calls[epoch_start + 1]["previous"], calls[epoch_start]["images"][-1], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# 3. Squashed training images, evaluation as configured
# --------------------------------------------------------------------------------------------
def test_training_images_are_squashed_and_evaluation_crops(weights: dict[str, Any], tall_root: Path) -> None:
    model = make_model(**weights, trainable=["decoder"])  # resize_mode crop
    seen: dict[str, list[tuple[str, torch.Tensor]]] = {"train": [], "val": []}
    training_step, validation_step = model.training_step, model.validation_step

    def record_training(batch: Any, batch_idx: int) -> torch.Tensor:
        seen["train"] += zip(batch.image_path, batch.image.detach().clone(), strict=True)
        return training_step(batch, batch_idx)

    def record_validation(batch: Any, *args: Any) -> Any:
        seen["val"] += zip(batch.image_path, batch.image.detach().clone(), strict=True)
        return validation_step(batch, *args)

    model.training_step = record_training
    model.validation_step = record_validation
    engine = Engine(
        default_root_dir=tall_root.parent / "runs", max_epochs=1, limit_train_batches=1, limit_val_batches=1, **QUIET
    )
    engine.fit(model=model, datamodule=datamodule_of(tall_root))
    assert len(seen["train"]) == 2
    assert seen["val"]
    for path, image in seen["train"]:
        assert image.shape == (3, 224, 224)
        torch.testing.assert_close(image, clip_pixels(path, crop=False), rtol=0, atol=1e-6)
        assert not torch.allclose(image, clip_pixels(path, crop=True), atol=1e-2)
    for path, image in seen["val"]:
        torch.testing.assert_close(image, clip_pixels(path, crop=True), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 4. The 1-shot training reference: the class's first normal image, encoded once
# --------------------------------------------------------------------------------------------
def test_one_shot_reference_is_the_first_normal_image_encoded_once(
    weights: dict[str, Any], tall_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[torch.Tensor] = []
    used: list[torch.Tensor | None] = []
    original_memory, original_losses = fitting.rotation_reference_memory, fitting.training_losses

    def memory(model: Any, reference: torch.Tensor) -> torch.Tensor:
        encoded.append(reference.clone())
        return original_memory(model, reference)

    def losses(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["reference_memory"])
        return original_losses(*args, **kwargs)

    monkeypatch.setattr(fitting, "rotation_reference_memory", memory)
    monkeypatch.setattr(fitting, "training_losses", losses)
    seed_everything(0)
    model = make_model(**weights, **HEAD, trainable=["decoder", "prompt_learner"], few_shot_prompt_probability=1.0)
    engine = Engine(default_root_dir=tall_root.parent / "runs", max_epochs=2, limit_val_batches=0, **QUIET)
    engine.fit(model=model, datamodule=datamodule_of(tall_root))
    assert len(used) == 4  # 2 epochs x 2 batches, one encoding
    assert len(encoded) == 1
    first = sorted((tall_root / CATEGORY / "train" / "good").glob("*.png"))[0]
    reference = clip_pixels(str(first), crop=True)  # the evaluation pre-processing, as the original's
    torch.testing.assert_close(encoded[0], reference, rtol=0, atol=1e-6)
    assert not torch.allclose(encoded[0], clip_pixels(str(first), crop=False), atol=1e-2)
    rotations = torch.stack([torch.rot90(reference, turns, dims=(-2, -1)) for turns in range(4)])
    with torch.no_grad():
        tokens = model.model.encode(rotations).patch_tokens
    expected = torch.stack([F.normalize(layer.reshape(-1, layer.shape[-1]), dim=-1) for layer in tokens])
    assert all(each is used[0] for each in used)
    torch.testing.assert_close(used[0], expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 5. From scratch
# --------------------------------------------------------------------------------------------
def test_nothing_to_train_still_needs_the_anomalygpt_delta(heads: dict[str, int]) -> None:
    with pytest.raises(OptionError, match=r"anomalygpt_checkpoint not given.*trainable=\[decoder"):
        make_model(imagebind_checkpoint=str(IMAGEBIND), **heads)
    with pytest.raises(OptionError, match=r"anomalygpt_checkpoint not given.*trainable=\[decoder"):
        make_model(imagebind_checkpoint=str(IMAGEBIND), **heads, **HEAD, trainable=["prompt_learner"])


def test_from_scratch_decoder_is_a_fresh_seeded_linear_of_the_imagebind_sizes(heads: dict[str, int]) -> None:
    model = make_model(imagebind_checkpoint=str(IMAGEBIND), **heads, trainable=["decoder"], seed=7)
    imagebind = torch.load(IMAGEBIND, weights_only=True)
    width = imagebind["modality_preprocessors.vision.rgbt_stem.proj.1.weight"].shape[0]
    embed = imagebind["modality_heads.vision.2.weight"].shape[0]
    generator, bound = torch.Generator().manual_seed(7), 1 / math.sqrt(width)
    for layer in model.model.decoder.fc:
        weight = torch.empty(embed, width).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(embed).uniform_(-bound, bound, generator=generator)
        assert torch.equal(layer.weight, weight)
        assert torch.equal(layer.bias, bias)
        assert layer.weight.requires_grad
        assert layer.bias.requires_grad


def test_from_scratch_prompt_learner_and_delta_match_the_released_format(heads: dict[str, int], tmp_path: Path) -> None:
    options = {"imagebind_checkpoint": str(IMAGEBIND), **heads, **HEAD, "trainable": ["decoder", "prompt_learner"]}
    model = make_model(**options, seed=5)
    model.prepare(load_llm=True)
    prompts = model.model.llm_head.prompt_learner.base_prompts
    expected = torch.randn(prompts.shape, generator=torch.Generator().manual_seed(5)).to(prompts)
    assert torch.equal(prompts, expected)  # N(0, 1), the original's init, seeded by `seed`
    released = torch.load(ANOMALYGPT_DELTA, weights_only=True)
    delta = anomalygpt_delta(model.model)
    assert {k: (tuple(v.shape), v.dtype) for k, v in delta.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in released.items()
    }
    path = model.save_anomalygpt_delta(tmp_path / "pytorch_model.pt")
    reloaded = make_model(imagebind_checkpoint=str(IMAGEBIND), anomalygpt_checkpoint=str(path), **heads)
    for name, value in model.model.decoder.state_dict().items():
        torch.testing.assert_close(reloaded.model.decoder.state_dict()[name], value.half().float())

    restored = make_model(**options, seed=5)  # trained weights waiting for the head are not redrawn
    restored.model.pending_head_state = {"prompt_learner.base_prompts": torch.zeros_like(prompts)}
    restored.prepare(load_llm=True)
    assert not restored.model.llm_head.prompt_learner.base_prompts.any()


# --------------------------------------------------------------------------------------------
# 6. The paper's training config
# --------------------------------------------------------------------------------------------
def cli(args: list[str]) -> Any:
    from anomalib_agpt.apps.cli import _cli_class

    return _cli_class()(args=args, run=False)


@pytest.mark.parametrize(("config", "dataset"), [("mvtec_train", "MVTecAD"), ("visa_train", "Visa")])
def test_paper_training_configs_are_the_originals_recipe(
    config: str, dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli(["fit", "--config", str(CONFIG.with_name(f"{config}.yaml")), "--print_config"])
    assert stopped.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["weights"]["anomalygpt_checkpoint"] is None
    training = model["training"]
    assert training["trainable"] == ["decoder", "prompt_learner"]
    assert (training["learning_rate"], training["weight_decay"], training["warmup_ratio"]) == (1e-3, 1e-3, 0.1)
    assert training["instruction_data"] == "pandagpt4_visual_instruction_data.json"  # part of the recipe
    assert model["protocol"] == "paper"  # testing the trained model follows the paper's rules
    assert model["inference"]["llm_dtype"] == "auto_fp16"  # fp16 on GPU under 16-mixed
    data = printed["data"]
    assert data["class_path"] == "anomalib_agpt.data.MultiCategory"  # one model for all classes
    assert (data["init_args"]["dataset"], data["init_args"]["categories"]) == (dataset, None)
    assert data["init_args"]["train_batch_size"] == 8
    assert (printed["trainer"]["max_epochs"], printed["trainer"]["precision"]) == (50, "16-mixed")


def test_paper_training_config_runs_one_step_on_cpu_and_its_checkpoint_tests_per_class(
    heads: dict[str, int], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    image = next((data_root / CATEGORY / "train" / "good").glob("*.png"))
    instruction_json = tmp_path / "instructions.json"
    turns = [{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A washer."}]
    instruction_json.write_text(json.dumps([{"image": str(image), "conversations": turns}]))
    common = [
        *resolve_config_flags(["--config", "paper/mvtec_train"]),  # the packaged config, named as the README does
        f"--model.weights.imagebind_checkpoint={IMAGEBIND}",
        f"--model.weights.vision_heads={heads['vision_heads']}",
        f"--model.weights.text_heads={heads['text_heads']}",
        f"--model.weights.llm={HEAD['llm']}",
        f"--model.weights.pandagpt_checkpoint={HEAD['pandagpt_checkpoint']}",
        f"--model.training.instruction_data={instruction_json}",
        f"--model.training.instruction_images={image.parent}",
        "--trainer.precision=32",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--default_root_dir={tmp_path / 'results'}",
    ]
    run = cli(
        [
            "fit",
            *common,
            f"--data.root={data_root}",
            f"--data.categories=[{CATEGORY}]",
            "--data.train_batch_size=2",
            "--data.num_workers=0",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
        ]
    )
    untrained = run.model.model.decoder.state_dict()
    untrained = {k: v.clone() for k, v in untrained.items()}
    run._run_subcommand()
    trainer = run.engine.trainer
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert float(trainer.callback_metrics["train_lm_loss"]) > 0
    assert float(trainer.callback_metrics["train_instruction_loss"]) > 0
    state = trainer.optimizers[0].state
    assert state  # AdamW took its steps (the first at lr 0: DeepSpeed's first warm-up step)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * math.log(3) / math.log(10))
    trained_decoder = {k: v.clone() for k, v in run.model.model.decoder.state_dict().items()}

    # the command the config's header gives: test one class of the multi-class run with its checkpoint
    (checkpoint,) = (tmp_path / "results").rglob("*.ckpt")
    tested = cli(
        [
            "test",
            *common,
            "--data=anomalib.data.MVTecAD",
            f"--data.root={data_root}",
            f"--data.category={CATEGORY}",
            "--data.eval_batch_size=4",
            "--data.num_workers=0",
            f"--ckpt_path={checkpoint}",
        ]
    )
    tested._run_subcommand()
    # protocol: paper tests as the original does: the class name from its fixed list, which lacks 'washer'
    assert tested.model.protocol == "paper"
    assert tested.model.model.class_name == "object"
    for key, value in tested.model.model.decoder.state_dict().items():
        torch.testing.assert_close(value, trained_decoder[key], rtol=0, atol=0)
        assert not torch.equal(value, untrained[key])  # the trained weights, not the seeded fresh ones
    metrics = tested.engine.trainer.callback_metrics
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)


def test_synthetic_anomalies_do_not_depend_on_where_the_dataset_lives() -> None:
    """The same image under two data folders gets the same anomaly (a leaderboard's --output moves the data)."""
    from anomalib_agpt.training.recipe import _sample_key

    here = "/tmp/run_a/data/weave/train/good/003.png"
    there = "/srv/other/output/data/weave/train/good/003.png"
    assert _sample_key(here, 0) == _sample_key(there, 1) == zlib.crc32(b"weave/train/good/003.png")
    assert _sample_key("/tmp/run_a/data/weave/train/good/004.png", 0) != _sample_key(here, 0)
    assert _sample_key(None, 7) == 7


def test_paper_protocol_trains_with_the_dataset_s_class_name_and_tests_with_the_question_rule(
    weights: dict[str, Any], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_agpt.explanation.questions import paper_class_name

    seen: list[tuple[str | None, Any]] = []
    make = fitting.training_losses

    def spy(model: Any, images: torch.Tensor, paths: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((model.class_name, settings))
        return make(model, images, paths, settings, *args, **kwargs)

    monkeypatch.setattr(fitting, "training_losses", spy)
    model = make_model(**weights, trainable=["decoder"], protocol="paper")
    engine = Engine(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1, **QUIET)
    engine.fit(model=model, datamodule=datamodule_of(data_root))
    evaluated = paper_class_name(model.asked_question(CATEGORY))
    assert evaluated != CATEGORY  # the two rules differ here, so the test can tell them apart
    assert seen == [(CATEGORY, object_settings())]  # washer: no entry in the original's tables
    engine.test(model=model, datamodule=datamodule_of(data_root))
    assert model.model.class_name == evaluated
