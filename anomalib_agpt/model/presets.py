"""Random-initialised presets, written in the ORIGINAL checkpoint formats.

A preset goes through exactly the loaders the released weights use, so the demo and the tests
exercise the real loading code. Its numbers say nothing about real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.questions import default_question


@dataclass(frozen=True)
class PresetSizes:
    """Sizes of a random ImageBind-like model (ImageBind-Huge: 1280/32/16, 1024/24/16, 1024)."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    embed_dim: int
    patch_size: int = 14
    image_size: int = 224
    vocab_size: int = 49408
    context_length: int = 77


PRESETS: dict[str, PresetSizes] = {
    "random-small": PresetSizes(
        vision_width=96,
        vision_layers=4,
        vision_heads=4,
        text_width=64,
        text_layers=2,
        text_heads=2,
        embed_dim=64,
    ),
}


def preset_sizes(name: str) -> PresetSizes:
    """Sizes of a named preset, or a ValueError listing the known names."""
    if name not in PRESETS:
        msg = f"preset='{name}' is unknown; expected one of {sorted(PRESETS)}"
        raise OptionError(msg)
    return PRESETS[name]


class _Init:
    """Deterministic normal initialiser (fan-in scaled) from one seed."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * std

    def linear(self, out_features: int, in_features: int) -> torch.Tensor:
        return self.normal(out_features, in_features, std=in_features**-0.5)


def _blocks(init: _Init, prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
    state = {}
    for index in range(layers):
        block = f"{prefix}.blocks.{index}."
        state |= {
            block + "norm_1.weight": torch.ones(width),
            block + "norm_1.bias": torch.zeros(width),
            block + "attn.in_proj_weight": init.linear(3 * width, width),
            block + "attn.in_proj_bias": torch.zeros(3 * width),
            block + "attn.out_proj.weight": init.linear(width, width),
            block + "attn.out_proj.bias": torch.zeros(width),
            block + "norm_2.weight": torch.ones(width),
            block + "norm_2.bias": torch.zeros(width),
            block + "mlp.fc1.weight": init.linear(4 * width, width),
            block + "mlp.fc1.bias": torch.zeros(4 * width),
            block + "mlp.fc2.weight": init.linear(width, 4 * width),
            block + "mlp.fc2.bias": torch.zeros(width),
        }
    return state


def random_imagebind_state_dict(sizes: PresetSizes, seed: int) -> dict[str, torch.Tensor]:
    """Vision and text towers in ``imagebind_huge.pth``'s key layout, random but deterministic."""
    init = _Init(seed)
    vision, text = sizes.vision_width, sizes.text_width
    grid = sizes.image_size // sizes.patch_size
    stem_fan_in = 3 * 2 * sizes.patch_size**2
    return {
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": init.normal(
            vision, 3, 2, sizes.patch_size, sizes.patch_size, std=stem_fan_in**-0.5
        ),
        "modality_preprocessors.vision.cls_token": init.normal(1, 1, vision, std=0.02),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": init.normal(
            1, grid * grid + 1, vision, std=0.02
        ),
        "modality_trunks.vision.pre_transformer_layer.0.weight": torch.ones(vision),
        "modality_trunks.vision.pre_transformer_layer.0.bias": torch.zeros(vision),
        **_blocks(init, "modality_trunks.vision", vision, sizes.vision_layers),
        "modality_heads.vision.0.weight": torch.ones(vision),
        "modality_heads.vision.0.bias": torch.zeros(vision),
        "modality_heads.vision.2.weight": init.linear(sizes.embed_dim, vision),
        "modality_preprocessors.text.token_embedding.weight": init.normal(sizes.vocab_size, text, std=0.02),
        "modality_preprocessors.text.pos_embed": init.normal(1, sizes.context_length, text, std=0.01),
        "modality_preprocessors.text.mask": torch.full((sizes.context_length,) * 2, float("-inf")).triu(1),
        **_blocks(init, "modality_trunks.text", text, sizes.text_layers),
        "modality_heads.text.proj.0.weight": torch.ones(text),
        "modality_heads.text.proj.0.bias": torch.zeros(text),
        "modality_heads.text.proj.1.weight": init.linear(sizes.embed_dim, text),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(14.2857).log(),
    }


