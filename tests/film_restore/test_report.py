"""The review page's parts on real footage: the flags that say where to look first, the pictures decoded from the
input and the output (1:1 stills, the moving before|after loop, what is measured on them) and the page's files.

The page in a browser: tests/film_restore/test_pipeline.py (filters, a stranger) and test_example.py.
"""
import dataclasses
import io
import json

import av
import cv2
import numpy as np
import pytest

from film_restore.interlace import FieldPicture
from film_restore.records import Track, TrackedFace
from film_restore.finish.measures import texture_ratio
from film_restore.review import Pictures, frame_seconds, frame_timestamps, page_folder, review_tracks, write_page
from film_restore.review.flags import (HELD_BACK_SHARE, IDENTITY_DROP, LARGE_CHANGE, LOW_SCORE, LOW_SCORE_SHARE,
                                       OCCLUSION_MISMATCH, keypoint_mismatch, track_flags)
from film_restore.review.media import DECODE_GAP, LOOP_GAP, LOOP_SECONDS, STILL_SIDES, gather, plan_track
from film_restore.review.page import html
from film_restore.video import probe, read_frames
from film_restore.video.fields import split_fields
from tests.assets import asset
from tests.browser import CHROMIUM, NO_CHROMIUM, Browser, click_filter, shown_cards
from tests.masters import make_master, woven_frames
from tests.media import make_film

FRAMES = 16
BRIGHTER = 24  # levels the "restored" film adds inside each face box


def guard_series(track: Track, identity_in: float = 0.8, **changes) -> dict:
    """A guards' per-face series for the track: identity in/out equal, full strength, with some values replaced
    (name -> {face number: value})."""
    count = len(track.faces)
    series = {"frame": [t.frame for t in track.faces], "identity_in": [identity_in] * count,
              "identity_out": [identity_in] * count, "strength": [1.0] * count}
    for name, values in changes.items():
        for number, value in values.items():
            series[name][number] = value
    return series


def test_an_occluder_over_the_eyes_raises_its_flag(talking_head):
    """The detector's keypoints and the 68 landmarks agree on a clear face and part ways under a bar over the eyes."""
    faces, frames, analyzer = talking_head["faces"], talking_head["frames"], talking_head["analyzer"]
    clear = Track(0, faces, "Speaker", 0.8)
    assert keypoint_mismatch(clear).max() < OCCLUSION_MISMATCH
    assert "occluder" not in track_flags(clear, None, None, None).raised
    covered = list(faces)
    for index in range(6, 12):
        frame = frames[index].copy()
        eyes = faces[index].face.landmarks[36:48]
        height = faces[index].face.box[3] - faces[index].face.box[1]
        top, bottom = int(eyes[:, 1].min() - 0.06 * height), int(eyes[:, 1].max() + 0.06 * height)
        cv2.rectangle(frame, (int(faces[index].face.box[0]), top), (int(faces[index].face.box[2]), bottom), (25, 25, 25), -1)
        [found] = analyzer.analyze(frame)
        covered[index] = TrackedFace(index, found)
    flags = track_flags(dataclasses.replace(clear, faces=tuple(covered)), None, None, None)
    assert "occluder" in flags.raised and 6 <= flags.worst["occluder"] < 12, flags


