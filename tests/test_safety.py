"""Safe by default: no outbound connection, no server open to strangers, no writes outside the studio's
folders, no model code or pickle run without an opt-in.

The network tests run `python launch.py` in a child process whose environment
has none of the offline switches this test session sets (conftest), and has
GRADIO_SHARE=True: whatever keeps the studio offline and unshared is the
studio's own doing. Every connection the child (or a Python process it starts)
tries beyond this machine is refused and written down by tests/no_network.
"""

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_ui import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "no_network"
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                    "DISABLE_TELEMETRY", "DO_NOT_TRACK")


def guarded_environment(attempts_log: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_SWITCHES and not k.startswith("GRADIO_")}
    env.update(GRADIO_SHARE="True", NETWORK_ATTEMPTS_LOG=str(attempts_log),
               PYTHONPATH=os.pathsep.join(p for p in (str(GUARD), env.get("PYTHONPATH")) if p))
    return env


@pytest.fixture(scope="module")
def listening_studio(tmp_path_factory):
    """`launch.py --listen 127.0.0.1` with no --auth, under the network guard: (client, url, password, folder)."""
    folder = tmp_path_factory.mktemp("guarded")
    port = free_port()
    output = open(folder / "out.txt", "w")
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--listen", "127.0.0.1", "--port", str(port),
         "--runs-dir", str(folder / "runs")],
        cwd=folder, env=guarded_environment(folder / "attempts.jsonl"), stdin=subprocess.DEVNULL,
        stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        password = _generated_password(folder / "out.txt", server)
        client = _connect(url, ("studio", password), server)
        yield client, url, password, folder
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        output.close()


