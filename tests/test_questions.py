"""Questions per class: the original's class-name rule, user mappings and files, the original script read unexecuted."""

from __future__ import annotations

import importlib
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from anomalib_agpt.errors import MissingFileError, OptionError, OptionTypeError
from anomalib_agpt.explanation.questions import (
    ANOMALY_QUESTION,
    CLASS_DESCRIPTIONS,
    GENERIC_DESCRIPTION,
    default_question,
    load_questions,
    paper_class_name,
    question_for,
)

SUFFIX = " Is there any anomaly in the image?"


# --------------------------------------------------------------------------------------------
# The original's class-name rule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "name"),
    [
        ("Is this textile torn?", "tile"),  # "textile" contains "tile"
        ("A close-up of pcb3 from the side.", "pcb"),
        ("Here is a pipe fryum on a tray.", "fryum"),  # "fryum" comes before "pipe fryum" in the list
        ("Look at this object.", "object"),
        ("An object that is a candle.", "object"),  # "object" comes before "candle"
        ("Is there any anomaly in the image?", "object"),  # no listed name
        ("", "object"),
        ("A metal nut, seen from above.", "metal nut"),
        ("A metal_nut, seen from above.", "object"),  # the list spells it with a space
        ("A pill next to a capsule.", "capsule"),  # "capsule" comes before "pill"
        ("Several capsules in a row.", "capsule"),
        ("A candle behind a bottle.", "bottle"),
        ("A piece of chewing gum.", "object"),  # the list spells it "chewinggum"
        ("A piece of chewinggum.", "chewinggum"),
        ("Two pieces of macaroni2.", "macaroni"),
        ("A Bottle on a shelf.", "object"),  # case matters
        ("Some spilled milk.", "pill"),  # "spilled" contains "pill"
        ("A screwdriver.", "screw"),
        ("Old woodwork.", "wood"),
        ("A whole hazelnut.", "hazelnut"),
        ("A cable car over a grid.", "cable"),
        ("A cashew and a fryum.", "cashew"),
    ],
)
def test_paper_class_name_takes_the_first_listed_name_found(question: str, name: str) -> None:
    assert paper_class_name(question) == name


def test_old_import_paths_still_work() -> None:
    old_path = importlib.import_module("anomalib_agpt.conversation").default_question  # 0.1's module path
    from anomalib_agpt.explanation.conversation import ANOMALY_QUESTION as MOVED_CONSTANT
    from anomalib_agpt.explanation.conversation import default_question as conversation_path
    from anomalib_agpt.model.prompting import resolve_original_class_name

    assert old_path is conversation_path is default_question
    assert MOVED_CONSTANT == ANOMALY_QUESTION == SUFFIX.strip()
    assert resolve_original_class_name("A pill next to a capsule.") == "capsule"


# --------------------------------------------------------------------------------------------
# The project's own questions
# --------------------------------------------------------------------------------------------
def test_default_question_spellings_and_fallback() -> None:
    assert default_question("metal_nut") == default_question("metal nut")
    assert "metal nut" in default_question("metal_nut")
    assert default_question("pipe_fryum") == default_question("pipe fryum")
    assert GENERIC_DESCRIPTION in default_question("widget")
    assert "widget" in default_question("widget")
    for name in [*CLASS_DESCRIPTIONS, "widget"]:
        assert default_question(name).endswith(SUFFIX)


@pytest.mark.parametrize("name", [*CLASS_DESCRIPTIONS, "widget", "object"])
def test_default_question_adds_no_class_name_that_would_win(name: str) -> None:
    """The framing and descriptions name no listed class, so the rule reads the class name itself."""
    assert paper_class_name(default_question(name)) == paper_class_name(name)


