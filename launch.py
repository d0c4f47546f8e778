"""Entry point of the studio.

    python launch.py                      open the studio on http://127.0.0.1:7860
    python launch.py train RECIPE ...     headless commands: train, resume, export, chat, runs
    python launch.py --help
"""

import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) == 1 or sys.argv[1] in ("ui", "--port"):
        return open_studio(sys.argv[1:])
    from studio.cli import main as cli_main

    return cli_main(sys.argv[1:])


def open_studio(args: list[str]) -> int:
    """The UI on 127.0.0.1 with the built-in default model and sample data preselected."""
    import argparse

    from studio.services import Studio
    from studio.ui.app import serve

    parser = argparse.ArgumentParser(prog="launch.py [ui]", description="Open the studio in the browser.")
    parser.add_argument("ui", nargs="?")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", default="runs")
    options = parser.parse_args(args)
    print(f"Opening the studio on http://127.0.0.1:{options.port} (Ctrl-C to quit)")
    serve(Studio(runs_dir=Path(options.runs_dir)), port=options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
