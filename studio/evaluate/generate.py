"""Generation and reference loss over many rows: batched on HF models, one row after another in llama.cpp.

HF rows go through `model.generate` in batches, left-padded so that every row's
last prompt token sits at the same position and the KV cache serves the whole
batch. Greedy decoding in a batch gives the same tokens as one row at a time
(tests/test_evaluate.py checks it token for token). A PeftModel answers as the
base model inside `model.disable_adapter()`, as any loaded adapter after
`model.set_adapter(name)`: one copy of the weights for every checkpoint.

    for batch in generate_hf(model, tokenizer, template, rows, gen, batch_size=8):
        ...   # one Output per row of the batch, in order
    losses = reference_losses_hf(model, tokenizer, template, rows, max_length=1024)

GGUF files take the same rows one by one through llama-cpp-python, prompted with
the run's tokenizer and template exactly as in training (as chat does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from studio.config import GenerationConfig
from studio.errors import ModelLoadError
from studio.evaluate.rows import EvalRow
from studio.llama_check import check_llama_cpp_runs
from studio.data.templates import Template, prompt_ids, stop_markers, stop_token_ids, tokenize_conversation


@dataclass(frozen=True)
class Output:
    """One generated answer: its text (end-of-turn markers cut), its token ids, and how it ended."""

    text: str
    token_ids: tuple[int, ...]
    stopped: bool  # ended at EOS or an end-of-turn marker, not at max_new_tokens


@dataclass(frozen=True)
class RowLoss:
    """Summed negative log-likelihood of a row's answer tokens, and how many there were."""

    nll: float
    tokens: int


def batches(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


# ---------------------------------------------------------------- HF


def generate_hf(model, tokenizer, template: Template, rows: Sequence[EvalRow], gen: GenerationConfig,
                batch_size: int = 8) -> Iterator[list[Output]]:
    """Answers for `rows`, one list per batch of `batch_size` rows (greedy unless gen.temperature > 0)."""
    import torch

    stops, markers = stop_token_ids(tokenizer), stop_markers(tokenizer, template)
    sampling = gen.temperature > 0
    if sampling:
        torch.manual_seed(gen.seed)  # once per model: the same seed gives the same answers again
    for batch in batches(rows, batch_size):
        input_ids, attention = _left_padded([prompt_ids(tokenizer, template, list(r.prompt)) for r in batch],
                                            tokenizer.pad_token_id, model.device)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=gen.max_new_tokens,
                do_sample=sampling, temperature=gen.temperature if sampling else None,
                top_p=gen.top_p if sampling else None, top_k=gen.top_k if sampling else None,
                repetition_penalty=gen.repetition_penalty, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                **({"stop_strings": markers, "tokenizer": tokenizer} if markers else {}))
        yield [_output(tokenizer, seq[input_ids.shape[1]:].tolist(), stops, markers) for seq in out]


def _left_padded(prompts: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def _output(tokenizer, tokens: list[int], stops: list[int], markers: list[str]) -> Output:
    """Tokens up to the first stop token; the text up to the first end-of-turn marker."""
    ended = next((i for i, t in enumerate(tokens) if t in stops), None)
    kept = tokens if ended is None else tokens[:ended]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    cut = min((text.index(m) for m in markers if m in text), default=None)
    if cut is not None:
        text = text[:cut]
    return Output(text.strip(), tuple(kept), ended is not None or cut is not None)


def answer_ids(tokenizer, template: Template, row: EvalRow, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the row with its reference answer, and which are scored: as training saw them."""
    tokenized = tokenize_conversation(tokenizer, template, [*row.prompt, {"role": "assistant", "content": row.reference}],
                                      train_on="responses")
    return tokenized.input_ids[:max_length], tokenized.trained[:max_length]


def reference_losses_hf(model, tokenizer, template: Template, rows: Sequence[EvalRow], max_length: int,
                        batch_size: int = 8) -> Iterator[list[RowLoss]]:
    """Per batch, each row's loss on its reference answer (the tokens training scores), right-padded."""
    import torch

    for batch in batches(rows, batch_size):
        encoded = [answer_ids(tokenizer, template, r, max_length) for r in batch]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in encoded], device=model.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        losses = []
        for row, (row_ids, trained) in enumerate(encoded):
            scored = [t for t in range(1, len(row_ids)) if trained[t]]
            losses.append(RowLoss(-float(log_probs[row, [t - 1 for t in scored]].sum()), len(scored)))
        yield losses


# ---------------------------------------------------------------- GGUF


def open_gguf_for_scoring(path: Path, n_ctx: int):
    """A GGUF in llama.cpp keeping the logits of every position (for the reference loss)."""
    from llama_cpp import Llama

    if not Path(path).is_file():
        raise ModelLoadError(f"GGUF file not found: {path}.")
    check_llama_cpp_runs(path)
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0)
    except ValueError as exc:
        raise ModelLoadError(f"llama.cpp cannot load {path}: {exc}") from None


def gguf_context(tokenizer, template: Template, rows: Sequence[EvalRow], gen: GenerationConfig, max_length: int) -> int:
    """Context length that holds the longest row with its reference, or its prompt plus a full answer."""
    longest = max(max(len(answer_ids(tokenizer, template, r, max_length)[0]),
                      len(prompt_ids(tokenizer, template, list(r.prompt))) + gen.max_new_tokens) for r in rows)
    return -(-(longest + 8) // 256) * 256


def score_row_gguf(llm, tokenizer, template: Template, row: EvalRow, gen: GenerationConfig,
                   max_length: int) -> tuple[Output, RowLoss]:
    """One row in llama.cpp: the reference loss, then the answer (whose prompt is then already in the cache)."""
    import numpy as np

    ids, trained = answer_ids(tokenizer, template, row, max_length)
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    scored = [t for t in range(1, len(ids)) if trained[t]]
    log_norm = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = float(sum(log_norm[t - 1] - logits[t - 1, ids[t]] for t in scored))
    return generate_gguf(llm, tokenizer, template, row, gen), RowLoss(nll, len(scored))


def generate_gguf(llm, tokenizer, template: Template, row: EvalRow, gen: GenerationConfig) -> Output:
    """One answer from llama.cpp, greedy unless gen.temperature > 0 (then seeded)."""
    stops, markers = stop_token_ids(tokenizer), stop_markers(tokenizer, template)
    sampling = gen.temperature > 0
    if sampling:
        llm.set_seed(gen.seed)
    tokens: list[int] = []
    for token in llm.generate(prompt_ids(tokenizer, template, list(row.prompt)), temp=gen.temperature,
                              top_k=gen.top_k if sampling else 1, top_p=gen.top_p if sampling else 1.0,
                              repeat_penalty=gen.repetition_penalty):
        tokens.append(token)
        if token in stops or len(tokens) >= gen.max_new_tokens or _has_marker(tokenizer, tokens, markers):
            break
    return _output(tokenizer, tokens, stops, markers)


def _has_marker(tokenizer, tokens: list[int], markers: list[str]) -> bool:
    return bool(markers) and any(m in tokenizer.decode(tokens[-8:]) for m in markers)
