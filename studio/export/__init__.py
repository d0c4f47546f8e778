"""Export: merged weights, GGUF files made by llama.cpp's own tools, each verified with a report card.

    exporting.py   export_run: adapter, merged 16/4-bit, GGUF types; stoppable; nothing half-written kept
    gguf.py        llama.cpp's converter and quantizer in child processes; reading GGUF headers
    references.py  the fine-tuned and base models' answers the card compares the GGUF with
    verify.py      the report card: loads, tensor types, template, EOS, tokenizer, answers, fine-tune kept
    ollama.py      the Ollama Modelfile beside each GGUF
"""
