"""Chat: token streaming from HF models (adapter on or off, no reload) and from GGUF files.

    stream.py    stream_reply / stream_gguf_reply: generators of text pieces; end-of-turn markers hidden
    session.py   ChatSession: what one pane has loaded (a run's model, its template, a GGUF file)
"""
