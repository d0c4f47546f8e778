"""Prompt templates, and turning a conversation into token ids plus a loss mask.

Every template is a Jinja chat template, the same kind a model ships in its
tokenizer. So training, chat and the exported GGUF (which embeds it) use one
text, stored with the run as `template.jinja`.

Labels are built by rendering: for each assistant turn, the conversation up to
that turn is rendered with the generation prompt (the prefix) and with the
turn itself; the characters in between are the response. Tokens whose text
starts inside a response are trained, all others masked. This works for any
template, with no searching for marker strings.

A custom template is a .jinja file, Jinja text, or a format string with named
fields ("Summarize:\n{dialogue}\n---\nSummary: {summary}"), which becomes a
Jinja chat template too (see FieldTemplate).

Every trained response ends with a token generation stops at: EOS or the
template's end-of-turn token. Where the template's end-of-turn marker is not a
single token of the model's vocabulary (ChatML's <|im_end|> on a Llama
tokenizer), EOS is added after the response, so the model still learns to stop.

    template = resolve_template("auto", tokenizer)
    row = tokenize_conversation(tokenizer, template, messages, train_on="responses")
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from studio.errors import TemplateError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# The Alpaca prompt of the seed notebook, written as a chat template: the
# system message (or the classic preamble), "### Instruction:" for the user,
# "### Response:" for the assistant, and EOS after every response so the
# model learns to stop. A row's "input" is folded into the user message as
# "### Input:", which reproduces the notebook's text exactly.
ALPACA_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "' }}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### Response:\\n' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n### Response:\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# No markers at all: prompt and response are concatenated (continuation-style
# training); EOS ends every response.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Gemma has no system role: a system message goes in front of the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

VICUNA_PREAMBLE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{{ \"" + VICUNA_PREAMBLE + "\" }}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)

GALLERY = {
    "alpaca": ALPACA_TEMPLATE,
    "chatml": CHATML_TEMPLATE,  # also Qwen's format
    "llama3": LLAMA3_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "phi3": PHI3_TEMPLATE,
    "vicuna": VICUNA_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
}

# Tokens that end an assistant turn in common chat templates; generation stops
# at any of them that the vocabulary has, as well as at EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class Template:
    """A named Jinja chat template. `source` says where it came from (model, gallery, file, text, format string, run)."""

    name: str
    jinja: str
    source: str


def resolve_template(name: str, tokenizer) -> Template:
    """Pick the template for a config value: auto, model, or a gallery name."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "auto":
        return Template("model", own, "model") if own else Template("alpaca", ALPACA_TEMPLATE, "gallery")
    if name == "model":
        if not own:
            raise TemplateError(
                "This model has no chat template of its own (it is probably a base model). "
                f"Set data.template to one of: {', '.join(GALLERY)}."
            )
        return Template("model", own, "model")
    if name in GALLERY:
        return Template(name, GALLERY[name], "gallery")
    if is_jinja_text(name):
        return Template("custom", name, "text")
    if is_format_string(name):
        return Template("custom", FieldTemplate.parse(name).jinja(), "format string")
    if name.endswith(".jinja"):
        path = Path(name)
        if not path.is_file():
            raise TemplateError(f"Template file not found: {path}.")
        return Template(path.stem, path.read_text(encoding="utf-8"), "file")
    raise TemplateError(
        f"Unknown template {name!r}. Choose auto, model, a .jinja file, Jinja text, a format string with "
        f"{{fields}}, or one of: {', '.join(GALLERY)}."
    )


def is_jinja_text(text: str) -> bool:
    return "{{" in text or "{%" in text


def is_format_string(text: str) -> bool:
    """A format string with named fields ("Q: {question} A: {answer}"); Jinja text is not one."""
    return "{" in text and not is_jinja_text(text)


