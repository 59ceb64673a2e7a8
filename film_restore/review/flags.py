"""What says where to look first in a track: the review page's flags, their measures and thresholds.

Every threshold of the page is here. A flag is raised from what the run recorded (the track's
faces, the guards' per-face series) or, for the large change, from the frames the page decodes
(film_restore.review.media); each names the worst frame it found, which the page shows.

identity       the restored face is less like the actor than the input was: any face whose identity
               (cosine to the actor's centroid) drops by more than IDENTITY_DROP, or the track's mean
               by more than guards.IDENTITY_TOLERANCE. A face of nobody: any face whose output is
               less like its own input than guards.UNKNOWN_SELF_SIMILARITY.
change         the restoration changed the face a lot: the mean |output - input| over the face box,
               both blurred by CHANGE_BLUR px first so that grain (removed, then made anew) does not
               count, above LARGE_CHANGE levels (8-bit) on any decoded frame.
held_back      the identity guard held back (lowered the strength of) at least HELD_BACK_SHARE of
               the track's faces, for a reason it gave (only with --strength auto).
detection      at least LOW_SCORE_SHARE of the faces were found with a detector score below
               LOW_SCORE, or not found at all (frames the track bridged).
occluder       something covers part of the face: the detector's five keypoints and the same
               points from the 68 landmarks (eye centres, nose tip, mouth corners) disagree by
               more than OCCLUSION_MISMATCH of the eye distance on OCCLUSION_RUN consecutive faces.
               The two models fail differently under a hand, a microphone or a profile turn; on
               unoccluded faces of the shared clips they agree within 0.061 (60 faces of 5 clips),
               while patches over the eyes, mouth side or chin give 0.05-0.17.
stranger       the track matched no actor of the cast (restored with the generic dictionary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from film_restore.finish.guards import IDENTITY_TOLERANCE, UNKNOWN_SELF_SIMILARITY
from film_restore.records import Track

IDENTITY_DROP = 0.02  # cosine; twice the largest mean frame-to-frame change of a face's identity (guards.py)
LARGE_CHANGE = 8.0  # levels (8-bit) of the blurred face's mean |output - input|
CHANGE_BLUR = 1.5  # pixels (Gaussian sigma): grain is finer
HELD_BACK_SHARE = 0.25
LOW_SCORE = 0.6  # the detector's threshold is 0.5; clear faces of the shared clips score 0.63-0.87
LOW_SCORE_SHARE = 0.25
OCCLUSION_MISMATCH = 0.08  # of the eye distance
OCCLUSION_RUN = 3  # consecutive faces

# name -> what the page says of it.
FLAGS = {
    "identity": "identity below the input's",
    "change": "large change",
    "held_back": "guard held back faces",
    "detection": "low detection confidence",
    "occluder": "occluder suspected",
    "stranger": "stranger (no actor)",
}
# The landmarks (iBUG 68) at the detector's five keypoints: eye centres, nose tip, mouth corners.
_LEFT_EYE, _RIGHT_EYE, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = slice(36, 42), slice(42, 48), 30, 48, 54


@dataclass
class TrackFlags:
    """The flags raised for one track, its measures (None: not measured), and the worst frame of each flag."""

    raised: list[str]
    measures: dict
    worst: dict  # flag -> frame

    def to_json(self) -> dict:
        return {"flags": self.raised, "measures": self.measures, "worst_frames": self.worst}


def keypoint_mismatch(track: Track) -> np.ndarray:
    """Per face: the mean distance between the detector's keypoints and the landmarks' same points, over the eye distance."""
    keypoints = np.stack([tracked.face.keypoints for tracked in track.faces]).astype(np.float64)
    landmarks = np.stack([tracked.face.landmarks for tracked in track.faces]).astype(np.float64)
    from_landmarks = np.stack([landmarks[:, _LEFT_EYE].mean(1), landmarks[:, _RIGHT_EYE].mean(1), landmarks[:, _NOSE_TIP],
                               landmarks[:, _MOUTH_LEFT], landmarks[:, _MOUTH_RIGHT]], axis=1)
    eye_distance = np.maximum(np.linalg.norm(keypoints[:, 1] - keypoints[:, 0], axis=1), 1.0)
    return np.linalg.norm(from_landmarks - keypoints, axis=2).mean(1) / eye_distance


def _longest_run(above: np.ndarray) -> int:
    longest = current = 0
    for value in above:
        current = current + 1 if value else 0
        longest = max(longest, current)
    return longest


def track_flags(track: Track, guards: dict | None, series: dict | None, changes: dict[int, float] | None) -> TrackFlags:
    """The flags of a track from its faces, the guards' summary and per-face series (None where the track was not
    restored) and the change measured on decoded frames (frame -> levels; None where none were decoded)."""
    frames = [tracked.frame for tracked in track.faces]
    raised, measures, worst = [], {}, {}

    def flag(name: str, is_raised: bool, frame: int | None) -> None:
        if is_raised:
            raised.append(name)
            if frame is not None:
                worst[name] = int(frame)

    if series and series.get("frame"):
        series_frames = series["frame"]
        identity_in, identity_out = np.asarray(series["identity_in"]), np.asarray(series["identity_out"])
        drop = identity_in - identity_out
        if track.actor is None:
            measures["self_similarity_min"] = round(float(identity_out.min()), 4)
            flag("identity", identity_out.min() < UNKNOWN_SELF_SIMILARITY, series_frames[int(identity_out.argmin())])
        else:
            measures["identity_drop_max"] = round(float(drop.max()), 4)
            flag("identity", drop.max() > IDENTITY_DROP or drop.mean() > IDENTITY_TOLERANCE,
                 series_frames[int(drop.argmax())])
        strength = np.asarray(series["strength"])
        held = sum((guards or {}).get("held_back_why", {}).values())
        measures["held_back_share"] = round(held / len(strength), 3)
        flag("held_back", held >= HELD_BACK_SHARE * len(strength), series_frames[int(strength.argmin())])
    if changes:
        changed_frame = max(changes, key=changes.get)
        measures["change_max"] = round(changes[changed_frame], 2)
        flag("change", changes[changed_frame] > LARGE_CHANGE, changed_frame)
    scores = np.array([0.0 if tracked.interpolated else tracked.face.score for tracked in track.faces])
    low = scores < LOW_SCORE
    measures["low_score_share"] = round(float(low.mean()), 3)
    measures["score_median"] = round(float(np.median(scores)), 3)
    flag("detection", low.mean() >= LOW_SCORE_SHARE, frames[int(scores.argmin())])
    mismatch = keypoint_mismatch(track)
    measures["keypoint_mismatch_max"] = round(float(mismatch.max()), 4)
    flag("occluder", _longest_run(mismatch > OCCLUSION_MISMATCH) >= OCCLUSION_RUN, frames[int(mismatch.argmax())])
    flag("stranger", track.actor is None, None)
    return TrackFlags([name for name in FLAGS if name in raised], measures, worst)
