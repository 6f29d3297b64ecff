"""The conversation AnomalyGPT's LLM was trained on: template, default questions, answer rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

IMAGE_PREFIX = "### Human: <Img>"
IMAGE_SUFFIX = "</Img> "
ASSISTANT_CUE = "\n### Assistant:"
TURN_END = "\n###"
STOP_PIECE = "##"
"""The LLaMA tokenizer splits the end-of-turn "\\n###" into "\\n", "##", "#"; generation stops on "##"."""

ANOMALY_QUESTION = "Is there any anomaly in the image?"
NORMAL_ANSWER = "No, there is no anomaly in the image."

# What a normal sample of each MVTec AD and VisA class looks like, in this project's words.
CLASS_DESCRIPTIONS = {
    "bottle": "which should be round, without any damage, flaw, defect, scratch, hole or broken part",
    "cable": "which should show three intact cables in their usual places, none missing, swapped, cut or bent",
    "capsule": "which should be a smooth, evenly printed capsule, without cracks, dents, squeezes or faulty prints",
    "carpet": "which should be an even woven texture, without holes, cuts, stains, threads or colour spots",
    "grid": "which should be a regular metal grid, without bends, breaks, glue, threads or missing wires",
    "hazelnut": "which should be a whole hazelnut, without cracks, cuts, holes or printed marks",
    "leather": "which should be an even leather surface, without cuts, folds, glue, colour spots or pokes",
    "metal nut": "which should be a clean metal nut with all its lobes, not bent, flipped, scratched or stained",
    "pill": "which should be a whole white pill with red speckles and its print, without cracks, stains or chips",
    "screw": "which should be a straight screw with an intact thread, head and tip, without scratches",
    "tile": "which should be an even tile surface, without cracks, glue strips, oil, rough spots or gray strokes",
    "toothbrush": "which should have tidy, evenly arranged bristles, without defects or foreign matter",
    "transistor": "which should be a transistor with three straight leads, correctly placed, without damage",
    "wood": "which should be an even wood grain, without holes, scratches, liquid stains or colour spots",
    "zipper": "which should be a zipper with aligned teeth and intact fabric, without breaks or squeezed teeth",
    "candle": "which should be four clean white candles, without wax melt, chunks, damage or foreign matter",
    "capsules": "which should be several green capsules, whole and clean, without bubbles, dents or leaks",
    "cashew": "which should be a whole cashew nut, without breaks, burns, stains, holes or foreign matter",
    "chewinggum": "which should be a whole piece of chewing gum, without cracks, cuts, stains or missing parts",
    "fryum": "which should be a whole wheel-shaped fryum, without breaks, burns, stains or foreign matter",
    "macaroni1": "which should be four whole pieces of macaroni, without cracks, chips, stains or holes",
    "macaroni2": "which should be four whole pieces of macaroni on a textured background, without cracks or chips",
    "pcb1": "which should be a printed circuit board with all its parts intact, without bends, scratches or melts",
    "pcb2": "which should be a printed circuit board with all its parts intact, without bends, scratches or melts",
    "pcb3": "which should be a printed circuit board with all its parts intact, without bends, scratches or melts",
    "pcb4": "which should be a printed circuit board with all its parts intact, without bends, scratches or melts",
    "pipe fryum": "which should be a whole pipe-shaped fryum, without breaks, burns, stains or foreign matter",
}
GENERIC_DESCRIPTION = "which should be intact, without any damage, flaw, defect, scratch, hole or broken part"


def default_question(class_name: str) -> str:
    """One sentence about the class, then the anomaly question (as the original's evaluation asks)."""
    description = CLASS_DESCRIPTIONS.get(class_name.replace("_", " "), GENERIC_DESCRIPTION)
    return (
        f"This is a photo of a {class_name.replace('_', ' ')} for anomaly detection, {description}. {ANOMALY_QUESTION}"
    )


def multi_turn_prompt(history: Sequence[tuple[str, str]], question: str) -> str:
    """The user text after the image tokens for a question that follows ``(question, answer)`` turns."""
    turns = [
        (f"{q}{ASSISTANT_CUE} {a}{TURN_END}" if index == 0 else f" Human: {q}{ASSISTANT_CUE} {a}{TURN_END}")
        for index, (q, a) in enumerate(history)
    ]
    return "".join(turns) + (f" Human: {question}" if history else question)


def is_anomalous_answer(answer: str) -> bool:
    """The original's decision rule: an answer containing 'Yes' is anomalous."""
    return "Yes" in answer


ConversationName = Literal["auto", "pandagpt", "chat"]
_IMAGE_SLOT, _PROMPT_SLOT, _QUESTION_SLOT = "\x00IMAGE\x00", "\x00PROMPTS\x00", "\x00QUESTION\x00"


@dataclass(frozen=True)
class ConversationFormat:
    """The text around the image token and the prompt tokens, and how an answer ends.

    ``pandagpt`` is the format AnomalyGPT's Vicuna was trained on; ``chat`` wraps the same content in
    the LLM's own chat template (any instruction-tuned Hugging Face model).
    """

    name: Literal["pandagpt", "chat"]
    before: str
    """Text before the image token (after BOS when ``add_bos``)."""
    middle: str
    """Text between the image token and the prompt tokens."""
    question_suffix: str
    """Appended to the question: the assistant cue."""
    add_bos: bool
    answer_suffix: str
    """Appended to a training answer: what ends a turn."""

    def question_text(self, question: str) -> str:
        """The text after the prompt tokens."""
        return question + self.question_suffix


PANDAGPT_FORMAT = ConversationFormat("pandagpt", IMAGE_PREFIX, IMAGE_SUFFIX, ASSISTANT_CUE, True, TURN_END)


def chat_format(tokenizer: object) -> ConversationFormat:
    """The tokenizer's chat template around ``<Img>[image]</Img> [prompts]question`` as one user turn."""
    content = f"<Img>{_IMAGE_SLOT}</Img> {_PROMPT_SLOT}{_QUESTION_SLOT}"
    text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": content}],
        tokenize=False,
        add_generation_prompt=True,
    )
    before, rest = text.split(_IMAGE_SLOT)
    middle, rest = rest.split(_PROMPT_SLOT)
    _, question_suffix = rest.split(_QUESTION_SLOT)
    eos = tokenizer.eos_token or ""  # type: ignore[attr-defined]
    return ConversationFormat("chat", before, middle, question_suffix, False, eos)


def conversation_format(name: ConversationName, tokenizer: object) -> ConversationFormat:
    """``auto``: the LLM's chat template when its tokenizer has one, else PandaGPT's format (Vicuna v0)."""
    if name == "pandagpt" or (name == "auto" and not getattr(tokenizer, "chat_template", None)):
        return PANDAGPT_FORMAT
    return chat_format(tokenizer)
