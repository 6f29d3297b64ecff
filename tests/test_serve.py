"""The web demo's request handlers (no browser, no Gradio): image in, map/mask/score/answer out; history; bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils import read_image
from PIL import Image
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.apps.serve import ServeSession
from anomalib_agpt.apps.serve.handlers import DISPLAY_SIDE, SCORES_ONLY_MESSAGE
from anomalib_agpt.explanation.conversation import default_question, multi_turn_prompt

from .conftest import FIXTURES, PANDAGPT_DELTA

QUERY = FIXTURES / "images" / "query_0_rgb_blob.png"  # 256 x 192: the model sees its centred square
OTHER = FIXTURES / "images" / "query_1_gray_scratch.png"
REFERENCE = FIXTURES / "images" / "reference_0_good.png"


@pytest.fixture
def session(weights: dict[str, Any]) -> ServeSession:
    """A fresh server over the reference set's model with its LLM (greedy, short answers): empty caches."""
    model = AnomalyGPT(
        **weights,
        class_name="bottle",
        llm=str(FIXTURES / "vicuna"),
        pandagpt_checkpoint=str(PANDAGPT_DELTA),
        max_new_tokens=8,
    )
    return ServeSession(model)


@pytest.fixture
def scores_only(weights: dict[str, Any]) -> ServeSession:
    return ServeSession(AnomalyGPT(**weights, class_name="bottle"), max_image_pixels=300 * 300)


