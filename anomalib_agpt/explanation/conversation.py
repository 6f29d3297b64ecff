"""The conversation AnomalyGPT's LLM was trained on: template, answer rules (default questions: ``questions``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from anomalib_agpt.explanation.questions import (  # re-exported: their home before ``questions`` existed
    ANOMALY_QUESTION as ANOMALY_QUESTION,
)
from anomalib_agpt.explanation.questions import CLASS_DESCRIPTIONS as CLASS_DESCRIPTIONS
from anomalib_agpt.explanation.questions import GENERIC_DESCRIPTION as GENERIC_DESCRIPTION
from anomalib_agpt.explanation.questions import default_question as default_question

IMAGE_PREFIX = "### Human: <Img>"
IMAGE_SUFFIX = "</Img> "
ASSISTANT_CUE = "\n### Assistant:"
TURN_END = "\n###"
STOP_PIECE = "##"
"""The LLaMA tokenizer splits the end-of-turn "\\n###" into "\\n", "##", "#"; generation stops on "##".

Other vocabularies stop on whatever follows the newline (see ``llm_loading.stop_piece_id``)."""

NORMAL_ANSWER = "No, there is no anomaly in the image."


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
