"""`launch.py share`: a run's adapter, merged weights or GGUF files on the Hugging Face hub, with a model card.

    python launch.py share runs/<time>_quickstart --repo user/quickstart --what gguf
    python launch.py share runs/<time>_quickstart --card-only      # writes <run>/model-card.md, offline
"""

from __future__ import annotations

from studio.cli import runs_dir_option
from studio.share import WHAT


def add_share_parser(sub) -> None:
    """The `share` subcommand of launch.py's parser."""
    share = sub.add_parser(
        "share", help="Push a run's adapter, merged weights or GGUF files to the Hugging Face hub, with a model card.",
        description="Uploads to a private hub repo (created when missing) what --what names, with a model card "
                    "(README.md): the recipe, a data summary, the latest scorecard and the GGUF report cards. Goes "
                    "online for the upload alone; needs a token that can write: HF_TOKEN or `hf auth login` "
                    "(the studio never stores it). --card-only writes the card to <run>/model-card.md, offline.")
    share.add_argument("run", help="Run folder or run name.")
    share.add_argument("--repo", default="", metavar="USER/NAME", help="The hub repo, e.g. alice/quickstart-gguf.")
    share.add_argument("--what", choices=WHAT, default="adapter",
                       help="adapter (default), merged (exports/<name>-merged-16bit) or gguf (every exports/*.gguf "
                            "with its Modelfile).")
    share.add_argument("--public", action="store_true", help="Make a new repo public (default: private).")
    share.add_argument("--card-only", action="store_true", help="Only write the model card to <run>/model-card.md.")
    runs_dir_option(share)


def cmd_share(args) -> int:
    from studio.errors import ConfigError
    from studio.runs import find_run
    from studio.share import share_run, write_card

    run_dir = find_run(args.run, args.runs_dir)
    if args.card_only:
        path = write_card(run_dir, args.what)
        print(f"Model card written to {path} (nothing was uploaded).")
        return 0
    if not args.repo:
        raise ConfigError("Name the hub repo to share to: --repo user/name (or --card-only to write the card alone).")
    result = share_run(run_dir, args.repo, args.what, private=not args.public, sink=lambda e: print(e.message, flush=True))
    print(f"\n{len(result.files)} files in {'private' if result.private else 'public'} repo {result.repo}: {result.url}")
    print(f"The model card pushed as README.md is also in {run_dir / 'model-card.md'}.")
    return 0
