"""Archive masters through chunk encoding and join: every stream, the timecode, chapters and tags kept, stream by stream."""
import re
import resource
import signal

import av
import pytest

from film_restore.video.display import display_metadata
from film_restore.video import ChunkWriter, VideoError, check_output, join, probe, read_frames
from tests.masters import CHAPTERS, CUES, TIMECODE, chapters, cues, make_master, packets

EXPECTED_CUES = [(start / 1000, end / 1000, text) for start, end, text in CUES]
EXPECTED_CHAPTERS = [(start / 1000, title) for start, _, title in CHAPTERS]


def restore(master, output, folder, codec="auto"):
    """Encode the master's frames as two chunks and join them into output; the join's plan."""
    info = probe(master)
    frames = list(read_frames(master))
    middle = len(frames) // 2
    chunk_paths = []
    for number, part in enumerate((frames[:middle], frames[middle:])):
        chunk_paths.append(folder / f"chunk{number}.chunk")
        with ChunkWriter(chunk_paths[-1], info, codec) as writer:
            for frame in part:
                writer.write(frame.picture, frame.pts)
    return join(chunk_paths, master, output, info, frame_pts=[frame.pts for frame in frames])


def streams(path):
    with av.open(str(path)) as container:
        return [(stream.type, stream.codec_context.name if stream.codec_context else None) for stream in container.streams]


def seconds(path):
    """Every frame's presentation time in seconds."""
    time_base = probe(path).time_base
    return [frame.pts * time_base for frame in read_frames(path)]


def timecode(path):
    with av.open(str(path)) as container:
        places = [container.streams.video[0].metadata] + [stream.metadata for stream in container.streams.data]
        return {value for metadata in places + [container.metadata] for key, value in metadata.items() if key.lower() == "timecode"}


@pytest.fixture(scope="module")
def mov_master(tmp_path_factory):
    return make_master(tmp_path_factory.mktemp("mov") / "master.mov")


