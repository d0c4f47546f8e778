"""Collect `launch.py bench` reports into one JSON list and one markdown page.

Run as:  python scripts/bench_summary.py OUT.json REPORT.json [REPORT.json ...]
(OUT.md is written beside OUT.json; reports already in OUT.json are kept.)
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.bench import describe  # noqa: E402


def main(out: Path, new_reports: list[Path]) -> None:
    reports = json.loads(out.read_text()) if out.exists() else []
    reports += [json.loads(path.read_text()) for path in new_reports]
    out.write_text(json.dumps(reports, indent=1))
    env = reports[0]["environment"]
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items() if version)
    lines = [
        f"# `launch.py bench` on {env['gpu'] or 'CPU'}", "",
        f"CUDA {env['cuda']}, Python {env['python']}; {versions}. Random weights in the published shapes; every "
        "token real and trained; LoRA r16 on all seven projections; non-reentrant checkpointing on both paths. "
        "Step times varied by up to 25% between the lent machines, so compare the two paths within one section "
        f"(one process, one GPU). The same reports as JSON: {out.name}.", "",
    ]
    for report in reports:
        lines += [f"## `{report.get('command', '')}`", "", describe(report), ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
