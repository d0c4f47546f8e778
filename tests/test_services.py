"""The services object: one GPU job at a time, also against a reply that is still streaming."""

import threading

import pytest
from conftest import tiny_config

from studio.chat.panes import ReplySettings
from studio.errors import BusyError
from studio.services import Studio


def test_starting_training_ends_a_streaming_reply_and_frees_chat(trained_run, tiny_llama, tmp_path):
    studio = Studio(runs_dir=tmp_path)
    pieces, first = [], threading.Event()

    def chat():
        studio.chat_stop.clear()
        for piece in studio.stream_pane("base", str(trained_run), None, None,
                                        [{"role": "user", "content": "Tell me a long story."}],
                                        ReplySettings(max_new_tokens=400, temperature=1.0),
                                        studio.chat_stop):
            pieces.append(piece)
            first.set()

    reply = threading.Thread(target=chat)
    reply.start()
    assert first.wait(60)
    assert reply.is_alive(), "the reply is still streaming when training is started"
    studio.start_training(tiny_config(tiny_llama, "train.max_steps=2"))
    reply.join(30)
    assert not reply.is_alive() and len(pieces) < 400, "the reply stopped when training took the GPU"
    assert studio.chat.sessions == {}, "chat models are freed before training starts"
    with pytest.raises(BusyError, match="Busy: a train job"):
        list(studio.stream_pane("tuned", str(trained_run), None, None, [{"role": "user", "content": "Hi"}]))
    assert studio.jobs.wait(120).state == "completed"