def test_mov_master_with_timecode_keeps_every_stream_in_mov(mov_master, tmp_path):
    assert streams(mov_master)[:4] == [("video", "prores"), ("audio", "pcm_s24le"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert TIMECODE in timecode(mov_master) and any(stream[0] == "data" for stream in streams(mov_master))  # the tmcd track
    output = tmp_path / "restored.mov"
    plan = restore(mov_master, output, tmp_path)
    assert plan.timecode == TIMECODE and plan.copied_streams == (1, 2, 3) and not plan.dropped_streams
    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "prores" and video.codec_context.pix_fmt == "yuv422p10le"
        assert video.metadata["timecode"] == TIMECODE
        tmcd = [stream for stream in container.streams.data if "timecode" in stream.metadata]
        assert len(tmcd) == 1 and tmcd[0].metadata["timecode"] == TIMECODE  # one tmcd track, written by the muxer
        assert container.metadata["title"] == "Archive master"
    for index in (1, 2):  # PCM 24-bit and AAC byte for byte
        assert packets(output, index) == packets(mov_master, index)
    assert cues(output) == cues(mov_master) == EXPECTED_CUES
    assert chapters(output) == chapters(mov_master) == EXPECTED_CHAPTERS
    assert [frame.pts for frame in read_frames(output)] == [frame.pts for frame in read_frames(mov_master)]


def test_mov_master_to_mkv_converts_subtitles_and_keeps_the_timecode_tag(mov_master, tmp_path):
    output = tmp_path / "restored.mkv"
    plan = check_output(output, probe(mov_master))
    assert [(route.index, route.convert_to) for route in plan.routes] == [(1, None), (2, None), (3, "subrip")]
    assert any("converted to subrip" in warning for warning in plan.warnings)
    restore(mov_master, output, tmp_path)
    assert [kind for kind in streams(output)] == [("video", "prores"), ("audio", "pcm_s24le"), ("audio", "aac"), ("subtitle", "srt")]
    assert timecode(output) == {TIMECODE}
    for index in (1, 2):
        assert packets(output, index) == packets(mov_master, index)
    assert cues(output) == EXPECTED_CUES
    assert chapters(output) == EXPECTED_CHAPTERS
    with av.open(str(output)) as container:
        assert container.metadata["title"] == "Archive master"
        assert container.streams.subtitles[0].metadata["language"] == "eng"


def test_subrip_subtitles_become_mov_text_in_mov(tmp_path):
    master = make_master(tmp_path / "master.mkv", container="matroska", subtitles="subrip", audio=(("pcm_s24le", "stereo"),))
    output = tmp_path / "restored.mov"
    plan = restore(master, output, tmp_path)
    assert [(route.codec, route.convert_to) for route in plan.routes] == [("pcm_s24le", None), ("srt", "mov_text")]
    assert streams(output)[:3] == [("video", "prores"), ("audio", "pcm_s24le"), ("subtitle", "mov_text")]
    assert cues(output) == cues(master) == EXPECTED_CUES
    assert TIMECODE in timecode(output) and chapters(output) == EXPECTED_CHAPTERS
    assert packets(output, 1) == packets(master, 1)


def test_ass_subtitles_become_mov_text_in_mp4_and_pgs_is_refused_naming_mkv(tmp_path):
    master = make_master(tmp_path / "master.mkv", container="matroska", encoder="libx264", pix_fmt="yuv420p",
                         audio=(("aac", "stereo"),), subtitles="ass", pgs=True, frames=10)
    info = probe(master)
    message = "subtitle stream #3 (pgssub) cannot go into .mp4 ('mp4' format does not support 'pgssub' codec); .mkv takes it: name the output .mkv"
    with pytest.raises(VideoError, match=re.escape(message)):
        check_output(tmp_path / "restored.mp4", info)
    restored = tmp_path / "restored.mkv"  # the same master into .mkv: everything copied, PGS byte for byte
    plan = restore(master, restored, tmp_path)
    assert plan.copied_streams == (1, 2, 3) and packets(restored, 3) == packets(master, 3) and cues(restored) == EXPECTED_CUES
    without_pgs = make_master(tmp_path / "text only.mkv", container="matroska", encoder="libx264", pix_fmt="yuv420p",
                              audio=(("aac", "stereo"),), subtitles="ass", frames=10)
    output = tmp_path / "restored.mp4"
    plan = restore(without_pgs, output, tmp_path)
    assert [(route.codec, route.convert_to) for route in plan.routes] == [("aac", None), ("ssa", "mov_text")]
    assert streams(output)[:3] == [("video", "h264"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert cues(output) == EXPECTED_CUES and packets(output, 1) == packets(without_pgs, 1)


def test_attachments_kept_in_mkv_and_listed_when_a_container_drops_them(tmp_path):
    master = make_master(tmp_path / "master.mkv", container="matroska", audio=(("pcm_s24le", "mono"),), subtitles="ass",
                         attachment=("font.ttf", b"\x00\x01\x00\x00 a font"))
    restored = restore(master, tmp_path / "restored.mkv", tmp_path)
    assert restored.copied_streams == (1, 2, 3) and not restored.dropped_streams
    with av.open(str(tmp_path / "restored.mkv")) as container:
        attachment = container.streams[3]
        assert (attachment.type, attachment.name, attachment.data) == ("attachment", "font.ttf", b"\x00\x01\x00\x00 a font")
    plan = check_output(tmp_path / "restored.mov", probe(master))
    assert plan.dropped_streams == ((3, "attachment stream #3 (font.ttf) is left out: mov cannot hold it "
                                        "(Invalid argument: '<none>' returned 22); .mkv keeps it"),)
    assert plan.dropped_streams[0][1] in plan.warnings and plan.timecode == TIMECODE


@pytest.fixture(scope="module")
def mxf_master(tmp_path_factory):
    """OP1a MXF: DNxHR HQX 10-bit (DNxHD's family; DNxHD proper needs 720 lines or more), 4 mono 24-bit PCM tracks, timecode."""
    return make_master(tmp_path_factory.mktemp("mxf") / "master.mxf", container="mxf", encoder="dnxhd", pix_fmt="yuv422p10le",
                       options={"profile": "dnxhr_hqx"}, size=(256, 144), frames=10, audio=(("pcm_s24le", "mono"),) * 4,
                       subtitles=None, chapters=False)


@pytest.mark.parametrize("suffix, codec", [(".mxf", "auto"), (".mov", "auto"), (".mxf", "ffv1")])
def test_mxf_master_keeps_every_pcm_track_and_the_timecode(mxf_master, suffix, codec, tmp_path):
    assert streams(mxf_master) == [("video", "dnxhd")] + [("audio", "pcm_s24le")] * 4 and timecode(mxf_master) == {TIMECODE}
    output = tmp_path / f"restored{suffix}"
    plan = restore(mxf_master, output, tmp_path, codec)
    assert plan.encoder.encoder == ("dnxhd" if codec == "auto" else codec)
    assert plan.copied_streams == (1, 2, 3, 4) and plan.timecode == TIMECODE
    assert streams(output)[:5] == [("video", plan.encoder.encoder)] + streams(mxf_master)[1:] and timecode(output) == {TIMECODE}
    for index in range(1, 5):  # PCM samples byte for byte (packet sizes are the containers' own)
        assert b"".join(packets(output, index)) == b"".join(packets(mxf_master, index))
    assert probe(output).pix_fmt == "yuv422p10le"
    assert seconds(output) == seconds(mxf_master)  # MOV keeps its own clock (1/12800 for 25 fps)
    if codec == "ffv1":  # lossless: the decoded master, sample for sample
        assert all(a.picture.same_pixels(b.picture) for a, b in zip(read_frames(output), read_frames(mxf_master)))


def test_mpeg2_mxf_master_becomes_lossless_ffv1_in_mxf(tmp_path):
    master = make_master(tmp_path / "xdcam.mxf", container="mxf", encoder="mpeg2video", pix_fmt="yuv422p", size=(256, 144),
                         frames=8, options={"b": "10000000"}, audio=(("pcm_s24le", "mono"),) * 2, subtitles=None, chapters=False)
    output = tmp_path / "restored.mxf"
    assert check_output(output, probe(master)).warnings == ("no high-quality encoder of the mpeg2video family here; using lossless ffv1",)
    restore(master, output, tmp_path)
    assert streams(output) == [("video", "ffv1"), ("audio", "pcm_s24le"), ("audio", "pcm_s24le")] and timecode(output) == {TIMECODE}
    assert all(a.picture.same_pixels(b.picture) for a, b in zip(read_frames(output), read_frames(master)))


def test_mxf_refusals_name_the_stream_and_the_containers_that_take_it(mxf_master, mov_master, tmp_path):
    with pytest.raises(VideoError, match=re.escape("dnxhd video cannot go into .mkv (matroska takes ffv1, h264, hevc, prores): "
                                                   "name the output .mov or .mxf, or choose another codec")):
        check_output(tmp_path / "restored.mkv", probe(mxf_master))
    assert check_output(tmp_path / "restored.mkv", probe(mxf_master), "ffv1").copied_streams == (1, 2, 3, 4)
    with pytest.raises(VideoError, match=re.escape("audio stream #2 (aac) cannot go into .mxf (MXF takes 48 kHz PCM audio and "
                                                   "no other audio); .mov, .mp4, .mkv take it: name the output .mov")):
        check_output(tmp_path / "restored.mxf", probe(mov_master))


HDR10_PARAMETERS = "log-level=error:master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400"
BT2020 = {"color_primaries": 9, "color_trc": 16, "colorspace": 9, "color_range": 1}  # BT.2020, PQ, BT.2020 NCL, limited


def first_frame(path):
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        context = container.streams.video[0].codec_context
        tags = {name: int(getattr(context, name)) for name in BT2020}
        return tags, display_metadata(frame), frame.rotation


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_hdr10_hevc_keeps_colour_mastering_display_light_level_and_rotation(suffix, tmp_path):
    master = make_master(tmp_path / "hdr10.mp4", container="mp4", encoder="libx265", pix_fmt="yuv420p10le", frames=10,
                         options={"x265-params": HDR10_PARAMETERS}, colour=BT2020, rotation=90,
                         audio=(("aac", "stereo"),), subtitles=None, timecode=None, chapters=False)
    tags, display, rotation = first_frame(master)
    assert tags == BT2020 and rotation == 90
    assert display.mastering_display == ((34000, 16000), (13250, 34500), (7500, 3000), (15635, 16450), (10000000, 1))
    assert display.content_light == (1000, 400) and probe(master).display == display
    output = tmp_path / f"restored{suffix}"
    plan = restore(master, output, tmp_path)
    assert plan.encoder.encoder == "libx265" and not plan.encoder.note
    assert first_frame(output) == (tags, display, rotation)
    assert probe(output).pix_fmt == "yuv420p10le" and packets(output, 1) == packets(master, 1)


def test_hlg_hevc_keeps_its_transfer_and_primaries(tmp_path):
    hlg = dict(BT2020, color_trc=18)  # ARIB STD-B67
    master = make_master(tmp_path / "hlg.mov", encoder="libx265", pix_fmt="yuv420p10le", frames=6, colour=hlg,
                         options={"x265-params": "log-level=error"}, audio=(("pcm_s24le", "stereo"),), subtitles=None)
    restore(master, tmp_path / "restored.mov", tmp_path)
    assert first_frame(tmp_path / "restored.mov")[0] == first_frame(master)[0] == hlg
    assert timecode(tmp_path / "restored.mov") == {TIMECODE}


def test_hdr_film_to_prores_says_the_mastering_metadata_is_not_kept(tmp_path):
    master = make_master(tmp_path / "hdr10.mp4", container="mp4", encoder="libx265", pix_fmt="yuv422p10le", frames=4,
                         options={"x265-params": HDR10_PARAMETERS}, colour=BT2020, audio=(), subtitles=None, timecode=None,
                         chapters=False)
    plan = check_output(tmp_path / "restored.mov", probe(master), "prores")
    assert plan.warnings == ("prores_ks cannot carry the film's HDR mastering display and light level metadata "
                             "(colour tags kept): use codec x265 to keep them",)


def test_output_failures_name_the_output_step_not_the_input(mov_master, tmp_path):
    with pytest.raises(VideoError, match="the output folder .* does not exist: create it"):
        check_output(tmp_path / "missing" / "restored.mov", probe(mov_master))
    # A disk that fills up while the output is written (a file size limit on this process).
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, limits[1]))
    try:
        with pytest.raises(VideoError) as refused:
            restore(mov_master, tmp_path / "restored.mov", tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    message = str(refused.value)
    assert message.startswith("writing the output restored.mov failed while ") and "File too large" in message
    assert "the input is fine: check that the output folder exists, is writable and has room" in message
    assert "damaged" not in message and "\n" not in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chunk0.chunk", "chunk1.chunk"]  # no partial output