def _generated_password(output: Path, server, timeout: float = 90) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        found = re.search(r"Sign in as user 'studio' with password '([^']+)'", output.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no generated password was printed:\n{output.read_text()}")


def _connect(url: str, auth, server, timeout: float = 90):
    from gradio_client import Client

    deadline = time.time() + timeout
    while True:
        try:
            return Client(url, auth=auth, verbose=False)
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                raise
            time.sleep(0.5)


def status_for_host(url: str, host: str, path: str = "/") -> int:
    """A real request to the running server with this Host header; its HTTP status."""
    address = url.removeprefix("http://").strip("/")
    connection = http.client.HTTPConnection(address, timeout=10)
    connection.request("GET", path, headers={"Host": host})
    status = connection.getresponse().status
    connection.close()
    return status


def test_listening_without_auth_signs_in_with_a_generated_password(listening_studio):
    from gradio_client import Client

    client, url, password, _ = listening_studio
    assert client.predict(api_name="/training_snapshot")[0] == "No training yet."
    with pytest.raises(Exception, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(Exception):
        Client(url, auth=("studio", password + "x"), verbose=False)
    call = urllib.request.Request(url + "gradio_api/call/training_snapshot", data=b'{"data": [[]]}', method="POST",
                                  headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(call, timeout=10)
    assert refused.value.code == 401


def test_a_foreign_host_header_is_refused(listening_studio):
    _, url, _, _ = listening_studio
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert status_for_host(url, f"127.0.0.1:{port}") == 200
    assert status_for_host(url, f"localhost:{port}") == 200
    assert status_for_host(url, f"attacker.example:{port}") == 400
    assert status_for_host(url, "attacker.example", "/config") == 400


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/b", "..\\escaped", ".hidden"])
def test_save_recipe_cannot_write_outside_the_recipes_folder(listening_studio, name):
    client, _, _, folder = listening_studio
    notice = client.predict(api_name="/save_recipe", name=name)
    assert notice.startswith("⚠️") and "cannot name a recipe file" in notice, notice
    escaped = [found for place in (folder.parent, folder, Path("/tmp")) for found in place.glob("escaped*.yaml")]
    assert not escaped and not (folder / "a").exists(), escaped


def test_save_recipe_writes_into_the_recipes_folder(listening_studio):
    client, _, _, folder = listening_studio
    notice = client.predict(api_name="/save_recipe", name="my run")
    assert "Saved **my_recipes/my-run.yaml**" in notice, notice
    assert (folder / "my_recipes" / "my-run.yaml").is_file()


def test_export_and_resume_write_only_into_the_studios_runs(listening_studio):
    client, _, _, folder = listening_studio
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text("name: elsewhere\n")
    for notice in (client.predict(api_name="/export", run=str(elsewhere), gguf=["f16"], formats=["adapter"])[0],
                   client.predict(api_name="/resume_training", run=str(elsewhere))[0]):
        assert notice.startswith("⚠️") and "is not in this studio's runs folder" in notice, notice
    assert [p.name for p in elsewhere.iterdir()] == ["config.yaml"]


def test_start_training_chat_and_export_make_no_outbound_connection(listening_studio, tiny_llama):
    """The whole flow on the tiny model while every outbound attempt is refused and logged."""
    client, _, _, folder = listening_studio
    model = {"model_name_or_path": str(tiny_llama), "data_path": str(ROOT / "assets" / "sample_instructions.jsonl")}
    assert client.predict(api_name="/check_model", name_or_path=str(tiny_llama)).startswith("**Ready**")
    notice = client.predict(api_name="/start_training", **model, name="offline", train_max_steps=4,
                            train_batch_size=4, train_max_length=128, data_max_samples=32)[0]
    assert notice.startswith("Started **"), notice
    assert "Completed" in wait_for(client, "/training_snapshot", ("Completed", "Failed"))[-1][0]
    run = str(next((folder / "runs").iterdir()))
    tuned = client.predict(api_name="/chat", prompt="What is the capital of Peru?", run=run, gguf="",
                           panes=["Fine-tuned"])[2]
    assert tuned[-1]["role"] == "assistant" and tuned[-1]["content"], tuned
    assert client.predict(api_name="/export", run=run, gguf=["f16"], formats=[])[0].startswith("Exporting")
    status = wait_for(client, "/export_snapshot", ("Done", "Failed"))[-1][0]
    assert status.startswith("✅ Done"), status

    output = (folder / "out.txt").read_text()
    assert "public URL" not in output and "share link" not in output, output
    attempts_log = folder / "attempts.jsonl"
    attempts = [json.loads(line) for line in attempts_log.read_text().splitlines()] if attempts_log.exists() else []
    assert not attempts, "outbound connections were attempted:\n" + "\n".join(
        f"{a['call']} {a['target']}\n    " + "\n    ".join(callers(a["stack"])) for a in attempts)


def callers(stack: list[str]) -> list[str]:
    """The frames that asked for the connection, without the HTTP and socket plumbing under them."""
    plumbing = ("httpx", "httpcore", "socket.py", "urllib", "http/client.py", "ssl.py")
    return [frame for frame in stack if not any(p in frame for p in plumbing)][-8:]


def test_the_guard_catches_an_outbound_attempt(tmp_path):
    """The guard itself: a child that tries to reach a hub host is caught, and it is logged."""
    log = tmp_path / "attempts.jsonl"
    child = subprocess.run(
        [sys.executable, "-c", "import urllib.request\ntry:\n    urllib.request.urlopen('https://huggingface.co', timeout=5)\n"
                               "except OSError as exc:\n    print('refused', exc)"],
        env=guarded_environment(log), capture_output=True, text=True, timeout=60)
    assert "refused" in child.stdout, child.stdout + child.stderr
    assert json.loads(log.read_text().splitlines()[0])["target"] == "'huggingface.co'"


# ------------------------------------------------------------------ settings


def test_serve_settings():
    from studio.errors import ConfigError
    from studio.safety import serve_settings

    local = serve_settings(7860, None, None, None)
    assert local.host == "127.0.0.1" and not local.auth and local.allowed_hosts() == ["127.0.0.1", "localhost"]
    listening = serve_settings(7860, "0.0.0.0", None, None)
    assert listening.allowed_hosts() == ["*"] and listening.auth[0][0] == "studio"
    assert len(listening.generated_password) >= 16 and listening.auth[0][1] == listening.generated_password
    assert serve_settings(7860, "0.0.0.0", None, None).generated_password != listening.generated_password
    assert serve_settings(7860, "0.0.0.0", "ann:pw:with:colons", None).auth == (("ann", "pw:with:colons"),)
    with pytest.raises(ConfigError, match="expected user:password"):
        serve_settings(7860, "0.0.0.0", "nopassword", None)


def test_auth_file_lines(tmp_path):
    from studio.errors import ConfigError
    from studio.safety import serve_settings

    good = tmp_path / "users.txt"
    good.write_text("ann:one\n\nbob:two\n")
    assert serve_settings(7860, "0.0.0.0", None, str(good)).auth == (("ann", "one"), ("bob", "two"))
    bad = tmp_path / "bad.txt"
    bad.write_text("ann:one\nbob\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: expected user:password"):
        serve_settings(7860, "0.0.0.0", None, str(bad))


def test_hub_ids_alone_go_online_after_stay_offline():
    """Offline switches on at start; a typed hub id's load lifts them, unless the user set HF_HUB_OFFLINE."""
    script = ("from studio.safety import stay_offline, hub_online\nstay_offline()\n"
              "import huggingface_hub.constants as c, datasets.config as d\n"
              "inside = []\nwith hub_online():\n    inside.append((c.HF_HUB_OFFLINE, d.HF_HUB_OFFLINE))\n"
              "print(c.HF_HUB_OFFLINE, d.HF_HUB_OFFLINE, inside[0])")
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_SWITCHES}
    run = lambda extra: subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**env, **extra},
                                       capture_output=True, text=True, timeout=120)
    default = run({})
    assert default.stdout.strip() == "True True (False, False)", default.stdout + default.stderr
    chosen_offline = run({"HF_HUB_OFFLINE": "1"})
    assert chosen_offline.stdout.strip() == "True True (True, True)", chosen_offline.stdout + chosen_offline.stderr
    # A training process the studio starts inherits its offline switches, and its permission with them.
    parent = ("from studio.safety import stay_offline\nstay_offline()\nimport subprocess, sys\n"
              "from studio.train.parallel import rank_environment\nfrom studio.train.placement import Placement\n"
              "env = rank_environment(Placement(processes=1, gpus=(), engine='single', grad_accum=1))\n"
              f"sys.stdout.write(subprocess.run([sys.executable, '-c', {script!r}], env=env, capture_output=True,"
              " text=True).stdout)")
    for extra, child in (({}, "True True (False, False)"), ({"HF_HUB_OFFLINE": "1"}, "True True (True, True)")):
        started = subprocess.run([sys.executable, "-c", parent], cwd=ROOT, env={**env, **extra}, capture_output=True,
                                 text=True, timeout=120)
        assert started.stdout.strip() == child, (extra, started.stdout + started.stderr)


