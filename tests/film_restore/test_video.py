"""film_restore.video on real footage: frame-accurate reading, native-format blending, chunk encoding and joining."""
import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.assets import asset
from film_restore.records import Frame
from film_restore.video import SUPPORTED_PIX_FMTS, ChunkWriter, Picture, VideoError, check_output, join, probe, read_frames
from film_restore.video import reading
from film_restore.video.formats import PIX_FMTS
from tests.media import make_film

CLIPS = ("retalk_2.mp4", "liveportrait_d0.mp4", "retalk_3.mp4")
BT709 = (1, 1, 1, 1)  # colorspace, color_range (limited), primaries, transfer


def clip(name: str) -> Path:
    return asset(f"media/clips/{name}")


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    """60 frames of three real clips (cuts at 20 and 40), x264 with B-frames, keyframes every 12, AAC."""
    path = tmp_path_factory.mktemp("film") / "film.mp4"
    cuts = make_film(path, [clip(name) for name in CLIPS], 20, (320, 240))
    assert cuts == [20, 40]
    return path


@pytest.fixture(scope="module")
def film10(tmp_path_factory):
    """A 10-bit HEVC Matroska film tagged BT.709, with AAC."""
    path = tmp_path_factory.mktemp("film10") / "film10.mkv"
    make_film(path, [clip("retalk_2.mp4"), clip("retalk_3.mp4")], 10, (256, 192), codec="libx265",
              pix_fmt="yuv420p10le", colour=BT709)
    return path


def decode_independently(path):
    """(pts, Y plane) of every frame, by plain PyAV."""
    with av.open(str(path)) as container:
        return [(frame.pts, frame.to_ndarray()[:frame.height]) for frame in container.decode(video=0)]


def packets(path, kind):
    """(pts, dts, bytes) of every packet of each stream of this kind."""
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == kind]
        out = {s.index: [] for s in streams}
        for packet in container.demux(*streams):
            if packet.size:
                out[packet.stream_index].append((packet.pts, packet.dts, bytes(packet)))
    return list(out.values())


def encode_chunks(source, info, bounds, folder, codec, frame_pts, change=None):
    """Chunk files for frame ranges `bounds`, each picture passed through change(index, picture) first."""
    paths = []
    for number, (first, last) in enumerate(bounds):
        path = Path(folder) / f"chunk{number}.chunk"
        with ChunkWriter(path, info, codec) as writer:
            for index, pts, picture in read_frames(source, first, last, frame_pts=frame_pts):
                writer.write(change(index, picture) if change else picture, pts)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ probe


def test_probe_reads_the_header():
    info = probe(clip("retalk_1.mp4"))
    assert (info.width, info.height, info.pix_fmt, info.bit_depth, info.codec) == (700, 700, "yuv420p", 8, "h264")
    assert info.time_base == Fraction(1, 15360) and info.average_rate == Fraction(1350, 61)
    assert info.frame_count == 135 and info.chroma_subsampling == (1, 1)
    assert [(s.type, s.codec) for s in info.other_streams] == [("audio", "aac")]


