"""One model for all classes: MultiCategory's train set, per-sample class features, per-category tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_agpt.data import MultiCategory, make_synthetic_mvtec
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.llm_head import LLMHead
from anomalib_agpt.explanation.questions import default_question
from anomalib_agpt.model.anomaly_maps import zero_shot_logits
from anomalib_agpt.model.protocol import dataset_family
from anomalib_agpt.training import recipe
from anomalib_agpt.training.recipe import synthesis_settings

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

CATEGORIES = ("weave", "washer")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=CATEGORIES,
        num_train=3,
        num_test_good=1,
        num_test_defect=1,
        image_size=64,
    )


def multi(root: Path) -> MultiCategory:
    return MultiCategory(dataset="MVTecAD", root=root, categories=list(CATEGORIES), train_batch_size=4, num_workers=0)


def engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_train_set_is_the_union_of_the_categories_and_knows_each_sample_s(root: Path) -> None:
    datamodule = multi(root)
    datamodule.setup()
    expected = {}
    for category in CATEGORIES:
        single = MVTecAD(root=root, category=category, num_workers=0)
        single.setup()
        expected |= {str(path): category for path in single.train_data.samples.image_path}
    paths = [str(path) for path in datamodule.train_data.samples.image_path]
    assert sorted(paths) == sorted(expected)
    assert len(paths) == 6
    assert {path: datamodule.category_of(path) for path in paths} == expected
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, ImageBatch)
    assert [datamodule.category_of(path) for path in batch.image_path] == [expected[p] for p in batch.image_path]
    assert (datamodule.name, datamodule.category) == ("MVTecAD", "weave+washer")
    assert datamodule.val_dataloader() == []
    with pytest.raises(OptionError, match="test each category with its own datamodule"):
        datamodule.test_dataloader()


def test_all_categories_by_default_and_bad_options(root: Path) -> None:
    assert MultiCategory(dataset="visa", root=root).categories[0] == "candle"
    assert MultiCategory(root=root).category == "all"
    with pytest.raises(OptionError, match="not a datamodule"):
        MultiCategory(dataset="Nope", root=root)
    with pytest.raises(OptionError, match="twice"):
        MultiCategory(root=root, categories=["weave", "weave"])


def test_a_training_step_uses_each_sample_s_class(
    weights: dict[str, Any], root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    logits_of, batch_of = recipe.per_class_zero_shot_logits, recipe.make_synthetic_batch

    def logits_spy(model: Any, decoded: Any, class_names: Any) -> torch.Tensor:
        seen["decoded"] = [tokens.detach().clone() for tokens in decoded]
        seen["class_names"] = list(class_names)
        seen["logits"] = logits_of(model, decoded, class_names).detach()
        return logits_of(model, decoded, class_names)

    def batch_spy(images: torch.Tensor, paths: Any, settings: Any, *args: Any) -> Any:
        seen["paths"], seen["settings"] = list(paths), list(settings)
        return batch_of(images, paths, settings, *args)

    monkeypatch.setattr(recipe, "per_class_zero_shot_logits", logits_spy)
    monkeypatch.setattr(recipe, "make_synthetic_batch", batch_spy)
    model = make_model(**weights, trainable=["decoder"])
    engine(tmp_path, max_epochs=1, limit_train_batches=1).fit(model=model, datamodule=multi(root))

    categories = [Path(path).parts[-4] for path in seen["paths"]]
    assert set(categories) == set(CATEGORIES)  # a batch of 4 from 6 images holds both
    assert seen["class_names"] == categories + categories  # normals, then their synthetic twins
    assert seen["settings"] == [synthesis_settings("auto", category) for category in categories]
    features = {c: model.model.class_text_features(c) for c in CATEGORIES}
    assert not torch.allclose(features["weave"], features["washer"])
    for index, class_name in enumerate(seen["class_names"]):
        own = zero_shot_logits(seen["decoded"], features[class_name])[:, index]
        torch.testing.assert_close(seen["logits"][:, index], own, rtol=0, atol=1e-5)
        other = features["washer" if class_name == "weave" else "weave"]
        assert not torch.allclose(seen["logits"][:, index], zero_shot_logits(seen["decoded"], other)[:, index])


def test_a_multi_class_checkpoint_tests_on_each_category(weights: dict[str, Any], root: Path, tmp_path: Path) -> None:
    seed_everything(0)
    model = make_model(**weights, trainable=["decoder"], learning_rate=1e-2)
    engine(tmp_path, max_epochs=2).fit(model=model, datamodule=multi(root))
    checkpoint = next(tmp_path.rglob("model.ckpt"))
    assert "weave+washer" in checkpoint.parts
    for category in CATEGORIES:
        tested = make_model(**weights)
        datamodule = MVTecAD(root=root, category=category, eval_batch_size=4, num_workers=0)
        (results,) = engine(tmp_path / category).test(model=tested, datamodule=datamodule, ckpt_path=checkpoint)
        assert tested.model.class_name == category
        assert results
        assert all(math.isfinite(value) for value in results.values()), results


def test_the_answer_loss_asks_each_sample_about_its_class_with_its_class_s_reference(
    weights: dict[str, Any], root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    lm_loss, reference_map = LLMHead.lm_loss, recipe._reference_map

    def lm_loss_spy(self: LLMHead, embedding: Any, prompt_map: Any, questions: Any, answers: Any) -> Any:
        seen["questions"] = list(questions)
        return lm_loss(self, embedding, prompt_map, questions, answers)

    def reference_map_spy(memory: Any, features: Any, size: Any) -> torch.Tensor:
        seen["memories"] = memory
        return reference_map(memory, features, size)

    batch_of = recipe.make_synthetic_batch

    def batch_spy(images: torch.Tensor, paths: Any, *args: Any) -> Any:
        seen["paths"] = list(paths)
        return batch_of(images, paths, *args)

    monkeypatch.setattr(recipe, "make_synthetic_batch", batch_spy)
    monkeypatch.setattr(LLMHead, "lm_loss", lm_loss_spy)
    monkeypatch.setattr(recipe, "_reference_map", reference_map_spy)
    head = {"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)}
    model = make_model(**weights, **head, trainable=["decoder", "prompt_learner"], few_shot_prompt_probability=1.0)
    datamodule = multi(root)
    engine(tmp_path, max_epochs=1, limit_train_batches=1).fit(model=model, datamodule=datamodule)

    questions = seen["questions"]
    categories = [datamodule.category_of(path) for path in seen["paths"]]
    assert set(categories) == set(CATEGORIES)
    assert questions == [default_question(c) for c in categories] * 2  # normals, then their twins
    half = len(categories)
    memories = seen["memories"]
    assert len(memories) == half
    by_question = {}
    for question, memory in zip(questions[:half], memories, strict=True):
        assert by_question.setdefault(question, memory) is memory  # one reference per class
    assert len({id(m) for m in memories}) == len(CATEGORIES)
    assert set(model._training_references) == set(CATEGORIES)


def test_a_multi_class_train_set_counts_as_its_dataset_for_the_protocol(root: Path) -> None:
    assert dataset_family(multi(root)) == "mvtec"
    assert dataset_family(MultiCategory(dataset="Visa", root=root, categories=["candle"])) == "visa"
    assert dataset_family(MVTecAD(root=root, category="weave")) == "mvtec"
    assert dataset_family(None) is None
