"""Training with ``anomalib fit``: the loss falls, checkpoints stay lean, resume, delta round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.training.recipe import make_synthetic_batch, warmup_decay
from anomalib_agpt.training.synthesis import object_settings

from .conftest import FIXTURES, IMAGEBIND, PANDAGPT_DELTA, make_model

CATEGORY = "washer"


class LossRecorder(Callback):
    """Keeps every training loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory) -> MVTecAD:
    root = make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=(CATEGORY,),
        num_train=4,
        num_test_good=2,
        num_test_defect=1,
        image_size=96,
    )
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


class StopAfter(Callback):
    """Ends fit after ``epochs`` epochs, as an interruption would (the schedule keeps its full length)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(
    weights: dict[str, Any],
    datamodule: MVTecAD,
    root: Path,
    epochs: int,
    ckpt_path: Path | None = None,
    stop_after: int | None = None,
    **options: Any,
) -> tuple:
    seed_everything(0)
    recorder = LossRecorder()
    model = make_model(**weights, **({"trainable": ["decoder"], "learning_rate": 1e-2} | options))
    engine = Engine(
        default_root_dir=root,
        logger=False,
        max_epochs=epochs,
        callbacks=[recorder] + ([StopAfter(stop_after)] if stop_after else []),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, recorder.losses, engine


@pytest.fixture(scope="module")
def trained(weights: dict[str, Any], datamodule: MVTecAD, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("train")
    model, losses, engine = fit(weights, datamodule, root, epochs=8)
    checkpoint = root / "AnomalyGPT" / "MVTecAD" / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"model": model, "losses": losses, "checkpoint": checkpoint, "root": root, "engine": engine}


def test_training_is_one_class_and_clips_gradients(weights: dict[str, Any]) -> None:
    model = make_model(**weights, trainable=["decoder"])
    assert model.learning_type == LearningType.ONE_CLASS
    assert model.trainer_arguments == {"gradient_clip_val": 1.0}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"model.decoder.fc.{i}.{kind}" for i in range(4) for kind in ("weight", "bias")
    }


def test_llm_parts_need_the_head(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\['prompt_learner'\] belong to the explanation head; pass weights\.llm"):
        make_model(**weights, trainable=["decoder", "prompt_learner"])


def test_every_trainable_part_is_in_the_optimiser(weights: dict[str, Any], datamodule: MVTecAD, tmp_path: Path) -> None:
    head = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)}
    model = make_model(
        **weights,
        **head,
        trainable=["decoder", "prompt_learner", "llama_proj", "lora"],
        learning_rate=2e-3,
        weight_decay=0.02,
    )
    engine = Engine(
        default_root_dir=tmp_path,
        logger=False,
        max_epochs=1,
        limit_train_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    optimiser = engine.trainer.optimizers[0]
    assert type(optimiser) is torch.optim.AdamW
    for group in optimiser.param_groups:  # the options given, and the original's betas
        assert (group["betas"], group["weight_decay"], group["initial_lr"]) == ((0.9, 0.95), 0.02, 2e-3)
    optimised = {id(p) for group in optimiser.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert optimised == trainable
    head_module = model.model.llm_head
    for part in (head_module.prompt_learner, head_module.llama_proj):
        assert all(id(p) in optimised for p in part.parameters())
    assert any(id(p) in optimised for name, p in head_module.llm.named_parameters() if ".lora_" in name)


def test_short_fit_lowers_the_loss(trained: dict) -> None:
    losses = trained["losses"]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


def test_checkpoint_holds_trained_weights_and_optimizer_only(trained: dict) -> None:
    checkpoint = torch.load(trained["checkpoint"], weights_only=False)
    trained_keys = {k for k in checkpoint["state_dict"] if k.startswith("model.decoder.")}
    assert len(trained_keys) == 8
    assert not any("vision_encoder" in k or "text_encoder" in k for k in checkpoint["state_dict"])
    assert checkpoint["optimizer_states"]
    assert trained["checkpoint"].stat().st_size < IMAGEBIND.stat().st_size / 20
    restored = AnomalyGPT.load_from_checkpoint(trained["checkpoint"])
    for key in trained_keys:
        name = key.removeprefix("model.")
        torch.testing.assert_close(restored.model.state_dict()[name], trained["model"].model.state_dict()[name])


def test_resume_continues_from_the_checkpoint(
    trained: dict,
    weights: dict[str, Any],
    datamodule: MVTecAD,
    tmp_path: Path,
) -> None:
    _, losses, engine = fit(weights, datamodule, tmp_path, epochs=10, ckpt_path=trained["checkpoint"])
    assert len(losses) == 4  # epochs 8 and 9 only
    assert engine.trainer.current_epoch == 10
    assert losses[-1] < trained["losses"][0]


def test_delta_round_trip(trained: dict, weights: dict[str, Any], tmp_path: Path) -> None:
    path = trained["model"].save_anomalygpt_delta(tmp_path / "pytorch_model.pt")
    delta = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in delta.values())
    assert {k for k in delta if k.startswith("image_decoder.")} == {
        f"image_decoder.fc.{i}.{kind}" for i in range(4) for kind in ("weight", "bias")
    }
    assert any(k.startswith("prompt_learner.") for k in delta)  # carried over from the released delta
    reloaded = make_model(**{**weights, "anomalygpt_checkpoint": str(path)})
    for name, value in trained["model"].model.decoder.state_dict().items():
        torch.testing.assert_close(reloaded.model.decoder.state_dict()[name], value.half().float())


def test_synthetic_batch_keeps_normals_and_is_deterministic() -> None:
    images = torch.randn(2, 3, 64, 64)
    first = make_synthetic_batch(images, ["a.png", "b.png"], object_settings(), seed=3, epoch=1)
    again = make_synthetic_batch(images, ["a.png", "b.png"], object_settings(), seed=3, epoch=1)
    other = make_synthetic_batch(images, ["a.png", "b.png"], object_settings(), seed=3, epoch=2)
    assert torch.equal(first.images[:2], images)
    assert first.answers[:2] == ["No, there is no anomaly in the image."] * 2
    # a twin whose patches found no place stays normal (the synthesizer's rule); at least one is anomalous here
    assert all(a.startswith("Yes") or a == "No, there is no anomaly in the image." for a in first.answers[2:])
    assert any(a.startswith("Yes") for a in first.answers[2:])
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images[2:], other.images[2:])
    assert first.masks[:2].sum() == 0
    assert first.masks[2:].sum() > 0


def test_warmup_then_linear_decay() -> None:
    """DeepSpeed's WarmupDecayLR (log warm-up from 0 over at least 10 steps), then linear decay to 0."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_decay(optimizer, total_steps=14, warmup_ratio=0.2)  # int(2.8) < 10: 10 steps
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    warmup = [math.log(step + 1) / math.log(10) for step in range(10)]
    assert rates == pytest.approx([*warmup, 1.0, 0.75, 0.5, 0.25])