def test_probe_and_read_refuse_what_is_not_a_film(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a film\n" * 100)
    for bad in (text, tmp_path / "missing.mp4"):
        with pytest.raises(VideoError) as error:
            probe(bad)
        assert "\n" not in str(error.value)
        with pytest.raises(VideoError):
            list(read_frames(bad))


# --------------------------------------------------------------------------- reading


def test_read_frames_matches_an_independent_decode_and_seeks_exactly(film, monkeypatch):
    scanned = list(read_frames(film))
    reference = decode_independently(film)
    assert len(scanned) == len(reference) == 60
    assert [index for index, _, _ in scanned] == [frame.index for frame in scanned] == list(range(60))
    assert all(isinstance(frame, Frame) for frame in scanned)
    assert [pts for _, pts, _ in scanned] == [pts for pts, _ in reference]
    assert all(np.array_equal(picture.planes[0], y) for (_, _, picture), (_, y) in zip(scanned, reference))
    frame_pts = [pts for _, pts, _ in scanned]

    sequential_starts = []
    original = reading._read_sequential

    def spy(path, first, last, pts_list):
        sequential_starts.append(first)
        return original(path, first, last, pts_list)

    monkeypatch.setattr(reading, "_read_sequential", spy)
    # Keyframes are at 0, 12, 24, 36, 48: chunks start on and off them, at cuts and on B-frames.
    for first, last in [(5, 9), (12, 14), (20, 31), (37, 59), (59, 59), (0, 3)]:
        chunk = list(read_frames(film, first, last, frame_pts=frame_pts))
        assert [index for index, _, _ in chunk] == list(range(first, last + 1))
        for index, pts, picture in chunk:
            assert pts == frame_pts[index] and picture.same_pixels(scanned[index][2])
    assert sequential_starts == [0], "mid-film chunks must be reached by seeking"


def test_read_frames_on_the_variable_rate_clip_seeks_exactly():
    path = clip("retalk_1.mp4")
    scanned = list(read_frames(path))
    frame_pts = [pts for _, pts, _ in scanned]
    assert len(scanned) == 135 and len(set(np.diff(frame_pts))) > 1  # variable frame durations
    for first, last in [(40, 50), (66, 80), (120, 134)]:
        chunk = list(read_frames(path, first, last, frame_pts=frame_pts))
        assert [(i, pts) for i, pts, _ in chunk] == [(i, frame_pts[i]) for i in range(first, last + 1)]
        assert all(picture.same_pixels(scanned[i][2]) for i, _, picture in chunk)


def test_truncated_films_raise_instead_of_giving_fewer_frames(film, film10, tmp_path):
    for source in (film, film10, clip("retalk_1.mp4")):
        data = Path(source).read_bytes()
        cut = tmp_path / f"cut{Path(source).suffix}"
        cut.write_bytes(data[:len(data) // 2])
        with pytest.raises(VideoError):
            list(read_frames(cut))
    # Against the scan's frame count, a film that ends early is an error even mid-chunk.
    frame_pts = [pts for _, pts, _ in read_frames(film10)]
    data = Path(film10).read_bytes()
    cut = tmp_path / "late_cut.mkv"
    cut.write_bytes(data[:int(len(data) * 0.9)])
    with pytest.raises(VideoError, match="truncated"):
        list(read_frames(cut, 5, None, frame_pts=frame_pts))


# ---------------------------------------------------------------------------- blending


def random_picture(pix_fmt, width=37, height=23, seed=0, **tags):
    depth, sx, sy = PIX_FMTS[pix_fmt]
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if depth == 8 else np.uint16
    shapes = [(height, width)] if sx is None else [(height, width)] + [(-(-height >> sy), -(-width >> sx))] * 2
    return Picture([rng.integers(0, 1 << depth, shape).astype(dtype) for shape in shapes], pix_fmt, **tags)


@pytest.mark.parametrize("pix_fmt", SUPPORTED_PIX_FMTS)
def test_blend_round_trip_and_untouched_samples_for_every_format(pix_fmt):
    for tags in ({}, {"colorspace": 9, "color_range": 2}):
        picture = random_picture(pix_fmt, **tags)
        height, width = picture.height, picture.width
        same = picture.blended(picture.rgb_float(), np.ones((height, width), np.float32))
        for before, after in zip(picture.planes, same.planes):
            assert np.abs(before.astype(int) - after.astype(int)).max() <= 1
        assert picture.blended(np.zeros((height, width, 3), np.float32), np.zeros((height, width), np.float32)).same_pixels(picture)
        # Alpha on an odd-placed rectangle: samples whose footprint has no alpha are untouched.
        alpha = np.zeros((height, width), np.float32)
        alpha[5:12, 7:20] = 0.7
        alpha[5, 7] = 0.01
        out = picture.blended(np.full((height, width, 3), 128.0, np.float32), alpha)
        _, sx, sy = PIX_FMTS[pix_fmt]
        for number, (before, after) in enumerate(zip(picture.planes, out.planes)):
            gx, gy = (1, 1) if number == 0 else (1 << sx, 1 << sy)
            footprint = np.zeros(before.shape, bool)
            footprint[5 // gy:-(-12 // gy), 7 // gx:-(-20 // gx)] = True
            assert np.array_equal(before[~footprint], after[~footprint])
            assert (before[footprint] != after[footprint]).mean() > 0.5


@pytest.mark.parametrize("pix_fmt", ["yuv422p10le", "yuv444p", "yuvj420p", "gray10le", "yuv420p12le"])
def test_ffv1_chunks_keep_every_supported_format_exactly(film, pix_fmt, tmp_path):
    info = dataclasses.replace(probe(film), width=37, height=23, pix_fmt=pix_fmt, bit_depth=PIX_FMTS[pix_fmt][0])
    pictures = [random_picture(pix_fmt, seed=seed) for seed in range(3)]
    for picture in pictures:
        assert Picture.from_frame(picture.to_frame()).same_pixels(picture)
    with ChunkWriter(tmp_path / "chunk.nut", info, "ffv1") as writer:
        for number, picture in enumerate(pictures):
            writer.write(picture, 1000 + 512 * number)
    back = list(read_frames(tmp_path / "chunk.nut"))
    clock = probe(tmp_path / "chunk.nut").time_base   # NUT may refine the time base, never round it
    assert [pts * clock for _, pts, _ in back] == [pts * info.time_base for pts in (1000, 1512, 2024)]
    for (_, _, decoded), picture in zip(back, pictures):
        assert decoded.pix_fmt == picture.pix_fmt.replace("yuvj", "yuv")
        assert all(np.array_equal(a, b) for a, b in zip(decoded.planes, picture.planes))


def test_blend_on_real_8_and_10_bit_frames(film10):
    eight = next(read_frames(clip("retalk_1.mp4"), 0, 0))[2]
    ten = next(read_frames(film10, 0, 0))[2]
    assert ten.pix_fmt == "yuv420p10le" and ten.planes[0].dtype == np.uint16 and ten.planes[0].max() > 255
    for picture in (eight, ten):
        height, width = picture.height, picture.width
        rgb = picture.rgb_float()
        assert rgb.dtype == np.float32 and rgb.shape == (height, width, 3)
        back = picture.blended(rgb, np.ones((height, width), np.float32))
        assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(picture.planes, back.planes))
        assert picture.blended(rgb + 50, np.zeros((height, width), np.float32)).same_pixels(picture)
        assert np.abs(picture.rgb().astype(float) - np.clip(rgb, 0, 255)).max() <= 1
        # RGB converted only inside some rectangles (odd edges: half a chroma sample) is the picture's own there.
        rectangles = [np.s_[3:101, 7:60], np.s_[41:height, width - 33:width]]
        partial, whole = picture.rgb_in(rectangles), picture.rgb()
        inside = np.zeros((height, width), bool)
        for rectangle in rectangles:
            inside[rectangle] = True
        assert np.array_equal(partial[inside], whole[inside]) and not partial[~inside].any()
    # 10-bit precision survives rgb_float: the codes come back exactly, not in steps of 4.
    assert np.array_equal(ten.blended(ten.rgb_float(), np.ones(ten.planes[0].shape, np.float32)).planes[0], ten.planes[0])


# ------------------------------------------------------------------ chunks and join


def test_variable_rate_clip_x264_chunks_join_keep_pts_and_audio(tmp_path):
    source = clip("retalk_1.mp4")
    info = probe(source)
    frame_pts = [pts for _, pts, _ in read_frames(source)]
    bounds = [(0, 40), (41, 99), (100, 134)]
    chunks = encode_chunks(source, info, bounds, tmp_path, "auto", frame_pts)
    output = tmp_path / "restored.mp4"
    plan = join(chunks, source, output, info, frame_pts=frame_pts)
    assert plan.encoder.encoder == "libx264" and not plan.warnings
    result = probe(output)
    assert (result.width, result.height, result.pix_fmt, result.codec, result.time_base) == (700, 700, "yuv420p", "h264", info.time_base)
    assert [pts for pts, _ in decode_independently(output)] == frame_pts
    (video_packets,) = packets(output, "video")
    assert [pts for pts, _, _ in video_packets] == frame_pts                           # no reordering
    assert all(b[1] > a[1] for a, b in zip(video_packets, video_packets[1:]))           # DTS monotonic across chunks
    assert packets(output, "audio") == packets(source, "audio")                         # bytes, pts and dts
    with av.open(str(source)) as a, av.open(str(output)) as b:
        assert b.metadata["title"] == a.metadata["title"] and b.metadata["comment"] == a.metadata["comment"]


def test_variable_rate_clip_ffv1_chunks_are_lossless_and_blending_stays_inside(tmp_path):
    source = clip("retalk_1.mp4")
    info = probe(source)
    scanned = list(read_frames(source))
    frame_pts = [pts for _, pts, _ in scanned]
    rows, columns = slice(301, 420), slice(201, 350)     # odd start: chroma footprints widen it by one
    alpha = np.zeros((700, 700), np.float32)
    alpha[rows, columns] = 0.8
    restored = np.empty((700, 700, 3), np.float32)
    restored[:] = (230.0, 90.0, 40.0)

    def change(index, picture):
        return picture.blended(restored, alpha) if 50 <= index <= 60 else picture

    chunks = encode_chunks(source, info, [(0, 44), (45, 89), (90, 134)], tmp_path, "ffv1", frame_pts, change)
    output = tmp_path / "restored.mkv"
    plan = join(chunks, source, output, info, frame_pts=frame_pts)
    assert any("rounded" in warning for warning in plan.warnings)  # Matroska keeps milliseconds
    out = list(read_frames(output))
    assert len(out) == 135 and out[0][2].pix_fmt == "yuv420p"
    # Matroska's millisecond clock, shifted so that the AAC priming packet is not negative.
    shift_ms = 23  # 1024 / 44100 s
    assert [pts for _, pts, _ in out] == [int(pts * info.time_base * 1000 + Fraction(1, 2)) + shift_ms for pts in frame_pts]
    for index, (_, _, picture) in enumerate(out):
        original = scanned[index][2]
        if not 50 <= index <= 60:
            assert picture.same_pixels(original)
            continue
        for number, (before, after) in enumerate(zip(original.planes, picture.planes)):
            inside = np.zeros(before.shape, bool)
            top, bottom, left, right = (150, 210, 100, 175) if number else (301, 420, 201, 350)
            inside[top:bottom, left:right] = True
            assert np.array_equal(before[~inside], after[~inside])
            assert (before[inside] != after[inside]).mean() > 0.9
    assert [data for _, _, data in packets(output, "audio")[0]] == [data for _, _, data in packets(source, "audio")[0]]


def test_ten_bit_film_keeps_depth_tags_and_pts(film10, tmp_path):
    info = probe(film10)
    assert (info.pix_fmt, info.bit_depth, info.colorspace, info.color_range, info.color_primaries, info.color_trc) == ("yuv420p10le", 10) + BT709
    scanned = list(read_frames(film10))
    frame_pts = [pts for _, pts, _ in scanned]
    for codec in ("ffv1", "auto", "x264"):
        folder = tmp_path / codec
        folder.mkdir()
        chunks = encode_chunks(film10, info, [(0, 7), (8, 19)], folder, codec, frame_pts)
        output = folder / "restored.mkv"
        join(chunks, film10, output, info, frame_pts=frame_pts)
        result = probe(output)
        assert result.codec == {"ffv1": "ffv1", "auto": "hevc", "x264": "h264"}[codec]
        assert (result.pix_fmt, result.colorspace, result.color_range, result.color_primaries, result.color_trc) == ("yuv420p10le",) + BT709
        out = list(read_frames(output))
        assert [pts for _, pts, _ in out] == frame_pts
        if codec == "auto":  # the same chunks into mp4: HEVC tagged hvc1 (QuickTime), same timestamps
            join(chunks, film10, folder / "restored.mp4", info, frame_pts=frame_pts)
            with av.open(str(folder / "restored.mp4")) as container:
                assert container.streams.video[0].codec_context.codec_tag == "hvc1"
            clock = probe(folder / "restored.mp4").time_base   # mp4 refines a 1/1000 clock to 1/16000
            assert [pts * clock for _, pts, _ in read_frames(folder / "restored.mp4")] == [pts * info.time_base for pts in frame_pts]
        if codec == "ffv1":
            assert all(a[2].same_pixels(b[2]) for a, b in zip(out, scanned))
        else:  # high quality: within a few 10-bit codes on average
            assert all(np.abs(a[2].planes[0].astype(int) - b[2].planes[0].astype(int)).mean() < 6 for a, b in zip(out, scanned))


@pytest.mark.parametrize("kind", ["full-range h264", "prores"])
def test_full_range_and_prores_films_keep_their_format(kind, tmp_path):
    source = tmp_path / ("film.mp4" if kind == "full-range h264" else "film.mov")
    options = dict(pix_fmt="yuvj420p", colour=(5, 2, 5, 6)) if kind == "full-range h264" else dict(codec="prores_ks", pix_fmt="yuv422p10le")
    make_film(source, [clip("retalk_2.mp4")], 8, (160, 120), **options)
    info = probe(source)
    scanned = list(read_frames(source))
    frame_pts = [pts for _, pts, _ in scanned]
    assert scanned[0][2].full_range == (kind == "full-range h264")
    for codec, suffix in (("auto", source.suffix), ("ffv1", ".mkv")):
        chunks = encode_chunks(source, info, [(0, 3), (4, 7)], tmp_path, codec, frame_pts)
        output = tmp_path / f"restored_{codec}{suffix}"
        join(chunks, source, output, info, frame_pts=frame_pts)
        result = probe(output)
        assert result.codec == ("ffv1" if codec == "ffv1" else info.codec)
        assert result.pix_fmt.replace("yuvj", "yuv") == info.pix_fmt.replace("yuvj", "yuv")
        assert (result.colorspace, result.color_range, result.color_primaries, result.color_trc) == \
               (info.colorspace, info.color_range, info.color_primaries, info.color_trc)
        out = list(read_frames(output))
        if codec == "auto":
            assert [pts for _, pts, _ in out] == frame_pts
        else:
            assert all(a[2].same_pixels(b[2]) for a, b in zip(out, scanned)) and len(out) == 8


def test_all_other_streams_metadata_and_chapters_are_copied(tmp_path):
    source = tmp_path / "film.mkv"
    make_film(source, [clip("retalk_2.mp4"), clip("retalk_3.mp4")], 12, (192, 144), audio_tracks=2,
              subtitles=[(0.1, 0.4, "Bonjour"), (0.5, 0.9, "Au revoir")], metadata={"title": "Essai", "comment": "archive"},
              chapters=True)
    info = probe(source)
    assert [s.type for s in info.other_streams] == ["audio", "audio", "subtitle"]
    frame_pts = [pts for _, pts, _ in read_frames(source)]
    chunks = encode_chunks(source, info, [(0, 11), (12, 23)], tmp_path, "auto", frame_pts)
    output = tmp_path / "restored.mkv"
    join(chunks, source, output, info, frame_pts=frame_pts)
    with av.open(str(source)) as a, av.open(str(output)) as b:
        assert b.metadata["title"] == "Essai" and b.metadata.get("COMMENT", b.metadata.get("comment")) == "archive"
        assert b.chapters() == a.chapters() and len(b.chapters()) == 2
        assert [(s.type, s.codec_context.name, s.metadata.get("language"), s.metadata.get("title")) for s in b.streams] == \
               [(s.type, s.codec_context.name, s.metadata.get("language"), s.metadata.get("title")) for s in a.streams]
    assert packets(output, "audio") == packets(source, "audio")
    assert packets(output, "subtitle") == packets(source, "subtitle")
    plan = check_output(tmp_path / "restored.mp4", info)  # SubRip cannot go into mp4: converted to mov_text
    assert [route.convert_to for route in plan.routes] == [None, None, "mov_text"]
    assert [pts for _, pts, _ in read_frames(output)] == frame_pts


# ------------------------------------------------------------------------------ errors


def test_impossible_outputs_are_refused_early(film, film10, tmp_path):
    info = probe(film)
    with pytest.raises(VideoError, match=r"\.mkv"):
        check_output(tmp_path / "out.mp4", info, "ffv1")
    with pytest.raises(VideoError, match="input"):
        check_output(film, info)
    with pytest.raises(VideoError, match="ffv1"):
        check_output(tmp_path / "out.mov", info, "prores")   # ProRes cannot keep 8-bit 4:2:0
    with pytest.raises(VideoError):
        check_output(tmp_path / "out.xyz123", info)
    plan = check_output(tmp_path / "out.mp4", info)
    assert plan.format == "mp4" and plan.encoder.encoder == "libx264" and plan.copied_streams == (1,)
    assert check_output(tmp_path / "out.mkv", probe(film10)).encoder.pix_fmt == "yuv420p10le"


def test_failures_leave_no_output_file(film, tmp_path):
    info = probe(film)
    frame_pts = [pts for _, pts, _ in read_frames(film)]
    with pytest.raises(RuntimeError):
        with ChunkWriter(tmp_path / "broken.chunk", info, "ffv1") as writer:
            for index, pts, picture in read_frames(film, 0, 3, frame_pts=frame_pts):
                writer.write(picture, pts)
            raise RuntimeError("the restorer failed")
    assert list(tmp_path.iterdir()) == []
    chunks = encode_chunks(film, info, [(0, 29), (30, 59)], tmp_path, "ffv1", frame_pts)
    output = tmp_path / "restored.mkv"
    for bad in ([chunks[0]], [chunks[1], chunks[0]], [chunks[0], tmp_path / "missing.chunk"]):
        with pytest.raises(VideoError):
            join(bad, film, output, info, frame_pts=frame_pts)
        assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk0.chunk", "chunk1.chunk"]
    join(chunks, film, output, info, frame_pts=frame_pts)
    assert len(list(read_frames(output))) == 60
