"""Entry point of the studio.

    python launch.py                      open the studio on http://127.0.0.1:7860
    python launch.py --listen             open it to the network too, behind a sign-in (see --help)
    python launch.py train RECIPE ...     headless commands: train, resume, export, chat, runs
    python launch.py --help
"""

import sys
from pathlib import Path

UI_OPTIONS = ("ui", "--port", "--listen", "--auth", "--auth-file", "--runs-dir")


def main() -> int:
    # First, before any library is imported: they read these switches when they load.
    from studio.safety import stay_offline

    stay_offline()
    if len(sys.argv) == 1 or sys.argv[1].split("=")[0] in UI_OPTIONS:
        return open_studio(sys.argv[1:])
    from studio.cli import main as cli_main

    return cli_main(sys.argv[1:])


def open_studio(args: list[str]) -> int:
    """The UI on 127.0.0.1 (or, with --listen, behind a sign-in) with the built-in model and sample data preselected."""
    import argparse

    from studio.errors import StudioError
    from studio.safety import GENERATED_USER, serve_settings

    parser = argparse.ArgumentParser(prog="launch.py [ui]", description="Open the studio in the browser.")
    parser.add_argument("ui", nargs="?")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", metavar="ADDR",
                        help="Serve beyond this machine, on ADDR (default 0.0.0.0: every network interface). "
                             "Always behind a sign-in: --auth, --auth-file, or a generated password shown at start.")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="Sign-in required to use the studio.")
    parser.add_argument("--auth-file", metavar="FILE", help="A file of sign-ins, one user:password per line.")
    options = parser.parse_args(args)
    try:
        settings = serve_settings(options.port, options.listen, options.auth, options.auth_file)
    except StudioError as exc:
        parser.error(str(exc))

    from studio.services import Studio
    from studio.ui.app import serve

    shown_host = "127.0.0.1" if not settings.listening else settings.host
    print(f"Opening the studio on http://{shown_host}:{settings.port} (Ctrl-C to quit)")
    if settings.listening:
        print(f"Listening beyond this machine on {settings.host}: every visitor must sign in.")
    if settings.generated_password:
        print(f"Sign in as user {GENERATED_USER!r} with password {settings.generated_password!r} "
              "(new at each start; choose your own with --auth user:password).")
    sys.stdout.flush()
    serve(Studio(runs_dir=Path(options.runs_dir)), settings=settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
