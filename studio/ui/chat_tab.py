"""Chat tab: one prompt, up to four panes side by side: base, a chat model, fine-tuned, exported GGUF.

Greedy by default, so differences come from the models, not the sampler. The
base and fine-tuned panes use the same weights in memory with the adapter
switched off and on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from studio.chat.panes import ReplySettings
from studio.errors import StudioError
from studio.ui.hook import Hook

PANES = ("Base", "Chat model", "Fine-tuned", "GGUF")
EMPTY_REPLY = "∅ (the model ended its reply at once)"
MODES = {"Base": "base", "Chat model": "other", "Fine-tuned": "tuned", "GGUF": "gguf"}


@dataclass
class ChatTab:
    run: gr.Dropdown
    gguf: gr.Dropdown
    other: gr.Textbox
    panes: gr.CheckboxGroup
    system: gr.Textbox
    max_tokens: gr.Number
    temperature: gr.Slider
    raw: gr.Checkbox
    boards: list[gr.Chatbot]  # one per pane, in the order of PANES
    prompt: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    notice: gr.Markdown
    refresh: Hook = field(init=False)  # the run and GGUF choices


def build(studio, form: dict) -> ChatTab:
    with gr.Row():
        run = gr.Dropdown([], label="Run", allow_custom_value=True, scale=2, elem_id="chat-run")
        gguf = gr.Dropdown([], label="GGUF file", allow_custom_value=True, scale=2, elem_id="chat-gguf")
        other = gr.Textbox("", label="Chat model (folder or .gguf, optional)", scale=2)
        panes = gr.CheckboxGroup(list(PANES), value=["Base", "Fine-tuned"], label="Panes", scale=3)
    with gr.Row():
        system = gr.Textbox("", label="System prompt", scale=4)
        max_tokens = gr.Number(64, precision=0, label="Max new tokens", scale=1)
        temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0: greedy)", scale=1)
        raw = gr.Checkbox(False, label="Raw text", info="Show replies as written (### and * stay visible)", scale=1,
                          elem_id="chat-raw")
    with gr.Row(equal_height=True):
        boards = [gr.Chatbot(label=name, height=360, elem_id=f"pane-{MODES[name]}") for name in PANES]
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=6, elem_id="chat-prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1)
        clear = gr.Button("Clear", scale=1)
    notice = gr.Markdown(elem_id="chat-notice")
    return ChatTab(run, gguf, other, panes, system, max_tokens, temperature, raw, boards, prompt, send, stop, clear, notice)


def wire(studio, form: dict, tab: ChatTab) -> None:
    stop_event = studio.chat_stop

    def answer(prompt, run, gguf, other, panes, system, max_tokens, temperature, *histories):
        """Inputs: prompt, sources, settings, the four histories. Outputs (streamed): histories, notice."""
        stop_event.clear()
        histories = [list(h or []) for h in histories]
        settings = ReplySettings(max_new_tokens=int(max_tokens or 1), temperature=float(temperature),
                                 system_prompt=system or "")
        for index, name in enumerate(PANES):
            if name not in panes:
                continue
            history = histories[index]
            history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
            try:
                for piece in studio.stream_pane(MODES[name], run or None, gguf or None, other or None,
                                                _plain(history[:-1]), settings, stop_event):
                    history[-1]["content"] += piece
                    yield (*histories, "")
            except StudioError as exc:
                history[-1]["content"] = f"⚠️ {exc}"
            if not history[-1]["content"]:
                history[-1]["content"] = EMPTY_REPLY
        yield (*histories, "")

    def sources():
        """Inputs: none. Outputs: run and GGUF choices."""
        runs = [str(p) for p in studio.list_runs()]
        return gr.update(choices=runs, value=runs[-1] if runs else None), gr.update(choices=studio.list_ggufs())

    inputs = [tab.prompt, tab.run, tab.gguf, tab.other, tab.panes, tab.system, tab.max_tokens, tab.temperature,
              *tab.boards]
    outputs = [*tab.boards, tab.notice]
    tab.send.click(answer, inputs, outputs, api_name="chat")
    tab.prompt.submit(answer, inputs, outputs, api_visibility="private")
    tab.stop.click(lambda: stop_event.set(), None, None, api_name="stop_chat")
    tab.clear.click(lambda: [[] for _ in PANES], None, tab.boards, api_visibility="private")
    tab.raw.change(lambda raw: [gr.update(render_markdown=not raw) for _ in PANES], tab.raw, tab.boards,
                   api_visibility="private")
    tab.refresh = Hook(sources, None, [tab.run, tab.gguf])


def _plain(history: list[dict]) -> list[dict]:
    """Chatbot messages may carry content as a list of parts; templates want plain text."""
    out = []
    for message in history:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": message["role"], "content": str(content)})
    return out
