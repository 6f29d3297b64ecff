"""The web demo without a browser: its handlers (map, mask, score, verdicts, answer; hostile input) and options."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils import read_image
from PIL import Image, ImageFile
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.apps.serve import ServeSession
from anomalib_agpt.apps.serve.display import DISPLAY_SIDE
from anomalib_agpt.apps.serve.handlers import SCORES_ONLY_MESSAGE
from anomalib_agpt.apps.serve.uploads import MB, limit_pil_decoding
from anomalib_agpt.explanation.conversation import default_question, is_anomalous_answer, multi_turn_prompt

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

QUERY = FIXTURES / "images" / "query_0_rgb_blob.png"  # 256 x 192: the model sees its centred square
OTHER = FIXTURES / "images" / "query_1_gray_scratch.png"
REFERENCE = FIXTURES / "images" / "reference_0_good.png"


@pytest.fixture
def session(weights: dict[str, Any]) -> ServeSession:
    """A fresh server over the reference set's model with its LLM (greedy, short answers): empty caches."""
    model = make_model(
        **weights,
        class_name="bottle",
        llm=str(FIXTURES / "vicuna"),
        pandagpt_checkpoint=str(PANDAGPT_DELTA),
        max_new_tokens=8,
    )
    return ServeSession(model)


@pytest.fixture
def scores_only(weights: dict[str, Any]) -> ServeSession:
    return ServeSession(make_model(**weights, class_name="bottle"), max_image_pixels=300 * 300)


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
    model = make_model(**weights, class_name=class_name).eval()
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
    resized = F.interpolate(expected.pred_mask.float().reshape(1, 1, 224, 224), size=(DISPLAY_SIDE,) * 2) > 0.5
    assert np.array_equal(analysis.pred_mask, resized[0, 0].numpy())
    question = default_question("bottle")  # an empty question box asks the class's default question
    assert len(analysis.history) == 1
    assert analysis.history[0][0] == question
    assert isinstance(analysis.answer, str)  # the fixture's random LLM may say nothing to the long default question
    # no fitted thresholds: no score verdict (anomalib would still label raw scores > 0.5), only the answer's
    assert analysis.threshold is None
    assert analysis.is_anomalous is None
    assert analysis.score_text == f"{analysis.score:.3f} (no fitted threshold)"
    assert all(v.source == "answer" for v in analysis.verdicts)
    assert "no score verdict" in analysis.message
    assert "stretched" in analysis.message  # the page says how to read the colours


