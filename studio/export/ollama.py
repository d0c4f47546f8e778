"""Ollama Modelfiles for exported GGUF files.

Ollama speaks Go templates, not Jinja. For the gallery templates the studio
writes the same prompt format as a Go template; for a model's own template it
writes none, and Ollama reads the Jinja template embedded in the GGUF.

    ollama create my-model -f exports/run-q4_k_m.Modelfile
"""

from __future__ import annotations

from pathlib import Path

from studio.data.templates import ALPACA_PREAMBLE, Template

ALPACA_GO = (
    '{{ if .System }}{{ .System }}{{ else }}' + ALPACA_PREAMBLE + '{{ end }}'
    '{{ range .Messages }}{{ if eq .Role "user" }}\n\n### Instruction:\n{{ .Content }}'
    '{{ else if eq .Role "assistant" }}\n\n### Response:\n{{ .Content }}{{ "EOS" }}{{ end }}{{ end }}'
    '\n\n### Response:\n'
)
CHATML_GO = (
    '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
    '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
    '<|im_start|>assistant\n'
)


def modelfile_text(gguf_name: str, template: Template, tokenizer) -> str:
    lines = [f"FROM ./{gguf_name}"]
    go_template = {"alpaca": ALPACA_GO, "chatml": CHATML_GO}.get(template.name)
    if go_template:
        go_template = go_template.replace('{{ "EOS" }}', tokenizer.eos_token or "")
        lines.append(f'TEMPLATE """{go_template}"""')
    stops = [tokenizer.eos_token] + (["<|im_end|>"] if template.name == "chatml" else [])
    lines += [f'PARAMETER stop "{s}"' for s in stops if s]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, template: Template, tokenizer) -> Path:
    """Write `<name>.Modelfile` beside the GGUF and return its path."""
    target = gguf_path.with_suffix(".Modelfile")
    target.write_text(modelfile_text(gguf_path.name, template, tokenizer), encoding="utf-8")
    return target
