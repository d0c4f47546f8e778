"""Share a run on the Hugging Face hub: its adapter, its merged weights or its GGUF files, with a model card.

    text = model_card(run_dir, "gguf")                 # README.md: recipe, data, latest scorecard, report cards
    path = write_card(run_dir, "gguf")                 # the same text in <run>/model-card.md, to read first
    result = share_run(run_dir, "user/name", "gguf")   # a private repo unless private=False

The studio is offline by default: a share is the user's own request to go
online, so it lifts the offline switches for the upload alone, as loading a
typed hub id does (studio.safety.hub_online); with HF_HUB_OFFLINE=1 set by the
user it refuses and says so. The token stays huggingface_hub's business: it
reads HF_TOKEN or the login of `hf auth login` itself; the studio only asks
whether there is one, and never prints, logs or stores it.

Run as:  python launch.py share runs/<run> --repo user/name [--what adapter|merged|gguf] [--public] [--card-only]
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio.errors import ConfigError, StudioError
from studio.events import Event, Sink

WHAT = ("adapter", "merged", "gguf")
CARD_FILE = "model-card.md"  # in the run folder: the card of the last share (or --card-only)
SHARES_FILE = "shares.jsonl"  # in the run folder: what was published where (never a token)
# The hub repo the built-in model's weights come from (a Q4_K_M copy of it is shipped as a package).
BUILTIN_HUB_IDS = {"builtin:gemma-3-270m": "google/gemma-3-270m"}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
OFFLINE_TEXT = (
    "The studio is offline: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set in this environment, so nothing goes "
    "to the hub. To share, start the studio without it (unset HF_HUB_OFFLINE TRANSFORMERS_OFFLINE), on a machine "
    "that can reach huggingface.co, with a hub token that can write: set HF_TOKEN or run `hf auth login` (formerly "
    "`huggingface-cli login`). `launch.py share RUN --card-only` writes the model card without going online."
)
NO_TOKEN_TEXT = (
    "No hub token: sharing needs one that can write (huggingface.co/settings/tokens). Set HF_TOKEN in the "
    "environment or run `hf auth login` (formerly `huggingface-cli login`), then share again. The studio never "
    "stores the token."
)


@dataclass
class ShareResult:
    repo: str
    url: str
    what: str
    private: bool
    files: list[str] = field(default_factory=list)  # paths in the repo, README.md included


# ---------------------------------------------------------------- what is shared


def share_files(run_dir: Path, what: str) -> dict[str, Path]:
    """{path in the repo: local file} of what `what` shares; StudioError saying what to export first."""
    from studio.runs import load_run_config, weights_dir

    if what not in WHAT:
        raise ConfigError(f"Share what? {what!r} is not one of {', '.join(WHAT)}.")
    cfg = load_run_config(run_dir)
    exports = run_dir / "exports"
    if what == "adapter":
        folder = weights_dir(run_dir)
        if folder.name != "adapter":
            raise StudioError(f"{run_dir.name} was fully fine-tuned: it has no adapter. Share merged (after "
                              f"python launch.py export {run_dir} --formats merged_16bit) or gguf.")
        files = _folder_files(folder)
        files["template.jinja"] = run_dir / "template.jinja"
    elif what == "merged":
        folder = exports / f"{cfg.name}-merged-16bit"
        if not folder.is_dir():
            raise StudioError(f"{run_dir.name} has no merged weights yet: python launch.py export {run_dir} "
                              "--formats merged_16bit")
        files = _folder_files(folder)
    else:
        ggufs = sorted(exports.glob("*.gguf"))
        if not ggufs:
            raise StudioError(f"{run_dir.name} has no GGUF file yet: python launch.py export {run_dir}")
        files = {p.name: p for g in ggufs for p in (g, g.with_suffix(".Modelfile")) if p.is_file()}
    notice = _notice(cfg)
    if notice is not None:
        files.setdefault("NOTICE", notice)
    return files


def _folder_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _notice(cfg) -> Path | None:
    """The base model's licence notice (derivatives carry it along), when it has one."""
    from studio.errors import ModelLoadError
    from studio.models import hf_folder

    try:
        source = hf_folder(cfg.model.name_or_path)
    except ModelLoadError:
        return None
    return source / "NOTICE" if isinstance(source, Path) and (source / "NOTICE").is_file() else None


