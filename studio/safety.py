"""What keeps a studio process to itself: no connection it was not asked for, no server open to strangers.

`python launch.py` calls `stay_offline()` before it imports any library: the
model hub, datasets and Gradio then read these switches when they load and make
no connection at start, training, chat or export. A hub id the user typed is
the one exception, for the duration of its load:

    stay_offline()
    with hub_online():          # only around loading "org/model" the user named
        AutoConfig.from_pretrained("org/model")

The UI is served on 127.0.0.1. `--listen` serves it beyond this machine, and
then always with a sign-in: the user's own, or a generated password.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.errors import ConfigError

LOCALHOST = "127.0.0.1"
GENERATED_USER = "studio"

# Read by the libraries when they are imported (and by their threads after), hence set first thing.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub, transformers, peft
    "HF_DATASETS_OFFLINE": "1",  # datasets
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets' download counter
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # Gradio's version check and usage reports
}


def stay_offline() -> None:
    """Switch off every hub lookup, telemetry and analytics for this process and its children.

    Hub ids the user types may still be loaded (see `hub_online`), unless the user
    had switched the hub off already (HF_HUB_OFFLINE=1): then nothing goes online.
    """
    # A training process the studio started inherits the studio's offline switches, and its permission.
    inherited = os.environ.get(HUB_ALLOWED_VARIABLE)
    _HUB.allowed = (inherited == "1" if inherited is not None else
                    not any(_is_true(os.environ.get(name)) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")))
    os.environ.update(OFFLINE_ENVIRONMENT)
    # TRANSFORMERS_OFFLINE=0 would not turn the hub on again, but it would read as if it did.
    os.environ.pop("TRANSFORMERS_OFFLINE", None)


HUB_ALLOWED_VARIABLE = "STUDIO_HUB_ALLOWED"


def hub_permission() -> dict[str, str]:
    """The environment that passes this process's permission for typed hub ids on to a child process."""
    return {HUB_ALLOWED_VARIABLE: "1" if _HUB.allowed else "0"}


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class _HubSwitch:
    """Turns the libraries' offline switches off while at least one explicit hub load runs.

    The switches are process-wide, so two loads that overlap (a model check while
    training downloads its model) share one "online" period: it ends with the last.
    Until `stay_offline` allows it, it changes nothing: a process that did not
    start through launch.py keeps whatever its environment says.
    """

    def __init__(self) -> None:
        self.allowed = False
        self.lock = threading.Lock()
        self.loads = 0
        self.saved: dict = {}

    def enter(self) -> None:
        with self.lock:
            if not self.allowed:
                return
            if self.loads == 0:
                self.saved = {name: getattr(module, name) for module, name in _switches()}
                for module, name in _switches():
                    setattr(module, name, False)
            self.loads += 1

    def exit(self) -> None:
        with self.lock:
            if not self.allowed:
                return
            self.loads -= 1
            if self.loads == 0:
                for module, name in _switches():
                    setattr(module, name, self.saved.get(name, True))


def _switches() -> list[tuple[object, str]]:
    """The module attributes the libraries consult before each request (read once from the environment)."""
    import huggingface_hub.constants

    switches = [(huggingface_hub.constants, "HF_HUB_OFFLINE")]
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        switches += [(datasets_config, "HF_HUB_OFFLINE"), (datasets_config, "HF_DATASETS_OFFLINE")]
    return switches


_HUB = _HubSwitch()


@contextmanager
def hub_online():
    """The hub is reachable inside this block: for a hub id the user typed, never for a local path."""
    _HUB.enter()
    try:
        yield
    finally:
        _HUB.exit()


def online_while(rows: Iterator) -> Iterator:
    """`rows` read with the hub reachable: a streamed hub dataset fetches while it is iterated."""
    with hub_online():
        yield from rows


# ------------------------------------------------------------------ serving


@dataclass(frozen=True)
class ServeSettings:
    """Where the UI listens and who may use it."""

    host: str = LOCALHOST
    port: int = 7860
    auth: tuple[tuple[str, str], ...] = ()
    generated_password: str = ""  # shown once at start when --listen came without --auth

    @property
    def listening(self) -> bool:
        """Served beyond this machine on purpose (--listen)."""
        return self.host != LOCALHOST

    def allowed_hosts(self) -> list[str]:
        """Host header values to serve; any other is refused (a web page cannot rebind a name to 127.0.0.1)."""
        return ["*"] if self.listening else ["127.0.0.1", "localhost"]


def serve_settings(port: int, listen: str | None, auth: str | None, auth_file: str | None) -> ServeSettings:
    """Settings from launch.py's options: --listen [ADDR], --auth user:password, --auth-file FILE."""
    pairs = _auth_pairs(auth, auth_file)
    host = listen or LOCALHOST
    if listen and not pairs:
        password = secrets.token_urlsafe(12)
        return ServeSettings(host, port, ((GENERATED_USER, password),), generated_password=password)
    return ServeSettings(host, port, pairs)


def _auth_pairs(auth: str | None, auth_file: str | None) -> tuple[tuple[str, str], ...]:
    lines: list[tuple[str, str]] = []
    if auth:
        lines.append(("--auth", auth))
    if auth_file:
        path = Path(auth_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--auth-file {path}: no such file. It holds one user:password per line.")
        text = path.read_text(encoding="utf-8").splitlines()
        lines += [(f"{path}:{n}", line.strip()) for n, line in enumerate(text, 1) if line.strip()]
    pairs = []
    for where, line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{where}: expected user:password (both non-empty), got {line!r}.")
        pairs.append((user, password))
    return tuple(pairs)
