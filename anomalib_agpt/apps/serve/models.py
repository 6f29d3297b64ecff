"""The model a web demo serves: a trained checkpoint, weight files, or (nothing configured) the demo preset.

Each comes with a Markdown description that the page shows as its banner, so a user always knows
what answers them: real weights, a checkpoint, or random weights that mean nothing for real data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib.data.utils.image import is_image_file

from anomalib_agpt.errors import MissingFileError, OptionError
from anomalib_agpt.module.lightning_model import AnomalyGPT
from anomalib_agpt.module.options import DecodingOptions, ExplanationOptions, FewShotOptions, WeightOptions

logger = logging.getLogger(__name__)

DEMO_CATEGORY = "weave"
"""The synthetic category of the demo preset: its few-shot map of the random encoder finds the drawn defects."""
DEMO_K_SHOT = 4
DEMO_EXAMPLES = ("scratch/001.png", "stain/001.png", "scratch/000.png", "good/002.png")
"""Test images of the demo category offered on the page (relative to its ``test`` folder)."""
DEMO_MAX_NEW_TOKENS = 48
MAX_EXAMPLES = 12


@dataclass
class ModelOptions:
    """What the user pointed ``serve`` at; all empty means the demo preset."""

    checkpoint: str | None = None
    imagebind_checkpoint: str | None = None
    anomalygpt_checkpoint: str | None = None
    vision_heads: int | None = None
    text_heads: int | None = None
    llm: str | None = None
    pandagpt_checkpoint: str | None = None
    class_name: str | None = None
    max_new_tokens: int | None = None
    examples: str | None = None
    demo_dir: Path = field(default_factory=lambda: Path("serve_demo"))
    seed: int = 0

    @property
    def configured(self) -> bool:
        """Whether the user named a model (a checkpoint or weight files)."""
        return bool(self.checkpoint or self.imagebind_checkpoint or self.anomalygpt_checkpoint)


@dataclass
class ServedModel:
    """The model, the banner that says what it is, and example images (``[path, class name]`` rows)."""

    model: AnomalyGPT
    description: str
    examples: list[list[str]] = field(default_factory=list)
    example_folder: Path | None = None

    @property
    def example_labels(self) -> list[str]:
        """``scratch/001.png (weave)``: paths relative to the examples' folder, as file names alone can repeat."""
        labels = []
        for path, class_name in self.examples:
            name = str(Path(path).relative_to(self.example_folder)) if self.example_folder else Path(path).name
            labels.append(f"{name} ({class_name})" if class_name else name)
        return labels


def load_served_model(options: ModelOptions) -> ServedModel:
    """Build or restore the model ``options`` name; the demo preset when they name none."""
    if not options.configured:
        if options.llm or options.pandagpt_checkpoint:
            msg = (
                "--llm/--pandagpt-checkpoint need a model: --checkpoint, or --imagebind-checkpoint and "
                "--anomalygpt-checkpoint."
            )
            raise OptionError(msg)
        served = demo_preset(options)
    elif options.checkpoint:
        if not Path(options.checkpoint).expanduser().is_file():
            msg = f"--checkpoint '{options.checkpoint}' does not exist (a Lightning .ckpt, e.g. from fit or the demo)."
            raise MissingFileError(msg)
        model = AnomalyGPT.load_from_checkpoint(options.checkpoint, map_location="cpu", **_grouped(options))
        served = ServedModel(model, f"Model: trained checkpoint `{Path(options.checkpoint).name}`.")
    else:
        model = AnomalyGPT(**_grouped(options))
        weights = model.weight_options
        names = [Path(str(path)).name for path in (weights.imagebind_checkpoint, weights.anomalygpt_checkpoint)]
        served = ServedModel(model, f"Model: AnomalyGPT weights `{names[0]}` + `{names[1]}`.")
    if options.examples:
        served.example_folder = Path(options.examples).expanduser().resolve()
        served.examples = example_rows(served.example_folder, options.class_name or "")
    served.model.prepare()  # class text features and references, so the banner can tell the mode
    served.description = " ".join([served.description, _mode(served.model), _explanations(served.model)])
    return served


