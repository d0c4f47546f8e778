"""Token-streaming chat: HF models (adapter on or off, no reload) and GGUF files.

Replies are plain generators of text pieces:

    for piece in stream_reply(model, tokenizer, template, messages, gen, use_adapter=False):
        print(piece, end="", flush=True)

`model` may be a PeftModel: `use_adapter=False` answers as the base model from
the same weights in memory.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from studio.config import GenerationConfig
from studio.errors import ModelLoadError
from studio.data.templates import Template, prompt_ids, stop_markers, stop_token_ids
from studio.llama_check import check_llama_cpp_runs


def with_system(messages: list[dict], gen: GenerationConfig) -> list[dict]:
    """Put the configured system prompt in front unless the conversation has one."""
    if gen.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": gen.system_prompt}, *messages]
    return messages


def stream_reply(
    model,
    tokenizer,
    template: Template,
    messages: list[dict],
    gen: GenerationConfig,
    use_adapter: bool = True,
    stop: threading.Event | None = None,
) -> Iterator[str]:
    """Generate the next assistant turn, yielding text as tokens arrive."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return bool(stop and stop.is_set())

    ids = prompt_ids(tokenizer, template, with_system(messages, gen))
    input_ids = torch.tensor([ids], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = gen.temperature > 0
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=gen.max_new_tokens,
        do_sample=sampling,
        temperature=gen.temperature if sampling else None,
        top_p=gen.top_p if sampling else None,
        top_k=gen.top_k if sampling else None,
        repetition_penalty=gen.repetition_penalty,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **_stop_string_options(tokenizer, markers := stop_markers(tokenizer, template)),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([StopOnEvent()]),
    )
    failure: list[BaseException] = []

    def generate() -> None:
        adapter_off = model.disable_adapter() if (not use_adapter and hasattr(model, "disable_adapter")) else contextlib.nullcontext()
        try:
            if sampling:
                torch.manual_seed(gen.seed)
            with adapter_off, torch.no_grad():
                model.generate(**kwargs)
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    yield from without_markers(streamer, markers)
    worker.join()
    if failure:
        raise failure[0]


def _stop_string_options(tokenizer, markers: list[str]) -> dict:
    return {"stop_strings": markers, "tokenizer": tokenizer} if markers else {}


def without_markers(pieces: Iterator[str], markers: list[str]) -> Iterator[str]:
    """Pass text through, ending before the first end-of-turn marker (which may arrive split across pieces)."""
    if not markers:
        yield from pieces
        return
    held = ""
    for piece in pieces:
        held += piece
        found = [held.index(m) for m in markers if m in held]
        if found:
            if held[: min(found)]:
                yield held[: min(found)]
            return
        # Keep back the longest tail that could still grow into a marker.
        keep = max((k for m in markers for k in range(1, len(m)) if held.endswith(m[:k])), default=0)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep:]
    if held:
        yield held


# ---------------------------------------------------------------- GGUF


def open_gguf(path: str | Path, n_ctx: int = 2048):
    """Load a GGUF file in llama.cpp (close it with `.close()` when done)."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}.")
    check_llama_cpp_runs(path)
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
    except ValueError as exc:
        raise ModelLoadError(f"llama.cpp cannot load {path}: {exc}") from None


def stream_gguf_reply(
    llm,
    messages: list[dict],
    gen: GenerationConfig,
    tokenizer=None,
    template: Template | None = None,
    stop: threading.Event | None = None,
) -> Iterator[str]:
    """Generate with llama.cpp. With a run's tokenizer and template, the prompt is built exactly as in training."""
    messages = with_system(messages, gen)
    options = dict(
        max_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        repeat_penalty=gen.repetition_penalty,
        seed=gen.seed,
        stream=True,
    )
    if tokenizer is not None and template is not None:
        # llama.cpp stops at the marker text and leaves it out of the reply.
        markers = stop_markers(tokenizer, template)
        chunks = llm.create_completion(prompt=prompt_ids(tokenizer, template, messages), stop=markers or None, **options)
        pieces = (chunk["choices"][0]["text"] for chunk in chunks)
    else:
        chunks = llm.create_chat_completion(messages=messages, **options)
        pieces = (chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    for piece in pieces:
        if stop and stop.is_set():
            break
        yield piece
