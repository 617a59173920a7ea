#!/usr/bin/env python3
"""Download Mozilla DeepSpeech 0.9.3's release assets, convert them into a model directory, check that it loads.

python scripts/get_model.py [--source checkpoint|pbmm] [--base-url URL] [--out models/ds093] [--sha256 NAME=HEX]

Downloads go to `--cache` as `NAME.part` and resume from there (HTTP Range) after an interrupted transfer. A file
loses its `.part` suffix only once it is complete and checked: the size the server announced, any --sha256 pin,
and its format (the gzip stream and the tarball's members; the scorer's trailer); a complete file that fails a
check is deleted. The model directory appears only once it is converted (scripts/convert.py, which checks the
variable names and shapes) and loads; its manifest's `source` records the release and each file's URL, size
and sha256.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GITHUB_RELEASES = "https://github.com/mozilla/DeepSpeech/releases/download"
BASE_URL_ENV = "DS_RELEASE_BASE_URL"
SOURCES = ("checkpoint", "pbmm")
DEFAULT_SOURCE = "checkpoint"  # the training artifact, with its alphabet; "pbmm" is the smaller download, same weights
CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(30.0, connect=15.0)
TRY_MIRROR = f"set --base-url (or ${BASE_URL_ENV}) to a mirror"


class GetModelError(RuntimeError):
    """What failed and what to do about it, in one line for the user."""


@dataclass(frozen=True)
class Release:
    """One DeepSpeech release: its asset names and the checkpoint archive's layout."""

    version: str
    tarball: str
    top: str  # the tarball's one top directory
    prefix: str  # the released checkpoint, best_dev-<step>
    pbmm: str
    scorer: str

    def needed_members(self) -> list[str]:
        """What the conversion reads: read_checkpoint's .index/.data pair and the alphabet it was trained with."""
        names = ("alphabet.txt", f"{self.prefix}.index", f"{self.prefix}.data-00000-of-00001")
        return [f"{self.top}/{name}" for name in names]

    def expected_members(self) -> list[str]:
        """The release's layout; an archive lacking any of these is not the release's checkpoint."""
        extra = ("checkpoint", "flags.txt", f"{self.prefix}.meta")
        return self.needed_members() + [f"{self.top}/{name}" for name in extra]

    def assets(self, source: str) -> list[str]:
        return [self.tarball if source == "checkpoint" else self.pbmm, self.scorer]


RELEASES = {
    "0.9.3": Release(
        version="0.9.3",
        tarball="deepspeech-0.9.3-checkpoint.tar.gz",
        top="deepspeech-0.9.3-checkpoint",
        prefix="best_dev-1466475",
        pbmm="deepspeech-0.9.3-models.pbmm",
        scorer="deepspeech-0.9.3-models.scorer",
    )
}


@dataclass(frozen=True)
class Download:
    """One verified file in the cache, as the model's download record lists it."""

    name: str
    url: str
    size: int
    sha256: str
    pinned: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="get_model.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--version", choices=sorted(RELEASES), default="0.9.3")
    add(
        "--source",
        choices=SOURCES,
        default=DEFAULT_SOURCE,
        help=f"the checkpoint tarball or the .pbmm graph (default {DEFAULT_SOURCE})",
    )
    add(
        "--base-url",
        default=os.environ.get(BASE_URL_ENV) or GITHUB_RELEASES,
        help=f"assets are BASE_URL/v<version>/<name> (default ${BASE_URL_ENV}, else {GITHUB_RELEASES}); "
        "a local mirror with that layout works, e.g. python -m http.server",
    )
    add("--out", type=Path, default=Path("models/ds093"), help="model directory to write")
    add("--cache", type=Path, default=Path(".cache/downloads"), help="downloads, and partial ones to resume")
    add(
        "--sha256",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="an asset's sha256, e.g. deepspeech-0.9.3-models.scorer=<hex>; repeatable",
    )
    add(
        "--stream-batch",
        help="passed to scripts/convert.py: enumerated batch sizes of the static package, e.g. 1,2,4,8,16 "
        "(Core ML streams share predictions; macOS 15)",
    )
    add("--force", action="store_true", help="replace --out if it exists")
    add("--download-only", action="store_true", help="download and check the assets, then stop")
    return parser.parse_args(argv)


