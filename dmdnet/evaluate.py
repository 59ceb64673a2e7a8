"""Evaluation of a model on prepared faces, as the paper's Table 2: PSNR, SSIM and identity.

    python -m dmdnet evaluate --checkpoint CKPT --data PREPARED_DIR --scale 4|8
        [--references K] [--identities FILE] [--limit N] [--models DIR]

Every face of the prepared folder whose person has at least one other photo is degraded
by the fixed evaluation protocol (dmdnet.degradations, x4 or x8; the noise seeded by the
face's identity and name) and restored twice: with the generic dictionary only, and with a
specific dictionary of the person's first K other photos (by name). Prints one JSON
object: for the degraded input and both restorations, the mean PSNR (RGB), SSIM (BT.601
Y) against the ground truth, and the identity similarity: cosine of the face's embedding
(the face stack's recogniser, dmdnet.face_stack, on the crop's 5 keypoints) with the normalised mean
embedding of the person's other ground-truth photos. `faces` is the number evaluated.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

import dmdnet
from dmdnet.data import PreparedFaces
from dmdnet.degradations import degrade_for_evaluation
from dmdnet.face_stack import Embed, installed_face_stack
from dmdnet.images import to_image, to_tensor
from dmdnet.metrics import psnr, ssim
from dmdnet.model import DMDNet

KINDS = ("input", "generic", "specific")
BATCH = 8


def face_seed(identity: str, name: str) -> int:
    """The evaluation noise seed of a face: its own, whichever faces are evaluated with it."""
    return int(hashlib.sha256(f"{identity}/{name}".encode()).hexdigest()[:8], 16)


def evaluation_faces(faces: PreparedFaces, identities=None, limit: int | None = None) -> list[tuple[str, str]]:
    """(identity, name) of every face to evaluate: persons with two photos or more, sorted."""
    chosen = faces.identities if identities is None else {i: faces.identities[i] for i in identities}
    items = [(identity, name) for identity, names in sorted(chosen.items()) if len(names) > 1 for name in names]
    return items[:limit] if limit is not None else items


def evaluate(model: DMDNet, faces: PreparedFaces, scale: int, references: int, embed: Embed,
             identities=None, limit: int | None = None, log=None) -> dict:
    """The JSON-ready summary of the module notes; embed(image, keypoints) -> unit identity embedding."""
    if faces.size != model.image_size:
        raise ValueError(f"the data is prepared at {faces.size} px but the model restores {model.image_size} px faces: "
                         f"prepare the data with --size {model.image_size}")
    if references < 1:
        raise ValueError(f"--references must be at least 1, got {references}")
    missing = sorted(set(identities or ()) - set(faces.identities))
    if missing:
        raise ValueError(f"{len(missing)} identities are not in {faces.folder}: {', '.join(missing[:5])}")
    items = evaluation_faces(faces, identities, limit)
    if not items:
        raise ValueError(f"no person in {faces.folder} has two photos: nothing to evaluate")
    device = next(model.parameters()).device
    truth_embeddings = {}
    for identity in sorted({identity for identity, _ in items}):
        for name in faces.identities[identity]:
            face = faces.face(identity, name)
            truth_embeddings[identity, name] = embed(face.crop, np.array(faces.record(identity, name)["keypoints"]))
    scores = {kind: {"psnr": [], "ssim": [], "identity": []} for kind in KINDS}
    for first in range(0, len(items), BATCH):
        batch = items[first : first + BATCH]
        truths = [faces.face(identity, name) for identity, name in batch]
        degraded = [degrade_for_evaluation(t.crop, scale, seed=face_seed(t.identity, t.name)) for t in truths]
        boxes = torch.from_numpy(np.stack([t.boxes for t in truths]))
        with torch.no_grad():
            generic = to_image(model(to_tensor(degraded).to(device), boxes))
            specific = []
            for (identity, name), lq, box in zip(batch, degraded, boxes):
                others = [other for other in faces.identities[identity] if other != name][:references]
                refs = [faces.face(identity, other) for other in others]
                dictionary = model.build_dictionary(to_tensor([r.crop for r in refs]), np.stack([r.boxes for r in refs]))
                specific.append(to_image(model(to_tensor([lq]).to(device), box[None], dictionary))[0])
        for (identity, name), truth, outputs in zip(batch, truths, zip(degraded, generic, specific)):
            others = [truth_embeddings[identity, other] for other in faces.identities[identity] if other != name]
            target = np.mean(others, axis=0)
            target /= np.linalg.norm(target)
            keypoints = np.array(faces.record(identity, name)["keypoints"])
            for kind, image in zip(KINDS, outputs):
                scores[kind]["psnr"].append(psnr(image, truth.crop))
                scores[kind]["ssim"].append(ssim(image, truth.crop))
                scores[kind]["identity"].append(float(embed(image, keypoints) @ target))
        if log:
            log(f"evaluated {min(first + BATCH, len(items))} of {len(items)} faces")
    summary = {kind: {metric: round(float(np.mean(values)), 4) for metric, values in metrics.items()}
               for kind, metrics in scores.items()}
    return {**summary, "faces": len(items)}


def read_identities(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"no identities file at {path} (one identity per line, e.g. a run's heldout_identities.txt)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def command_evaluate(args) -> None:
    import json

    model = dmdnet.load(args.checkpoint, map_location=args.device)
    faces = PreparedFaces(args.data)
    identities = read_identities(args.identities) if args.identities else None
    embed = installed_face_stack("evaluate").recogniser(args.models)
    result = evaluate(model, faces, args.scale, args.references, embed, identities, args.limit,
                      log=lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(result))


def add_parser(commands, device_default: str) -> None:
    command = commands.add_parser("evaluate", help="PSNR / SSIM / identity of input, generic and specific restoration")
    command.add_argument("--checkpoint", type=Path, required=True, help="DMDNet.pth or a trained .safetensors")
    command.add_argument("--data", type=Path, required=True, help="a `python -m dmdnet.data prepare` folder")
    command.add_argument("--scale", type=int, choices=(4, 8), required=True)
    command.add_argument("--references", type=int, default=3, help="other photos of the person in the specific dictionary")
    command.add_argument("--identities", type=Path, help="only these identities (one per line, e.g. heldout_identities.txt)")
    command.add_argument("--limit", type=int, help="only the first N faces")
    command.add_argument("--models", help="face models folder for identity (default $FILM_RESTORE_MODELS)")
    command.add_argument("--device", default=device_default)
    command.set_defaults(run=command_evaluate)