@dataclass(frozen=True)
class FieldTemplate:
    """A format string whose last field is the response and whose other fields make the prompt.

    "Summarize:\n{dialogue}\n---\nSummary: {summary}" trains on rows with the
    columns dialogue and summary. It becomes a chat template so that chat and
    every export prompt exactly as training did: a user message stands for the
    prompt fields (with the text between them), so in chat one types the
    dialogue and gets the summary.
    """

    head: str  # text before the first field
    prompt: tuple[tuple[str, str], ...]  # (field, text after it) for each prompt field
    response: str  # the last field
    tail: str  # text after the response; trained with it, then EOS

    @classmethod
    def parse(cls, text: str) -> "FieldTemplate":
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(f"Template {text!r} is not a valid format string ({exc}). Write each field as "
                                "{name}, e.g. 'Summarize:\\n{dialogue}\\nSummary: {summary}'.") from None
        fields = [field for _, field, _, _ in parts if field is not None]
        bad = [f for _, f, spec, conv in parts if f is not None and (not f.isidentifier() or spec or conv)]
        if bad or len(fields) < 2:
            raise TemplateError(
                f"Template {text!r}: a format-string template needs at least two plain named fields, the prompt "
                "field(s) and, last, the response field, e.g. 'Summarize:\\n{dialogue}\\nSummary: {summary}'"
                + (f" (not {{{bad[0]}}})." if bad else ".")
            )
        literals = [literal for literal, _, _, _ in parts] + [""]
        prompt = tuple((field, literals[i + 1]) for i, field in enumerate(fields[:-1]))
        trailing = literals[len(fields)] if parts[-1][1] is None else ""
        return cls(literals[0], prompt, fields[-1], trailing)

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.prompt] + [self.response]

    def user_text(self, values: dict[str, str]) -> str:
        """The user message for a row: the prompt fields with the text between them."""
        pieces = [values[field] + after for field, after in self.prompt]
        return "".join(pieces)[: -len(self.prompt[-1][1]) or None]

    def jinja(self) -> str:
        # Spaces right before the response go with the response: "Summary: They" tokenizes as
        # "Summary:" + " They", and a prompt ending in a space would cut that token in two.
        before = self.prompt[-1][1]
        prompt_end = before.rstrip(" ")
        quote = lambda text: json.dumps(text, ensure_ascii=False)  # a Jinja string literal
        return (
            "{% for message in messages %}"
            "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
            f"{{% elif message['role'] == 'user' %}}"
            f"{{{{ {quote(self.head)} + message['content'] + {quote(prompt_end)} }}}}"
            f"{{% elif message['role'] == 'assistant' %}}"
            f"{{{{ {quote(before[len(prompt_end):])} + message['content'] + {quote(self.tail)} + eos_token }}}}"
            "{% endif %}{% endfor %}"
        )


def template_warnings(tokenizer, template: Template) -> list[str]:
    """What a person should know about the template choice before training on it."""
    own = getattr(tokenizer, "chat_template", None)
    if not own and template.source == "gallery" and template.name == "alpaca":
        return ["This model has no chat template (a base model): the Alpaca prompt is used, and chat and every "
                "export use it too."]
    if own and template.jinja != own:
        return [f"This model has its own chat template, but {template.name!r} is chosen: the result answers well only "
                "in that format (chat and export use it; apps that apply the model's original template will not)."]
    return []


def template_from_text(jinja: str, source: str) -> Template:
    """A Template for stored text, named after the gallery entry it matches (else "model")."""
    name = next((n for n, text in GALLERY.items() if text == jinja), "model")
    return Template(name, jinja, source)