def parse_pins(pins: list[str], assets: list[str]) -> dict[str, str]:
    """--sha256 NAME=HEX values by asset name; a name that is not downloaded is a typo, not something to ignore."""
    parsed: dict[str, str] = {}
    for pin in pins:
        name, _, digest = pin.partition("=")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise GetModelError(f"--sha256 {pin!r}: expected NAME=<64 hex digits>")
        if name not in assets:
            raise GetModelError(f"--sha256 names {name!r}, which is not downloaded ({', '.join(assets)})")
        parsed[name] = digest.lower()
    return parsed


def step(message: str) -> None:
    print(f"[get_model] {message}", file=sys.stderr, flush=True)


# --- downloading -----------------------------------------------------------------------------------------------


class _StartOver(Exception):
    """The partial file cannot be continued (the server's file differs from it): download it afresh."""


def body_start_and_total(response: httpx.Response, offset: int) -> tuple[int, int | None]:
    """Where a 200/206 body starts in the file and the file's full size as announced (None: not announced)."""
    if response.status_code == 206:  # Content-Range: bytes START-END/TOTAL, START being our offset
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", "").strip())
        if match is None or int(match[1]) != offset:
            raise _StartOver()
        return offset, None if match[2] == "*" else int(match[2])
    if offset:
        step(f"{response.url} ignored the Range request; downloading it from the start")
    length = response.headers.get("content-length", "")
    return 0, int(length) if length.isdigit() else None


def check_status(response: httpx.Response, url: str, base_url: str) -> None:
    if response.status_code == 404:
        raise GetModelError(
            f"{url} answered 404 Not Found: is --base-url (or ${BASE_URL_ENV}, now {base_url}) a copy of "
            "the release assets, laid out as v<version>/<name>?"
        )
    if response.status_code not in (200, 206, 416):
        status = f"{response.status_code} {response.reason_phrase}"
        raise GetModelError(f"{url} answered HTTP {status}: try again later, or {TRY_MIRROR}")


def receive(response: httpx.Response, part: Path, start: int, total: int | None) -> int:
    """Write the body to `part` from byte `start` with a progress bar; return the part's size afterwards."""
    name = part.name.removesuffix(".part")
    bar = tqdm(
        total=total, initial=start, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=None
    )
    # disable=None: no bar when stderr is not a terminal. iter_raw: the bytes undecoded, as they arrive (with a
    # chunk_size httpx buffers them, and a transfer that breaks off would lose that buffer).
    with part.open("ab" if start else "wb") as out, bar:
        for chunk in response.iter_raw():
            out.write(chunk)
            bar.update(len(chunk))
    return part.stat().st_size