# ---------------------------------------------------------------- the model card


def model_card(run_dir: Path, what: str) -> str:
    """README.md for the hub: front matter, then the recipe, the data, the latest scorecard and the report cards."""
    from studio.runs import load_run_config, read_status

    cfg = load_run_config(run_dir)
    base = BUILTIN_HUB_IDS.get(cfg.model.name_or_path) or (cfg.model.name_or_path if REPO_ID.match(cfg.model.name_or_path) else "")
    tags = ["fine-tuning-studio", "sft", "lora" if cfg.lora.enabled else "full-fine-tune", *(["gguf"] if what == "gguf" else [])]
    meta = {**({"base_model": base} if base else {}),
            "library_name": {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[what],
            "pipeline_tag": "text-generation", "tags": tags}
    if cfg.model.name_or_path.startswith("builtin:gemma"):
        meta["license"] = "gemma"
    status = read_status(run_dir)
    method = f"LoRA r{cfg.lora.r} (alpha {cfg.lora.alpha})" if cfg.lora.enabled else "full fine-tuning"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {cfg.name}", "",
        f"{_contents(what)} `{base or cfg.model.name_or_path}` fine-tuned with {method}: training "
        f"{status.get('state', 'unknown')} at step {status.get('step', '?')} (run `{run_dir.name}`, made with the "
        "fine-tuning studio)." + (" It trained on the studio's built-in copy of that model (its Q4_K_M GGUF, "
                                  "dequantized)." if cfg.model.name_or_path in BUILTIN_HUB_IDS else ""),
        "", "## Recipe", "", "The run's resolved config (`python launch.py train config.yaml` trains it again):",
        "", "```yaml", (run_dir / "config.yaml").read_text(encoding="utf-8").strip(), "```",
        "", "## Data", "", *_data_summary(run_dir, cfg),
        "", "## Evaluation", "", *_scorecard_section(run_dir),
    ]
    reports = sorted((run_dir / "exports").glob("*.report.json"))
    if reports:
        lines += ["", "## GGUF report cards", ""]
        for path in reports:
            lines += _report_card(json.loads(path.read_text(encoding="utf-8")))
    return "\n".join(lines) + "\n"


def _contents(what: str) -> str:
    return {"adapter": "A LoRA adapter (PEFT) for", "merged": "Merged 16-bit weights of",
            "gguf": "GGUF files (llama.cpp, Ollama, LM Studio), each verified in llama.cpp, of"}[what]


def _data_summary(run_dir: Path, cfg) -> list[str]:
    from studio.events import read_events

    split = (f"eval split: {cfg.data.eval_fraction:.0%} held out" if cfg.data.eval_fraction
             else f"eval file `{Path(cfg.data.eval_path).name}`" if cfg.data.eval_path else "no eval split")
    lines = [f"- `{Path(cfg.data.path).name}` (format {cfg.data.format}, template {cfg.data.template}, "
             f"max length {cfg.train.max_length} tokens, {split})"]
    events = read_events(run_dir / "events.jsonl") if (run_dir / "events.jsonl").is_file() else []
    counts = [e.message.removeprefix("Data: ") for e in events if e.kind == "stage" and e.message.startswith("Data: ")]
    if counts:
        lines.append(f"- {counts[-1]}")
    return lines


def _scorecard_section(run_dir: Path) -> list[str]:
    from studio.evaluate.scorecard import table_rows
    from studio.evaluate.store import list_evals, load_eval

    saved = list_evals(run_dir)
    if not saved:
        return [f"Not evaluated yet (`python launch.py eval {run_dir.name}` scores it on held-out rows)."]
    result = load_eval(saved[-1])
    header, rows = table_rows(result.scorecard)
    partial = " Stopped early: partial scores." if result.partial else ""
    return [f"Latest scorecard ({saved[-1].name}): {result.meta.get('rows', '')}, greedy.{partial}", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows], "",
            *[f"- {v}" for v in result.scorecard.verdict], *[f"- Warning: {w}" for w in result.scorecard.warnings]]


