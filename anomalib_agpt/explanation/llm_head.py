"""AnomalyGPT's explanation head: image token + prompt-learner tokens -> LLM (+ PandaGPT LoRA) -> answer.

The LLM is any LLaMA-family causal LM in a Hugging Face folder (Vicuna-7B v0 for the released
weights), loaded by ``llm_loading``; the PandaGPT LoRA goes on through ``lora`` (optionally merged;
never into 8-/4-bit weights). A batch of images is answered by one ``generate`` call with left
padding and the KV cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import TURN_END, ConversationFormat, ConversationName, conversation_format
from anomalib_agpt.explanation.llm_loading import (
    VOCAB_HINT,
    AttnImplementation,
    LLMDtype,
    LLMQuantization,
    check_llm_options,
    check_quantization_support,
    load_llm,
    load_tokenizer,
    resolve_dtype,
    sentencepiece_encoder,
    stop_piece_id,
    tokenizer_fits,
)
from anomalib_agpt.explanation.lora import attach_fresh_lora, attach_lora, merge_lora, split_pandagpt_delta
from anomalib_agpt.explanation.prompt_learner import PromptLearner
from anomalib_agpt.weights import checkpoints as ckpt

logger = logging.getLogger(__name__)

MAX_TRAINING_TEXT_TOKENS = 1024
"""The original's training length (``max_tgt_len``): a row's question and answer tokens together."""


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
        # without the PandaGPT delta the LLM is another one than the original's: a map-sensitive start
        return PromptLearner.fresh(hidden, map_sensitive=spec.pandagpt_checkpoint is None)
    width = width or "no"
    msg = (
        f"AnomalyGPT delta '{source}' makes prompts of width {width}; the LLM '{folder}' has hidden size {hidden}. "
        "Train a new prompt learner (trainable includes 'prompt_learner') for another LLM."
    )
    raise ckpt.CheckpointError(msg)


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
        # PandaGPT's format (Vicuna v0): SentencePiece's own ids, as the original's slow tokenizer gave them
        self.sentencepiece = sentencepiece_encoder(tokenizer) if conversation.name == "pandagpt" else None
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
        if not tokenizer_fits(len(tokenizer), rows, gguf=folder.suffix == ".gguf"):
            msg = (
                f"llm: '{folder}' has a tokenizer of {len(tokenizer)} tokens but an embedding of {rows} rows "
                f"({VOCAB_HINT})."
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
            raise OptionError(msg)
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
        """The token a PandaGPT turn ends on, as this head tokenises its training answers."""
        stop = stop_piece_id(self.tokenizer, self.encode)
        if stop is None:
            msg = f"llm: the tokenizer splits the end of a turn ({TURN_END!r}) with no token after its newline."
            raise ckpt.CheckpointError(msg)
        return stop

    def encode(self, text: str) -> list[int]:
        """Token ids of one text segment, no special tokens added.

        With PandaGPT's format and a SentencePiece vocabulary, each segment is encoded by SentencePiece as
        a fresh sentence (its leading '▁' always there), exactly as the original tokenized; otherwise by the
        tokenizer.
        """
        encoder = getattr(self, "sentencepiece", None)  # absent on heads pickled before it existed
        if encoder is not None:
            return encoder.encode(text)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        return table(torch.tensor(list(ids), device=table.weight.device))

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text tokenised, each distinct text once (a batch asks one question; half its answers are "No")."""
        ids = {text: self.encode(text) for text in dict.fromkeys(texts)}
        return [ids[text] for text in texts]

    def _question_ids(self, questions: Sequence[str]) -> list[list[int]]:
        """Each question with its answer cue, tokenised."""
        return self._token_ids([self.conversation.question_text(question) for question in questions])

    def _prefix_rows(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        question_ids: Sequence[Sequence[int]],
    ) -> list[torch.Tensor]:
        """Per image: ``before [image] middle [prompts] question + cue`` as embeddings."""
        if len(question_ids) != image_embedding.shape[0]:
            msg = f"got {len(question_ids)} questions for {image_embedding.shape[0]} images."
            raise OptionError(msg)
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
                    self._embed(ids),
                ]
            )
            for i, ids in enumerate(question_ids)
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
        return self._pad(self._prefix_rows(image_embedding, anomaly_map, self._question_ids(questions)), left=True)

    def training_inputs(
        self,
        image_embedding: torch.Tensor,
        anomaly_map: torch.Tensor,
        questions: Sequence[str],
        answers: Sequence[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + answer + end of turn, right-padded; labels are -100 except on the answer.

        A long answer (an instruction sample's) is cut to fit the LLM's context and the original's
        training length (the row's text, question and answer, at most 1024 tokens).
        """
        rows, labels = [], []
        question_ids = self._question_ids(questions)
        prefixes = self._prefix_rows(image_embedding, anomaly_map, question_ids)
        targets = self._token_ids([answer + self.conversation.answer_suffix for answer in answers])
        for prefix, ids, target in zip(prefixes, question_ids, targets, strict=True):
            room = min(self.context_length - prefix.shape[0], MAX_TRAINING_TEXT_TOKENS - len(ids))
            target = target[: max(room, 1)]
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
        """Cross-entropy of the answers given the images (teacher forcing): the causal LM's loss.

        The LM head runs from the position before the earliest answer token on (``logits_to_keep``; a third
        of a demo sequence): its vocabulary-wide product is a fifth of a small LLM's work, and the prompt's
        logits are never used. The mean over answer tokens is the one ``labels=`` would give.
        """
        embeds, mask, labels = self.training_inputs(image_embedding, anomaly_map, questions, answers)
        # position p predicts token p + 1: keep the positions from the one before the earliest answer token
        start = int((labels != -100).int().argmax(dim=1).min()) - 1
        logits = self.llm(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=labels.shape[1] - start
        ).logits
        targets = labels[:, start + 1 :]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

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
            raise OptionError(msg)
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
