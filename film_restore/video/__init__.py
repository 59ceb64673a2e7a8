"""Film input and output: probing, frame-accurate reading, native-format blending, chunk encoding, joining.

Archival contract: nothing but face pixels changes. Frame count, every frame's timestamp
(variable frame rate included), resolution, sample aspect ratio, bit depth and chroma
subsampling, colour tags, HDR10 mastering metadata, rotation, the field order and the start timecode
are kept; every other stream of the input (all audio, subtitles, data and attachments where
the output container allows them), the container metadata and chapters are copied packet
for packet, never re-encoded, except text subtitles the output container cannot hold,
which are converted (same texts, same times).

The pipeline uses this package in three steps:

1. scan: ``for index, pts, picture in read_frames(path)`` once over the film (each item a
   :class:`film_restore.records.Frame`), keeping every frame's pts (and thumbnails for
   shot detection);
2. per chunk: ``read_frames(path, first, last, frame_pts=all_pts)`` seeks to the chunk,
   ``picture.rgb()`` feeds face analysis, ``picture.blended(restored_rgb, alpha)`` puts
   the restored faces back in the picture's own pixel format, and a :class:`ChunkWriter`
   encodes the chunk to a chunk file;
3. :func:`join` puts the chunk files' video packets and all the input's other streams
   into the output. Call :func:`check_output` before any work to refuse impossible
   output choices early.

Frame numbers count decoded frames from 0 in presentation order. Timestamps (pts) are
integers in the input video stream's time base (:attr:`VideoInfo.time_base`).

Modules: formats (the error type, pixel formats, opening an input), probe, display (HDR
and rotation metadata), picture (Picture and the colour maths), reading (read_frames),
encoding (choose_encoder, ChunkWriter), streams (where each other stream goes in the
output), output (check_output, join), fields (an interlaced film's field order, its fields
split and woven back).
"""
from film_restore.video.encoding import CODECS, ChunkWriter, EncoderChoice, choose_encoder
from film_restore.video.formats import SUPPORTED_PIX_FMTS, VideoError
from film_restore.video.output import OutputPlan, check_output, join
from film_restore.video.picture import Picture, RGBPicture
from film_restore.video.probe import StreamSummary, VideoInfo, probe
from film_restore.video.reading import read_frames

__all__ = [
    "VideoError", "StreamSummary", "VideoInfo", "probe", "Picture", "RGBPicture", "read_frames",
    "EncoderChoice", "choose_encoder", "OutputPlan", "check_output", "ChunkWriter", "join",
    "SUPPORTED_PIX_FMTS", "CODECS",
]
