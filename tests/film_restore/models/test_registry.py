"""The model registry: fetching on first use from a publisher on 127.0.0.1 (never the internet).

The publisher serves the real compact pack (sha256s published in the registry) and a narrow
seeded DMDNet.pth (no published sha256, like the authors'), counts every request, honours
HTTP Range and can drop a connection mid-way.
"""
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.assets import REPO, TRAINED_MODEL, asset, save_small_checkpoint
from film_restore.models import (CHECKPOINT_ENV, MODELS, MODELS_ENV, ModelsError, Resolved, find_pack, resolve_checkpoint,
                                 resolve_models)
from film_restore.models.__main__ import main as models_main
from film_restore.models.fetch import HOME_ENV, OFFLINE_ENV, Corrupt, Unavailable, ensure, location
from film_restore.models.registry import BASE_URL_ENV

COMPACT = MODELS["compact"]
DMDNET = MODELS["dmdnet"]


class Publisher:
    """Files served from memory on 127.0.0.1; `requests` lists (name, Range header) of every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.drop_after = dict(files), [], {}
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                publisher.requests.append((name, self.headers.get("Range")))
                if name not in publisher.files:
                    self.send_error(404)
                    return
                data = publisher.files[name]
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                cut = publisher.drop_after.pop(name, None)
                self.wfile.write(data[start:cut])  # with a cut, the connection then closes short
                self.close_connection = cut is not None or self.close_connection

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def names(self) -> list[str]:
        return [name for name, _ in self.requests]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The publisher's files: the real compact pack, and a narrow seeded checkpoint as DMDNet.pth."""
    files = {d.name: (asset("models") / d.name).read_bytes() for d in COMPACT.downloads}
    files["DMDNet.pth"] = save_small_checkpoint(tmp_path_factory.mktemp("publisher") / "DMDNet.pth").read_bytes()
    return files


@pytest.fixture
def publisher(published, tmp_path, monkeypatch):
    """A fresh publisher and an empty cache; no model given by flag or environment."""
    server = Publisher(published)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    for variable in (OFFLINE_ENV, CHECKPOINT_ENV, MODELS_ENV):
        monkeypatch.delenv(variable, raising=False)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_first_use_fetches_and_verifies_and_later_uses_the_cache(publisher, published, tmp_path, monkeypatch):
    monkeypatch.setattr("film_restore.models.resolve.INSIGHTFACE_BUFFALO_L", tmp_path / "no-insightface")
    lines = []
    folder = ensure(COMPACT, log=lines.append)
    assert sorted(publisher.names()) == sorted(d.name for d in COMPACT.downloads)
    for download in COMPACT.downloads:
        assert sha256((folder / download.name).read_bytes()) == download.sha256
    assert not list(folder.glob("*.part"))
    assert sum("sha256 verified" in line for line in lines) == len(COMPACT.downloads)
    pack = find_pack(resolve_models("compact").path)
    assert (pack.name, pack.directory) == ("compact", folder)
    with pytest.raises(Unavailable, match="buffalo_l could not be fetched: .*/buffalo_l.zip answered HTTP 404"):
        resolve_models()  # the default pack is buffalo_l, which this publisher does not have
    count = len(publisher.requests)
    assert ensure(COMPACT) == folder and len(publisher.requests) == count


