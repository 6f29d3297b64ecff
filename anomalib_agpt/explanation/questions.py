"""Which question is asked about each class: the project's own, a user's mapping, or the original script's."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path

from anomalib_agpt.data.class_names import ORIGINAL_CLASS_NAMES, resolve_original_class_name
from anomalib_agpt.errors import MissingFileError, OptionError, OptionTypeError

ANOMALY_QUESTION = "Is there any anomaly in the image?"
"""The plain question every default question ends with; answers are trained and judged against it."""

QuestionSpec = Mapping[str, str] | str | Path | None
"""What ``load_questions`` accepts: a mapping, a YAML/JSON file of one, or the original's evaluation script."""

# What a good sample of each MVTec AD and VisA class looks like, in this project's own words. The text
# must not name a class of the original's list that comes before the class's own name there (the
# original's class-name rule reads the whole question; ``tests/test_questions.py`` checks this).
CLASS_DESCRIPTIONS = {
    "bottle": "Seen from the top, a good one shows an unbroken round mouth, nothing inside it, no chips and no dirt.",
    "cable": "A good one shows three insulated wires in their usual colours and places, none missing, swapped, cut "
    "or bent.",
    "capsule": "A good one is smooth, with an even and complete print and no cracks, dents or squeezed spots.",
    "carpet": "A good one is an evenly woven surface with no holes, cuts, stains, loose threads or colour spots.",
    "grid": "A good one is a regular wire mesh with no bent or broken wires, glue, threads or gaps.",
    "hazelnut": "A good one is a whole nut with an intact shell and no cracks, cuts, holes or printed marks.",
    "leather": "A good one is an even hide surface with no cuts, folds, glue, colour spots or pokes.",
    "metal nut": "A good one is clean, has all its lobes, lies the right side up and shows no bends, scratches or "
    "colour stains.",
    "pill": "A good one is a whole white tablet with red speckles and a clear imprint, without cracks, chips or "
    "stains.",
    "screw": "A good one is straight, with an intact thread, head and tip, and no scratches.",
    "tile": "A good one is an even ceramic surface with no cracks, glue strips, oil, rough patches or grey strokes.",
    "toothbrush": "A good one has neat, evenly packed bristles with no defects or foreign matter.",
    "transistor": "A good one has three straight leads in place and an undamaged, correctly seated case.",
    "wood": "A good one shows an even grain with no holes, scratches, liquid stains or colour spots.",
    "zipper": "A good one has straight, aligned teeth and intact fabric, with no breaks or squeezed teeth.",
    "candle": "Good ones are four clean white candles without wax melt, chunks, damage or foreign matter.",
    "capsules": "Good ones are several whole, clean green capsules without bubbles, dents or leaks.",
    "cashew": "A good one is a whole kernel without breaks, burn marks, stains, holes or foreign matter.",
    "chewinggum": "A good one is a whole piece of chewing gum without cracks, cuts, stains or missing parts.",
    "fryum": "A good one is a whole wheel-shaped snack without breaks, burn marks, stains or foreign matter.",
    "macaroni1": "Good ones are four whole pieces of pasta on a plain background, without cracks, chips, stains or "
    "holes.",
    "macaroni2": "Good ones are four whole pieces of pasta on a textured background, without cracks, chips, stains "
    "or holes.",
    "pcb1": "A good one is a printed circuit board with every component in place and intact, without bends, "
    "scratches or melted parts.",
    "pcb2": "A good one is a printed circuit board with every component in place and intact, without bends, "
    "scratches or melted parts.",
    "pcb3": "A good one is a printed circuit board with every component in place and intact, without bends, "
    "scratches or melted parts.",
    "pcb4": "A good one is a printed circuit board with every component in place and intact, without bends, "
    "scratches or melted parts.",
    "pipe fryum": "A good one is a whole tube-shaped snack without breaks, burn marks, stains or foreign matter.",
}
GENERIC_DESCRIPTION = (
    "A good one is whole and clean, with no breaks, cracks, holes, scratches, stains or missing parts."
)

_FILE_KINDS = (
    "a YAML (.yaml/.yml) or JSON (.json) mapping of category -> question, or a .py copy of the original's "
    "evaluation script (test_mvtec.py / test_visa.py)"
)


def default_question(class_name: str) -> str:
    """The project's question for a class: what is inspected, what a good one looks like, then the anomaly question.

    ``class_name`` may be spelled as a datamodule category (``metal_nut``); unknown classes get a
    generic description.
    """
    name = class_name.replace("_", " ")
    description = CLASS_DESCRIPTIONS.get(name, GENERIC_DESCRIPTION)
    return f"Inspection target: {name}. {description} {ANOMALY_QUESTION}"


def paper_class_name(question: str) -> str:
    """The class name the original puts in its text prompts for ``question``.

    It is the first name of the original's class list (``ORIGINAL_CLASS_NAMES``, in order) found as
    a substring of the question, else ``object``: so ``pcb3`` -> ``pcb``, ``pipe fryum`` -> ``fryum``
    and a question about textile -> ``tile``.
    """
    return resolve_original_class_name(question)


def question_for(category: str, questions: Mapping[str, str]) -> str | None:
    """The question ``questions`` holds for a datamodule category, or None.

    The category's own spelling wins; else the spelling with ``_`` and spaces swapped (``metal_nut``
    finds a ``metal nut`` key and the other way round).
    """
    for key in (category, category.replace("_", " "), category.replace(" ", "_")):
        if key in questions:
            return questions[key]
    return None


