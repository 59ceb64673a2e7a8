"""Command line of the cast: build the actors' dictionaries, identify faces in photos."""
import argparse
import json
import sys
from pathlib import Path

import torch

import dmdnet
from dmdnet import CheckpointError
from film_restore.cast.castfile import Cast, CastError
from film_restore.cast.store import CastStore, find_faces, read_photo
from film_restore.models import pack_id
from film_restore.faces import FaceAnalyzer
from film_restore.models import ModelsError, find_pack, resolve_checkpoint


def open_store(args) -> tuple[Cast, CastStore]:
    cast = Cast.load(args.cast)
    pack = find_pack(args.models)
    analyzer = FaceAnalyzer.from_models_dir(pack.directory)
    return cast, CastStore(args.store or CastStore.default_folder(cast), analyzer, pack_id(pack))


def command_build(args) -> int:
    cast, store = open_store(args)
    checkpoint = resolve_checkpoint(args.checkpoint)
    if checkpoint.note:
        print(f"note: {checkpoint.note}", file=sys.stderr)
    model = dmdnet.load(checkpoint.path, map_location=args.device)
    for actor in cast.actors:
        analysed = store.references(actor)
        for reference in analysed.references:
            if reference.skipped:
                print(f"{actor.name}: skipped {reference.path} ({reference.skipped})")
        _, built = store.dictionary(analysed, model)
        print(f"{actor.name}: {len(analysed.used)} of {len(analysed.references)} references used, "
              f"dictionary {'built' if built else 'unchanged'}")
    return 0


def command_identify(args) -> int:
    cast, store = open_store(args)
    identifier = store.identifier(cast)
    failed = 0
    for image_path in args.images:
        try:
            photo = read_photo(image_path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        _, faces, offset = find_faces(store.analyzer, photo)
        for face in faces:
            match = identifier.identify(face.embedding)
            box = [round(float(v), 1) for v in (face.box[0] - offset[0], face.box[1] - offset[1],
                                                face.box[2] - offset[0], face.box[3] - offset[1])]
            print(json.dumps({"image": str(image_path), "box": box, "actor": match.actor,
                              "similarity": round(match.similarity, 4)}))
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m film_restore.cast", description=__doc__)
    commands = main.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="analyse references and build each actor's DMDNet dictionary")
    identify = commands.add_parser("identify", help="print one JSON line per face found in the images")
    for command in (build, identify):
        command.add_argument("cast", type=Path, help="cast.yaml")
        command.add_argument("--models", type=Path, help="face models folder or pack name (default $FILM_RESTORE_MODELS, else buffalo_l, fetched)")
        command.add_argument("--store", type=Path, help="where actors' results are kept (default CAST.store/)")
    build.add_argument("--checkpoint", type=Path, help="DMDNet.pth (default $FILM_RESTORE_CHECKPOINT, else fetched)")
    build.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    build.set_defaults(run=command_build)
    identify.add_argument("images", type=Path, nargs="+")
    identify.set_defaults(run=command_identify)
    return main


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (CastError, CheckpointError, ModelsError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
