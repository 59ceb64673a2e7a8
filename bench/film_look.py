"""Do restored faces hold still, stay themselves and stay true? Flicker, identity and fidelity per clip.

For each shared talking-head clip, its first --frames frames as they are ("clean") and a
degraded copy (x3 down and up, per-frame Gaussian noise of sigma 6, seeded): faces found and
tracked with the compact face stack, aligned at the model's size, restored by
film_restore.restore.FaceRestorer with the actor's dictionary (built from frames of the
clip's second half, which also give the actor's reference centroid). Printed per clip and
variant, in the frame:
  flicker   output / input frame-to-frame change along the input's flow, in the face box
            (and both changes, levels)
  texture   finish.measures.texture_ratio, output / input (mean over frames; 1 = the film's texture kept)
  id in/out cosine of input and output faces to the actor's centroid (mean over frames)
  PSNR      face box against the clean frame (degraded copies), input -> output
  change    mean |output - input| in the face box (levels): how visibly restored
Variants: input (no restoration), round trip (a restorer that returns its input: aligned,
pasted back), today (restored crops pasted as they are), all guards (finish.guards, strength
auto, pasted back), and the full pipeline: the Composer's steps on the frames held in memory
(compose.Composer.windows), with --grain off and with the default --grain auto.

    FILM_RESTORE_ASSETS=../shared python -m bench.film_look [--frames 72] [--clips retalk_2 liveportrait_d10]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

import dmdnet
from dmdnet.images import to_tensor
from film_restore.compose import ComposeSettings, Composer
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.faces.identity import centroid
from film_restore.finish import guards, measures as quality
from film_restore.finish.measures import texture_ratio
from film_restore.finish.paste import face_layer
from film_restore.records import ChunkResult, Frame, Shot
from film_restore.restore import FaceRestorer
from film_restore.tracking import smooth_track, track_shot
from film_restore.video import RGBPicture
from tests.assets import ASSETS, TRAINED_MODEL as CHECKPOINT

DEGRADE_SCALE = 3
NOISE_SIGMA = 6.0
REFERENCES = 4


def read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def degrade(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    random = np.random.default_rng(seed)
    out = []
    for frame in frames:
        height, width = frame.shape[:2]
        small = cv2.resize(frame, (width // DEGRADE_SCALE, height // DEGRADE_SCALE), interpolation=cv2.INTER_AREA)
        blurred = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        out.append(np.clip(np.round(blurred + random.normal(0, NOISE_SIGMA, blurred.shape)), 0, 255).astype(np.uint8))
    return out


def main_track(analyzer: FaceAnalyzer, frames: list[np.ndarray]):
    faces = {index: analyzer.analyze(frame) for index, frame in enumerate(frames)}
    tracks = track_shot(Shot(0, 0, len(frames) - 1), faces)
    track = smooth_track(max(tracks, key=lambda t: len(t.faces)))
    if len(track.faces) != len(frames):
        raise SystemExit(f"the main face is tracked in {len(track.faces)} of {len(frames)} frames: choose another clip")
    return track


def blend(frame: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    blended = frame.astype(np.float32) + alpha[..., None] * (layer - frame)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, aligned, crop: np.ndarray) -> np.ndarray:
    """The frame with one face pasted back in aligned space (no band split, no grain)."""
    return blend(frame, *face_layer(frame.shape, [(aligned, crop)]))


def composed(frames, track, restored, reference, grain: str) -> tuple[list[np.ndarray], ChunkResult]:
    """The frames as the Composer makes them (its steps, on the frames held in memory), the restorer's
    faces given; and what it counted."""
    queue = list(restored)

    def restore(crops, boxes, actor):
        taken = np.stack(queue[:len(crops)])
        del queue[:len(crops)]
        return taken

    settings = ComposeSettings("ffv1", restored.shape[1], grain=grain, references={"actor": reference},
                               models_dir=str(ASSETS / "models"))
    result = ChunkResult(0, 0, 0)
    in_memory = [Frame(index, index, RGBPicture(frame)) for index, frame in enumerate(frames)]
    pictures = {}
    for window in Composer(None, settings, restore).windows(in_memory, [track], result):
        pictures.update(window.pictures)
    return [pictures[index].rgb() for index in range(len(frames))], result


def measures(inputs, outputs, clean, track, analyzer, reference) -> dict:
    boxes = [tracked.face.box for tracked in track.faces]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    regions_in = np.stack([quality.box_region(frame, union) for frame in inputs])
    regions_out = np.stack([quality.box_region(frame, union) for frame in outputs])
    flick = quality.flicker(regions_in, regions_out)
    embed = lambda frames: np.stack([analyzer.recogniser.embedding(f, t.face.keypoints) for f, t in zip(frames, track.faces)])
    row = {
        "flicker": flick.ratio,
        "change_in": flick.input,
        "change_out": flick.output,
        "texture": float(np.nanmean([texture_ratio(i, o, t.face.landmarks) for i, o, t in zip(inputs, outputs, track.faces)])),
        "id_in": float(quality.identity(embed(inputs), reference).mean()),
        "id_out": float(quality.identity(embed(outputs), reference).mean()),
        "change": float(np.mean([quality.mean_change(o, i, b) for o, i, b in zip(outputs, inputs, boxes)])),
    }
    if clean is not None:
        row["psnr_in"] = float(np.mean([quality.fidelity(i, c, b)[0] for i, c, b in zip(inputs, clean, boxes)]))
        row["psnr_out"] = float(np.mean([quality.fidelity(o, c, b)[0] for o, c, b in zip(outputs, clean, boxes)]))
    return row


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--frames", type=int, default=72)
    arguments.add_argument("--clips", nargs="+", default=["retalk_2", "liveportrait_d10"])
    arguments.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    arguments.add_argument("--cache", type=Path, help="keep the restorer's faces here and reuse them (guard tuning)")
    args = arguments.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    analyzer = FaceAnalyzer.from_models_dir(ASSETS / "models")
    model = dmdnet.load(args.checkpoint)
    size = model.image_size
    embed = guards.pack_embedder(str(analyzer.recogniser.model_path))
    rows = []
    for clip in args.clips:
        frames = read_clip(ASSETS / "media" / "clips" / f"{clip}.mp4")
        clean = frames[: args.frames]
        # The actor: references from the clip's second half, never among the frames measured.
        references = []
        for index in np.linspace(len(frames) // 2, len(frames) - 1, REFERENCES).astype(int):
            face = analyzer.analyze(frames[index])[0]
            references.append(align_face(frames[index], face, size) + (face.embedding,))
        reference = centroid(np.stack([r[-1] for r in references]))
        with torch.inference_mode():
            dictionary = model.build_dictionary(to_tensor(np.stack([r[0] for r in references])),
                                                torch.from_numpy(np.stack([r[2] for r in references])))
        with tempfile.TemporaryDirectory() as folder:
            dictionary.save(Path(folder) / "actor.dict")
            restorer = FaceRestorer(args.checkpoint, {"actor": Path(folder) / "actor.dict"})
        for version, inputs in (("clean", clean), ("degraded", degrade(clean))):
            track = dataclasses.replace(main_track(analyzer, inputs), actor="actor")
            aligned = [align_face(frame, t.face, size) for frame, t in zip(inputs, track.faces)]
            crops = np.stack([a.crop for a in aligned])
            started = time.perf_counter()
            cached = args.cache / f"{clip}-{version}-{args.frames}-{args.checkpoint.stem}.npy" if args.cache else None
            if cached and cached.is_file():
                restored = np.load(cached)
            else:
                restored = restorer.restore(crops, np.stack([a.boxes for a in aligned]), "actor")
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, restored)
            restore_s = time.perf_counter() - started
            started = time.perf_counter()
            scale = float(np.median([a.transform.scale for a in aligned]))
            full = guards.guard_track(crops, restored, embed, reference, scale=scale)
            truth = clean if version == "degraded" else None
            rows.append((clip, version, "input", measures(inputs, inputs, truth, track, analyzer, reference)))
            for name, faces in {"round trip": crops.astype(np.float32), "today": restored, "all guards": full.faces}.items():
                pasted = [paste(frame, a, face) for frame, a, face in zip(inputs, aligned, faces)]
                rows.append((clip, version, name, measures(inputs, pasted, truth, track, analyzer, reference)))
            for name, grain in (("full pipeline, --grain off", "off"), ("full pipeline", "auto")):
                pasted, result = composed(inputs, track, restored, reference, grain)
                rows.append((clip, version, name, measures(inputs, pasted, truth, track, analyzer, reference)))
            finish_s = time.perf_counter() - started
            held = int((full.strength < 1).sum())
            print(f"{clip} {version}: restore {restore_s:.0f} s, guards and composing {finish_s:.0f} s; resolution "
                  f"{full.resolution:.2f}, strength mean {full.strength.mean():.2f} min {full.strength.min():.2f}, "
                  f"{held}/{len(full.strength)} faces held back; faces held still (restored in part) "
                  f"{result.faces_held_still}/{result.faces}", flush=True)
    print(f"\n{args.frames} frames per clip, model {args.checkpoint.name}, faces {size} px aligned\n")
    print("| clip | copy | variant | flicker ratio | frame-to-frame change in -> out (levels) | texture ratio | "
          "identity in -> out | face PSNR vs clean in -> out | change (levels) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for clip, version, name, row in rows:
        psnr = f"{row['psnr_in']:.2f} -> {row['psnr_out']:.2f}" if "psnr_in" in row else "-"
        print(f"| {clip} | {version} | {name} | {row['flicker']:.3f} | {row['change_in']:.2f} -> {row['change_out']:.2f} | "
              f"{row['texture']:.2f} | {row['id_in']:.3f} -> {row['id_out']:.3f} | "
              f"{psnr} | {row['change']:.2f} |")


if __name__ == "__main__":
    main()