def demo_preset(options: ModelOptions) -> ServedModel:
    """AnomalyGPT's ``random-small`` preset, few-shot on synthetic normal images, thresholds fitted, demo LLM.

    The references are the first images of a synthetic MVTec-layout training set and anomalib's Engine
    fits the thresholds on its test split (``validate``: nothing trains), exactly as a few-shot run does.
    The LLM is the demo's (SmolLM2-135M-Instruct when installed) behind an untrained projection and
    prompt learner, so it talks but does not see the defect.
    """
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_agpt.apps.demo import demo_llm
    from anomalib_agpt.data import make_synthetic_mvtec

    demo_dir = options.demo_dir.expanduser().resolve()
    root = make_synthetic_mvtec(
        demo_dir / "data",
        categories=(DEMO_CATEGORY,),
        num_train=DEMO_K_SHOT,
        num_test_good=3,
        num_test_defect=2,
        seed=options.seed,
    )
    llm, llm_name = demo_llm(demo_dir, options.seed)
    model = AnomalyGPT(
        weights=WeightOptions(preset="random-small", seed=options.seed, llm=llm),
        few_shot=FewShotOptions(k_shot=DEMO_K_SHOT),
        explanation=ExplanationOptions(
            untrained_head_parts=["llama_proj", "prompt_learner"],  # SmolLM2 has no released adapter
            decoding=DecodingOptions(max_new_tokens=options.max_new_tokens or DEMO_MAX_NEW_TOKENS),
        ),
        class_name=DEMO_CATEGORY,
    )
    datamodule = MVTecAD(root=root, category=DEMO_CATEGORY, eval_batch_size=8, num_workers=0)
    engine = Engine(
        default_root_dir=demo_dir / "results",
        logger=False,
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.validate(model=model, datamodule=datamodule, verbose=False)
    test = root / DEMO_CATEGORY / "test"
    description = (
        "**Demo preset** (nothing was configured): AnomalyGPT's `random-small` preset, a RANDOM encoder, "
        f"{DEMO_K_SHOT}-shot against synthetic normal '{DEMO_CATEGORY}' images with thresholds fitted on "
        f"synthetic test images, and an untrained adapter in front of {llm_name}. Its maps, scores and answers "
        "say nothing about real data. Serve real weights with `--imagebind-checkpoint ... --anomalygpt-checkpoint "
        "...` (or the environment variables), or a trained model with `--checkpoint model.ckpt`."
    )
    examples = [[str(test / name), DEMO_CATEGORY] for name in DEMO_EXAMPLES if (test / name).is_file()]
    return ServedModel(model, description, examples, test)


def example_rows(folder: Path, class_name: str) -> list[list[str]]:
    """``[image, class name]`` rows for the page's examples: the first image files of ``folder``."""
    if not folder.is_dir():
        msg = f"--examples '{folder}' is not a folder of images."
        raise OptionError(msg)
    images = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_file(path))
    return [[str(path), class_name] for path in images[:MAX_EXAMPLES]]


def _given(options: ModelOptions, *names: str) -> dict[str, Any]:
    return {name: getattr(options, name) for name in names if getattr(options, name) is not None}


def _grouped(options: ModelOptions) -> dict[str, Any]:
    """The page's options in the constructor's groups (only those given: a checkpoint's saved ones stay)."""
    grouped: dict[str, Any] = {}
    weights = _given(options, "imagebind_checkpoint", "anomalygpt_checkpoint", "vision_heads", "text_heads")
    weights |= _given(options, "llm", "pandagpt_checkpoint")
    if weights:
        grouped["weights"] = weights
    if options.max_new_tokens is not None:
        grouped["explanation"] = {"decoding": {"max_new_tokens": options.max_new_tokens}}
    return grouped | _given(options, "class_name")


def _mode(model: AnomalyGPT) -> str:
    references = model.model.num_reference_images
    shots = f"{references}-shot (its own normal references)" if references else "zero-shot"
    return f"Default: {shots}; upload normal reference images on the left for few-shot."


def _explanations(model: AnomalyGPT) -> str:
    if model.model.llm_spec is None and model.model.llm_head is None:
        return (
            "**Scores only**: no LLM is configured, so the page shows map, mask and score but no answers. "
            "Explanations need an LLM: `--llm <folder> --pandagpt-checkpoint <delta>`."
        )
    return f"Answers from the LLM `{Path(model.model.llm_spec.llm).name if model.model.llm_spec else 'loaded'}`."