def _report_card(report: dict) -> list[str]:
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return [f"**{Path(report['path']).name}** ({report['size_bytes'] / 2**20:.1f} MiB): {report['headline']}", "",
            "| check | result | detail |", "|---|---|---|",
            *[f"| {c['name']} | {c['status']} | {cell(c['detail'])} |" for c in report["checks"]], ""]


def write_card(run_dir: Path, what: str) -> Path:
    """The model card in <run>/model-card.md (what a share pushes as README.md)."""
    path = run_dir / CARD_FILE
    path.write_text(model_card(run_dir, what), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the upload


def share_run(run_dir: Path, repo: str, what: str = "adapter", private: bool = True,
              sink: Sink = lambda e: None) -> ShareResult:
    """Create (or reuse) the hub repo `repo` and upload what `what` names with its card, in one commit."""
    from studio.runs import lock_run

    if not REPO_ID.match(repo or ""):
        raise ConfigError(f"Repo {repo!r}: give the hub repo as user/name or org/name.")
    with lock_run(run_dir, "share"):  # no export replaces the files while they upload
        files = share_files(run_dir, what)
        card = write_card(run_dir, what)
        size = sum(p.stat().st_size for p in files.values())
        sink(Event("stage", message=f"Sharing {len(files) + 1} files ({size / 2**20:,.1f} MiB) to {repo} "
                                    f"({'private' if private else 'public'})"))
        url = _push(repo, {**files, "README.md": card}, private, f"{what} of {run_dir.name}")
        result = ShareResult(repo, url, what, private, sorted([*files, "README.md"]))
        with (run_dir / SHARES_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"repo": repo, "url": url, "what": what, "private": private, "files": result.files,
                                 "time": time.time()}) + "\n")
    sink(Event("stage", message=f"Shared: {url}"))
    return result


def _push(repo: str, files: dict[str, Path], private: bool, message: str) -> str:
    """One commit of `files` to `repo`, online for this alone; errors for people, never holding the token."""
    from studio.safety import hub_online

    with hub_online():
        import huggingface_hub.constants
        from huggingface_hub import CommitOperationAdd, HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise StudioError(OFFLINE_TEXT)
        if get_token() is None:
            raise StudioError(NO_TOKEN_TEXT)
        api = HfApi()
        try:
            url = api.create_repo(repo, private=private, exist_ok=True)
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
            api.create_commit(repo, operations, commit_message=f"Upload {message}")
        except OfflineModeIsEnabled:
            raise StudioError(OFFLINE_TEXT) from None
        except HfHubHTTPError as exc:
            raise StudioError(_http_error_text(repo, exc)) from None
        except Exception as exc:
            if not _network_error(exc):
                raise
            raise StudioError(f"Cannot reach the hub ({huggingface_hub.constants.ENDPOINT}): {exc}. Check the "
                              "network (and a proxy or HF_ENDPOINT if you use one), then share again.") from None
    return str(url)


def _network_error(exc: Exception) -> bool:
    """No route, no name resolution, refused: an OSError, or the HTTP client's transport error (httpx and its fork
    name it TransportError; which client huggingface_hub uses changes between its versions)."""
    return isinstance(exc, OSError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__)


def _http_error_text(repo: str, exc) -> str:
    code = getattr(getattr(exc, "response", None), "status_code", None)
    if code == 401:
        return ("The hub refused the token (401): it is wrong or expired. Set a new HF_TOKEN or run `hf auth login`, "
                "then share again.")
    if code == 403:
        return f"The token cannot write to {repo} (403): use a token with write access, or a repo under your own name."
    return f"The hub refused the upload to {repo} ({code or 'error'}): {str(exc).splitlines()[0]}"