def transfer(client: httpx.Client, url: str, part: Path, base_url: str) -> tuple[int, int | None]:
    """One GET that continues `part` from its size: (part's size after it, full size the server announced)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        with client.stream("GET", url, headers=headers) as response:
            check_status(response, url, base_url)
            if response.status_code == 416:  # nothing after `offset`: complete if the sizes agree
                if offset and response.headers.get("content-range", "").endswith(f"/{offset}"):
                    return offset, offset
                raise _StartOver()
            start, total = body_start_and_total(response, offset)
            return receive(response, part, start, total), total
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        host = httpx.URL(url).host
        raise GetModelError(
            f"cannot reach {host} ({exc}): are you offline? Connect, or {TRY_MIRROR}"
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise GetModelError(f"{url}: --base-url must start with http:// or https://") from exc
    except httpx.TransportError as exc:  # the transfer broke off: what arrived stays in `part`
        have = part.stat().st_size if part.exists() else 0
        raise GetModelError(
            f"download of {url} broke off after {have} bytes ({exc}); run the same command again to resume"
        ) from exc


def fetch(client: httpx.Client, url: str, part: Path, base_url: str) -> None:
    """Complete `part` from `url`, resuming from its size, to exactly the size the server announced."""
    for _attempt in range(2):  # the second only after a partial file that the server's no longer continues
        try:
            size, total = transfer(client, url, part, base_url)
        except _StartOver:
            step(f"{part} does not continue what {url} serves now; downloading it again")
            part.unlink(missing_ok=True)
            continue
        if total is not None and size < total:
            raise GetModelError(
                f"{url} ended after {size} of the {total} bytes it announced; run the same command again to resume"
            )
        if total is not None and size > total:
            part.unlink()
            raise GetModelError(f"{url} sent {size} bytes, more than the {total} it announced; deleted it")
        return
    raise GetModelError(f"{url} keeps changing while it downloads; try again later")


def check_tarball(path: Path, release: Release) -> None:
    """Read the whole gzip stream (its CRC and length catch truncation) and check the members' names and types."""
    try:
        with gzip.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            members = tar.getmembers()
            while stream.read(CHUNK):  # tar stops at its end marker; the gzip trailer is checked at EOF
                pass
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise GetModelError(f"{path.name} is not a complete .tar.gz ({exc})") from exc
    for member in members:
        name = PurePosixPath(member.name)  # "./top/x" reads as "top/x"; "." is the archive's root
        inside = name.parts[:1] == (release.top,) or (name.parts == () and member.isdir())
        if name.is_absolute() or ".." in name.parts or not inside:
            raise GetModelError(f"{path.name} holds {member.name!r}, outside {release.top}/; refusing it")
        if not (member.isfile() or member.isdir()):
            raise GetModelError(f"{path.name} holds {member.name!r}, a link or device; refusing it")
    files = {PurePosixPath(m.name).as_posix() for m in members if m.isfile()}
    missing = [name for name in release.expected_members() if name not in files]
    if missing:
        what = f"the DeepSpeech {release.version} checkpoint"
        raise GetModelError(f"{path.name} is not {what}: it lacks {', '.join(missing)}")


def check_format(path: Path, name: str, release: Release) -> None:
    """The content checks a complete download passes before it loses `.part` (the .pbmm: the converter's)."""
    if name == release.tarball:
        check_tarball(path, release)
    elif name == release.scorer:
        from app.speech.alphabet import ENGLISH
        from app.speech.decoding.scorer_file import ScorerError, read_scorer

        try:
            read_scorer(path, ENGLISH, with_vocabulary=False)
        except ScorerError as exc:
            raise GetModelError(f"{name} is not a usable DeepSpeech scorer ({exc})") from exc


def verify_download(part: Path, name: str, url: str, release: Release, pin: str | None) -> str:
    """sha256 of a complete file after its pin and format checks; a file failing them is deleted."""
    from app.speech.model_dir import sha256_of

    digest = sha256_of(part)
    if pin is not None and digest != pin:
        part.unlink()
        raise GetModelError(f"{name} has sha256 {digest}, not the pinned {pin}; deleted it: check the pin")
    try:
        check_format(part, name, release)
    except GetModelError as exc:
        part.unlink()
        raise GetModelError(f"{exc}; deleted it: the next run downloads it again, or {TRY_MIRROR}") from exc
    return digest


def obtain(client: httpx.Client, name: str, args: argparse.Namespace, pin: str | None) -> Download:
    """A verified copy of one asset in the cache: reused if already there, else downloaded (resumed)."""
    release = RELEASES[args.version]
    url = f"{args.base_url.rstrip('/')}/v{release.version}/{name}"
    final, part = args.cache / name, args.cache / f"{name}.part"
    if final.is_file():  # checked again as a download is: the pin may be new, the disk may have failed
        step(f"using {final} (downloaded before)")
        digest = verify_download(final, name, url, release, pin)
    else:
        step(f"downloading {url}")
        fetch(client, url, part, args.base_url)
        digest = verify_download(part, name, url, release, pin)
        part.rename(final)
    size = final.stat().st_size
    step(f"{name}: {size} bytes, sha256 {digest}")
    return Download(name, url, size, digest, pin is not None)


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One run at a time per cache: two writers appending to one .part would corrupt it."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GetModelError(f"another get_model.py is downloading into {cache}; wait for it") from None
        yield


# --- converting and checking -----------------------------------------------------------------------------------


