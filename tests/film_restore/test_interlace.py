"""Interlaced masters: the field order detected and kept, and a talking head restored field by field
without combing more than the input (where a restoration of the woven frames combs more)."""
import dataclasses

import av
import cv2
import numpy as np
import pytest

from film_restore.compose import Composer, ComposeSettings
from film_restore.faces import align_face
from film_restore.faces.identity import Identifier
from film_restore.interlace import FieldPicture, combing, restored_field_order, whole_frames_note
from film_restore.finish.paste import face_layer, frame_matte
from film_restore.settings import GRAIN, STRENGTH
from film_restore.stages import FaceTracker, Scanner
from film_restore.video import check_output, join, probe, read_frames
from film_restore.video.fields import field_rows, split_fields, weave
from tests.assets import asset
from tests.film_restore.test_masters import EXPECTED_CHAPTERS, EXPECTED_CUES, restore, streams, timecode
from tests.masters import TIMECODE, chapters, cues, make_master, packets, woven_frames

CLIP = "media/clips/retalk_2.mp4"
SD = (720, 576)
FRAMES = 4
# Restored as pictures, the woven frames of a moving face comb at least this share more than the input (measured: +50%;
# field by field, with the change made alike on both fields: -6%).
WOVEN_COMBING = 0.3


def frames_flagged(path):
    with av.open(str(path)) as container:
        return [frame.interlaced_frame for frame in container.decode(video=0)]


def test_fields_split_and_weave_back_exactly(tmp_path):
    master = make_master(tmp_path / "bff.mkv", container="matroska", encoder="libx264", pix_fmt="yuv420p", size=(64, 48),
                         frames=2, options={"x264-params": "bframes=0"}, audio=(), subtitles=None, field_order="bb")
    picture = next(read_frames(master)).picture
    first, second = split_fields(picture, "bb")  # bottom field first: the odd rows
    assert field_rows("bb") == (1, 0) and np.array_equal(first.planes[0], picture.planes[0][1::2])
    assert np.array_equal(second.planes[1], picture.planes[1][0::2]) and first.height == 24
    assert weave(first, second, "bb").same_pixels(picture)
    stretched = FieldPicture(first, 1)
    assert stretched.rgb().shape == (48, 64, 3)  # square pixels: the field on the frame rows it is shown on
    assert np.array_equal(stretched.rgb()[1::2], first.rgb())


@pytest.mark.parametrize("order, container, encoder, pix_fmt, suffixes", [
    ("tt", "mov", "prores_ks", "yuv422p10le", (".mov", ".mkv")),
    ("bb", "matroska", "libx264", "yuv420p", (".mkv", ".mov")),
])
def test_field_order_is_detected_and_kept_with_every_stream(order, container, encoder, pix_fmt, suffixes, tmp_path):
    suffix = ".mov" if container == "mov" else ".mkv"
    master = make_master(tmp_path / f"interlaced{suffix}", container=container, encoder=encoder, pix_fmt=pix_fmt,
                         size=(128, 96), options={"x264-params": "bframes=0"} if encoder == "libx264" else None,
                         subtitles="mov_text" if container == "mov" else "subrip", field_order=order)
    info = probe(master)
    assert info.field_order == order and all(frames_flagged(master))
    for output_suffix in suffixes:
        output = tmp_path / f"restored{output_suffix}"
        plan = restore(master, output, tmp_path)
        assert plan.encoder.interlaced and not plan.encoder.note
        assert probe(output).field_order == order and all(frames_flagged(output))
        if encoder == "prores_ks":  # the container's tag as read back (for H.264, FFmpeg's parser replaces it with TT)
            with av.open(str(output)) as restored:
                assert restored.streams.video[0].codec_context.field_order == {"tt": 2, "bb": 3}[order]
        for index in (1, 2):  # audio byte for byte
            assert packets(output, index) == packets(master, index)
        assert cues(output) == EXPECTED_CUES and chapters(output) == EXPECTED_CHAPTERS and TIMECODE in timecode(output)


