"""Registry models fetched into a cache folder on first use: resumable, atomic, checked.

The cache is $FILM_RESTORE_HOME/models (default ~/.cache/film_restore/models): a single-file
model is a file there (DMDNet.pth), a pack a folder (buffalo_l/, compact/). A download goes
to NAME.part, resumes with an HTTP Range request when the connection drops (or when a killed
run left the .part), is checked against its sha256, and only then is renamed into place; a zip
is unpacked beside its folder and renamed onto it whole. A sha256 the registry does not give
is recorded at the first download (DMDNet.pth.sha256 beside a file, SHA256SUMS inside a
folder, both in `sha256sum -c` format) and checked on every later use.
FILM_RESTORE_OFFLINE=1 never touches the network. HTTP is the standard library's, so a bare
node needs nothing else.
"""
from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import shutil
import sys
import zipfile
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from dmdnet.files import atomic_path, file_sha256
from film_restore.models.registry import Download, Model, ModelsError

HOME_ENV = "FILM_RESTORE_HOME"
DEFAULT_HOME = Path("~/.cache/film_restore")
OFFLINE_ENV = "FILM_RESTORE_OFFLINE"
FOLDER_SUMS = "SHA256SUMS"
_TIMEOUT_S = 30
_ATTEMPTS = 5
_BLOCK = 1 << 20


class Unavailable(ModelsError):
    """A model that could not be fetched (offline, unreachable, refused): callers may fall back."""


