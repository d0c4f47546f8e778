"""Sharing a run on the hub: the model card, the offline refusal, and a token that never lands in the run folder.

No hub is faked: an upload either stops before the network (offline, no token) or is refused by the
network guard of tests/no_network, which is what a machine without a network does.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_safety import guarded_environment

ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_StudioTestFakeToken0123456789abcdef"


@pytest.fixture(scope="module")
def shared_run(trained_run, tmp_path_factory):
    """A copy of the trained run with a q8_0 GGUF (and its report card) and one small evaluation."""
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.export.exporting import export_run

    run_dir = tmp_path_factory.mktemp("share-runs") / trained_run.name
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("exports", "evals", ".lock"))
    assert export_run(run_dir, ("q8_0",), ()).passed
    run_evaluation(run_dir, EvalSpec(rows="train", limit=3, models=("base", "tuned"),
                                     overrides=("generation.max_new_tokens=4",)))
    return run_dir


def launch(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_model_card_holds_recipe_data_scorecard_and_report_cards(shared_run):
    from studio.evaluate.store import list_evals, load_eval
    from studio.share import model_card

    card = model_card(shared_run, "gguf")
    meta = front_matter(card)
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"] and "lora" in meta["tags"]
    assert "base_model" not in meta, "a local base folder is no hub id"
    assert (shared_run / "config.yaml").read_text().strip() in card, "the recipe, whole"
    assert "## Data" in card and "64 training rows, 0 eval rows" in card
    scorecard = load_eval(list_evals(shared_run)[-1]).scorecard
    assert "| model | rows | loss |" in card and "| base | 3 |" in card
    assert all(f"- {line}" in card for line in scorecard.verdict + [f"Warning: {w}" for w in scorecard.warnings])
    assert "## GGUF report cards" in card and "**tiny-q8_0.gguf**" in card and "PASSED" in card
    assert "| tokenizer | pass |" in card

    adapter = front_matter(model_card(shared_run, "adapter"))
    assert adapter["library_name"] == "peft" and "gguf" not in adapter["tags"]


def test_the_built_in_model_is_named_by_its_hub_id(shared_run, tmp_path):
    from studio.share import model_card

    run = shutil.copytree(shared_run, tmp_path / "builtin-run", ignore=shutil.ignore_patterns("exports", "evals"))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(yaml.safe_load(config.read_text())["model"]["name_or_path"],
                                                 "builtin:gemma-3-270m"))
    card = model_card(run, "merged")
    meta = front_matter(card)
    assert meta["base_model"] == "google/gemma-3-270m" and meta["library_name"] == "transformers"
    assert meta["license"] == "gemma"
    assert "Not evaluated yet" in card and "## GGUF report cards" not in card


def test_card_only_writes_the_card_into_the_run_folder(shared_run):
    done = launch("share", shared_run, "--what", "gguf", "--card-only")
    assert done.returncode == 0, done.stdout + done.stderr
    card = (shared_run / "model-card.md").read_text()
    assert f"Model card written to {shared_run / 'model-card.md'}" in done.stdout
    assert front_matter(card)["library_name"] == "gguf" and "tiny-q8_0.gguf" in card


def test_an_offline_studio_refuses_to_share_and_says_how_to_go_online(shared_run):
    from studio.errors import StudioError
    from studio.share import share_run

    # This test session runs with HF_HUB_OFFLINE=1 (conftest), as a user who set it would.
    with pytest.raises(StudioError) as refused:
        share_run(shared_run, "someone/tiny", "gguf")
    text = str(refused.value)
    assert "offline" in text and "unset HF_HUB_OFFLINE" in text and "HF_TOKEN" in text and "hf auth login" in text
    done = launch("share", shared_run, "--repo", "someone/tiny", env={**guarded_environment(shared_run.parent / "a.jsonl"),
                                                                      "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "error: The studio is offline" in done.stderr, done.stdout + done.stderr
    for bad in ("tiny", "a/b/c", "-x/y"):
        with pytest.raises(StudioError, match="user/name or org/name"):
            share_run(shared_run, bad, "gguf")
    with pytest.raises(StudioError, match="no merged weights yet: python launch.py export .* --formats merged_16bit"):
        share_run(shared_run, "someone/tiny", "merged")


def test_sharing_without_a_token_says_where_to_get_one(shared_run, tmp_path):
    env = guarded_environment(tmp_path / "attempts.jsonl")
    env.pop("HF_TOKEN", None)
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no stored login either
    done = launch("share", shared_run, "--repo", "someone/tiny", env=env)
    assert done.returncode == 2 and "error: No hub token" in done.stderr and "hf auth login" in done.stderr
    assert not (tmp_path / "attempts.jsonl").exists(), "nothing went online without a token"


def test_a_token_never_lands_in_the_run_folder(shared_run, tmp_path):
    """A share attempt with a recognisable token, on a machine without a network: it fails, and leaves no trace of it."""
    attempts = tmp_path / "attempts.jsonl"
    env = {**guarded_environment(attempts), "HF_TOKEN": FAKE_TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    before = (shared_run / "events.jsonl").read_text()
    done = launch("share", shared_run, "--repo", "someone/tiny", "--what", "adapter", env=env)
    assert done.returncode == 2 and "error: Cannot reach the hub" in done.stderr, done.stdout + done.stderr
    assert "huggingface.co" in attempts.read_text(), "the upload went as far as the network"
    assert FAKE_TOKEN not in done.stdout + done.stderr
    files = [p for p in shared_run.rglob("*") if p.is_file()]
    assert shared_run / "model-card.md" in files and shared_run / "status.json" in files
    assert [p for p in files if FAKE_TOKEN.encode() in p.read_bytes()] == []
    assert (shared_run / "events.jsonl").read_text() == before
    assert not (shared_run / "shares.jsonl").exists(), "only a finished share is recorded"


def test_the_export_tabs_share_section_says_why_it_cannot_share(shared_run):
    from gradio_client import Client

    from studio.services import Studio
    from studio.ui.app import serve
    from test_ui import free_port

    port = free_port()
    app = serve(Studio(runs_dir=shared_run.parent), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        said = client.predict(api_name="/share", run=str(shared_run), repo="someone/tiny", what="gguf", private=True)
        assert said.startswith("⚠️ The studio is offline") and "HF_TOKEN" in said, said
        said = client.predict(api_name="/share", run=str(shared_run), repo="tiny", what="gguf", private=True)
        assert "user/name or org/name" in said
    finally:
        app.close()
