"""Command line for aligned faces (the authors' test-example format: 512 x 512 for their
model, the model's image_size for one trained here).

    python -m dmdnet restore FACE.png --landmarks FACE.txt --checkpoint DMDNet.pth \
        [--refs DIR --ref-landmarks DIR | --dictionary actor.dict] [--engine torch|onnxruntime|tensorrt|auto]
        [--precision float32|bfloat16|float16|auto] -o OUT.png
    python -m dmdnet dictionary REFS_DIR --ref-landmarks DIR --checkpoint DMDNet.pth -o actor.dict
    python -m dmdnet export --checkpoint DMDNet.pth -o dmdnet.onnx [--specific] [--tensorrt dmdnet.engine]
    python -m dmdnet evaluate --checkpoint CKPT --data PREPARED_DIR --scale 4|8 [--references K]
    python -m dmdnet widen --checkpoint CKPT --width W -o WIDE.safetensors

Landmark files hold 68 lines "x y" in iBUG order (pixels of the aligned face); a
reference image `a.png` has its landmarks in `a.png.txt` (the authors' naming) or `a.txt`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import dmdnet
from dmdnet import engines
from dmdnet.boxes import IMAGE_SIZE, component_boxes
from dmdnet.checkpoint import CheckpointError
from dmdnet.dictionary import SpecificDictionary
from dmdnet.evaluate import add_parser as add_evaluate_parser
from dmdnet.files import file_sha256, write_image
from dmdnet.images import to_image, to_tensor
from dmdnet.model import DMDNet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# restore runs eager float32 unless told otherwise: the exact reference, and auto would time
# every candidate engine before restoring a single face.
RESTORE_ENGINE, RESTORE_PRECISION = "torch", "float32"


class UsageError(Exception):
    """Bad input named by the command line, reported as one line."""


def read_face(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """An aligned size x size face (the model's image_size) as RGB uint8."""
    import cv2

    if not path.is_file():
        raise UsageError(f"no image at {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UsageError(f"{path} is not a readable image")
    if image.shape[:2] != (size, size):
        raise UsageError(
            f"{path} is {image.shape[1]}x{image.shape[0]}: this model takes FFHQ-aligned "
            f"{size}x{size} faces (align whole frames with film_restore)"
        )
    return image[:, :, ::-1].copy()


def read_landmarks(path: Path) -> np.ndarray:
    """68 x 2 landmarks from a file of 68 lines "x y"."""
    if not path.is_file():
        raise UsageError(f"no landmark file at {path}")
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            points.append([float(fields[0]), float(fields[1])])
        except (IndexError, ValueError):
            raise UsageError(f"{path}:{number}: expected two numbers 'x y', got {line.strip()!r}") from None
    if len(points) != 68:
        raise UsageError(f"{path} has {len(points)} landmarks; DMDNet needs the 68 iBUG points")
    return np.array(points)


def landmark_file(directory: Path, image: Path) -> Path:
    for candidate in (directory / f"{image.name}.txt", directory / f"{image.stem}.txt"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"no landmarks for {image.name} in {directory} (expected {image.name}.txt)")


def reference_inputs(refs: Path, landmarks: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Reference faces, their boxes and their files' sha256, in file-name order."""
    if not refs.is_dir():
        raise UsageError(f"no reference folder at {refs}")
    images = sorted(p for p in refs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"{refs} holds no reference images ({', '.join(IMAGE_SUFFIXES)})")
    faces = [read_face(p, size) for p in images]
    boxes = np.stack([component_boxes(read_landmarks(landmark_file(landmarks, p)), size) for p in images])
    hashes = [file_sha256(p) for p in images]
    return to_tensor(faces), torch.from_numpy(boxes), hashes


def build_dictionary(model: DMDNet, refs: Path, landmarks: Path) -> SpecificDictionary:
    images, boxes, hashes = reference_inputs(refs, landmarks, model.image_size)
    device = next(model.parameters()).device
    return model.build_dictionary(images.to(device), boxes.to(device), reference_hashes=hashes)


def command_restore(args) -> None:
    if args.refs and args.dictionary:
        raise UsageError("give either --refs (with --ref-landmarks) or --dictionary, not both")
    if bool(args.refs) != bool(args.ref_landmarks):
        raise UsageError("--refs and --ref-landmarks go together")
    model = dmdnet.load(args.checkpoint, map_location=args.device)
    face = to_tensor([read_face(args.face, model.image_size)])
    boxes = torch.from_numpy(component_boxes(read_landmarks(args.landmarks), model.image_size)[None])
    with torch.inference_mode():
        dictionary = None
        if args.dictionary:
            dictionary = SpecificDictionary.load(args.dictionary)
        elif args.refs:
            dictionary = build_dictionary(model, args.refs, args.ref_landmarks)
    engine = engines.load(model, args.engine, args.precision, device=args.device)
    restored = engine(face, boxes, dictionary)
    write_image(args.output, to_image(restored[0]))
    kind = f"specific, {dictionary.num_references} references" if dictionary else "generic"
    print(f"restored {args.face} ({kind}) with {engine.name} {engine.precision} on {engine.device} -> {args.output}")


def command_dictionary(args) -> None:
    model = dmdnet.load(args.checkpoint, map_location=args.device)
    with torch.inference_mode():
        dictionary = build_dictionary(model, args.refs, args.ref_landmarks)
    dictionary.save(args.output)
    print(f"dictionary of {dictionary.num_references} references for model {model.fingerprint[:12]} -> {args.output}")


def command_export(args) -> None:
    from dmdnet.export import build_tensorrt_engine, export_onnx

    model = dmdnet.load(args.checkpoint)
    export_onnx(model, args.output, specific=args.specific)
    print(f"exported the {'specific' if args.specific else 'generic'} graph -> {args.output}")
    if args.tensorrt:
        build_tensorrt_engine(args.output, args.tensorrt, fp16=not args.fp32)
        print(f"built a TensorRT engine -> {args.tensorrt}")


def command_widen(args) -> None:
    from dmdnet.checkpoint import save_checkpoint
    from dmdnet.widen import widen

    model = dmdnet.load(args.checkpoint)
    wide = widen(model, args.width, seed=args.seed)
    save_checkpoint(wide, args.output)
    print(f"widened {args.checkpoint} from width {model.width} to {args.width} "
          f"({sum(p.numel() for p in wide.parameters()):,} weights) -> {args.output}")


def parser() -> argparse.ArgumentParser:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    main = argparse.ArgumentParser(prog="python -m dmdnet", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)

    def add_model_options(command):
        command.add_argument("--checkpoint", type=Path, required=True, help="the authors' DMDNet.pth")
        command.add_argument("--device", default=device)
        command.add_argument("-o", "--output", type=Path, required=True)

    restore = commands.add_parser("restore", help="restore one aligned 512 x 512 face")
    restore.add_argument("face", type=Path)
    restore.add_argument("--landmarks", type=Path, required=True, help="68 lines 'x y'")
    restore.add_argument("--refs", type=Path, help="folder of aligned reference faces of the same person")
    restore.add_argument("--ref-landmarks", type=Path, help="folder of the references' landmark files")
    restore.add_argument("--dictionary", type=Path, help="a stored specific dictionary instead of --refs")
    restore.add_argument("--engine", choices=engines.ENGINES, default=RESTORE_ENGINE,
                         help=f"what runs the network (default {RESTORE_ENGINE}; see dmdnet.engines)")
    restore.add_argument("--precision", choices=("auto", *engines.PRECISIONS), default=RESTORE_PRECISION,
                         help=f"default {RESTORE_PRECISION}; auto: the engine's choice for the device")
    add_model_options(restore)
    restore.set_defaults(run=command_restore)

    dictionary = commands.add_parser("dictionary", help="build and store a person's specific dictionary")
    dictionary.add_argument("refs", type=Path)
    dictionary.add_argument("--ref-landmarks", type=Path, required=True)
    add_model_options(dictionary)
    dictionary.set_defaults(run=command_dictionary)

    export = commands.add_parser("export", help="write the ONNX graph (and a TensorRT engine)")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file")
    export.add_argument("--specific", action="store_true", help="the graph with dictionary inputs")
    export.add_argument("--tensorrt", type=Path, help="also build a TensorRT engine at this path")
    export.add_argument("--fp32", action="store_true", help="TensorRT engine without fp16")
    export.set_defaults(run=command_export)

    widen = commands.add_parser("widen", help="a wider network computing what the checkpoint does, to fine-tune")
    widen.add_argument("--checkpoint", type=Path, required=True)
    widen.add_argument("--width", type=int, required=True, help="channels at the first scale, more than the checkpoint's")
    widen.add_argument("--seed", type=int, default=0, help="for the new channels' random filters")
    widen.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file")
    widen.set_defaults(run=command_widen)

    add_evaluate_parser(commands, device_default=device)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (UsageError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
