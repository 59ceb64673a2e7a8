"""Corrections by file (film_restore.edits): every mistake one line naming the file's line and key, the edits
resolved against a film's tracks into the ranges they change (the chunk keys), and applied to a real track by
the Composer. The round trip through the command line is in test_pipeline.py."""
import numpy as np
import pytest

from film_restore.cast import Cast
from film_restore.compose import ComposeSettings, Composer
from film_restore.edits import ChunkEdits, Edits, EditsError, Segment, edited_tracks
from film_restore.faces.identity import Identifier
from film_restore.keys import RunKeys
from film_restore.records import ChunkResult, Frame, Track, TrackOutline
from film_restore.tracking import identify_tracks
from film_restore.video import RGBPicture
from tests.assets import asset

# Two chunks: shots 0 and 1 (frames 0-19), then shot 2 (frames 20-29); Ann's tracks and a stranger's.
OUTLINES = {0: [TrackOutline(0, 0, 9, "Ann", 0.8, range(10)), TrackOutline(0, 2, 8, None, 0.3, range(7)),
                TrackOutline(1, 10, 19, "Bob", 0.7, range(10))],
            1: [TrackOutline(2, 20, 29, "Ann", 0.8, range(10))]}
FRAMES, SHOTS = 30, 3


@pytest.fixture
def cast(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.jpg").write_bytes(b"x")
    path = tmp_path / "cast.yaml"
    path.write_text("actors:\n" + "".join(f"  - name: {name}\n    references: refs/a.jpg\n" for name in ("Ann", "Bob")))
    return Cast.load(path)


def edits(cast, text: str) -> Edits:
    path = cast.path.with_name("edits.yaml")
    path.write_text(text)
    return Edits.load(path, cast)


MISTAKES = [  # (file, line, key, what the line says)
    ("- track: s0t0\n  colour: red\n", 2, "colour", "unknown field (allowed: actor, frames, skip, strength, track, tracks_of)"),
    ("- track: s0t0\n  skip: true\n- track: s1t0\n  actor: Cary\n", 4, "actor", "'Cary' is not in the cast cast.yaml (its actors: Ann, Bob)"),
    ("- tracks_of: Carla\n  skip: true\n", 1, "tracks_of", "'Carla' is not in the cast"),
    ("- track: s0t0\n  strength: 1.5\n", 2, "strength", "expected a number from 0 to 1 or auto, got '1.5'"),
    ("- track: s0t0\n  frames: [5, 2]\n  skip: true\n", 2, "frames", "first <= last, got [5, 2]"),
    ("- track: s0t0\n  frames: [0, 1, 2]\n  skip: true\n", 2, "frames", "expected [first, last]"),
    ("- track: 12\n  skip: true\n", 1, "track", "'12' is not a track id such as s12t0"),
    ("- track: s0t0\n", 1, "entry", "sets nothing"),
    ("- track: s0t0\n  tracks_of: Ann\n  skip: true\n", 2, "tracks_of", "name one track"),
    ("- track: s0t0\n  skip: maybe\n", 2, "skip", "expected true or false"),
    ("- track: s0t0\n  actor: none\n  strength: 0.5\n", 3, "strength", "has no effect"),
    ("track: s0t0\n", 1, "edits", "expected a list of entries"),
    # What only the film can tell: found once its tracks are known.
    ("- track: s0t0\n  skip: true\n- track: s0t2\n  skip: true\n", 3, "track", "no track s0t2 in this film (shot 0 has s0t0, s0t1)"),
    ("- track: s7t0\n  skip: true\n", 1, "track", "no track s7t0 in this film (its shots are 0-2"),
    ("- tracks_of: Ann\n  frames: [25, 30]\n  strength: 0.2\n", 2, "frames", "[25, 30] is outside the film (frames 0-29)"),
    ("- track: s1t0\n  frames: [0, 9]\n  skip: true\n", 2, "frames", "[0, 9] is outside track s1t0 (frames 10-19)"),
]


@pytest.mark.parametrize("text, line, key, problem", MISTAKES, ids=[f"{m[2]}: {m[3][:30]}" for m in MISTAKES])
def test_each_mistake_is_one_line_naming_its_line_and_key(cast, text, line, key, problem):
    with pytest.raises(EditsError) as raised:
        edits(cast, text).resolve(OUTLINES, FRAMES, SHOTS)
    message = str(raised.value)
    assert message.startswith(f"{cast.path.with_name('edits.yaml')}:{line}: {key}: ") and problem in message, message
    assert "\n" not in message


def test_edits_resolve_in_order_into_the_ranges_they_change(cast):
    resolved = edits(cast, """
- tracks_of: Ann            # both of Ann's tracks, in both chunks
  strength: 0.4
- track: s0t0
  frames: [3, 5]
  actor: none
- track: s0t1               # the stranger is Bob, and left alone after frame 6
  actor: Bob
- track: s0t1
  frames: [7, 20]
  skip: true
- track: s1t0               # Bob is already Bob: nothing changes
  actor: Bob
- track: s2t0
  frames: [20, 24]
  skip: true
- track: s2t0
  frames: [22, 29]
  skip: false               # a later entry wins
""").resolve(OUTLINES, FRAMES, SHOTS)
    assert resolved.by_chunk[0].tracks == {
        0: (Segment(0, 2, {"strength": 0.4}), Segment(3, 5, {"actor": None}), Segment(6, 9, {"strength": 0.4})),
        1: (Segment(2, 6, {"actor": "Bob"}), Segment(7, 8, {"actor": "Bob", "skip": True})),
    }
    assert resolved.by_chunk[1].tracks == {0: (Segment(20, 21, {"skip": True}), Segment(22, 29, {"strength": 0.4}))}
    assert (0, 2) not in resolved.report_fields  # s1t0: no change, not marked edited
    assert resolved.report_fields[0, 0]["edits"] == [{"line": 2, "strength": 0.4}, {"line": 4, "frames": [3, 5], "actor": "none"}]
    assert "actor" not in resolved.report_fields[0, 0]  # a part only: the page keeps the actor found
    assert resolved.actor_of(0, 1, None) == "Bob"  # s0t1 is Bob over its whole length (left alone on some of it)

    # The chunk keys: a chunk without edits keeps the run's; the same effect written otherwise gives the same key.
    keys = RunKeys({"versions": [1, 1, 1], "input_sha256": "f", "chunk_frames": 10, "detector_size": 640,
                    "detect_every": 5, "face_models": "m", "cast": {}, "checkpoint_sha256": "c", "compose_settings": {}})
    assert keys.chunk_compose(None) == keys.compose != keys.chunk_compose(resolved.by_chunk[1])
    again = edits(cast, "- track: s2t0\n  strength: 0.4\n- track: s2t0\n  frames: [20, 21]\n  skip: true\n")
    assert keys.chunk_compose(again.resolve(OUTLINES, FRAMES, SHOTS).by_chunk[1]) == keys.chunk_compose(resolved.by_chunk[1])


def test_a_track_cut_by_an_edit_is_composed_in_parts_and_its_left_faces_keep_their_pixels(talking_head):
    """Frames 0-3 skipped, 4-7 restored as another actor, 8-11 at strength 0.5, on a real track with its guards."""
    frames = talking_head["frames"][:12]
    reference = talking_head["reference"]
    [track] = identify_tracks([Track(0, talking_head["faces"][:12])], Identifier({"Speaker": reference[None]}, 0.45))
    edits = ChunkEdits({0: (Segment(0, 3, {"skip": True}), Segment(4, 7, {"actor": "Other"}), Segment(8, 11, {"strength": 0.5}))})
    edited = edited_tracks([track], edits, lambda actor: "auto")
    assert [(number, t.actor, [f.frame for f in t.faces][::3]) for number, t in edited.tracks.items()] == \
        [(0, "Other", [4, 7]), (1, "Speaker", [8, 11])]
    assert edited.strengths == {0: "auto", 1: 0.5} and edited.sources == {0: 0, 1: 0} and edited.faces_left == 4

    actors = []

    def restore(crops, boxes, actor):
        actors.extend([actor] * len(crops))
        return np.clip(crops.astype(np.float32) * 1.1, 0, 255)

    settings = ComposeSettings("ffv1", 128, references={"Speaker": reference, "Other": -reference},
                               models_dir=str(asset("models")))
    result, pictures = ChunkResult(0, 0, 0), {}
    in_memory = [Frame(index, index, RGBPicture(frame)) for index, frame in enumerate(frames)]
    for window in Composer(None, settings, restore).windows(in_memory, [track], result, edits):
        pictures.update(window.pictures)
    assert all(np.array_equal(pictures[index].rgb(), frames[index]) for index in range(4))
    assert all(not np.array_equal(pictures[index].rgb(), frames[index]) for index in range(8, 12))
    assert sorted(actors) == ["Other"] * 4 + ["Speaker"] * 4
    assert result.faces_left_by_edits == 4 and result.faces == 8
    [summary] = result.tracks
    assert summary["track"] == 0 and summary["series"]["frame"] == list(range(4, 12))
    assert summary["series"]["strength"][4:] == [0.5] * 4
