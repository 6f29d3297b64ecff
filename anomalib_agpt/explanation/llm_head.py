"""AnomalyGPT's explanation head: image token + prompt-learner tokens -> LLM (+ PandaGPT LoRA) -> answer.

The LLM is any LLaMA-family causal LM in a Hugging Face folder (Vicuna-7B v0 for the released
weights). It is loaded directly in the requested dtype with ``low_cpu_mem_usage`` (no fp32 copy
first), the PandaGPT LoRA goes on q/k/v/o through peft (optionally merged), and a batch of images
is answered by one ``generate`` call with left padding and the KV cache. On CUDA the LLM may
instead load 8-/4-bit quantised through bitsandbytes (the ``quant`` extra); its LoRA then stays unmerged.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anomalib_agpt.explanation.conversation import STOP_PIECE, ConversationFormat, ConversationName, conversation_format
from anomalib_agpt.explanation.llm_loading import stream_safetensors_llm
from anomalib_agpt.explanation.prompt_learner import PromptLearner
from anomalib_agpt.model import checkpoints as ckpt

logger = logging.getLogger(__name__)

LLMDtype = Literal["auto", "fp32", "fp16", "bf16"]
AttnImplementation = Literal["sdpa", "eager"]
LLMQuantization = Literal["8bit", "4bit"]
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
LLM_QUANTIZATIONS = (None, "8bit", "4bit")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_LORA_KEY = re.compile(
    r"^llama_model\.base_model\.model\.(?P<module>model\.layers\.\d+\.self_attn\.[qkvo]_proj)"
    r"\.(?P<part>lora_[AB])(?:\.default)?\.weight$",
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def resolve_dtype(llm_dtype: LLMDtype, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU, bf16 on an accelerator."""
    if llm_dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if llm_dtype not in _DTYPES:
        msg = f"llm_dtype='{llm_dtype}': expected one of auto, fp32, fp16, bf16."
        raise ValueError(msg)
    return _DTYPES[llm_dtype]


def check_choice(option: str, value: object, allowed: Collection[object]) -> None:
    """Refuse a value outside ``allowed`` with a message naming the option and every allowed value."""
    if value not in allowed:
        msg = f"{option}={value!r}: expected one of {', '.join(repr(a) for a in allowed)}."
        raise ValueError(msg)


def check_llm_options(attn_implementation: str, llm_quantization: str | None, merge_lora: bool) -> None:
    """Values and combinations of the LLM's inference options (nothing is loaded or probed)."""
    check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    check_choice("llm_quantization", llm_quantization, LLM_QUANTIZATIONS)
    if llm_quantization is not None and merge_lora:
        msg = (
            f"merge_lora=True with llm_quantization='{llm_quantization}': the LoRA cannot be folded into "
            "quantised weights (it would be rounded away); keep merge_lora=False (the LoRA runs beside them)."
        )
        raise ValueError(msg)


def check_quantization_support(llm_quantization: str, device: torch.device | None = None) -> None:
    """Refuse before anything loads: bitsandbytes quantises on CUDA only and is an optional extra."""
    needs = []
    if not torch.cuda.is_available():
        needs.append("a CUDA GPU (none is available)")
    elif device is not None and device.type != "cuda":
        needs.append(f"the model on a CUDA device (it is on {device}; call model.to('cuda') first)")
    if importlib.util.find_spec("bitsandbytes") is None:
        needs.append("the bitsandbytes package (pip install 'anomalib-agpt[quant]')")
    if needs:
        msg = (
            f"llm_quantization='{llm_quantization}' loads the LLM through bitsandbytes, which needs "
            f"{' and '.join(needs)}. Otherwise leave llm_quantization=None (llm_dtype='fp16'/'bf16' halves memory)."
        )
        raise RuntimeError(msg)


@dataclass(frozen=True)
class LLMHeadSpec:
    """Where the explanation head's parts come from; loading happens only when an answer is needed."""

    llm: str
    pandagpt_checkpoint: str | None
    anomalygpt_checkpoint: str | None = None
    llm_dtype: LLMDtype = "auto"
    lora_scale: float = 1.0
    merge_lora: bool = False
    conversation: ConversationName = "auto"
    fresh_parts: tuple[str, ...] = ()
    """Parts that may start from a fresh initialisation when no weights fit (the ones that train)."""
    lora_rank: int = 8
    seed: int = 0
    attn_implementation: AttnImplementation = "sdpa"
    llm_quantization: LLMQuantization | None = None

    def __post_init__(self) -> None:
        """Refuse unknown values and LoRA merging into a quantised LLM when the spec is made."""
        check_llm_options(self.attn_implementation, self.llm_quantization, self.merge_lora)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _gguf(path: Path) -> dict[str, str]:
    """``from_pretrained`` arguments for a single ``.gguf`` file (needs the ``gguf`` package)."""
    return {"gguf_file": path.name} if path.suffix == ".gguf" else {}


