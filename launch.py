"""Entry point of the studio.

    python launch.py                 open the studio (headless quickstart until the UI lands)
    python launch.py train RECIPE    headless commands: train, resume, export, chat, runs
    python launch.py --help
"""

import sys


def main() -> int:
    from studio.cli import main as cli_main

    if len(sys.argv) == 1:
        return quickstart()
    return cli_main(sys.argv[1:])


def quickstart() -> int:
    """The built-in default, headless: train the quickstart recipe, compare answers, export a verified GGUF."""
    from studio.cli import main as cli_main
    from studio.runs import list_runs

    print("Running the quickstart headless: train on the sample data, compare base vs fine-tuned, export q4_k_m GGUF.")
    code = cli_main(["train", "recipes/quickstart.yaml"])
    if code:
        return code
    run = str(list_runs()[-1])
    cli_main(["chat", run, "--compare", "--prompt", "What is the capital of Peru?"])
    return cli_main(["export", run, "--gguf", "q4_k_m"])


if __name__ == "__main__":
    sys.exit(main())