def test_head_parts_train_on_the_answer_loss(weights: dict[str, Any], datamodule: MVTecAD, tmp_path: Path) -> None:
    """prompt learner + LoRA learn from the answers; the checkpoint keeps them and not the LLM."""
    seed_everything(0)
    recorder = LossRecorder()
    head = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)}
    model = make_model(**weights, **head, trainable=["decoder", "prompt_learner", "lora"], learning_rate=1e-2)
    engine = Engine(
        default_root_dir=tmp_path,
        logger=False,
        max_epochs=6,
        callbacks=[recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    losses = recorder.losses
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    checkpoint_path = next(tmp_path.rglob("model.ckpt"))
    state = torch.load(checkpoint_path, weights_only=False)["state_dict"]
    head_keys = {k for k in state if k.startswith("model.llm_head.")}
    assert any(".prompt_learner." in k for k in head_keys)
    assert any(".lora_A." in k for k in head_keys)
    assert not any(".base_layer." in k or "embed_tokens" in k for k in head_keys)  # the LLM itself stays out
    restored = AnomalyGPT.load_from_checkpoint(checkpoint_path)
    assert restored.model.llm_head is None  # loads lazily, then takes the trained weights
    restored_head = restored.model.ensure_llm_head()
    trained_head = model.model.llm_head
    torch.testing.assert_close(restored_head.prompt_learner.base_prompts, trained_head.prompt_learner.base_prompts)
    trained_lora = {k: v for k, v in trained_head.state_dict().items() if ".lora_" in k}
    for key, value in trained_lora.items():
        torch.testing.assert_close(restored_head.state_dict()[key], value)
    delta = torch.load(model.save_anomalygpt_delta(tmp_path / "delta.pt"), weights_only=True)
    torch.testing.assert_close(delta["prompt_learner.base_prompts"], trained_head.prompt_learner.base_prompts.half())


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    weights: dict[str, Any],
    datamodule: MVTecAD,
    tmp_path: Path,
) -> None:
    straight, _, _ = fit(weights, datamodule, tmp_path / "straight", epochs=4)
    fit(weights, datamodule, tmp_path / "first", epochs=4, stop_after=2)
    checkpoint = next((tmp_path / "first").rglob("model.ckpt"))
    resumed, losses, _ = fit(weights, datamodule, tmp_path / "resumed", epochs=4, ckpt_path=checkpoint)
    assert len(losses) == 4  # epochs 2 and 3
    for name, value in straight.model.decoder.state_dict().items():
        torch.testing.assert_close(resumed.model.decoder.state_dict()[name], value, rtol=0, atol=1e-6)


def test_resume_equality_holds_with_the_head_and_the_instruction_mix(
    weights: dict[str, Any],
    datamodule: MVTecAD,
    tmp_path: Path,
) -> None:
    """Instruction samples are chosen by (seed, epoch, step) and the 1-shot prompts by the same key."""
    images = sorted((Path(datamodule.root) / CATEGORY / "train" / "good").glob("*.png"))
    turns = [
        [{"from": "human", "value": f"Describe image {i}."}, {"from": "gpt", "value": f"Image {i}."}] for i in range(3)
    ]
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"image": str(images[i]), "conversations": turns[i]} for i in range(3)]))
    options = {
        "llm": str(FIXTURES / "vicuna"),
        "pandagpt_checkpoint": str(PANDAGPT_DELTA),
        "trainable": ["decoder", "prompt_learner"],
        "instruction_data": instructions,
    }
    straight, straight_losses, _ = fit(weights, datamodule, tmp_path / "straight", epochs=2, **options)
    fit(weights, datamodule, tmp_path / "first", epochs=2, stop_after=1, **options)
    checkpoint = next((tmp_path / "first").rglob("model.ckpt"))
    resumed, losses, _ = fit(weights, datamodule, tmp_path / "resumed", epochs=2, ckpt_path=checkpoint, **options)
    assert losses == pytest.approx(straight_losses[2:], rel=1e-5)  # epoch 1's two steps
    for part in ("decoder", "llm_head.prompt_learner"):
        trained = straight.model.get_submodule(part).state_dict()
        for name, value in resumed.model.get_submodule(part).state_dict().items():
            torch.testing.assert_close(value, trained[name], rtol=0, atol=1e-6)