def test_flags_from_the_guards_the_detector_and_the_decoded_change(talking_head):
    track = Track(0, talking_head["faces"], "Speaker", 0.8)
    frames = [t.frame for t in track.faces]
    quiet = track_flags(track, {"held_back_why": {}}, guard_series(track), {f: 1.0 for f in frames})
    assert quiet.raised == [] and quiet.worst == {}
    # Identity: one face less like the actor than its input by more than IDENTITY_DROP, or the whole track a little.
    dropped = track_flags(track, None, guard_series(track, identity_out={7: 0.8 - IDENTITY_DROP - 0.01}), None)
    assert dropped.raised == ["identity"] and dropped.worst["identity"] == frames[7]
    jitter = track_flags(track, None, guard_series(track, identity_out={7: 0.8 - IDENTITY_DROP / 2}), None)
    assert "identity" not in jitter.raised
    # Held back: the guard's own count of faces it held back, with a reason, against HELD_BACK_SHARE.
    held = int(np.ceil(HELD_BACK_SHARE * len(frames)))
    lowered = guard_series(track, strength={3: 0.25, 4: 0.5})
    assert track_flags(track, {"held_back_why": {"identity": held}}, lowered, None).worst["held_back"] == frames[3]
    assert "held_back" not in track_flags(track, {"held_back_why": {"identity": held - 1}}, lowered, None).raised
    # Detection: faces the detector scored low, or missed (bridged by the tracker), against LOW_SCORE_SHARE.
    weak_count = int(np.ceil(LOW_SCORE_SHARE * len(frames)))
    weak = [dataclasses.replace(t, face=dataclasses.replace(t.face, score=LOW_SCORE - 0.1)) if i < weak_count else t
            for i, t in enumerate(track.faces)]
    weak[4] = dataclasses.replace(weak[4], interpolated=True)
    assert track_flags(dataclasses.replace(track, faces=tuple(weak)), None, None, None).worst == {"detection": frames[4]}
    weak[0] = track.faces[0]
    assert track_flags(dataclasses.replace(track, faces=tuple(weak)), None, None, None).raised == []
    # The change decoded from the films.
    changed = track_flags(track, None, None, {frames[5]: LARGE_CHANGE + 1, frames[6]: 1.0})
    assert changed.raised == ["change"] and changed.worst["change"] == frames[5]
    # A face of nobody: flagged a stranger; its identity is its likeness to its own input.
    stranger = dataclasses.replace(track, actor=None)
    unlike = track_flags(stranger, None, guard_series(stranger, identity_in=1.0, identity_out={9: 0.7}), None)
    assert unlike.raised == ["identity", "stranger"] and unlike.worst == {"identity": frames[9]}