def test_unpublished_checksum_is_recorded_at_first_download_then_checked(publisher, published):
    resolved = resolve_checkpoint()
    assert resolved.source == "cache" and resolved.note is None and resolved.path == location(DMDNET)
    recorded = resolved.path.with_name("DMDNet.pth.sha256").read_text()
    assert recorded == f"{sha256(published['DMDNet.pth'])}  DMDNet.pth\n"  # sha256sum -c format
    assert models_main(["verify", "dmdnet"]) == 0

    damaged = bytearray(resolved.path.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    resolved.path.write_bytes(damaged)
    with pytest.raises(Corrupt) as error:
        resolve_checkpoint()
    message = str(error.value)
    assert sha256(bytes(damaged)) in message and sha256(published["DMDNet.pth"]) in message and "\n" not in message
    assert "python -m film_restore.models fetch dmdnet" in message
    assert models_main(["verify"]) == 1
    assert models_main(["fetch", "dmdnet"]) == 0  # removes the damaged file, fetches it again
    assert publisher.names().count("DMDNet.pth") == 2
    assert resolved.path.read_bytes() == published["DMDNet.pth"]


def test_corrupt_download_is_refused_and_removed(publisher, published):
    download = COMPACT.downloads[0]
    publisher.files[download.name] = published[download.name][:-1] + b"\0"
    with pytest.raises(Corrupt) as error:
        ensure(COMPACT)
    message = str(error.value)
    assert f"sha256 {sha256(publisher.files[download.name])}, expected {download.sha256}" in message
    assert f"{publisher.url}/{download.name}" in message and "\n" not in message
    assert not (location(COMPACT) / download.name).exists()
    assert not list(location(COMPACT).glob("*.part"))


def test_interrupted_download_resumes_with_a_range_request(publisher, published):
    dropped, killed = COMPACT.downloads[0].name, COMPACT.downloads[3].name
    publisher.drop_after[dropped] = 1_000_000  # the connection closes after 1 MB
    folder = location(COMPACT)
    folder.mkdir(parents=True)
    (folder / f"{killed}.part").write_bytes(published[killed][:1_500_000])  # left by a killed run
    lines = []
    ensure(COMPACT, log=lines.append)
    assert [r for r in publisher.requests if r[0] == dropped] == [(dropped, None), (dropped, "bytes=1000000-")]
    assert [r for r in publisher.requests if r[0] == killed] == [(killed, "bytes=1500000-")]
    assert any("dropped at 1000000 of" in line for line in lines)
    for name in (dropped, killed):
        assert (folder / name).read_bytes() == published[name]


def test_offline_never_connects(publisher, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(Unavailable) as error:
        ensure(COMPACT)
    message = str(error.value)
    assert "python -m film_restore.models fetch compact" in message and f"{publisher.url}/scrfd_2.5g.onnx" in message
    assert "\n" not in message
    shipped = resolve_checkpoint()  # the authors' checkpoint cannot come: the shipped model serves
    assert shipped.source == "shipped" and shipped.path == TRAINED_MODEL
    assert "demonstration model" in shipped.note and f"{publisher.url}/DMDNet.pth" in shipped.note
    monkeypatch.delenv(OFFLINE_ENV)
    ensure(COMPACT)
    count = len(publisher.requests)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert ensure(COMPACT) == location(COMPACT)
    assert len(publisher.requests) == count and count == len(COMPACT.downloads)


def test_unreachable_publisher_falls_back_to_the_shipped_checkpoint(publisher, monkeypatch):
    del publisher.files["DMDNet.pth"]
    resolved = resolve_checkpoint()
    assert resolved.source == "shipped" and resolved.path == TRAINED_MODEL
    assert "HTTP 404" in resolved.note and "\n" not in resolved.note
    assert resolved.to_json() == {"path": str(TRAINED_MODEL), "source": "shipped", "note": resolved.note}


def test_flag_then_environment_then_cache(publisher, published, tmp_path, monkeypatch):
    given = tmp_path / "mine.pth"
    given.write_bytes(published["DMDNet.pth"])
    monkeypatch.setenv(CHECKPOINT_ENV, str(TRAINED_MODEL))
    assert (resolve_checkpoint(given).path, resolve_checkpoint(given).source) == (given, "flag")
    assert (resolve_checkpoint().path, resolve_checkpoint().source) == (TRAINED_MODEL, "environment")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(ModelsError, match=f"no checkpoint file at {tmp_path / 'absent.pth'} \\({CHECKPOINT_ENV}\\)"):
        resolve_checkpoint()
    monkeypatch.setenv(MODELS_ENV, "compact")
    assert resolve_models().path == location(COMPACT)
    assert resolve_models(asset("models")).source == "flag"
    # With nothing given, a buffalo_l that insightface unpacked itself is used rather than fetched again
    # (the path is what is tested: stand-in files).
    insightface = tmp_path / "insightface"
    insightface.mkdir()
    for name in MODELS["buffalo_l"].contents:
        (insightface / name).write_bytes(b"stand-in")
    monkeypatch.setattr("film_restore.models.resolve.INSIGHTFACE_BUFFALO_L", insightface)
    monkeypatch.delenv(MODELS_ENV)
    assert resolve_models() == Resolved(insightface, "insightface")
    assert publisher.requests and not any(name == "DMDNet.pth" for name in publisher.names())


def test_zip_pack_is_unpacked_whole_and_its_files_checked(publisher, published, tmp_path):
    # buffalo_l's files are not available here: three real compact models stand in for them,
    # under buffalo_l's names, to exercise the unpacking (a top folder in the zip, as some packs have).
    buffalo_l = MODELS["buffalo_l"]
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for name, source in zip(buffalo_l.contents, ("scrfd_2.5g.onnx", "pfld_68.onnx", "mobilefacenet_128.onnx")):
            packed.writestr(f"buffalo_l/{name}", published[source])
    publisher.files["buffalo_l.zip"] = archive.read_bytes()
    folder = ensure(buffalo_l)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*buffalo_l.contents, "SHA256SUMS"])
    assert not (folder.parent / "buffalo_l.zip").exists() and not (folder.parent / ".buffalo_l.unpacking").exists()
    assert resolve_models().path == folder and len(publisher.requests) == 1
    (folder / "w600k_r50.onnx").write_bytes(b"replaced")
    with pytest.raises(Corrupt, match=f"w600k_r50.onnx has sha256 {sha256(b'replaced')}, expected "
                                      f"{sha256(published['mobilefacenet_128.onnx'])}"):
        ensure(buffalo_l)