def test_bf16_mixed_training_runs_the_steps_under_autocast_and_learns(
    weights: dict[str, Any],
    datamodule: MVTecAD,
    tmp_path: Path,
) -> None:
    """Lightning's bf16-mixed plugin wraps the training steps in CPU autocast; the fp32 decoder still learns."""
    model = make_model(**weights, trainable=["decoder"], learning_rate=1e-2)
    before = model.model.decoder.fc[0].weight.detach().clone()
    seen: list[tuple[bool, torch.dtype, torch.dtype]] = []

    def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if model.trainer.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype))

    model.model.decoder.fc[0].register_forward_hook(record)
    engine = Engine(
        default_root_dir=tmp_path,
        logger=False,
        max_epochs=1,
        precision="bf16-mixed",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    assert len(seen) == 2  # 4 train images in batches of 2
    # autocast on, in bf16, and the decoder's matmul ran in bf16 (the weights stay fp32)
    assert seen == [(True, torch.bfloat16, torch.bfloat16)] * 2
    after = model.model.decoder.fc[0].weight.detach()
    assert after.dtype == torch.float32
    assert torch.isfinite(after).all()
    assert not torch.equal(before, after)


def test_tied_llm_weights_stay_out_of_checkpoints(weights: dict[str, Any], tmp_path: Path) -> None:
    """An LLM with tied input/output embeddings (as SmolLM2) writes neither alias."""
    from anomalib_agpt.model.presets import write_tiny_llm

    llm = write_tiny_llm(tmp_path / "llm", seed=0)
    model = make_model(**weights, llm=str(llm), trainable=["decoder", "prompt_learner", "llama_proj"])
    head = model.model.ensure_llm_head()
    head.llm.tie_weights()  # share lm_head and embed_tokens, as tied models do
    head.llm.lm_head.weight = head.llm.get_input_embeddings().weight
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert not any(k.endswith(("lm_head.weight", "embed_tokens.weight")) for k in checkpoint["state_dict"])


def test_two_process_ddp_on_cpu_keeps_ranks_in_step(tmp_path: Path) -> None:
    """Lightning DDP (gloo, 2 forked CPU processes): gradients are synchronised, both ranks end equal."""
    import json
    import os
    import subprocess
    import sys

    script = Path(__file__).parent / "ddp_fit.py"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(FIXTURES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world"] == 2 for report in reports)
    assert reports[0]["final"] == pytest.approx(reports[1]["final"], abs=1e-6)
    assert reports[0]["final"] != pytest.approx(reports[0]["initial"])
    assert list(tmp_path.rglob("model.ckpt"))