@pytest.fixture(scope="module")
def films(tmp_path_factory, analyzer):
    """A real talking head (x264, a keyframe every 6 frames), its face track, and a "restored" film (FFV1) that is the
    same pictures with every face box BRIGHTER."""
    folder = tmp_path_factory.mktemp("review")
    film, restored = folder / "film.mkv", folder / "restored.mkv"
    make_film(film, [asset("media/clips/retalk_2.mp4")], FRAMES, size=(256, 256), gop=6, with_audio=False)
    with av.open(str(film)) as container:
        decoded = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
        time_base = container.streams.video[0].time_base
    faces = [max(analyzer.analyze(rgb), key=lambda face: face.box[2] - face.box[0]) for _, rgb in decoded]
    with av.open(str(restored), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = 256, 256, "yuv420p", time_base
        for (pts, rgb), face in zip(decoded, faces):
            x1, y1, x2, y2 = (int(round(value)) for value in face.box)
            brighter = rgb.astype(int)
            brighter[y1:y2, x1:x2] += BRIGHTER
            frame = av.VideoFrame.from_ndarray(np.clip(brighter, 0, 255).astype(np.uint8), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    track = Track(0, tuple(TrackedFace(index, face) for index, face in enumerate(faces)), "Speaker", 0.8)
    pts = [pts for pts, _ in decoded]
    return {"film": film, "restored": restored, "track": track, "pts": pts,
            "seconds": frame_seconds(pts, probe(film).time_base, 25), "rgb": [rgb for _, rgb in decoded]}


def _image(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def _frames_of(data: bytes) -> tuple[list[np.ndarray], list[float]]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
    return [frame.to_ndarray(format="rgb24") for frame in frames], [float(frame.time) for frame in frames]


def test_stills_and_loop_are_the_films_own_pixels(films):
    """A track's stills are 1:1 crops of the input and the output; its loop shows both side by side at the film's
    times; the face's change is measured; only the frames needed are decoded, from a keyframe before them."""
    track = films["track"]
    plan = plan_track("s0t0", track, {"change": 9}, rate=5 / LOOP_SECONDS)  # a loop of 5 pictures around frame 9
    assert plan.loop == [7, 8, 9, 10, 11] and sorted(plan.stills) == [0, 8, 9, 15]
    assert plan.stills[9] == ["worst: change"] and plan.stills[8] == ["middle"]
    pictures = Pictures(films["film"], films["restored"], films["pts"], films["seconds"], None)
    assert pictures.runs({0, 7, 9, 15, 15 + DECODE_GAP + 1}) == [(0, 15), (15 + DECODE_GAP + 1, 15 + DECODE_GAP + 1)]
    assert gather([plan], pictures) == FRAMES
    for still in plan.media["stills"]:
        number = still["frame"]
        before, after = _image(plan.files[still["before"]]), _image(plan.files[still["after"]])
        assert STILL_SIDES[0] <= before.shape[0] <= STILL_SIDES[1] and before.shape == after.shape
        # Where in the frame: the crop is found at 1:1 in the decoded frame, exactly where it was cut (JPEG apart).
        match = cv2.matchTemplate(films["rgb"][number], before, cv2.TM_SQDIFF_NORMED)
        y, x = np.unravel_index(match.argmin(), match.shape)
        region = films["rgb"][number][y:y + before.shape[0], x:x + before.shape[1]].astype(int)
        assert np.abs(before - region).mean() < 2.0
        x1, y1, x2, y2 = (int(round(v)) for v in track.faces[number].face.box)
        inside = (slice(y1 - y + 2, y2 - y - 2), slice(x1 - x + 2, x2 - x - 2))
        assert abs((after.astype(int) - before)[inside].mean() - BRIGHTER) < 2.5
    assert all(BRIGHTER - 4 < plan.changes[n] <= BRIGHTER + 1 for n in plan.pictures), plan.changes
    frames, times = _frames_of(plan.files[plan.media["loop"]["file"]])
    assert len(frames) == 5 and np.allclose(np.diff(times), 0.04, atol=0.002)
    width = (frames[0].shape[1] - LOOP_GAP) // 2
    assert plan.media["loop"]["width"] == frames[0].shape[1] and plan.media["loop"]["scale"] == 1.0
    left, right = frames[2][:, :width].astype(int), frames[2][:, width + LOOP_GAP:].astype(int)
    assert (right - left).mean() > 4 and np.abs(right - left).max() > BRIGHTER - 6
    # The same frame-to-frame change in both films: the output adds a constant to the face.
    measures = plan.loop_measures
    assert measures["frame"] == plan.loop and measures["frame_change_in"][0] is None
    assert np.allclose(measures["frame_change_in"][1:], measures["frame_change_out"][1:], rtol=0.15, atol=0.3)
    # Measured on the part of the frames converted: as on the whole frames.
    middle = films["track"].faces[plan.middle].face
    whole = [picture.rgb() for picture in next(Pictures(films["film"], films["restored"], films["pts"], films["seconds"],
                                                        None).read(plan.middle, plan.middle))[1:]]
    assert plan.texture == round(texture_ratio(*whole, middle.landmarks), 3) and 0.5 < plan.texture < 1.5


def test_a_dry_run_page_shows_the_input_only(films):
    plan = plan_track("s0t0", films["track"], {}, rate=25)
    gather([plan], Pictures(films["film"], None, films["pts"], films["seconds"], None))
    assert [still["after"] for still in plan.media["stills"]] == [None] * 3 and plan.media["loop"] is None
    assert plan.changes == {} and plan.texture is None


def test_an_interlaced_film_gives_its_fields_as_pictures(tmp_path):
    """A film restored field by field counts its tracks in fields: picture 2n + 1 is frame n's second field, shown
    half a frame later."""
    images = woven_frames(asset("media/clips/retalk_2.mp4"), 3, (128, 96))
    master = make_master(tmp_path / "tff.mkv", container="matroska", encoder="libx264", pix_fmt="yuv420p", size=(128, 96),
                         options={"x264-params": "bframes=0"}, audio=(), subtitles=None, images=images, field_order="tt")
    pts = [frame.pts for frame in read_frames(master)]
    seconds = frame_seconds(pts, probe(master).time_base, 25)
    pictures = Pictures(master, master, pts, seconds, "tt")
    read = list(pictures.read(1, 2))
    assert [number for number, _, _ in read] == [2, 3, 4, 5]
    second_field = FieldPicture(split_fields(next(read_frames(master, 1, 1, pts)).picture, "tt")[1], 1).rgb()
    assert np.array_equal(read[1][1].rgb(), second_field) and np.array_equal(read[1][2].rgb(), second_field)
    assert pictures.seconds(3) == pytest.approx(seconds[1] + (seconds[2] - seconds[1]) / 2)


def test_the_page_and_its_folder_are_replaced_whole(films, tmp_path):
    plan = plan_track("s0t0", films["track"], {}, rate=25)
    gather([plan], Pictures(films["film"], films["restored"], films["pts"], films["seconds"], None))
    report = {
        "input": {"path": "film.mkv", "codec": "h264", "width": 256, "height": 256, "pix_fmt": "yuv420p", "bit_depth": 8,
                  "frames": FRAMES},
        "output": None, "dry_run": True, "cast": {"path": "cast.yaml", "match_threshold": 0.45, "actors": ["A </script> B"]},
        "shots": [{"index": 0, "first_frame": 0, "last_frame": FRAMES - 1}], "timings_s": {"total": 1.0},
        "totals": {"frames": FRAMES, "shots": 1, "tracks": 1, "faces_detected": FRAMES, "faces_restored": 0,
                   "faces_too_small": {"min_face": 24, "faces": 0}, "faces_held_still": 0},
        "tracks": [{"id": "s0t0", "shot": 0, "first_frame": 0, "last_frame": FRAMES - 1, "actor": "A </script> B",
                    "similarity": 0.8, "faces": FRAMES, "flags": [], "measures": {}, "media": plan.media}],
        "frame_seconds": films["seconds"],
    }
    path = tmp_path / "report.html"
    write_page(report, path, plan.files)
    folder = page_folder(path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == sorted(plan.files)
    page = path.read_text()
    assert page.count("</script>") == 2  # the data's "</" is escaped, so an actor's name cannot end the script
    data = json.loads(page.split('<script type="application/json" id="review-data">')[1].split("</script>")[0])
    assert data["tracks"][0]["actor"] == "A </script> B" and data["files"] == "report.files"
    write_page(report, path, {"s0t0/other.jpg": b"x"})  # a later run's page: the earlier pictures are gone
    assert [p.name for p in folder.rglob("*.*")] == ["other.jpg"] and not list(tmp_path.glob(".*.tmp"))
    assert html(report, "report.files") == path.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_edited_tracks_are_marked_and_each_track_gives_its_edits_entry(tmp_path):
    """What the edits file will need of the page: a track's id and its entry to copy; tracks an edit changed
    (report.json's per-track "edits") marked and found by a filter. A dry run's page: the input only."""
    tracks = [{"id": f"s{shot}t0", "shot": shot, "first_frame": 10 * shot, "last_frame": 10 * shot + 9, "actor": actor,
               "similarity": 0.8, "faces": 10, "flags": [] if actor else ["stranger"], "measures": {}}
              for shot, actor in enumerate(["Ann O'Hara", None, "Yes"])]
    tracks[1]["edits"] = [{"line": 1, "actor": "Ann O'Hara"}, {"line": 3, "frames": [12, 15], "strength": 0.5}]
    report = {
        "input": {"path": "film.mkv", "codec": "h264", "width": 64, "height": 48, "pix_fmt": "yuv420p", "bit_depth": 8,
                  "frames": 30},
        "output": None, "dry_run": True, "cast": {"path": "cast.yaml", "match_threshold": 0.45, "actors": ["Ann O'Hara", "Yes"]},
        "shots": [{"index": n, "first_frame": 10 * n, "last_frame": 10 * n + 9} for n in range(3)],
        "timings_s": {"total": 1.0}, "tracks": tracks, "frame_seconds": [n / 25 for n in range(30)],
        "totals": {"frames": 30, "shots": 3, "tracks": 3, "faces_detected": 30, "faces_restored": 0,
                   "faces_too_small": {"min_face": 24, "faces": 0}, "faces_held_still": 0},
    }
    write_page(report, tmp_path / "report.html", {})
    with Browser(tmp_path / "profile") as browser:
        browser.open((tmp_path / "report.html").as_uri())
        assert browser.evaluate("document.querySelector('#track-s1t0 .flag.edited').textContent") == "edited"
        click_filter(browser, "flag-filters", "edited")
        assert shown_cards(browser) == ["s1t0"]
        browser.evaluate("document.getElementById('open-all').click()")
        note = browser.evaluate("document.querySelector('#track-s1t0 p.note').textContent")
        assert note == "Edited by the edits file (Run facts): line 1: actor: Ann O'Hara; line 3: frames: 12-15, strength: 0.5"
        entry = browser.evaluate("document.querySelector('#track-s1t0 pre.entry').textContent")
        assert entry.splitlines()[:2] == ["- track: s1t0", "  actor: none    # or none (leave unrestored); strength: 0..1; skip: true"]
        click_filter(browser, "flag-filters", "edited")
        browser.evaluate("document.getElementById('open-all').click()")
        entries = browser.evaluate("[...document.querySelectorAll('pre.entry')].map((pre) => pre.textContent.split('\\n')[1])")
        assert sorted(entries)[:2] == ['  actor: "Yes"    # or none (leave unrestored); strength: 0..1; skip: true',
                                       "  actor: Ann O'Hara    # or none (leave unrestored); strength: 0..1; skip: true"]
        browser.evaluate("document.querySelector('#track-s0t0 .entry-block button').click()")
        copied = browser.wait_for("document.querySelector('#track-s0t0 .entry-block button').textContent !== 'copy edits entry' "
                                  "&& document.querySelector('#track-s0t0 .entry-block button').textContent")
        assert copied in ("copied", "selected: press Ctrl+C")
        assert browser.evaluate("document.querySelector('#track-s0t0 .body').textContent").count("No pictures for this track") == 1
    assert browser.errors == []


def test_an_output_on_another_clock_is_read_at_its_own_timestamps(films, tmp_path):
    """An output whose container keeps time on another clock (Matroska in, MP4 out) has other pts for the same frames:
    read at its own, it gives the same pictures; a film that cannot be read back leaves a page without them."""
    matroska, mp4 = tmp_path / "restored.mkv", tmp_path / "restored.mp4"
    with av.open(str(films["restored"])) as source, av.open(str(matroska), "w") as target:
        stream = target.add_stream("libx264", rate=25, options={"x264-params": "bframes=0"})
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.time_base = stream.codec_context.time_base = source.streams.video[0].time_base
        for frame in source.decode(video=0):
            target.mux(stream.encode(frame))
        target.mux(stream.encode())
    with av.open(str(matroska)) as source, av.open(str(mp4), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    output_pts = frame_timestamps(mp4)
    assert probe(mp4).time_base != probe(films["film"]).time_base and output_pts != films["pts"]
    same_clock = Pictures(films["film"], matroska, films["pts"], films["seconds"], None)
    other_clock = Pictures(films["film"], mp4, films["pts"], films["seconds"], None, output_pts)
    assert all(np.array_equal(a[2].rgb(), b[2].rgb()) for a, b in zip(same_clock.read(3, 6), other_clock.read(3, 6)))
    notes = []
    entries = [{"id": "s0t0", "chunk": 0, "number": 0, "faces": len(films["track"].faces)}]
    wrong_clock = Pictures(films["film"], mp4, films["pts"], films["seconds"], None)
    files, cost = review_tracks(lambda chunk: [films["track"]], entries, wrong_clock, say=notes.append)
    assert files == {} and "media" not in entries[0] and cost["tracks_with_media"] == 0
    assert len(notes) == 1 and notes[0].startswith("note: the review page has no pictures: ") and "pts" in cost["error"]