@pytest.fixture
def encodings(session: ServeSession, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts query encodings (the references go through ``set_references`` instead)."""
    calls: list[int] = []
    encode = session.model.model.encode

    def counting(images: torch.Tensor) -> Any:
        calls.append(images.shape[0])
        return encode(images)

    monkeypatch.setattr(session.model.model, "encode", counting)
    return calls


def forward(
    weights: dict[str, Any], path: Path, class_name: str = "bottle", reference: Path | None = None
) -> InferenceBatch:
    """What a separate AnomalyGPT's own forward (pre-processor, model, post-processor) gives for ``path``."""
    model = AnomalyGPT(**weights, class_name=class_name).eval()
    with torch.no_grad():
        if reference is not None:
            model.model.set_references(model.pre_processor.transform(read_image(reference, as_tensor=True)[None]))
        return model(read_image(path, as_tensor=True)[None])


def test_analyse_shows_view_heatmap_mask_score_and_answer(session: ServeSession, weights: dict[str, Any]) -> None:
    analysis = session.analyse(str(QUERY), [], "bottle", "")
    assert analysis.ok
    for image in (analysis.image, analysis.heatmap, analysis.mask):
        assert image is not None
        assert image.shape == (DISPLAY_SIDE, DISPLAY_SIDE, 3)
        assert image.dtype == np.uint8
    assert not np.array_equal(analysis.heatmap, analysis.image)
    expected = forward(weights, QUERY)
    assert analysis.score == pytest.approx(float(expected.pred_score), abs=1e-5)
    assert analysis.is_anomalous == bool(expected.pred_label)
    resized = F.interpolate(expected.pred_mask.float().reshape(1, 1, 224, 224), size=(DISPLAY_SIDE,) * 2) > 0.5
    assert np.array_equal(analysis.pred_mask, resized[0, 0].numpy())
    question = default_question("bottle")  # an empty question box asks the class's default question
    assert len(analysis.history) == 1
    assert analysis.history[0][0] == question
    assert isinstance(analysis.answer, str)
    assert analysis.answer.strip()
    assert analysis.score_text.startswith(f"{analysis.score:.3f} (")
    assert "stretched" in analysis.message  # no fitted thresholds: the page says how to read the colours


def test_follow_up_reuses_the_encoding_and_sends_the_history(
    session: ServeSession, encodings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = session.analyse(str(QUERY), [], "bottle", "Is there any anomaly in the image?")
    assert encodings == [1]  # a fresh session: the upload is encoded once
    prompts: list[str] = []
    llm_inputs = session.model.model.llm_inputs

    def recording(features: Any, anomaly_map: torch.Tensor, prompt: str) -> Any:
        prompts.append(prompt)
        return llm_inputs(features, anomaly_map, prompt)

    monkeypatch.setattr(session.model.model, "llm_inputs", recording)
    encoded = len(encodings)
    second = session.follow_up(str(QUERY), [], "bottle", "Where is it?", first.history)
    assert second.ok, second.message
    assert len(encodings) == encoded  # the follow-up reuses the encoding
    assert second.history[:1] == first.history
    assert second.history[1][0] == "Where is it?"
    assert prompts == [multi_turn_prompt(first.history, "Where is it?")]
    assert first.history[0][0] in prompts[0]
    assert first.history[0][1] in prompts[0]
    assert second.score == first.score
    # the page's history is what counts: an empty one starts over
    session.follow_up(str(QUERY), [], "bottle", "Where is it?", [])
    assert prompts[-1] == "Where is it?"


def test_a_new_upload_is_encoded_once_and_analysing_starts_a_new_conversation(
    session: ServeSession, encodings: list[int]
) -> None:
    first = session.analyse(str(OTHER), [], "bottle", "q1")
    second = session.analyse(str(OTHER), [], "bottle", "q2")
    assert encodings == [1]
    assert [q for q, _ in second.history] == ["q2"]
    assert first.score == second.score


def test_class_name_switch_changes_text_features_and_score(
    session: ServeSession, encodings: list[int], weights: dict[str, Any]
) -> None:
    bottle = session.analyse(str(QUERY), [], "bottle", "")
    features = session.model.model.text_features.clone()
    screw = session.analyse(str(QUERY), [], "screw", "")
    assert session.model.model.class_name == "screw"
    assert not torch.allclose(features, session.model.model.text_features)
    assert bottle.score == pytest.approx(float(forward(weights, QUERY, "bottle").pred_score), abs=1e-5)
    assert screw.score == pytest.approx(float(forward(weights, QUERY, "screw").pred_score), abs=1e-5)
    assert screw.score != pytest.approx(bottle.score, abs=1e-6)
    assert screw.history[0][0] == default_question("screw")
    assert session.question_for("") == default_question("bottle")  # empty: the model's own class
    back = session.analyse(str(QUERY), [], "", "")
    assert back.score == pytest.approx(bottle.score, abs=1e-6)
    assert encodings == [1]  # the switches recompute the map from the kept features


def test_references_switch_to_few_shot_and_back(session: ServeSession, weights: dict[str, Any]) -> None:
    zero_shot = session.analyse(str(QUERY), [], "bottle", "")
    assert session.model.model.num_reference_images == 0
    few_shot = session.analyse(str(QUERY), [str(REFERENCE)], "bottle", "")
    assert few_shot.ok, few_shot.message
    assert session.model.model.num_reference_images == 1
    assert zero_shot.score == pytest.approx(float(forward(weights, QUERY).pred_score), abs=1e-5)
    assert few_shot.score == pytest.approx(float(forward(weights, QUERY, reference=REFERENCE).pred_score), abs=1e-5)
    assert few_shot.score != pytest.approx(zero_shot.score, abs=1e-4)
    memory = session.model.model.reference_memory
    session.analyse(str(QUERY), [str(REFERENCE)], "bottle", "")
    assert session.model.model.reference_memory is memory  # unchanged references are not encoded again
    again = session.analyse(str(QUERY), None, "bottle", "")
    assert session.model.model.num_reference_images == 0
    assert again.score == pytest.approx(zero_shot.score, abs=1e-6)


def test_scores_only_mode_shows_map_and_says_explanations_need_an_llm(
    scores_only: ServeSession, weights: dict[str, Any]
) -> None:
    assert not scores_only.explains
    analysis = scores_only.analyse(str(QUERY), [], "bottle", "Is there any anomaly?")
    assert analysis.heatmap is not None
    assert analysis.mask is not None
    assert analysis.score == pytest.approx(float(forward(weights, QUERY).pred_score), abs=1e-5)
    assert analysis.history == []
    assert SCORES_ONLY_MESSAGE in analysis.message
    assert "--llm" in analysis.message
    follow_up = scores_only.follow_up(str(QUERY), [], "bottle", "Where?", [])
    assert not follow_up.ok
    assert "Explanations need an LLM" in follow_up.message


def test_chat_without_llm_rescores_from_the_kept_features(scores_only: ServeSession, weights: dict[str, Any]) -> None:
    """The chat extension the page builds on: scores-only chats, and a new map without encoding again."""
    from anomalib_agpt.explanation.chat import AnomalyGPTChat

    model = scores_only.model
    model.model.set_class_name("bottle")
    chat = AnomalyGPTChat(model, QUERY, load_llm=False)
    bottle = float(chat.scores.pred_score)
    assert bottle == pytest.approx(float(forward(weights, QUERY, "bottle").pred_score), abs=1e-5)
    model.model.set_class_name("screw")
    screw = float(chat.rescore().pred_score)
    assert screw == pytest.approx(float(forward(weights, QUERY, "screw").pred_score), abs=1e-5)
    assert screw != pytest.approx(bottle, abs=1e-6)
    assert float(chat.scores.pred_score) == screw  # rescore keeps the new scores
    with pytest.raises(ValueError, match="explanations need llm"):
        chat.ask("Is there any anomaly?")


def bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / {"text": "notes.png", "truncated": "cut.png", "huge": "huge.png"}[kind]
    if kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        path.write_bytes(QUERY.read_bytes()[:300])
    else:
        Image.new("RGB", (400, 400), (128, 128, 128)).save(path)  # over the fixture's 300 x 300 limit
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("text", "is not an image file"), ("truncated", "cannot read image"), ("huge", "megapixels")],
)
def test_bad_files_get_a_message(scores_only: ServeSession, tmp_path: Path, kind: str, expected: str) -> None:
    path = bad_file(tmp_path, kind)
    for analysis in (
        scores_only.preview(str(path)),
        scores_only.analyse(str(path), [], "bottle", ""),
        scores_only.analyse(str(QUERY), [str(path)], "bottle", ""),  # as a reference image
    ):
        assert not analysis.ok
        assert expected in analysis.message
        assert "Traceback" not in analysis.message
        assert analysis.heatmap is None
    assert scores_only.analyse(str(QUERY), [], "bottle", "").ok  # and the next request works