def test_default_question_class_names_by_hand() -> None:
    expected = {"capsules": "capsule", "pcb3": "pcb", "pipe_fryum": "fryum", "macaroni1": "macaroni"}
    expected |= {"chewinggum": "chewinggum", "widget": "object", "metal_nut": "metal nut", "candle": "candle"}
    for category, name in expected.items():
        assert paper_class_name(default_question(category)) == name, category


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def test_no_project_text_repeats_the_originals_sentence(expected: dict[str, Any]) -> None:
    """The fixture's question is the original's one known sentence (bottle): no project text reuses it."""
    original = expected["question"]
    assert original.endswith(SUFFIX)
    description = original[: -len(SUFFIX)]
    own = [default_question(name) for name in [*CLASS_DESCRIPTIONS, "widget"]]
    own += [*CLASS_DESCRIPTIONS.values(), GENERIC_DESCRIPTION]
    assert original not in own
    pieces = [piece.strip() for piece in re.split(r"[.,]", description) if len(piece.split()) >= 3]
    assert pieces  # "This is a photo of a bottle for anomaly detection", "which should be round", ...
    for text in own:
        for piece in pieces:
            assert piece.lower() not in text.lower(), (piece, text)
    # No run of four words of the original's sentence appears in any project text.
    original_words = words(description)
    runs = {tuple(original_words[i : i + 4]) for i in range(len(original_words) - 3)}
    for text in own:
        text_words = words(text.removesuffix(SUFFIX))
        assert not runs & {tuple(text_words[i : i + 4]) for i in range(len(text_words) - 3)}, text


