"""Tiny real models for tests, built locally in about a second (no download).

A byte-level BPE tokenizer trained on the sample data plus a 2-layer Llama or
Qwen2 with hidden size 256 and intermediate 512 (multiples of 256, so k-quants
apply to every matrix). They load with the Auto classes, train, merge and
convert to GGUF like real models.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA_TEXT = [
    "Ünïcödé: café, naïve, Straße, Ærø. 中文测试：你好，世界. 日本語のテキスト. Emoji 🚀🦙✅ ©®™ → ≠ ≤",
    "def main():\n    return {'key': [1, 2, 3]}\n\tTabs and  spaces  ",
    "Numbers: 3.14159, 1,000,000 and 42. The quick brown fox jumps over the lazy dog.",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "assets" / "sample_instructions.jsonl").read_text().splitlines()]
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    return texts * 3 + EXTRA_TEXT * 20


def build_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] if kind == "llama" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def build_model(kind: str, target: Path, seed: int = 0) -> Path:
    """Save a tiny `kind` ("llama" or "qwen2") model with its tokenizer in `target`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(kind)
    shape = dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    if kind == "llama":
        config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    else:
        config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
