"""read_frames: frame-accurate decoding of a film, whole (the scan) or one chunk at a time
(seeking to a keyframe before the chunk, checked against the scan's timestamps)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av

from film_restore.records import Frame
from film_restore.video.formats import VideoError, av_error, open_input, positive_fraction, video_stream
from film_restore.video.picture import Picture


def read_frames(path, first: int = 0, last: int | None = None,
                frame_pts: Sequence[int] | None = None) -> Iterator[Frame]:
    """Yield a :class:`~film_restore.records.Frame` (index, pts, picture) for decoded frames first..last (inclusive).

    Frame indices count decoded frames from 0 in presentation order; last=None reads to the end.
    frame_pts: every frame's pts from an earlier full scan. With it, a range that does not
    start at frame 0 is reached by seeking (to a keyframe at or before the first frame's
    pts, checked, stepping further back if the container lands after it) and decoding
    forward; without it, or when the pts are missing or not strictly increasing, or seeking
    proves unreliable, frames are decoded from the start. Every yielded frame's pts is
    checked against frame_pts.

    Raises VideoError (when iterated) for a decoding error, a corrupt packet, a film that
    ends before ``last`` (or before len(frame_pts) frames, or before the header's frame
    count when reading a whole film without frame_pts), or frames whose pts disagree with
    frame_pts. pts is None only for frames that carry no timestamp (raw streams).
    """
    path = Path(path)
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"read_frames needs 0 <= first <= last, got first={first}, last={last}")
    pts_list = None
    if frame_pts is not None:
        pts_list = [None if value is None else int(value) for value in frame_pts]
        if last is None:
            last = len(pts_list) - 1
        if last >= len(pts_list):
            raise ValueError(f"frame {last} asked, but the scan's frame_pts has {len(pts_list)} frames")
        if first > last:
            return iter(())
    return _read(path, first, last, pts_list)


def _reliable(pts_list) -> bool:
    if pts_list is None or any(value is None for value in pts_list):
        return False
    return all(b > a for a, b in zip(pts_list, pts_list[1:]))


def _read(path, first, last, pts_list):
    if first > 0 and _reliable(pts_list):
        resume = yield from _read_seeking(path, first, last, pts_list)
        if resume is None:
            return
        first = resume
    yield from _read_sequential(path, first, last, pts_list)


def _configure_decoder(stream):
    stream.codec_context.thread_type = "AUTO"


def _packets(container, stream, path):
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise VideoError(f"{path.name}: a corrupt video packet at pts {packet.pts}; the file is damaged or truncated: repair or re-export it")
        yield packet


def _frames(packets, path):
    try:
        for packet in packets:
            for frame in packet.decode():
                if frame.is_corrupt:
                    raise VideoError(f"{path.name}: the frame at pts {frame.pts} decodes corrupt; the file is damaged: repair or re-export it")
                yield frame
    except av.FFmpegError as error:
        raise av_error(path, "decoding", error) from None


def _check_pts(path, index, pts, pts_list):
    if pts_list is not None and index < len(pts_list) and pts != pts_list[index]:
        raise VideoError(f"{path.name}: frame {index} has pts {pts} but the scan found {pts_list[index]}; "
                         "the file is truncated, damaged or changed since the scan: repair it or scan it again")


class _EndTracker:
    """Follows the demuxed packets' end (pts + duration) and whether every packet had a duration."""

    def __init__(self):
        self.end = None
        self.durations = True

    def watch(self, packets):
        for packet in packets:
            if packet.pts is not None and packet.size:
                self.durations = self.durations and bool(packet.duration)
                end = packet.pts + (packet.duration or 0)
                self.end = end if self.end is None else max(self.end, end)
            yield packet


def _read_sequential(path, first, last, pts_list):
    container = open_input(path)
    try:
        stream = video_stream(container, path)
        _configure_decoder(stream)
        header_frames = int(stream.frames or 0)
        index = -1
        tracker = _EndTracker()
        for frame in _frames(tracker.watch(_packets(container, stream, path)), path):
            index += 1
            _check_pts(path, index, frame.pts, pts_list)
            if index < first:
                continue
            yield Frame(index, frame.pts, Picture.from_frame(frame))
            if last is not None and index >= last:
                return
        count = index + 1
        if last is not None:
            raise VideoError(f"{path.name} ended after {count} frames, frame {last} was asked; "
                             "the file is truncated or changed since the scan: repair it or scan it again")
        if header_frames and count < header_frames:
            raise VideoError(f"{path.name} decoded to {count} frames but its header promises {header_frames}; "
                             "the file is truncated or damaged: repair or re-export it")
        if not header_frames and tracker.end is not None:
            _check_duration(path, container, stream, tracker.end, tracker.durations)
    finally:
        container.close()


def _header_seconds(container, stream) -> tuple[float | None, bool]:
    """(the video's end in seconds as the header states it, whether that is the video stream's own)."""
    if stream.duration:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base), True
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds), True
        except ValueError:
            pass
    if container.duration:
        return ((container.start_time or 0) + container.duration) / av.time_base, False
    return None, False


def _check_duration(path, container, stream, end_pts, known_duration):
    """Without a frame count in the header, a film whose frames stop before its stated duration is truncated."""
    stated, own = _header_seconds(container, stream)
    if stated is None:
        return
    rate = positive_fraction(stream.average_rate) or positive_fraction(stream.guessed_rate) or Fraction(25)
    decoded = float(end_pts * stream.time_base)
    if not known_duration:
        decoded += float(1 / rate)
    # The stream's own duration is exact to the container's clock; the container's may include longer audio.
    tolerance = (0.002 + (0 if known_duration else 0.5 / float(rate))) if own else max(0.5, 3 / float(rate))
    if decoded < stated - tolerance:
        raise VideoError(f"{path.name}: its frames stop at {decoded:.3f} s but its header says {stated:.3f} s; "
                         "the file is truncated or damaged: repair or re-export it")


def _read_seeking(path, first, last, pts_list):
    """Yields frames first..last by seeking; returns None when done, or the index to resume sequentially from."""
    container = open_input(path)
    try:
        stream = video_stream(container, path)
        _configure_decoder(stream)
        target = pts_list[first]
        seek_index = first
        packets = None
        for attempt in range(5):
            try:
                container.seek(pts_list[seek_index], stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return first
            packets = _packets(container, stream, path)
            opening = next((p for p in packets if p.size), None)
            if opening is None:
                return first
            if opening.is_keyframe and opening.pts is not None and opening.pts <= target:
                packets = _chain(opening, packets)
                break
            seek_index = max(0, seek_index - 8 * 4 ** attempt)
            if seek_index == 0:
                return first  # as cheap to decode from the start
        else:
            return first
        index = None
        for frame in _frames(packets, path):
            pts = frame.pts
            if index is None:
                if pts is None or pts > target:
                    return first  # the first frame was not decoded after the seek
                if pts < target:
                    continue
                index = first
            else:
                index += 1
            if index >= len(pts_list) or pts != pts_list[index]:
                return index
            yield Frame(index, pts, Picture.from_frame(frame))
            if index >= last:
                return None
        return first if index is None else index + 1
    finally:
        container.close()


def _chain(head, rest):
    yield head
    yield from rest
