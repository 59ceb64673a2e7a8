"""The work folder stores records exactly: a resumed run composes from what a fresh run holds in memory."""
import numpy as np
import pytest

from film_restore.records import Chunk, ChunkResult, Face, Scan, Shot, Track, TrackedFace
from film_restore.workdir import DamagedResult, WorkFolder


def _face(rng) -> Face:
    embedding = rng.normal(size=128).astype(np.float32)
    return Face((10.123456789, 20.5, 150.25, 190.0), 0.87654321, rng.random((5, 2)) * 100,
                rng.random((68, 2)) * 100, embedding / np.linalg.norm(embedding))


def test_records_come_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    work = WorkFolder(tmp_path, tmp_path / "film.mkv", "ab" * 32)
    work.start(resume=False)
    shots = (Shot(0, 0, 9), Shot(1, 10, 30))
    scan = Scan(tuple(range(0, 3100, 100)), shots, (Chunk(0, shots),))
    work.save_scan("k", scan)
    assert work.load_scan("k") == scan
    assert work.load_scan("other") is None

    track = Track(1, (TrackedFace(10, _face(rng)), TrackedFace(11, _face(rng), interpolated=True)), "Actor", 0.61)
    work.save_tracks(scan.chunks[0], "k", [track])
    [loaded] = work.load_tracks(scan.chunks[0], "k")
    assert (loaded.shot, loaded.actor, loaded.similarity) == (track.shot, track.actor, track.similarity)
    for before, after in zip(track.faces, loaded.faces):
        assert (before.frame, before.interpolated, before.face.box, before.face.score) == \
               (after.frame, after.interpolated, after.face.box, after.face.score)
        for field in ("keypoints", "landmarks", "embedding"):
            assert np.array_equal(getattr(before.face, field), getattr(after.face, field)), field

    result = ChunkResult(0, 31, 2, faces_too_small=1, faces_held_still=1, faces_by_actor={"Actor": 2},
                         tracks=[{"track": 0, "faces": 2, "series": {"frame": [10, 11]}}])
    video = work.chunk_video(scan.chunks[0], "k")
    video.write_bytes(b"video")
    assert work.load_chunk_result(scan.chunks[0], "k") is None  # no totals: not done
    work.save_chunk_result(scan.chunks[0], "k", result)
    assert work.load_chunk_result(scan.chunks[0], "k") == result


def test_damaged_results_are_found_and_removed(tmp_path):
    work = WorkFolder(tmp_path, tmp_path / "film.mkv", "cd" * 32)
    work.start(resume=False)
    chunk = Chunk(0, (Shot(0, 0, 9),))
    video = work.chunk_video(chunk, "k")
    video.write_bytes(b"restored video")
    work.save_chunk_result(chunk, "k", ChunkResult(0, 10, 1))
    video.write_bytes(b"restored")  # cut short, as storage that lost writes in a crash leaves it
    with pytest.raises(DamagedResult, match=f"chunk 0 is damaged: its video {video.name} is 8 bytes, not 14"):
        work.load_chunk_result(chunk, "k")
    assert not video.exists() and work.load_chunk_result(chunk, "k") is None

    work.save_tracks(chunk, "k", [])
    analysis = next((work.folder / "analysis").glob("*.json"))
    analysis.write_text(analysis.read_text()[:-1])
    with pytest.raises(DamagedResult, match="the analysis of chunk 0 .* is damaged"):
        work.load_tracks(chunk, "k")
    assert work.load_tracks(chunk, "k") is None