def test_follow_up_reuses_the_encoding_and_sends_the_history(
    session: ServeSession, encodings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = session.analyse(str(QUERY), [], "bottle", "Is there any anomaly in the image?")
    assert encodings == [1]  # a fresh session: the upload is encoded once
    assert first.answer.strip()
    answer_verdict = f"answer: {'Anomalous' if is_anomalous_answer(first.answer) else 'Normal'}"
    assert [v.text for v in first.verdicts] == [answer_verdict]  # no fitted threshold: no score verdict
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
    assert [v.text for v in second.verdicts] == [answer_verdict]  # the verdict reads the first answer
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
    from anomalib_agpt.module.chat import AnomalyGPTChat

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


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` RGB pixels but holds a few bytes of data (tiny on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


@pytest.fixture
def decodes(scores_only: ServeSession, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every image PIL decodes and every model encoding, while the handlers run."""
    calls: list[str] = []
    load, encode = ImageFile.ImageFile.load, scores_only.model.model.encode

    def recording_load(image: ImageFile.ImageFile) -> Any:
        calls.append(f"decode {image.size}")
        return load(image)

    def recording_encode(images: torch.Tensor) -> Any:
        calls.append("encode")
        return encode(images)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    monkeypatch.setattr(scores_only.model.model, "encode", recording_encode)
    return calls


def hostile_requests(session: ServeSession, path: Path) -> list[Any]:
    """``path`` as the upload (preview and analyse) and as a reference image."""
    return [
        session.preview(str(path)),
        session.analyse(str(path), [], "bottle", ""),
        session.analyse(str(QUERY), [str(path)], "bottle", ""),
    ]


@pytest.mark.parametrize(("width", "height"), [(30_000, 30_000), (6_000, 6_000)])
def test_decompression_bombs_get_a_message_and_are_never_decoded(
    scores_only: ServeSession, decodes: list[str], tmp_path: Path, width: int, height: int
) -> None:
    """30000 x 30000: PIL itself refuses to open it; 6000 x 6000: under PIL's limit, over the server's (300 x 300)."""
    bomb = png_header(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 200
    for analysis in hostile_requests(scores_only, bomb):
        assert not analysis.ok
        assert "'bomb.png'" in analysis.message
        assert f"{width * height / 1e6:.1f} megapixels" in analysis.message
        assert "up to 0.1 megapixels (--max-image-pixels)" in analysis.message
        assert "Internal error" not in analysis.message
        assert analysis.heatmap is None
        assert analysis.image is None
    assert decodes == []  # neither PIL nor the model saw a pixel of it
    assert scores_only.analyse(str(QUERY), [], "bottle", "").ok  # and the next request works
    assert "encode" in decodes


def test_files_over_the_upload_limit_get_a_message_and_are_not_opened(
    weights: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = ServeSession(make_model(**weights, class_name="bottle"), max_upload_mb=0.2)  # the query (90 KB) fits
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 0.2 * MB > QUERY.stat().st_size
    opened: list[str] = []
    open_image = Image.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(path).name)
        return open_image(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    for analysis in hostile_requests(session, big):
        assert not analysis.ok
        assert "'big.png'" in analysis.message
        assert "up to 0.2 MB (--max-upload-mb)" in analysis.message
        assert analysis.heatmap is None
    assert "big.png" not in opened  # refused by its size alone


def test_limit_pil_decoding_makes_pil_refuse_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    bomb = png_header(tmp_path / "bomb.png", 6_000, 6_000)
    with Image.open(bomb) as image:  # PIL's own default lets 36 MP through
        assert image.size == (6_000, 6_000)
    limit_pil_decoding(10_000_000)
    with pytest.raises(Image.DecompressionBombError), Image.open(bomb):
        pass


def test_the_session_refuses_limits_that_are_not_positive(weights: dict[str, Any]) -> None:
    from anomalib_agpt.errors import OptionError

    model = make_model(**weights)
    for limits in ({"max_image_pixels": 0}, {"max_upload_mb": -1.0}):
        with pytest.raises(OptionError, match="must be positive"):
            ServeSession(model, **limits)


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


def test_serve_options_dashed_underscored_and_from_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anomalib_agpt.apps.serve.app import parse_args

    for name in ("ANOMALIB_AGPT_IMAGEBIND", "ANOMALIB_AGPT_CHECKPOINT", "ANOMALIB_AGPT_PANDAGPT"):
        monkeypatch.delenv(name, raising=False)
    defaults = parse_args([])
    assert (defaults.port, defaults.max_upload_mb, defaults.max_image_pixels) == (7860, 20.0, 25_000_000)
    assert defaults.imagebind_checkpoint is None
    assert isinstance(defaults.demo_dir, Path)
    assert not hasattr(defaults, "config")
    dashed = parse_args(["--imagebind-checkpoint", "ib.pth", "--vision-heads", "4", "--max-upload-mb", "2.5"])
    underscored = parse_args(["--imagebind_checkpoint", "ib.pth", "--vision_heads=4", "--max_upload_mb=2.5"])
    assert vars(dashed) == vars(underscored)
    assert (dashed.imagebind_checkpoint, dashed.vision_heads, dashed.max_upload_mb) == ("ib.pth", 4, 2.5)

    config = tmp_path / "serve.yaml"
    config.write_text("vision_heads: 4\ntext_heads: 2\nclass_name: metal nut\nport: 8000\nmax_upload_mb: 5\n")
    args = parse_args(["--config", str(config), "--port", "9000"])  # later options override the file
    assert (args.vision_heads, args.text_heads, args.class_name, args.port, args.max_upload_mb) == (
        4,
        2,
        "metal nut",
        9000,
        5.0,
    )
    with pytest.raises(SystemExit) as printed:
        parse_args(["--config", str(config), "--print_config"])
    assert printed.value.code in (0, None)
    assert "vision_heads: 4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--vision-heads", "x"], "error: --vision-heads: expected an integer, got x"),
        (["--text_heads=1.5"], "error: --text_heads: expected an integer, got 1.5"),
        (["--port", "http"], "error: --port: expected an integer, got http"),
        (["--port", "0"], "error: --port: expected 1-65535, got 0"),
        (["--max-upload-mb", "0"], "error: --max-upload-mb: expected a positive number, got 0.0"),
        (["--max_new_tokens=-3"], "error: --max_new_tokens: expected a positive number, got -3"),
        (["--bogus"], "error: Unrecognized arguments: --bogus"),
        (["--config", "missing.yaml"], "error: --config missing.yaml: no such file"),
    ],
)
def test_serve_option_mistakes_are_one_short_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage, a tip and one ``error:`` line naming the option as typed (as every command does); exit status 2."""
    from anomalib_agpt.apps.serve.app import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert not captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 3, captured.err  # no type dump
    assert lines[0].startswith("usage: anomalib-agpt serve [--config FILE]")
    assert lines[-1].startswith(expected)
    assert "Traceback" not in captured.err


def test_serve_config_file_mistakes_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value or an unknown name in ``--config`` is one line naming the key; dashed keys are accepted."""
    from anomalib_agpt.apps.serve.app import parse_args

    config = tmp_path / "serve.yaml"
    config.write_text("max-upload-mb: 3\nport: 8000\n")
    assert (parse_args(["--config", str(config)]).max_upload_mb, parse_args(["-c", str(config)]).port) == (3.0, 8000)
    for text, expected in (
        ("port: http\n", "error: port (config file): expected an integer, got http"),
        ("port: 70000\n", "error: port (config file): expected 1-65535, got 70000"),
        ("prot: 80\n", f"error: --config {config}: unknown option(s) prot; expected any of: "),
    ):
        config.write_text(text)
        with pytest.raises(SystemExit) as exited:
            parse_args(["--config", str(config)])
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(expected)


def test_verdict_badges_on_the_page_are_labelled() -> None:
    from anomalib_agpt.apps.serve.app import verdict_html
    from anomalib_agpt.apps.serve.handlers import Analysis

    assert verdict_html(Analysis()) == ""  # nothing analysed: nothing shown
    no_threshold = verdict_html(Analysis(score=0.9, history=[("Is there an anomaly?", "No, it looks fine.")]))
    assert "answer: Normal" in no_threshold
    assert "threshold:" not in no_threshold  # no score verdict without a fitted threshold ...
    assert "no score verdict" in no_threshold  # ... and the page says so
    both = verdict_html(Analysis(score=0.9, threshold=0.5, history=[("q", "Yes, a crack."), ("Where?", "Top.")]))
    assert 'class="badge anomalous">answer: Anomalous<' in both  # the first answer (to the analysed question)
    assert 'class="badge anomalous">score &gt; threshold: Anomalous<' in both
    scores_only = verdict_html(Analysis(score=0.2, threshold=0.5))
    assert "answer:" not in scores_only
    assert 'class="badge normal">score ≤ threshold: Normal<' in scores_only


def test_uploads_reach_the_handlers_as_paths() -> None:
    from anomalib_agpt.apps.serve.app import upload_path, upload_paths

    file_data = {"path": "/tmp/gradio/abc/bottle.png", "orig_name": "bottle.png", "meta": {"_type": "gradio.FileData"}}
    assert upload_path(file_data) == "/tmp/gradio/abc/bottle.png"
    assert upload_path("/x/y.png") == "/x/y.png"
    assert upload_path(None) is None
    assert upload_paths([file_data, file_data]) == [file_data["path"]] * 2
    assert upload_paths(None) == []


def test_serve_launches_quietly_with_the_upload_limit_and_says_where(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Gradio share hint (quiet), analytics off, uploads capped, PIL capped, and our own line with the URL."""
    from types import SimpleNamespace

    from anomalib_agpt.apps.serve import app, models

    launched: dict[str, Any] = {}

    class FakePage:
        local_url = "http://127.0.0.1:7861/"

        def queue(self, **_: Any) -> FakePage:
            return self

        def launch(self, **kwargs: Any) -> None:
            launched.update(kwargs)

        def block_thread(self) -> None:
            launched["blocked"] = True

    fake_gradio = SimpleNamespace(themes=SimpleNamespace(Default=lambda **_: "theme"))
    served = SimpleNamespace(model="model", example_folder=None)
    sessions: list[dict[str, Any]] = []
    monkeypatch.setattr(app, "import_gradio", lambda: fake_gradio)
    monkeypatch.setattr(models, "load_served_model", lambda options: served)
    monkeypatch.setattr(app, "ServeSession", lambda model, **limits: sessions.append(limits))
    monkeypatch.setattr(app, "build_app", lambda session, served: FakePage())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    app.main(["--port", "7861", "--max-upload-mb", "3", "--max-image-pixels", "1000000"])
    assert launched["quiet"] is True
    assert launched["share"] is False
    assert launched["server_name"] == "127.0.0.1"
    assert launched["max_file_size"] == 3 * MB
    assert launched["blocked"]
    assert sessions == [{"max_image_pixels": 1_000_000, "max_upload_mb": 3.0}]
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    out = capsys.readouterr().out
    assert "running on http://127.0.0.1:7861/" in out
    assert "share=True" not in out


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
    with pytest.raises(FileNotFoundError, match=r"--checkpoint 'missing\.ckpt' does not exist"):
        load_served_model(ModelOptions(checkpoint="missing.ckpt"))


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
    engine.fit(model=make_model(**weights, k_shot=1), datamodule=datamodule)
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
    # fitted thresholds: a score verdict, labelled as one, and the label anomalib gives
    assert session.threshold == pytest.approx(0.5)
    assert analysis.is_anomalous == bool(expected.pred_label)
    assert analysis.score_text == f"{analysis.score:.3f} (threshold 0.500)"
    label = "score > threshold: Anomalous" if analysis.is_anomalous else "score ≤ threshold: Normal"
    assert [v.text for v in analysis.verdicts] == [label]  # scores only: no answer, no answer verdict
    assert "no score verdict" not in analysis.message.lower()