def load_questions(spec: QuestionSpec) -> dict[str, str]:
    """The questions to ask, by category: ``{}`` for None (the project's defaults apply).

    ``spec`` is a mapping of category (as the datamodule spells it, or a Folder dataset's name) ->
    question asked verbatim; or the path of a YAML or JSON file holding such a mapping; or the path
    of the user's own copy of the original's evaluation script (``.py``), whose dict of class name ->
    description is read without running the script: each question is the description followed by
    ``" Is there any anomaly in the image?"``, keyed by the class name as the script spells it.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return _checked_mapping(spec, "questions")
    if not isinstance(spec, str | Path):
        msg = f"questions={spec!r}: expected a mapping of category -> question or the path of {_FILE_KINDS}."
        raise OptionTypeError(msg)
    path = Path(spec).expanduser()
    if not path.exists():
        msg = f"questions file {path} does not exist: expected {_FILE_KINDS}."
        raise MissingFileError(msg)
    if not path.is_file():
        msg = f"questions={path} is a folder: expected {_FILE_KINDS}."
        raise OptionError(msg)
    suffix = path.suffix.lower()
    if suffix == ".py":
        return questions_from_script(path)
    if suffix in {".yaml", ".yml", ".json"}:
        return _questions_from_data_file(path)
    msg = f"questions file {path} has an unknown kind ({path.suffix or 'no suffix'}): expected {_FILE_KINDS}."
    raise OptionError(msg)


def questions_from_script(path: str | Path) -> dict[str, str]:
    """Questions built from the class descriptions in a copy of the original's evaluation script.

    The script is parsed, never imported or run. Its dict of class name -> description is a dict
    literal of string constants assigned to a name, or string constants assigned one by one
    (``name['bottle'] = '...'``); of several such dicts the one with the most known class names as
    keys is taken.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as error:
        msg = (
            f"questions file {path} is not valid Python ({error}): expected a copy of the original's evaluation script."
        )
        raise OptionError(msg) from error
    candidates = _string_dicts(tree)
    if not candidates:
        msg = (
            f"questions file {path} holds no dict of class name -> description (a dict literal of strings "
            "assigned to a name, or name['class'] = '...' assignments): expected a copy of the original's "
            "evaluation script."
        )
        raise OptionError(msg)
    name, descriptions = _class_dict(candidates)
    if name is None:
        msg = (
            f"questions file {path} holds several dicts of strings ({', '.join(sorted(candidates))}) and none has "
            "known class names as keys: expected the original's dict of class name -> description."
        )
        raise OptionError(msg)
    return {key: f"{description} {ANOMALY_QUESTION}" for key, description in descriptions.items()}


def _questions_from_data_file(path: Path) -> dict[str, str]:
    import yaml  # PyYAML comes with anomalib (jsonargparse, omegaconf)

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:  # ValueError: JSON's errors and undecodable bytes
        msg = f"questions file {path} cannot be parsed ({error}): expected a mapping of category -> question."
        raise OptionError(msg) from error
    if data is None:
        msg = f"questions file {path} is empty: expected a mapping of category -> question."
        raise OptionError(msg)
    if not isinstance(data, Mapping):
        msg = f"questions file {path} holds a {type(data).__name__}: expected a mapping of category -> question."
        raise OptionError(msg)
    questions = _checked_mapping(data, f"questions file {path}")
    if not questions:
        msg = f"questions file {path} holds no questions: expected a mapping of category -> question."
        raise OptionError(msg)
    return questions


def _checked_mapping(mapping: Mapping[object, object], where: str) -> dict[str, str]:
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.strip():
            msg = f"{where}: the category {key!r} is not a non-empty string (expected category -> question)."
            raise OptionError(msg)
        if not isinstance(value, str) or not value.strip():
            msg = f"{where}: the question for {key!r} is {value!r}, expected a non-empty string."
            raise OptionError(msg)
    return {str(key): str(value) for key, value in mapping.items()}


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _string_dicts(tree: ast.AST) -> dict[str, dict[str, str]]:
    """Dicts of string constants the script builds, by the name they are assigned to, entries in source order."""
    assignments: list[tuple[int, int, list[ast.expr], ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            assignments.append((node.lineno, node.col_offset, node.targets, node.value))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            assignments.append((node.lineno, node.col_offset, [node.target], node.value))
    found: dict[str, dict[str, str]] = {}
    for _, _, targets, value in sorted(assignments, key=lambda item: item[:2]):
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(value, ast.Dict):
                keys = [_string(key) for key in value.keys]
                values = [_string(item) for item in value.values]
                if all(k is not None for k in keys) and all(v is not None for v in values):
                    found[target.id] = dict(zip(keys, values, strict=True))  # type: ignore[arg-type]
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                key, description = _string(target.slice), _string(value)
                if key is not None and description is not None:
                    found.setdefault(target.value.id, {})[key] = description
    return {name: entries for name, entries in found.items() if entries}


_KNOWN_CLASS_NAMES = {name.replace("_", " ") for name in (*ORIGINAL_CLASS_NAMES, *CLASS_DESCRIPTIONS)}


def _class_dict(candidates: dict[str, dict[str, str]]) -> tuple[str | None, dict[str, str]]:
    """The candidate whose keys are class names (the only one, or the one with most known class names)."""
    if len(candidates) == 1:
        return next(iter(candidates.items()))
    scores = {
        name: sum(key.replace("_", " ").strip() in _KNOWN_CLASS_NAMES for key in entries)
        for name, entries in candidates.items()
    }
    best = max(scores, key=scores.__getitem__)
    return (best, candidates[best]) if scores[best] else (None, {})