class Corrupt(ModelsError):
    """A cached or downloaded file whose sha256 is not the expected one."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def say(message: str) -> None:
    print(f"models: {message}", file=sys.stderr, flush=True)


def cache_folder() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().absolute() / "models"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def location(model: Model) -> Path:
    """Where the model is in the cache: its file, or its folder."""
    return cache_folder() / (model.downloads[0].name if model.single_file else model.name)


def _file_path(model: Model, name: str) -> Path:
    return location(model) if model.single_file else location(model) / name


def _sums_path(model: Model) -> Path:
    target = location(model)
    return target.with_name(f"{target.name}.sha256") if model.single_file else target / FOLDER_SUMS


def fetched(model: Model) -> bool:
    return all(_file_path(model, name).is_file() for name in model.files)


def manual(model: Model) -> str:
    """How to do without the fetch: the by-hand alternative, in words."""
    url = model.downloads[0].url
    if model.single_file:
        return f"or download {url} yourself and pass --checkpoint FILE"
    if model.zipped:
        return f"or download {url} yourself, unzip it into a folder and pass --models DIR"
    return (f"or download its {len(model.downloads)} files ({url} ...; `python -m film_restore.models list` "
            f"names them) into a folder and pass --models DIR")


def ensure(model: Model, log=say, repair: bool = False) -> Path:
    """The model's path in the cache, fetched first if absent, checked against its sha256s.

    A corrupt cached file is an error, or with repair (the fetch command) removed and fetched again.
    """
    with _locked(model):
        if fetched(model):
            try:
                check(model, log)
                return location(model)
            except Corrupt as error:
                if not repair:
                    raise
                log(f"{error}; fetching it again")
                _remove(model, error.path)
        if offline():
            raise Unavailable(
                f"{model.name} is not in the cache ({location(model)}) and {OFFLINE_ENV}=1 forbids downloading it: "
                f"run `python -m film_restore.models fetch {model.name}` where the network is reachable and copy "
                f"{cache_folder()} here, {manual(model)}"
            )
        try:
            if model.zipped:
                _fetch_zip(model, log)
            else:
                _fetch_files(model, log)
        except Unavailable as error:
            raise Unavailable(f"{model.name} could not be fetched: {error}; {manual(model)}") from None
        return location(model)


def check(model: Model, log=say) -> None:
    """Checks every cached file of the model against its sha256 (the registry's, else the recorded one).

    A file with neither gets its sha256 recorded now. Raises Corrupt naming both values.
    """
    sums_path = _sums_path(model)
    recorded = _read_sums(sums_path)
    known = {d.name: d.sha256 for d in model.downloads if d.sha256}
    new = {}
    for name in dict.fromkeys([*model.files, *recorded]):
        path = _file_path(model, name)
        if not path.is_file():
            continue
        expected = known.get(name) or recorded.get(name)
        actual = file_sha256(path)
        if expected is None:
            new[name] = actual
        elif actual != expected:
            whence = "in the registry" if name in known else f"recorded at its first download in {sums_path}"
            raise Corrupt(
                f"{path} has sha256 {actual}, expected {expected} ({whence}): it is corrupt or was replaced; "
                f"fetch it again with `python -m film_restore.models fetch {model.name}`", path)
    if new:
        _write_sums(sums_path, {**recorded, **new})
        log(f"{model.name}: sha256 of {', '.join(new)} recorded in {sums_path} (none is published); later uses check it")


def _remove(model: Model, path: Path) -> None:
    if model.zipped:
        shutil.rmtree(location(model), ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fetch_files(model: Model, log) -> None:
    sums_path = _sums_path(model)
    for download in model.downloads:
        final = _file_path(model, download.name)
        if final.is_file():
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        recorded = _read_sums(sums_path)
        expected = download.sha256 or recorded.get(download.name)
        actual = _download(download, final, expected, log)
        if expected is None:
            _write_sums(sums_path, {**recorded, download.name: actual})
            log(f"{download.name}: no sha256 is published; recorded {actual} in {sums_path}, later uses check it")
        else:
            log(f"{download.name}: sha256 verified, in {final}")


def _fetch_zip(model: Model, log) -> None:
    download = model.downloads[0]
    archive = cache_folder() / download.name
    _download(download, archive, download.sha256, log)
    target = location(model)
    unpacking = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(unpacking, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as packed:
            packed.extractall(unpacking)  # extractall keeps every member inside `unpacking`
    except zipfile.BadZipFile as error:
        archive.unlink()
        shutil.rmtree(unpacking, ignore_errors=True)
        raise ModelsError(f"{download.url} is not a valid zip ({error}): it was removed; try again, {manual(model)}") from None
    entries = list(unpacking.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacking
    missing = [name for name in model.contents if not (root / name).is_file()]
    if missing:
        shutil.rmtree(unpacking, ignore_errors=True)
        raise ModelsError(f"{download.url} holds no {', '.join(missing)}: is it the {model.name} pack? {manual(model)}")
    sums = {path.relative_to(root).as_posix(): file_sha256(path) for path in sorted(root.rglob("*")) if path.is_file()}
    _write_sums(root / FOLDER_SUMS, sums)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete folder left by hand
    os.replace(root, target)
    shutil.rmtree(unpacking, ignore_errors=True)
    archive.unlink()
    log(f"{model.name}: unpacked into {target}; no sha256 is published, so those of its {len(sums)} files are "
        f"recorded in {target / FOLDER_SUMS} and later uses check them")


def _download(download: Download, final: Path, expected: str | None, log) -> str:
    """Downloads into FINAL.part (resuming it), checks it and renames it onto `final`; returns its sha256."""
    url = download.url
    part = final.with_name(f"{final.name}.part")
    log(f"fetching {url} -> {final}" + (f" ({download.size / 1e6:.1f} MB)" if download.size else ""))
    for _ in range(_ATTEMPTS):
        done, total = _transfer(url, part, log)
        if total is None or done >= total:
            break
        log(f"{download.name}: the connection dropped at {done} of {total} bytes; resuming")
    else:
        raise Unavailable(f"{url} dropped the connection {_ATTEMPTS} times ({done} of {total} bytes kept in {part}): "
                          f"run again to resume")
    actual = file_sha256(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise Corrupt(f"{url} gave a file with sha256 {actual}, expected {expected}: the download was refused and "
                      f"removed (damaged on the way, or the publisher changed the file); try again", final)
    os.replace(part, final)
    return actual


def _transfer(url: str, part: Path, log) -> tuple[int, int | None]:
    """One request for the rest of `part`; returns (bytes in part, expected total or None)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "film_restore"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=_TIMEOUT_S)
    except HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the .part is whole (its checksum decides)
            return offset, offset
        raise Unavailable(f"{url} answered HTTP {error.code} {error.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise Unavailable(f"cannot reach {url} ({reason})") from None
    with response:
        if offset and response.status != 206:  # the server ignores ranges: start again
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out, _progress(part.name[:-5], offset, total, log) as advance:
            try:
                while block := response.read(_BLOCK):
                    out.write(block)
                    advance(len(block))
            except (OSError, http.client.HTTPException):
                pass  # dropped mid-way: the caller asks for the rest
    return part.stat().st_size, total


@contextlib.contextmanager
def _progress(name: str, done: int, total: int | None, log):
    """A progress bar on a terminal; in logs a line at each quarter."""
    bar = _terminal_bar(name, done, total)
    if bar is not None:
        with bar:
            yield bar.update
        return
    quarter = 4 * done // total if total else 0

    def advance(count: int) -> None:
        nonlocal done, quarter
        done += count
        if total and 4 * done // total > quarter:
            quarter = 4 * done // total
            log(f"{name}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

    yield advance


def _terminal_bar(name: str, done: int, total: int | None):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # a bare node: plain lines
        return None
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=name, file=sys.stderr)


@contextlib.contextmanager
def _locked(model: Model):
    """One process at a time fetches or checks a model (parallel runs, nodes sharing a cache)."""
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{model.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
