"""`launch.py share`: a run's adapter, merged weights or GGUF files on the Hugging Face hub, with a model card.

    python launch.py share runs/<time>_quickstart --repo user/quickstart --what gguf
    python launch.py share runs/<time>_quickstart --card-only      # writes <run>/model-card.md, offline
"""

from __future__ import annotations


def cmd_share(args) -> int:
    from studio.errors import ConfigError
    from studio.runs import find_run
    from studio.share import share_run, write_card

    run_dir = find_run(args.run)
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