def render(tokenizer, template: Template, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text the model sees for `messages` (through transformers' chat-template renderer)."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja errors of all kinds, raised by templates on bad roles
        raise TemplateError(f"Template {template.name!r} cannot render this conversation: {exc}") from None


@dataclass(frozen=True)
class TokenizedRow:
    """Token ids of one row and, per token, 1 if it is trained (part of a response) else 0."""

    text: str
    input_ids: list[int]
    trained: list[int]
    where: str = ""  # the row's source ("data.jsonl:12"), to name it when training goes wrong

    @property
    def sequences(self) -> tuple[list[int], ...]:
        """The token sequences the model reads for this row (to name it when training goes wrong)."""
        return (self.input_ids,)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    def cut(self, max_length: int) -> "TokenizedRow | None":
        """The row cut to max_length tokens; None when nothing is left to learn (no trained token but the first)."""
        cut = self if len(self.input_ids) <= max_length else TokenizedRow(
            self.text, self.input_ids[:max_length], self.trained[:max_length], self.where)
        return cut if any(cut.trained[1:]) else None


def tokenize_conversation(tokenizer, template: Template, messages: list[dict], train_on: str) -> TokenizedRow:
    """Render a conversation and mark the tokens of every assistant turn as trained, each ending in a stop token."""
    text = render(tokenizer, template, messages)
    spans = _response_spans(tokenizer, template, messages, text) if train_on == "responses" else [(0, len(text))]
    return _tokenize_with_spans(tokenizer, text, spans, end_with_stop=True)


def tokenize_text(tokenizer, text: str) -> TokenizedRow:
    """A raw-text row: the whole text plus EOS, all trained."""
    full = text + (tokenizer.eos_token or "")
    return _tokenize_with_spans(tokenizer, full, [(0, len(full))])


def _response_spans(tokenizer, template: Template, messages: list[dict], text: str) -> list[tuple[int, int]]:
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, template, messages[: i + 1])
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise TemplateError(
                f"Template {template.name!r} renders turn {i + 1} differently depending on what follows, "
                "so responses cannot be located. Choose another template or train on everything (data.train_on=all)."
            )
        spans.append((len(prefix), len(upto)))
    return spans


def _tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]],
                         end_with_stop: bool = False) -> TokenizedRow:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    span_of = [next((k for k, (lo, hi) in enumerate(spans) if lo <= start < hi), None) for start, _ in offsets]
    trained = [int(k is not None) for k in span_of]
    if end_with_stop:
        _add_eos_where_no_stop(tokenizer, ids, trained, span_of, len(spans))
    bos = tokenizer.bos_token
    if bos and _adds_bos(tokenizer) and not text.startswith(bos):
        ids.insert(0, tokenizer.bos_token_id)
        trained.insert(0, 0)
    return TokenizedRow(text=text, input_ids=ids, trained=trained)


def _add_eos_where_no_stop(tokenizer, ids: list[int], trained: list[int], span_of: list, n_spans: int) -> None:
    """Put a trained EOS after every response that holds no token generation stops at.

    A template's end-of-turn marker that the vocabulary lacks (<|im_end|> on a
    Llama tokenizer) is learned as plain text pieces, and chat would never stop
    on it; EOS after it teaches the model to stop.
    """
    if tokenizer.eos_token_id is None:
        return
    stops = set(stop_token_ids(tokenizer))
    for k in reversed(range(n_spans)):  # from the end, so insertions keep earlier positions valid
        positions = [i for i, owner in enumerate(span_of) if owner == k]
        if positions and not any(ids[i] in stops for i in positions):
            ids.insert(positions[-1] + 1, tokenizer.eos_token_id)
            trained.insert(positions[-1] + 1, 1)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by itself (Llama, Gemma do; Qwen does not)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def prompt_ids(tokenizer, template: Template, messages: list[dict]) -> list[int]:
    """Token ids that ask the model for the next assistant turn (for chat and verification)."""
    return rendered_ids(tokenizer, render(tokenizer, template, messages, add_generation_prompt=True))


def rendered_ids(tokenizer, text: str) -> list[int]:
    """Token ids of text a template rendered, as training reads it: BOS in front where the tokenizer adds one
    and the text does not start with it."""
    return _tokenize_with_spans(tokenizer, text, []).input_ids


def stop_markers(tokenizer, template: Template) -> list[str]:
    """End-of-turn markers of `template` that this vocabulary spells with several tokens.

    A model trained on such a template writes the marker as text before its EOS
    (<|im_end|> on a Llama tokenizer), so chat stops at the text and hides it.
    """
    single = set(stop_token_ids(tokenizer))
    return [m for m in END_OF_TURN_TOKENS
            if m in template.jinja and tokenizer.convert_tokens_to_ids(m) not in single]


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus every end-of-turn token the vocabulary has (as one token)."""
    # Looked up token by token: building the whole vocabulary (262k entries for Gemma) for every row is slow.
    found = tokenizer.convert_tokens_to_ids(list(END_OF_TURN_TOKENS))
    ids = {i for i in found if i is not None and i != tokenizer.unk_token_id}
    return sorted(ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
