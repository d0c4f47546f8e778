"""The studio UI: built without a server, then driven end to end by gradio_client over HTTP."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_builds_without_launching(tmp_path):
    from studio.services import Studio
    from studio.ui.app import build_app

    app = build_app(Studio(runs_dir=tmp_path))
    names = {dep.get("api_name") for dep in app.config["dependencies"]}
    assert {"check_model", "preview_data", "start_training", "stop_training", "training_snapshot", "chat",
            "export", "export_snapshot", "open_in_chat", "show_command", "save_recipe"} <= names


def test_only_the_ui_imports_gradio():
    offenders = subprocess.run(["grep", "-rlE", r"^\s*(import gradio|from gradio)", "studio", "--include=*.py"],
                               cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert offenders and all(path.startswith("studio/ui/") for path in offenders), offenders


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    from studio.services import Studio
    from studio.ui.app import serve

    port = free_port()
    runs_dir = tmp_path_factory.mktemp("ui-runs")
    app = serve(Studio(runs_dir=runs_dir), port=port, block=False)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False), runs_dir
    app.close()


def wait_for(client, endpoint: str, done: tuple[str, ...], timeout: float = 180) -> list:
    """Poll a snapshot endpoint until its status line says one of `done`; returns every status seen."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        result = client.predict(api_name=endpoint)
        seen.append(result)
        if any(word in result[0] for word in done):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{endpoint} never reached {done}: last {seen[-1][0]!r}")


def test_the_whole_flow_through_the_api(client, tiny_llama):
    client, runs_dir = client
    model = {"model_name_or_path": str(tiny_llama)}
    assert client.predict(api_name="/check_model", name_or_path=str(tiny_llama)).startswith("**Ready**: LlamaForCausalLM")

    summary, tokens, _, histogram, *_ = client.predict(api_name="/preview_data", row=3, **model)
    assert "**370 rows** · format **alpaca** · template **alpaca**" in summary
    labels = {item["class_or_confidence"] for item in tokens}
    assert {"trained", "masked", "special, masked", "special, trained"} <= labels  # BOS masked, EOS trained
    assert histogram["data"], "the length histogram has bars"

    assert "python launch.py train" in client.predict(api_name="/show_command", **model, train_max_steps=5)
    notice = client.predict(api_name="/start_training", **model, name="ui", train_max_steps=12,
                            train_learning_rate=3e-3, train_batch_size=4, data_max_samples=64)[0]
    assert notice.startswith("Started **")
    busy = client.predict(api_name="/start_training", **model, name="second")[0]
    assert "Busy" in busy or "is running" in busy, "a second start is refused while training runs"

    snapshots = wait_for(client, "/training_snapshot", ("Completed", "Failed"))
    assert "Completed" in snapshots[-1][0], snapshots[-1][0]
    live = [s for s in snapshots if "Training" in s[0] and "step " in s[0]]
    assert live, "numbers arrive while the run is going"
    final = snapshots[-1]
    series = [point[2] for point in final[2]["data"]]
    assert series.count("loss") == 12 and "RAM" in final[4] and final[5]["data"]
    assert "eval loss" in series, "the quickstart's form holds rows out: the eval loss is drawn"

    run = str(sorted(runs_dir.iterdir())[-1])
    base, _, tuned, _, _ = client.predict(api_name="/chat", prompt="What is the capital of Peru?", run=run, gguf="",
                                          panes=["Base", "Fine-tuned"])
    answer = lambda board: board[-1]["content"][0]["text"]
    assert answer(base) and answer(tuned) and answer(base) != answer(tuned), (answer(base), answer(tuned))

    assert client.predict(api_name="/export", run=run, gguf=["q4_k_m"], formats=[])[0].startswith("Exporting")
    status, cards, files, modelfile, *_ = wait_for(client, "/export_snapshot", ("Done", "Failed"))[-1]
    assert status.startswith("✅ Done"), status
    assert "PASSED" in cards.split("</div>")[0] and "**ui-q4_k_m.gguf**" in cards and "| ✅ tokenizer |" in cards
    assert "ui-q4_k_m.gguf" in files and modelfile.startswith("FROM ./ui-q4_k_m.gguf")
    chosen = client.predict(api_name="/open_in_chat", run=run)
    chosen_gguf = chosen[1]["value"] if isinstance(chosen[1], dict) else chosen[1]
    assert chosen_gguf.endswith("ui-q4_k_m.gguf"), chosen
    _, _, _, gguf_pane, _ = client.predict(api_name="/chat", prompt="Hello", run=run, gguf=chosen_gguf, panes=["GGUF"])
    assert gguf_pane[-1]["role"] == "assistant"


