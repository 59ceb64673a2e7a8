"""Test films built from the shared real clips (for video, shot detection and pipeline tests).

``make_film`` joins the first frames of several real clips, each resized and centre-cropped
to one size, with hard cuts between clips at known frames, an AAC soundtrack made from the
clips' own audio (silence where a clip has none) and optionally more audio tracks,
subtitles, metadata and chapters. Everything is made with PyAV; nothing is written into
the repository.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np

AUDIO_RATE = 48000


def clip_frames(path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first `count` frames of a clip as uint8 RGB arrays of size (width, height), resized and centre-cropped."""
    width, height = size
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            scale = max(width / image.shape[1], height / image.shape[0])
            resized = cv2.resize(image, (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale))),
                                 interpolation=cv2.INTER_AREA)
            y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
            frames.append(np.ascontiguousarray(resized[y0:y0 + height, x0:x0 + width]))
            if len(frames) == count:
                break
    if len(frames) < count:
        raise ValueError(f"{path} has only {len(frames)} frames, {count} asked")
    return frames


def clip_frame(name: str, number: int = 0) -> np.ndarray:
    """Frame `number` of a shared clip (media/clips/NAME.mp4) as it is, uint8 RGB."""
    from tests.assets import asset

    with av.open(str(asset(f"media/clips/{name}.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == number:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{name} has no frame {number}")


def old_film(name: str = "100") -> np.ndarray:
    """One frame of the shared black-and-white film (media/oldfilm_001/NAME.png), uint8 RGB."""
    from tests.assets import asset

    return np.ascontiguousarray(cv2.imread(str(asset(f"media/oldfilm_001/{name}.png")))[:, :, ::-1])


def largest_face(analyzer, rgb):
    """The widest face the analyzer finds in a real frame."""
    faces = analyzer.analyze(rgb)
    assert faces, "the real frame shows a face"
    return max(faces, key=lambda face: np.linalg.norm(face.landmarks[16] - face.landmarks[0]))


def clip_audio(path, seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 2 x N stereo samples of the clip's first `seconds` at `rate` (silence where it has none)."""
    wanted = int(round(seconds * rate))
    chunks = []
    with av.open(str(path)) as container:
        if container.streams.audio:
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                if sum(c.shape[1] for c in chunks) >= wanted:
                    break
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)
    samples = samples[:, :wanted]
    if samples.shape[1] < wanted:
        samples = np.pad(samples, ((0, 0), (0, wanted - samples.shape[1])))
    return samples.astype(np.float32)


def tone(seconds: float, hz: float = 440.0, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 2 x N stereo sine tone (a second, distinguishable audio track)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave, wave])


def make_film(path, clips: Sequence, frames_per_clip, size: tuple[int, int] = (320, 240), *,
              rate: Fraction | int = 25, codec: str = "libx264", pix_fmt: str = "yuv420p",
              gop: int = 12, with_audio: bool = True, audio_tracks: int = 1,
              subtitles: Sequence[tuple[float, float, str]] | None = None,
              metadata: dict | None = None, chapters: bool = False,
              colour: tuple[int, int, int, int] | None = None, options: dict | None = None) -> list[int]:
    """Write a test film and return the frame indices where a new shot starts (the cuts).

    clips: paths of real clips, one shot each; frames_per_clip: an int or one int per clip.
    size: (width, height) of the film. rate: constant frame rate (time base 1/(rate x 512)
    for integer rates, like FFmpeg's mp4 muxer). codec/pix_fmt: video encoder and format
    (libx264 uses B-frames and a keyframe every `gop` frames, so chunk boundaries fall on
    non-keyframes and reordered frames). with_audio: AAC stereo 48 kHz made from the clips'
    audio; audio_tracks: extra tracks are sine tones with language tags. subtitles: (start s,
    end s, text) subrip entries (Matroska). metadata: container tags. chapters: one chapter
    per clip. colour: (colorspace, color_range, color_primaries, color_trc) tags (FFmpeg
    enum values). The container follows the path's extension (mp4, mkv, mov, ...).
    """
    path = Path(path)
    counts = [frames_per_clip] * len(clips) if isinstance(frames_per_clip, int) else list(frames_per_clip)
    if len(counts) != len(clips):
        raise ValueError("give one frame count per clip")
    rate = Fraction(rate)
    time_base = Fraction(1, int(rate * 512)) if rate.denominator == 1 else 1 / (rate * 512)
    width, height = size
    cuts, starts = [], []
    total = 0
    for count in counts:
        starts.append(total)
        total += count
    cuts = starts[1:]
    seconds = total / rate

    container = av.open(str(path), "w")
    try:
        if metadata:
            container.metadata.update(metadata)
        video = container.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.codec_context.gop_size = gop
        if colour:
            cc = video.codec_context
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = colour
        video_options = {}
        if codec == "libx264":
            video_options = {"preset": "veryfast", "crf": "20", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"}
        elif codec == "libx265":
            video_options = {"preset": "ultrafast", "crf": "20", "x265-params": f"keyint={gop}:min-keyint={gop}:log-level=error"}
        video_options.update(options or {})
        video.codec_context.options = video_options
        audio_streams = []
        if with_audio:
            for track in range(audio_tracks):
                stream = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
                stream.metadata["language"] = ["eng", "fra", "deu", "spa"][track % 4]
                stream.metadata["title"] = "clips' sound" if track == 0 else f"tone {track}"
                audio_streams.append(stream)
        subtitle_stream = None
        if subtitles:
            subtitle_stream = container.add_mux_stream("subrip", time_base=Fraction(1, 1000))
            subtitle_stream.metadata["language"] = "fra"
        if chapters:
            container.set_chapters([
                {"id": number + 1, "start": int(starts[number] / rate * 1000), "end": int((starts[number] + count) / rate * 1000),
                 "time_base": Fraction(1, 1000), "metadata": {"title": f"Shot {number + 1}"}}
                for number, count in enumerate(counts)])

        index = 0
        for clip, count in zip(clips, counts):
            for image in clip_frames(clip, count, size):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                if colour and colour[0] in (1, 5, 6, 9):
                    frame = frame.reformat(format=pix_fmt, dst_colorspace={1: "itu709", 5: "itu601", 6: "smpte170m", 9: "bt2020"}[colour[0]],
                                           dst_color_range=colour[1] or None)
                else:
                    frame = frame.reformat(format=pix_fmt)
                frame.pts = int(round(index / rate / time_base))
                frame.time_base = time_base
                for packet in video.encode(frame):
                    container.mux(packet)
                index += 1
        for packet in video.encode():
            container.mux(packet)

        for track, stream in enumerate(audio_streams):
            if track == 0:
                samples = np.concatenate([clip_audio(clip, count / rate) for clip, count in zip(clips, counts)], axis=1)
            else:
                samples = tone(float(seconds), 330.0 * (track + 1))
            step = 1024
            for start in range(0, samples.shape[1], step):
                part = np.ascontiguousarray(samples[:, start:start + step])
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                frame.time_base = Fraction(1, AUDIO_RATE)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

        for start, end, text in subtitles or ():
            packet = av.Packet(text.encode())
            packet.pts = packet.dts = int(start * 1000)
            packet.duration = int((end - start) * 1000)
            packet.time_base = Fraction(1, 1000)
            packet.stream = subtitle_stream
            container.mux(packet)
    finally:
        container.close()
    return cuts


def write_references(clip, folder, count: int) -> list[Path]:
    """count frames spread over the second half of a clip, saved as PNG reference photos in folder.

    The first half is what test films use, so a cast built from these never saw the test frames.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(clip)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    written = []
    for index in np.linspace(len(frames) // 2, len(frames) - 1, count).astype(int):
        path = folder / f"{index}.png"
        cv2.imwrite(str(path), frames[index][:, :, ::-1])
        written.append(path)
    return written