def load_tokenizer(folder: Path) -> object:
    """The LLM folder's tokenizer through ``AutoTokenizer`` (sentencepiece + protobuf for LLaMA).

    ``folder`` may also be a ``.gguf`` file, whose tokenizer transformers reads with ``gguf``.
    """
    from transformers import AutoTokenizer

    if folder.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(folder.parent, local_files_only=True, **_gguf(folder))
    expected = "the LLM's tokenizer files (tokenizer.model or tokenizer.json, with tokenizer_config.json)"
    if not any((folder / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        msg = f"llm: cannot load a tokenizer from '{folder}': it lacks {expected}."
        raise ckpt.CheckpointError(msg)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())
        msg = f"llm: cannot load a tokenizer from '{folder}' ({type(error).__name__}: {reason}); it needs {expected}."
        raise ckpt.CheckpointError(msg) from error


def bitsandbytes_config(llm_quantization: LLMQuantization, dtype: torch.dtype) -> object:
    """The ``BitsAndBytesConfig``: LLM.int8 for ``8bit``, NF4 computing in ``dtype`` for ``4bit``."""
    from transformers import BitsAndBytesConfig

    if llm_quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_llm(
    folder: Path,
    dtype: torch.dtype,
    attn_implementation: AttnImplementation = "sdpa",
    llm_quantization: LLMQuantization | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """A causal LM straight in ``dtype``; missing or mis-shaped weights are errors.

    safetensors folders stream into place (about one copy of the weights in memory); folders with
    ``pytorch_model*.bin`` only (e.g. a FastChat-merged Vicuna v0) go through ``from_pretrained``,
    as does quantised loading (bitsandbytes quantises while placing the weights on ``device``).
    """
    check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    extra: dict[str, Any] = {}
    if llm_quantization is not None:
        check_quantization_support(llm_quantization, device)
        device = device or torch.device("cuda")
        if device.type == "cuda":
            place: int | str = device.index if device.index is not None else torch.cuda.current_device()
        else:
            place = str(device)
        extra = {"quantization_config": bitsandbytes_config(llm_quantization, dtype), "device_map": {"": place}}
    elif folder.is_dir() and any(folder.glob("*.safetensors")):
        return stream_safetensors_llm(folder, dtype, attn_implementation).eval().requires_grad_(False)
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder.parent if folder.suffix == ".gguf" else folder,
            dtype=dtype,
            low_cpu_mem_usage=True,
            local_files_only=True,
            output_loading_info=True,
            attn_implementation=attn_implementation,
            **_gguf(folder),
            **extra,
        )
    except Exception as error:
        msg = f"llm: cannot load a causal LM from '{folder}': {type(error).__name__}: {error}"
        raise ckpt.CheckpointError(msg) from error
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        msg = f"llm: '{folder}' does not match its config: {problems}"
        raise ckpt.CheckpointError(msg)
    return model.eval().requires_grad_(False)


def split_pandagpt_delta(
    state: Mapping[str, torch.Tensor],
    source: Path | str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(llama_proj, lora)``: lora keys as ``model.layers.N.self_attn.X_proj.lora_A.weight``."""
    projection = {k.removeprefix("llama_proj."): v for k, v in state.items() if k.startswith("llama_proj.")}
    lora, unknown = {}, []
    for key, value in state.items():
        if key.startswith("llama_proj."):
            continue
        match = _LORA_KEY.match(key)
        if match is None:
            unknown.append(key)
        else:
            lora[f"{match['module']}.{match['part']}.weight"] = value
    if unknown:
        msg = f"PandaGPT delta '{source}' has unexpected keys: {ckpt._keys(unknown)}"
        raise ckpt.CheckpointError(msg)
    if set(projection) != {"weight", "bias"} or not lora:
        msg = f"PandaGPT delta '{source}' needs llama_proj.weight, llama_proj.bias and LoRA weights."
        raise ckpt.CheckpointError(msg)
    return projection, lora


def attach_lora(llm: nn.Module, lora: Mapping[str, torch.Tensor], scale: float, source: Path | str) -> None:
    """Put the PandaGPT LoRA on q/k/v/o of every layer with peft and load it strictly."""
    from peft import LoraConfig, inject_adapter_in_model

    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        msg = f"PandaGPT delta '{source}': LoRA ranks differ between layers: {sorted(ranks)}"
        raise ckpt.CheckpointError(msg)
    rank = ranks.pop()
    hidden = llm.get_input_embeddings().weight.shape[1]
    some_a = next(v for k, v in lora.items() if ".lora_A." in k)
    if some_a.shape[1] != hidden:
        msg = f"PandaGPT delta '{source}' holds LoRA for hidden size {some_a.shape[1]}; the LLM's is {hidden}."
        raise ckpt.CheckpointError(msg)
    config = LoraConfig(r=rank, lora_alpha=rank * scale, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, llm)
    own = {k.replace(".default.", "."): k for k in llm.state_dict() if ".lora_" in k}
    missing, unexpected = set(own) - set(lora), set(lora) - set(own)
    if missing or unexpected:
        msg = (
            f"PandaGPT delta '{source}' does not match the LLM's layers: missing {ckpt._keys(missing)}; "
            f"unexpected {ckpt._keys(unexpected)}"
        )
        raise ckpt.CheckpointError(msg)
    parameters = dict(llm.named_parameters())
    with torch.no_grad():
        for key, value in lora.items():
            target = parameters[own[key]]
            if target.shape != value.shape:
                msg = f"PandaGPT delta '{source}': {key} is {tuple(value.shape)}, the LLM needs {tuple(target.shape)}"
                raise ckpt.CheckpointError(msg)
            target.copy_(value)
    llm.requires_grad_(False)


def attach_fresh_lora(llm: nn.Module, rank: int, scale: float) -> None:
    """A new LoRA on q/k/v/o (B = 0, so the LLM starts unchanged) for training a small LLM."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank * scale, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, llm)
    llm.requires_grad_(False)


def _prompt_learner(
    spec: LLMHeadSpec,
    prompt_state: Mapping[str, torch.Tensor],
    hidden: int,
    folder: Path,
) -> PromptLearner:
    """The delta's prompt learner when it fits the LLM; a fresh one when it may train from scratch."""
    source = spec.anomalygpt_checkpoint or "<anomalygpt delta>"
    base_prompts = prompt_state.get("base_prompts")
    width = base_prompts.shape[1] if base_prompts is not None else None  # read, not built: 105M params at 7B
    if prompt_state and width == hidden:
        with torch.device("meta"):  # no random init of weights that are about to be assigned
            prompt_learner = PromptLearner.from_state_dict(prompt_state, source)
        ckpt.load_strict(prompt_learner, prompt_state, f"AnomalyGPT delta '{source}' (prompt_learner)")
        return prompt_learner
    if "prompt_learner" in spec.fresh_parts:
        return PromptLearner.fresh(hidden)
    width = width or "no"
    msg = (
        f"AnomalyGPT delta '{source}' makes prompts of width {width}; the LLM '{folder}' has hidden size {hidden}. "
        "Train a new prompt learner (trainable includes 'prompt_learner') for another LLM."
    )
    raise ckpt.CheckpointError(msg)


def merge_lora(llm: nn.Module) -> None:
    """Fold the LoRA into the base weights (faster inference; rounds in the LLM's dtype)."""
    from peft.tuners.lora import LoraLayer

    for module in llm.modules():
        if isinstance(module, LoraLayer):
            module.merge()


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------
class LLMHead(nn.Module):
    """Prompt learner, ``llama_proj`` and the LLM with its tokenizer; builds inputs and answers."""

    def __init__(
        self,
        prompt_learner: PromptLearner,
        llama_proj: nn.Linear,
        llm: nn.Module,
        tokenizer: object,
        conversation: ConversationFormat,
    ) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner
        self.llama_proj = llama_proj
        self.llm = llm
        self.tokenizer = tokenizer
        self.conversation = conversation
        self.stop_token_id = self._stop_token_id() if conversation.name == "pandagpt" else None
        self.context_length = int(getattr(llm.config, "max_position_embeddings", 2048))
        bos = [tokenizer.bos_token_id] if conversation.add_bos else []
        self._before_ids = bos + self.encode(conversation.before)
        self._middle_ids = self.encode(conversation.middle)

    @classmethod
    def from_spec(
        cls,
        spec: LLMHeadSpec,
        prompt_state: Mapping[str, torch.Tensor],
        image_embed_dim: int,
        device: torch.device,
    ) -> LLMHead:
        """Load the LLM, the PandaGPT delta and the prompt learner strictly; fresh parts only if allowed."""
        if spec.llm_quantization is not None:
            check_quantization_support(spec.llm_quantization, device)
        folder = ckpt.resolve_weight_path(spec.llm, "llm")
        dtype = resolve_dtype(spec.llm_dtype, device)
        tokenizer = load_tokenizer(folder)
        llm = load_llm(folder, dtype, spec.attn_implementation, spec.llm_quantization, device)
        rows = llm.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows or (folder.suffix != ".gguf" and len(tokenizer) != rows):
            msg = (
                f"llm: '{folder}' has a tokenizer of {len(tokenizer)} tokens but an embedding of {rows} rows "
                "(Vicuna v0 has 32001 of both; a 32000-row LLaMA with a 32001-token tokenizer is the usual mix-up)."
            )
            raise ckpt.CheckpointError(msg)
        hidden = llm.get_input_embeddings().weight.shape[1]
        torch.manual_seed(spec.seed)
        llama_proj = nn.Linear(image_embed_dim, hidden)
        if spec.pandagpt_checkpoint is not None:
            pandagpt_path = ckpt.resolve_weight_path(spec.pandagpt_checkpoint, "pandagpt_checkpoint")
            pandagpt = ckpt.load_state_dict_file(pandagpt_path, "pandagpt_checkpoint")
            ckpt.expect_kind(pandagpt, ckpt.PANDAGPT, pandagpt_path, "pandagpt_checkpoint")
            projection, lora = split_pandagpt_delta(pandagpt, pandagpt_path)
            attach_lora(llm, lora, spec.lora_scale, pandagpt_path)
            ckpt.load_strict(llama_proj, projection, f"PandaGPT delta '{pandagpt_path}' (llama_proj)")
        elif "llama_proj" not in spec.fresh_parts:
            msg = "llm without pandagpt_checkpoint: llama_proj must train (trainable includes 'llama_proj')."
            raise ValueError(msg)
        elif "lora" in spec.fresh_parts:
            attach_fresh_lora(llm, spec.lora_rank, spec.lora_scale)
        if spec.merge_lora:
            merge_lora(llm)
        prompt_learner = _prompt_learner(spec, prompt_state, hidden, folder)
        head = cls(prompt_learner, llama_proj, llm, tokenizer, conversation_format(spec.conversation, tokenizer))
        head.prompt_learner.to(dtype)
        head.llama_proj.to(dtype)
        head.requires_grad_(False)
        if spec.llm_quantization is not None:  # placed by bitsandbytes already; quantised weights refuse .to
            head.prompt_learner.to(device)
            head.llama_proj.to(device)
            return head
        return head.to(device)

    def _stop_token_id(self) -> int:
        stop = self.tokenizer.convert_tokens_to_ids(STOP_PIECE)
        if stop is None or stop == self.tokenizer.unk_token_id:
            msg = f"llm: the tokenizer has no piece '{STOP_PIECE}' to end a turn on."
            raise ckpt.CheckpointError(msg)
        return int(stop)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text segment, no special tokens (its leading '▁' kept)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        return table(torch.tensor(list(ids), device=table.weight.device))

    def _prefix_rows(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        questions: Sequence[str],
    ) -> list[torch.Tensor]:
        """Per image: ``before [image] middle [prompts] question + cue`` as embeddings."""
        if len(questions) != image_embedding.shape[0]:
            msg = f"got {len(questions)} questions for {image_embedding.shape[0]} images."
            raise ValueError(msg)
        dtype = self.llm.get_input_embeddings().weight.dtype
        image_tokens = self.llama_proj(image_embedding.to(dtype)).unsqueeze(1)
        prompts = self.prompt_learner(anomaly_map.to(dtype))
        before, middle = self._embed(self._before_ids), self._embed(self._middle_ids)
        return [
            torch.cat(
                [
                    before,
                    image_tokens[i],
                    middle,
                    prompts[i],
                    self._embed(self.encode(self.conversation.question_text(q))),
                ]
            )
            for i, q in enumerate(questions)
        ]

    def build_inputs(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        questions: Sequence[str],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[BOS] <Img-prefix> [image] </Img> [18 prompts] question + cue`` per row, left-padded.

        Returns ``(inputs_embeds (B, L, H), attention_mask (B, L))``.
        """
        return self._pad(self._prefix_rows(image_embedding, anomaly_map, questions), left=True)

    def training_inputs(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        questions: Sequence[str],
        answers: Sequence[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + answer + end of turn, right-padded; labels are -100 except on the answer."""
        rows, labels = [], []
        for prefix, answer in zip(self._prefix_rows(image_embedding, anomaly_map, questions), answers, strict=True):
            target = self.encode(answer + self.conversation.answer_suffix)
            rows.append(torch.cat([prefix, self._embed(target)]))
            labels.append([-100] * prefix.shape[0] + target)
        embeds, mask = self._pad(rows, left=False)
        label_tensor = torch.full(mask.shape, -100, dtype=torch.long, device=mask.device)
        for index, label in enumerate(labels):
            label_tensor[index, : len(label)] = torch.tensor(label, device=mask.device)
        return embeds, mask, label_tensor

    def lm_loss(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        questions: Sequence[str],
        answers: Sequence[str],
    ) -> torch.Tensor:
        """Cross-entropy of the answers given the images (teacher forcing)."""
        embeds, mask, labels = self.training_inputs(image_embedding, anomaly_map, questions, answers)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @staticmethod
    def _pad(rows: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack ``(L_i, H)`` rows into ``(B, L, H)`` with zeros and an attention mask.

        Left padding for generation (every row ends where generation starts), right for training.
        """
        length = max(row.shape[0] for row in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
        for index, row in enumerate(rows):
            span = slice(length - row.shape[0], length) if left else slice(0, row.shape[0])
            embeds[index, span] = row
            mask[index, span] = 1
        return embeds, mask

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **settings: Any) -> list[str]:  # noqa: ANN401
        """Answer every row in one ``generate`` call (settings as :meth:`generate_ids`)."""
        return [self.decode_answer(row) for row in self.generate_ids(inputs_embeds, attention_mask, **settings)]

    @torch.no_grad()
    def generate_ids(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        top_p: float = 0.1,
        temperature: float = 1.0,
    ) -> list[list[int]]:
        """Generated ids per row, up to and including its stop ('##' or end of sequence)."""
        if inputs_embeds.shape[1] + max_new_tokens > self.context_length:
            msg = (
                f"the prompt takes {inputs_embeds.shape[1]} tokens and max_new_tokens={max_new_tokens}; together "
                f"they exceed the LLM's context of {self.context_length} tokens. Shorten the question or history."
            )
            raise ValueError(msg)
        stop_id = self.stop_token_id if self.stop_token_id is not None else self.tokenizer.eos_token_id
        # transformers' own stop rule: a row ends at any of these ids ('##' for PandaGPT, the end tokens)
        model_ends = self.llm.generation_config.eos_token_id
        model_ends = model_ends if isinstance(model_ends, list) else [model_ends]
        ends = sorted({stop_id, self.tokenizer.eos_token_id, *model_ends} - {None})

        sampling = {"do_sample": True, "top_p": top_p, "temperature": temperature} if do_sample else {}
        output = self.llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=ends,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0,
            use_cache=True,
            **({"do_sample": False} | sampling),
        )
        return [self.answer_ids(row.tolist()) for row in output]

    def answer_ids(self, generated: Sequence[int]) -> list[int]:
        """Generated ids of one row up to and including the first stop or end-of-sequence id."""
        ends = {self.stop_token_id, self.tokenizer.eos_token_id} - {None}
        for index, token in enumerate(generated):
            if token in ends:
                return list(generated[: index + 1])
        return list(generated)

    def decode_answer(self, generated: Sequence[int]) -> str:
        """PandaGPT: the original's rule, drop the last two ids (newline and '##'); chat: up to the end token."""
        if self.conversation.name == "pandagpt":
            return self.tokenizer.decode(list(generated)[:-2], skip_special_tokens=True)
        return self.tokenizer.decode(list(generated), skip_special_tokens=True).strip()