# ------------------------------------------------------------------ model files


def copy_without_weights(model: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(model, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return target


def test_pickle_weights_load_only_with_allow_pickle(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from studio.config import ModelConfig
    from studio.errors import ModelLoadError
    from studio.models import load_model

    folder = copy_without_weights(tiny_llama, tmp_path / "pickled")
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only as pickle files \(pytorch_model.bin\).*model.allow_pickle=true"):
        load_model(ModelConfig(name_or_path=str(folder)))
    model, _ = load_model(ModelConfig(name_or_path=str(folder), allow_pickle=True))
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


CUSTOM_CODE = """
from pathlib import Path
Path(__file__).with_name("CODE_RAN").write_text("the folder's code ran")
from transformers import PretrainedConfig
class TinyCustomConfig(PretrainedConfig):
    model_type = "tiny-custom"
"""
LOAD_WITHOUT_OPT_IN = """
import sys
from studio.config import ModelConfig
from studio.errors import StudioError
from studio.models import load_model
from studio.model_info import describe_model
for attempt in (lambda: load_model(ModelConfig(name_or_path=sys.argv[1])), lambda: describe_model(sys.argv[1])):
    try:
        attempt()
        print("LOADED")
    except StudioError as exc:
        print("REFUSED:", exc)
"""


def test_a_model_with_its_own_code_is_refused_without_a_prompt(tiny_llama, tmp_path):
    folder = copy_without_weights(tiny_llama, tmp_path / "custom")
    (folder / "configuration_tiny.py").write_text(CUSTOM_CODE)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-custom", auto_map={"AutoConfig": "configuration_tiny.TinyCustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    # stdin closed: a "run the custom code? [y/N]" prompt would read end-of-file and fail.
    child = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_OPT_IN, str(folder)], cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
    refusals = [line for line in child.stdout.splitlines() if line.startswith("REFUSED:")]
    assert len(refusals) == 2, child.stdout + child.stderr
    assert all("ships its own Python code (auto_map in config.json)" in line and "model.trust_remote_code=true" in line
               for line in refusals), refusals
    assert "[y/N]" not in child.stdout + child.stderr
    assert not (folder / "CODE_RAN").exists()