def test_missing_inputs_and_bad_text_get_a_message(session: ServeSession) -> None:
    cases = [
        (session.analyse(None, [], "bottle", ""), "No image"),
        (session.analyse(str(QUERY), [], "<script>", ""), "Class name"),
        (session.analyse(str(QUERY), [], "bottle", "x" * 5000), "at most"),
        (session.follow_up(str(QUERY), [], "bottle", "   ", []), "The question is empty"),
        (session.follow_up(str(QUERY), [], "bottle", "", []), "The question is empty"),
        (session.follow_up(None, [], "bottle", "Where?", []), "No image"),
        (session.follow_up(str(QUERY), [], "bottle", "Where?", [("only one",)]), "malformed"),
    ]
    for analysis, expected in cases:
        assert not analysis.ok
        assert expected in analysis.message
    assert session.preview(None).message == ""


def test_an_unexpected_failure_is_a_message_and_the_session_keeps_serving(
    session: ServeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(session.model.model, "llm_inputs", broken)
        analysis = session.analyse(str(QUERY), [], "bottle", "")
    assert not analysis.ok
    assert analysis.message.startswith("Internal error (RuntimeError: boom)")
    assert session.analyse(str(QUERY), [], "bottle", "").ok


# --------------------------------------------------------------------------------------------
# The command: models, options, Gradio as an optional extra
# --------------------------------------------------------------------------------------------
def test_importing_the_package_and_the_serve_module_does_not_import_gradio() -> None:
    code = (
        "import sys, anomalib_agpt, anomalib_agpt.apps.serve, anomalib_agpt.apps.serve.app, anomalib_agpt.apps.cli; "
        "assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_without_gradio_serve_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_agpt.apps.serve import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(SystemExit, match=r"pip install 'anomalib-agpt\[serve\]'"):
        app.main([])


def test_options_bind_to_loopback_by_default_and_state_the_risk(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_agpt.apps.serve.app import HOST_HELP, is_loopback, parse_args

    monkeypatch.setenv("ANOMALIB_AGPT_IMAGEBIND", "/weights/imagebind_huge.pth")
    args = parse_args([])
    assert args.host == "127.0.0.1"
    assert args.imagebind_checkpoint == "/weights/imagebind_huge.pth"
    assert "0.0.0.0" in HOST_HELP
    assert "NO authentication" in HOST_HELP
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.5")


def test_weights_without_llm_are_served_scores_only(weights: dict[str, Any], tmp_path: Path) -> None:
    from anomalib_agpt.apps.serve.models import ModelOptions, load_served_model

    options = ModelOptions(**weights, examples=str(FIXTURES / "images"), class_name="bottle")
    served = load_served_model(options)
    assert "AnomalyGPT weights `imagebind.pth` + `anomalygpt_delta.pt`" in served.description
    assert "zero-shot" in served.description
    assert "**Scores only**" in served.description
    assert [Path(row[0]).name for row in served.examples] == sorted(p.name for p in (FIXTURES / "images").iterdir())
    assert all(row[1] == "bottle" for row in served.examples)
    with pytest.raises(ValueError, match="need a model"):
        load_served_model(ModelOptions(llm="vicuna", demo_dir=tmp_path))


def test_a_trained_checkpoint_is_served_with_its_references_and_thresholds(
    weights: dict[str, Any], tmp_path: Path
) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_agpt.apps.serve.models import ModelOptions, load_served_model
    from anomalib_agpt.data import make_synthetic_mvtec

    root = make_synthetic_mvtec(
        tmp_path / "data", categories=("tablet",), num_train=1, num_test_good=1, num_test_defect=1
    )
    datamodule = MVTecAD(root=root, category="tablet", eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, devices=1, enable_progress_bar=False)
    engine.fit(model=AnomalyGPT(**weights, k_shot=1), datamodule=datamodule)
    checkpoint = next(tmp_path.rglob("model.ckpt"))
    served = load_served_model(ModelOptions(checkpoint=str(checkpoint)))
    assert "trained checkpoint `model.ckpt`" in served.description
    assert "1-shot" in served.description
    session = ServeSession(served.model)
    assert session.calibrated
    assert session.default_class_name == "tablet"
    analysis = session.analyse(str(QUERY), [], "", "")
    assert analysis.ok
    restored = AnomalyGPT.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        expected = restored(read_image(QUERY, as_tensor=True)[None])
    assert analysis.score == pytest.approx(float(expected.pred_score), abs=1e-5)
    assert "normalised" in analysis.message
