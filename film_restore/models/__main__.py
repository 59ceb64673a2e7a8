"""Fetch, list and check the registry's models in the cache ($FILM_RESTORE_HOME/models).

    python -m film_restore.models list
    python -m film_restore.models fetch [NAME ...]    # default: dmdnet buffalo_l, what a run uses
    python -m film_restore.models verify [NAME ...]   # default: every model in the cache
"""
import argparse
import sys

from film_restore.models.fetch import Corrupt, cache_folder, check, ensure, fetched, location
from film_restore.models.registry import DEFAULT_FETCH, MODELS, ModelsError, model


def command_list(args) -> int:
    print(f"cache: {cache_folder()}")
    for entry in MODELS.values():
        print(f"{entry.name}: {entry.purpose}")
        print(f"  licence: {entry.licence}")
        print(f"  in the cache: {location(entry) if fetched(entry) else 'not fetched'}")
        for download in entry.downloads:
            size = f"{download.size} bytes" if download.size else "size not published"
            sha256 = download.sha256 or "sha256 recorded at the first download"
            print(f"  {download.name}: {download.url} ({size}; {sha256})")
    return 0


def command_fetch(args) -> int:
    for name in args.names or DEFAULT_FETCH:
        print(f"{name}: {ensure(model(name), repair=True)}")
    return 0


def command_verify(args) -> int:
    names = args.names or [name for name, entry in MODELS.items() if fetched(entry)]
    if not names:
        print(f"nothing fetched yet in {cache_folder()}")
    failed = 0
    for name in names:
        entry = model(name)
        if not fetched(entry):
            print(f"{name}: not fetched ({location(entry)}): python -m film_restore.models fetch {name}")
            failed += 1
            continue
        try:
            check(entry)
            print(f"{name}: ok ({location(entry)})")
        except Corrupt as error:
            print(f"{name}: {error}")
            failed += 1
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m film_restore.models", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every model: source, size, sha256, licence, whether it is cached")
    listing.set_defaults(run=command_list)
    for name, run, help_text in (
        ("fetch", command_fetch, f"fetch models (default: {' '.join(DEFAULT_FETCH)}); corrupt ones again"),
        ("verify", command_verify, "check cached models against their sha256 (default: all cached)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("names", nargs="*", metavar="NAME", help=", ".join(MODELS))
        command.set_defaults(run=run)
    return main


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ModelsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