# --------------------------------------------------------------------------------------------
# Mappings and files
# --------------------------------------------------------------------------------------------
def test_mapping_is_taken_verbatim() -> None:
    mapping = {"pipe_fryum": "Made-up question one?", "my_widget": "  Made-up question two?  "}
    questions = load_questions(mapping)
    assert questions == mapping
    assert questions is not mapping
    assert load_questions(None) == {}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"bottle": ""}, "the question for 'bottle' is '', expected a non-empty string"),
        ({"bottle": 3}, "the question for 'bottle' is 3"),
        ({1: "Why?"}, "the category 1 is not a non-empty string"),
    ],
)
def test_bad_mappings_are_refused(mapping: dict, message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        load_questions(mapping)


def test_yaml_and_json_files(tmp_path: Path) -> None:
    mapping = {"pipe_fryum": "Made-up pipe question?", "metal nut": "Made-up nut question?"}
    yaml_file = tmp_path / "questions.yaml"
    yaml_file.write_text('pipe_fryum: "Made-up pipe question?"\nmetal nut: Made-up nut question?\n')
    yml_file = tmp_path / "questions.yml"
    yml_file.write_text(yaml_file.read_text())
    json_file = tmp_path / "questions.json"
    json_file.write_text(json.dumps(mapping))
    assert load_questions(yaml_file) == mapping
    assert load_questions(str(yml_file)) == mapping
    assert load_questions(json_file) == mapping


FAKE_LITERAL_SCRIPT = """
    from pathlib import Path
    Path("{marker}").write_text("ran")
    import nonexistent_module_proving_this_is_not_run
    raise SystemExit("this script must never run")

    settings = {{"device": "cuda", "precision": "fp16"}}  # unrelated dict of strings
    sizes = {{"bottle": 1, "cable": 2}}  # not strings: never a candidate
    made_up_sentences = {{
        'bottle': 'Made-up sentence about a bottle.',
        'metal_nut': 'Made-up sentence about a metal nut.',
        "pipe fryum": "Made-up sentence " "split over two literals.",
        'pcb3': 'Made-up sentence about pcb3.',
    }}
    for name in made_up_sentences:
        print(name)
"""

FAKE_SUBSCRIPT_SCRIPT = """
    import nonexistent_module_proving_this_is_not_run

    paths = {{}}
    paths['root'] = '/data/somewhere'  # unrelated dict of strings, built the same way


    def main():
        sentences = {{}}
        sentences['candle'] = 'Made-up sentence about candles.'
        sentences['pipe_fryum'] = "Made-up sentence about a pipe."
        sentences['chewinggum'] = 'Made-up sentence about chewing gum.'
        sentences[some_variable] = 'skipped: not a constant key'
        sentences['macaroni1'] = some_function()
        raise SystemExit(open("{marker}", "w"))


    raise SystemExit("this script must never run")
"""


def write_script(folder: Path, template: str) -> Path:
    """The fake script; running it (or importing it) would create ``ran.txt`` or fail on its import."""
    script = folder / "test_mvtec.py"
    script.write_text(textwrap.dedent(template.format(marker=folder / "ran.txt")))
    return script


def test_original_script_dict_literal_is_read_not_run(tmp_path: Path) -> None:
    questions = load_questions(write_script(tmp_path, FAKE_LITERAL_SCRIPT))
    assert not (tmp_path / "ran.txt").exists()
    assert questions == {
        "bottle": "Made-up sentence about a bottle. Is there any anomaly in the image?",
        "metal_nut": "Made-up sentence about a metal nut. Is there any anomaly in the image?",
        "pipe fryum": "Made-up sentence split over two literals. Is there any anomaly in the image?",
        "pcb3": "Made-up sentence about pcb3. Is there any anomaly in the image?",
    }
    assert question_for("metal_nut", questions) == questions["metal_nut"]
    assert question_for("pipe_fryum", questions) == questions["pipe fryum"]
    assert paper_class_name(question_for("pcb3", questions) or "") == "pcb"
    assert paper_class_name(question_for("metal_nut", questions) or "") == "metal nut"
    assert paper_class_name(questions["pipe fryum"]) == "object"  # its made-up sentence names no listed class


def test_original_script_subscript_assignments_are_read_not_run(tmp_path: Path) -> None:
    questions = load_questions(str(write_script(tmp_path, FAKE_SUBSCRIPT_SCRIPT)))
    assert not (tmp_path / "ran.txt").exists()
    assert questions == {
        "candle": "Made-up sentence about candles. Is there any anomaly in the image?",
        "pipe_fryum": "Made-up sentence about a pipe. Is there any anomaly in the image?",
        "chewinggum": "Made-up sentence about chewing gum. Is there any anomaly in the image?",
    }
    assert question_for("pipe fryum", questions) == questions["pipe_fryum"]
    assert question_for("macaroni1", questions) is None


def test_a_single_dict_of_strings_is_taken_whatever_its_keys(tmp_path: Path) -> None:
    script = tmp_path / "test_custom.py"
    script.write_text("d = {}\nd['gadget'] = 'Made-up gadget sentence.'\n")
    assert load_questions(script) == {"gadget": "Made-up gadget sentence. Is there any anomaly in the image?"}


def test_question_for_tries_the_exact_spelling_first() -> None:
    both = {"metal_nut": "underscore", "metal nut": "space"}
    assert question_for("metal_nut", both) == "underscore"
    assert question_for("metal nut", both) == "space"
    assert question_for("pipe_fryum", {"pipe fryum": "space"}) == "space"
    assert question_for("pipe fryum", {"pipe_fryum": "underscore"}) == "underscore"
    assert question_for("my_widget", {"my widget": "mine"}) == "mine"
    assert question_for("bottle", {"cable": "other"}) is None
    assert question_for("bottle", {}) is None


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(MissingFileError, match=re.escape(f"questions file {missing} does not exist")) as caught:
        load_questions(missing)
    assert isinstance(caught.value, FileNotFoundError)
    assert ".py copy of the original's evaluation script" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.yaml", "bottle: [unclosed\n", "cannot be parsed"),
        ("q.json", "{not json", "cannot be parsed"),
        ("q.yaml", "- a list\n- of questions\n", "holds a list: expected a mapping of category -> question"),
        ("q.yaml", "", "is empty"),
        ("q.json", "{}", "holds no questions"),
        ("q.json", '{"bottle": null}', "the question for 'bottle' is None"),
        ("q.txt", "bottle: Why?", "has an unknown kind (.txt)"),
        ("test_mvtec.py", "def broken(:\n", "is not valid Python"),
        ("test_mvtec.py", "x = 1\nprint('no dicts here')\n", "holds no dict of class name -> description"),
        (
            "test_mvtec.py",
            "a = {'lr': '0.1'}\nb = {'device': 'cuda'}\n",
            "several dicts of strings (a, b) and none has known class names",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(OptionError, match=re.escape(message)) as caught:
        load_questions(path)
    assert str(path) in str(caught.value)


def test_a_folder_or_a_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="is a folder"):
        load_questions(tmp_path)
    with pytest.raises(OptionTypeError, match="expected a mapping of category -> question or the path"):
        load_questions(42)  # type: ignore[arg-type]