def test_a_codec_that_cannot_code_fields_says_so_and_keeps_the_tag(tmp_path):
    master = make_master(tmp_path / "interlaced.mov", size=(128, 96), frames=4, audio=(), subtitles=None, field_order="tt")
    plan = check_output(tmp_path / "restored.mov", probe(master), "x265")
    assert plan.warnings == ("libx265 cannot code interlaced pictures: the film's fields stay woven but are coded as "
                             "progressive frames (field order tt tagged): use codec ffv1, prores or x264 to keep the interlacing",)
    output = tmp_path / "restored.mov"
    restore(master, output, tmp_path, "x265")
    with av.open(str(output)) as restored:
        assert restored.streams.video[0].codec_context.field_order == 2
    lossless = tmp_path / "lossless.mkv"
    assert not any("interlaced" in warning for warning in check_output(lossless, probe(master), "ffv1").warnings)
    restore(master, lossless, tmp_path, "ffv1")
    assert probe(lossless).field_order == "tt"
    assert all(a.picture.same_pixels(b.picture) for a, b in zip(read_frames(lossless), read_frames(master)))


def sharpen(crops, boxes, actor):
    """A restorer that adds detail as a face restorer does (an unsharp mask): deterministic, so only the path differs."""
    faces = crops.astype(np.float32)
    return np.clip(faces + 1.5 * (faces - np.stack([cv2.GaussianBlur(face, (0, 0), 1.5) for face in faces])), 0, 255)


@pytest.fixture(scope="module")
def sd_master(tmp_path_factory, analyzer):
    """FRAMES interlaced TFF SD frames of a talking head (fields 1/50 s apart), ProRes 422 HQ in MOV with the master's streams."""
    folder = tmp_path_factory.mktemp("interlaced")
    master = make_master(folder / "sd.mov", size=SD, images=woven_frames(asset(CLIP), FRAMES, SD), field_order="tt")
    reference = analyzer.analyze(next(read_frames(master)).picture.rgb())[0].embedding
    return master, Identifier({"Speaker": reference[None]}, 0.45)


def pasted_as_they_come(frames, tracks) -> list:
    """The frames' pictures with each face restored (sharpen) on the whole woven frame and pasted back as it comes."""
    faces = {tracked.frame: tracked.face for track in tracks for tracked in track.faces}
    pictures = []
    for frame in frames:
        rgb = frame.picture.rgb()
        aligned = align_face(rgb, faces[frame.index], 512)
        restored = sharpen(aligned.crop[None], aligned.boxes[None], None)[0]
        pictures.append(frame.picture.blended(*face_layer(rgb.shape, [(aligned, restored)], rgb)))
    return pictures


def compose(master, info, scan, tracks, output, restorer=sharpen, grain=GRAIN, strength=STRENGTH):
    """The master composed as one chunk with the restorer at the authors' 512 px, lossless, and joined; the ChunkResult."""
    [chunk] = scan.chunks
    settings = ComposeSettings("ffv1", 512, grain=grain, strength=strength)
    result = Composer(info, settings, restorer)(chunk, tracks, scan.frame_pts, output.with_suffix(".chunk"))
    join([output.with_suffix(".chunk")], master, output, info, frame_pts=scan.frame_pts)
    return result