def test_run_without_model_flags_fetches_verifies_and_restores(publisher, tmp_path):
    from tests.small_case import make_case

    case = make_case(tmp_path / "case")
    environment = {**os.environ, MODELS_ENV: "compact", "FILM_RESTORE_DASHBOARD": "0"}
    output = tmp_path / "restored.mkv"

    def command(*arguments, **extra):
        return subprocess.run([sys.executable, "-m", *map(str, arguments)], cwd=REPO, env={**environment, **extra},
                              capture_output=True, text=True)

    first = command("film_restore.run", case["film"], "--cast", case["cast"], "-o", output, "--codec", "ffv1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(publisher.names()) == sorted(["DMDNet.pth", *(d.name for d in COMPACT.downloads)])
    report = json.loads(output.with_name("restored.report.json").read_text())
    assert report["checkpoint"] == {"path": str(location(DMDNET)), "source": "cache",
                                    "sha256": hashlib.sha256(location(DMDNET).read_bytes()).hexdigest()}
    assert report["totals"]["faces_restored"] > 0 and output.is_file()

    # Used again (by the cast command: no film to decode), offline: nothing is downloaded.
    count = len(publisher.requests)
    again = command("film_restore.cast", "build", case["cast"], **{OFFLINE_ENV: "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(publisher.requests) == count and "fetching" not in again.stderr

    offline = command("film_restore.run", case["film"], "--cast", case["cast"], "-o", tmp_path / "offline.mkv",
                      **{OFFLINE_ENV: "1", HOME_ENV: str(tmp_path / "empty")})
    error = offline.stderr.strip().splitlines()[-1]
    assert offline.returncode == 4 and not (tmp_path / "offline.mkv").exists()  # a model missing
    assert error.startswith("error: compact is not in the cache") and f"{publisher.url}/scrfd_2.5g.onnx" in error
    assert "note: restoring with the demonstration model" in offline.stderr  # the checkpoint's fallback, one line
    assert len(publisher.requests) == count
