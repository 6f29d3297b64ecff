"""Write a LLaMA folder (config, byte-level BPE ``tokenizer.json``, safetensors) as one ``.gguf`` file.

The tests' way to a GGUF LLM of a few hundred kilobytes, so that the ``.gguf`` loading path (the one
the demo takes with SmolLM2-135M) is proven on a file whose every weight and token is known: the
loaded model must give the folder's logits, the tokenizer its ids. It follows the layout llama.cpp's
converter writes (tensor names, Q/K rows interleaved per head, the ``gpt2`` tokenizer model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
NORMAL, CONTROL = 1, 3  # llama.cpp's token types


def interleave_heads(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for Q and K: each head's two rotary halves interleaved (transformers undoes it)."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def _tensor_name(name: str) -> str:
    stem = name.removesuffix(".weight")
    if stem in TOP_TENSORS:
        return f"{TOP_TENSORS[stem]}.weight"
    _, _, layer, part = stem.split(".", 3)
    return f"blk.{layer}.{LAYER_TENSORS[part]}.weight"


def write_llama_gguf(folder: Path, path: Path) -> Path:
    """``folder`` (a LLaMA written by ``save_pretrained`` with a byte-level BPE tokenizer) as ``path``, float32."""
    import gguf

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    template = folder / "chat_template.jinja"  # where transformers 5 saves it (4.x: in tokenizer_config.json)
    chat_template = (
        template.read_text()
        if template.is_file()
        else json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    )
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta") or config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])

    vocab = tokenizer["model"]["vocab"]
    special = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
    tokens = sorted({**vocab, **special}, key=lambda token: {**vocab, **special}[token])
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if token in special else NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_unk_token_id(special["<unk>"])
    writer.add_chat_template(chat_template)

    for name, weight in sorted(load_file(folder / "model.safetensors").items()):
        weight = weight.astype(np.float32)
        if ".q_proj." in name:
            weight = interleave_heads(weight, heads)
        elif ".k_proj." in name:
            weight = interleave_heads(weight, kv_heads)
        writer.add_tensor(_tensor_name(name), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