def test_data_tab_shows_detection_skipped_rows_and_both_sides_of_a_pair(client, tiny_llama, tmp_path):
    client, _ = client
    path = tmp_path / "pairs.jsonl"
    pairs = [{"prompt": f"Capital number {i}?", "chosen": "Paris.", "rejected": "Lyon."} for i in range(12)]
    path.write_text("".join(__import__("json").dumps(p) + "\n" for p in pairs) + "{not json\n")
    summary, tokens, rejected, _, skipped, *_ = client.predict(
        api_name="/preview_data", row=0, model_name_or_path=str(tiny_llama), data_path=str(path))
    assert "**Kept 12 of 13 rows (1 skipped)** · format **preference** · template **alpaca**" in summary
    assert "Format **preference** detected from the columns" in summary
    assert "**1 malformed rows skipped**" in summary
    assert "rejected responses are not used" in summary
    assert "- `pairs.jsonl:13`: not valid JSON" in skipped
    assert rejected["visible"] is True, "the rejected side is shown for preference rows"
    trained = lambda box: "".join(item["token"] for item in box if item["class_or_confidence"].endswith("trained"))
    assert trained(tokens) == "Paris.</s>" and trained(rejected["value"]) == "", "sft does not train the rejected side"
    assert "Lyon." in "".join(item["token"] for item in rejected["value"])


def test_the_mapping_dropdowns_list_the_loaded_files_columns_and_keep_the_choice(client, tiny_llama, tmp_path):
    client, _ = client
    path = tmp_path / "questions.csv"
    path.write_text("Question Text,Answer\nWhat is 2 plus 2?,4\nName a colour.,Blue like the sky.\n")
    fields = ("instruction", "input", "output", "prompt", "completion", "chosen", "rejected", "text", "messages")
    choices = lambda update: [value for value, _ in update["choices"]]
    # Before the mapping the format cannot be told: the dropdowns get the columns to fix that.
    out = client.predict(api_name="/preview_data", row=0, model_name_or_path=str(tiny_llama), data_path=str(path))
    summary, mapping = out[0], out[5:]
    assert "cannot tell the format from the columns" in summary
    assert len(mapping) == len(fields) and all(choices(m) == ["", "Question Text", "Answer"] for m in mapping)
    out = client.predict(api_name="/preview_data", row=0, model_name_or_path=str(tiny_llama), data_path=str(path),
                         data_columns_instruction="Question Text", data_columns_output="Answer")
    assert out[0].startswith("**2 rows** · format **alpaca**")
    chosen = dict(zip(fields, out[5:]))
    assert chosen["instruction"]["value"] == "Question Text" and chosen["output"]["value"] == "Answer"
    assert chosen["input"]["value"] == "" and choices(chosen["input"]) == ["", "Question Text", "Answer"]
    out = client.predict(api_name="/preview_data", row=0, model_name_or_path=str(tiny_llama), data_path=str(path),
                         data_columns_instruction="Question Text", data_columns_output="Answer", data_max_row_chars=19)
    assert out[0].startswith("**Kept 1 of 2 rows (1 skipped)**")
    assert "- `questions.csv:3`: row of 33 characters is over data.max_row_chars=19" in out[4]


def test_launch_py_opens_the_studio(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--runs-dir", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from gradio_client import Client

        deadline = time.time() + 90
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        assert client.predict(api_name="/training_snapshot")[0] == "No training yet."
    finally:
        server.terminate()
        server.wait(10)


def test_dpo_from_the_train_tab_previews_both_sides_and_plots_its_rewards(client, tiny_llama):
    client, runs_dir = client
    form = {"model_name_or_path": str(tiny_llama), "train_method": "dpo",
            "data_path": str(ROOT / "assets" / "sample_preferences.jsonl")}
    summary, tokens, rejected, histogram, *_ = client.predict(api_name="/preview_data", row=1, **form)
    assert "format **preference**" in summary
    assert "trained" in {item["class_or_confidence"] for item in rejected["value"]}, "dpo trains the rejected side"
    assert "rejected ≤" in str(histogram["data"]) and "chosen ≤" in str(histogram["data"]), "a histogram per side"

    notice = client.predict(api_name="/start_training", **form, name="ui-dpo", train_max_steps=4,
                            train_learning_rate=5e-3, train_batch_size=4, data_max_samples=32)[0]
    assert notice.startswith("Started **"), notice
    final = wait_for(client, "/training_snapshot", ("Completed", "Failed"))[-1]
    assert "Completed" in final[0], final[0]
    assert "rewards/chosen" in str(final[6]) and "rewards/margins" in str(final[6]), "the method's curves are plotted"