def extract_checkpoint(tarball: Path, release: Release, into: Path) -> tuple[Path, Path]:
    """Extract what the conversion reads (members already checked); return (checkpoint prefix, alphabet.txt)."""
    needed = set(release.needed_members())
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if PurePosixPath(m.name).as_posix() in needed]
        tar.extractall(into, members=members, filter="data")
    # The prefix, not the directory: a `checkpoint` state file may hold the trainer's absolute paths.
    return into / release.top / release.prefix, into / release.top / "alphabet.txt"


def convert(args: argparse.Namespace, work: Path, out: Path, record: dict[str, object]) -> None:
    """scripts/convert.py on the downloaded files into `out` (it checks variable names and shapes)."""
    release = RELEASES[args.version]
    asset = args.cache / release.assets(args.source)[0]
    if args.source == "checkpoint":
        prefix, alphabet = extract_checkpoint(asset, release, work)
        model_args = ["--checkpoint", str(prefix)]
    else:  # the .pbmm carries no alphabet: 0.9.3's is the English one
        from app.speech.alphabet import ENGLISH

        alphabet = work / "alphabet.txt"
        alphabet.write_text(ENGLISH.to_text(), encoding="utf-8")
        model_args = ["--graph", str(asset)]
    command = [sys.executable, str(ROOT / "scripts" / "convert.py"), *model_args, "--alphabet", str(alphabet)]
    command += ["--scorer", str(args.cache / release.scorer), "--out", str(out), "--name", out.name]
    command += ["--source-info", json.dumps(record)]
    if args.stream_batch:
        command += ["--stream-batch", args.stream_batch]
    step("converting: " + " ".join(command[1:]))
    if subprocess.run(command, stdout=sys.stderr).returncode != 0:
        raise GetModelError("scripts/convert.py failed (its error is above); nothing was written")


def verify_loads(model_dir: Path) -> str:
    """Load the directory as the service does (NumPy backend, its scorer) and transcribe one second of silence."""
    import numpy as np

    from app.settings import Settings
    from app.speech.engine import Engine
    from app.speech.model_dir import load_model_directory

    try:
        load_model_directory(model_dir)
        settings = Settings(model_dir=model_dir, backend="numpy", scorer=None, stream_batching=False)
        engine = Engine.load(settings)
        try:
            return engine.transcribe(np.zeros(16000, np.float32)).transcript.text
        finally:
            engine.close()
    except Exception as exc:  # whatever breaks loading makes the model unusable: say so, install nothing
        raise GetModelError(f"the converted model does not load ({type(exc).__name__}: {exc})") from exc


def download_record(args: argparse.Namespace, downloads: list[Download]) -> dict[str, object]:
    """What the manifest's `source` keeps of the download: the release, the mirror, each file's URL and hashes."""
    files = {d.name: asdict(d) for d in downloads}
    return {"release": args.version, "asset": args.source, "base_url": args.base_url, "files": files}


def install(staged: Path, out: Path) -> None:
    """Rename the checked directory into place; an existing --out is moved aside (and removed with staging)."""
    old = staged.parent / "replaced"
    if out.exists():
        out.rename(old)
    try:
        staged.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise


def run(args: argparse.Namespace) -> None:
    assets = RELEASES[args.version].assets(args.source)
    pins = parse_pins(args.sha256, assets)
    out = args.out.resolve()
    if not args.download_only and out.exists() and any(out.iterdir()) and not args.force:
        raise GetModelError(f"{args.out} exists and is not empty; pass --force to replace it")
    with cache_lock(args.cache):  # held while converting too: the cached files must stay as checked
        with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
            downloads = [obtain(client, name, args, pins.get(name)) for name in assets]
        if args.download_only:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            staged = staging / out.name
            convert(args, staging, staged, download_record(args, downloads))
            step(f"checking that it loads: one second of silence reads {verify_loads(staged)!r}")
            install(staged, out)
            step(f"installed {args.out}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"DS_MODEL_DIR={args.out} make serve", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (GetModelError, OSError) as exc:  # OSError: the disk (full, read-only); a .part stays to resume
        print(f"get_model.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("get_model.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