def random_anomalygpt_delta(sizes: PresetSizes, seed: int, num_layers: int = 4) -> dict[str, torch.Tensor]:
    """An ``image_decoder.fc.*`` delta in the AnomalyGPT file layout (fp16, as released)."""
    init = _Init(seed + 1)
    state = {}
    for index in range(num_layers):
        state[f"image_decoder.fc.{index}.weight"] = init.linear(sizes.embed_dim, sizes.vision_width).half()
        state[f"image_decoder.fc.{index}.bias"] = torch.zeros(sizes.embed_dim).half()
    return state


# --------------------------------------------------------------------------------------------
# Random explanation head (LLaMA folder, PandaGPT delta, prompt learner), original formats
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlamaSizes:
    """Sizes of a random LLaMA (Vicuna-7B: 4096 hidden, 32 layers, 32 heads, 11008 MLP, 32001 vocab)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    lora_rank: int = 8


PROMPT_CHANNELS = (1, 4, 16, 64, 256, 1024)
"""Channels of the prompt learner's first five convolutions (the last maps 1024 -> hidden)."""


def random_prompt_learner_delta(hidden_size: int, seed: int, num_base_prompts: int = 9) -> dict[str, torch.Tensor]:
    """``prompt_learner.*`` tensors in the AnomalyGPT delta layout (fp16, as released)."""
    init = _Init(seed + 2)
    state = {}
    shapes = [(out, inp, 3) for inp, out in pairwise(PROMPT_CHANNELS)]
    shapes.append((hidden_size, PROMPT_CHANNELS[-1], 5))
    for index, (out_channels, in_channels, kernel) in enumerate(shapes):
        fan_in = in_channels * kernel * kernel
        state[f"prompt_learner.meta_net.{3 * index}.weight"] = init.normal(
            out_channels, in_channels, kernel, kernel, std=fan_in**-0.5
        ).half()
        state[f"prompt_learner.meta_net.{3 * index}.bias"] = torch.zeros(out_channels).half()
    state["prompt_learner.base_prompts"] = init.normal(num_base_prompts, hidden_size, std=0.02).half()
    return state


def random_pandagpt_delta(embed_dim: int, sizes: LlamaSizes, seed: int) -> dict[str, torch.Tensor]:
    """``llama_proj`` and q/k/v/o LoRA in the PandaGPT delta layout (fp16, peft 0.3 key names)."""
    init = _Init(seed + 3)
    state = {
        "llama_proj.weight": init.linear(sizes.hidden_size, embed_dim).half(),
        "llama_proj.bias": torch.zeros(sizes.hidden_size).half(),
    }
    for layer in range(sizes.num_layers):
        for projection in ("q", "k", "v", "o"):
            prefix = f"llama_model.base_model.model.model.layers.{layer}.self_attn.{projection}_proj"
            state[f"{prefix}.lora_A.default.weight"] = init.linear(sizes.lora_rank, sizes.hidden_size).half()
            state[f"{prefix}.lora_B.default.weight"] = init.normal(sizes.hidden_size, sizes.lora_rank, std=0.01).half()
    return state


def write_random_llama(folder: str | Path, sizes: LlamaSizes, tokenizer_folder: str | Path, seed: int) -> Path:
    """Save a random ``LlamaForCausalLM`` (fp16 safetensors) with an existing tokenizer re-saved beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    if len(tokenizer) != sizes.vocab_size:
        msg = f"vocab_size={sizes.vocab_size} but the tokenizer in '{tokenizer_folder}' has {len(tokenizer)} tokens."
        raise OptionError(msg)
    config = LlamaConfig(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).half()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


DEMO_CORPUS = (
    "No, there is no anomaly in the image.",
    "Yes, there is an anomaly in the image, at the top left of the image.",
    "Yes, there are 2 anomalies in the image, they are at the top and bottom right of the image.",
    "left right center top bottom",
    default_question("object"),
    "<Img></Img> user assistant",
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_tiny_llm(folder: str | Path, seed: int, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """A tiny random LLaMA with a byte-level BPE tokenizer trained on the answers' words, and a chat template.

    The fallback LLM of the demo when no pretrained small LLM is installed: it can learn the answer
    sentences from scratch, nothing more.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>", "##"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(DEMO_CORPUS) * 4, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(folder)
    sizes = LlamaSizes(hidden_size, num_layers, max(1, hidden_size // 16), hidden_size * 3, vocab_size=len(wrapped))
    return write_random_llama(folder, sizes, folder, seed)