def test_interlaced_talking_head_is_restored_field_by_field_without_more_combing(sd_master, tmp_path):
    master, identifier = sd_master
    info = probe(master)
    assert info.field_order == "tt" and restored_field_order(info) == "tt"
    output = tmp_path / "restored.mkv"
    scan = Scanner(250)(master)
    tracker = FaceTracker(asset("models"), identifier, 320)

    def tracks(order):
        tracker.field_order = order
        return tracker(master, scan.chunks[0], scan.frame_pts)

    field_tracks = tracks(restored_field_order(info))
    result = compose(master, info, scan, field_tracks, output, strength=1.0)  # all of the restoration: see held below
    [track] = field_tracks
    assert [face.frame for face in track.faces] == list(range(2 * FRAMES))  # two fields per frame, in time order
    assert result.frames == FRAMES and result.faces == 2 * FRAMES and result.faces_held_still == 0
    assert probe(output).field_order == "tt" and all(frames_flagged(output))
    assert streams(output)[:4] == [("video", "ffv1"), *streams(master)[1:3], ("subtitle", "srt")] and timecode(output) == {TIMECODE}
    assert all(packets(output, index) == packets(master, index) for index in (1, 2)) and cues(output) == EXPECTED_CUES

    # The same woven frames restored as progressive pictures: pasted as they come (what a field-unaware pipeline
    # does), and by the Composer with --strength auto, which holds each face to the film's own change from frame
    # to frame (the unsharp mask amplifies it: the field run above keeps all of it with strength 1); and field by
    # field with a restorer that changes nothing (no grain: re-created fresh on each field, it would add some).
    progressive_tracks = tracks(None)
    held = compose(master, dataclasses.replace(info, field_order="progressive"), scan, progressive_tracks,
                   tmp_path / "held.mkv")
    compose(master, info, scan, field_tracks, tmp_path / "unchanged.mkv", lambda crops, boxes, actor: crops.astype(np.float32),
            grain="off")

    inputs, outputs, held_frames, unchanged = (list(read_frames(path)) for path in
                                               (master, output, tmp_path / "held.mkv", tmp_path / "unchanged.mkv"))
    woven = pasted_as_they_come(inputs, progressive_tracks)
    measured = {"input": [], "fields": [], "woven": [], "held": [], "unchanged": []}
    faces_in_field = {tracked.frame: tracked.face for tracked in track.faces}
    for index, (before, after, frame_restored, held_frame, kept) in enumerate(zip(inputs, outputs, woven, held_frames, unchanged)):
        # Outside the face mattes (each field's own, on its rows) every sample keeps its value.
        matte = np.zeros(SD[::-1], np.float32)
        for number, (field, row) in enumerate(zip(split_fields(before.picture, "tt"), field_rows("tt"))):
            rgb = FieldPicture(field, row).rgb()
            matte[row::2] = frame_matte(rgb.shape, align_face(rgb, faces_in_field[2 * index + number], 512))[row::2]
        footprint = cv2.dilate((matte > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert np.array_equal(before.picture.rgb()[~footprint], after.picture.rgb()[~footprint]), f"frame {index}"
        # Combing over the face region both restorations changed.
        changed = np.any([before.picture.planes[0] != picture.planes[0] for picture in (after.picture, frame_restored)], axis=0)
        rows, columns = np.nonzero(changed)
        box = np.s_[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
        for name, picture in (("input", before.picture), ("fields", after.picture), ("woven", frame_restored),
                              ("held", held_frame.picture), ("unchanged", kept.picture)):
            measured[name].append(combing(picture.planes[0][box], 10))
    mean = {name: float(np.mean(values)) for name, values in measured.items()}
    assert mean["unchanged"] == pytest.approx(mean["input"], rel=0.01)  # the field path itself adds no combing
    assert mean["fields"] <= mean["input"]
    assert mean["woven"] >= mean["input"] * (1 + WOVEN_COMBING)  # the measure catches the field-unaware restoration
    # Held to the film's own change, the field-unaware restoration combs no more than the input.
    assert held.faces_held_still > 0 and mean["held"] <= mean["input"] * 1.02
    assert result.combing["frames"] == FRAMES  # the report's: over the faces' boxes, every frame
    assert result.combing["output"] <= result.combing["input"]


def test_fields_that_do_not_split_into_chroma_rows_are_restored_whole_and_said_so(tmp_path):
    master = make_master(tmp_path / "42 lines.mkv", container="matroska", encoder="ffv1", pix_fmt="yuv420p", size=(64, 42),
                         frames=2, audio=(), subtitles=None, chapters=False, field_order="tt")
    info = probe(master)
    assert info.field_order == "tt" and restored_field_order(info) is None  # 21-row fields of 4:2:0: half a chroma row
    assert whole_frames_note(info) == ("the film is interlaced (tt) but its 42 lines do not split into two yuv420p fields: "
                                       "faces are restored on whole frames and may comb where they move")
