"""Chat: token streaming from HF models (adapter on or off, no reload) and from GGUF files.

    stream.py    stream_reply / stream_gguf_reply: generators of text pieces; end-of-turn markers hidden
    session.py   ChatSession: what one chat has loaded, each model a Replier (HF or GGUF) chosen when it loads
    panes.py     ChatPanes: the Chat tab's panes (base, tuned, gguf, other), their models loaded once; ReplySettings
"""
