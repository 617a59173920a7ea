"""scripts/get_model.py against a loopback server holding synthetic release assets with 0.9.3's names and layout
(a random-weight checkpoint tarball made by the project's tooling, a small scorer): a clean run converts and loads;
interrupted, truncated, mispinned, missing and unreachable downloads fail with one clear line and leave no model.

Two runs start the converter (the clean one, ~10 s, and one whose checkpoint it refuses); every other case stops
at the download stage or uses --download-only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.speech import model_dir as md
from app.speech.alphabet import ENGLISH

pytest.importorskip("tensorflow")
pytest.importorskip("coremltools")

from tests.support.asset_server import AssetServer, serving  # noqa: E402
from tests.support.lm import VOCABULARY_TEXT  # noqa: E402
from tests.support.server import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GET_MODEL = [sys.executable, str(ROOT / "scripts" / "get_model.py")]
TOP = "deepspeech-0.9.3-checkpoint"
PREFIX = "best_dev-1466475"
TARBALL = f"{TOP}.tar.gz"
SCORER = "deepspeech-0.9.3-models.scorer"
URL_TARBALL, URL_SCORER = f"/v0.9.3/{TARBALL}", f"/v0.9.3/{SCORER}"
WIDTH = 64


def release_tarball(directory: Path) -> bytes:
    """The checkpoint tarball's layout, one top directory with upstream's six files, at width 64."""
    from dsconvert.checkpoint_writer import write_checkpoint
    from dsconvert.weights import random_weights

    checkpoint = directory / TOP
    write_checkpoint(random_weights(WIDTH, seed=93), checkpoint, step=1466475)
    # Released state files name the prefix relatively; the writer put this machine's absolute path in.
    (checkpoint / "checkpoint").write_text(
        f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n'
    )
    (checkpoint / "alphabet.txt").write_text(ENGLISH.to_text(), encoding="utf-8")
    (checkpoint / "flags.txt").write_text(f"--n_hidden={WIDTH}\n--epochs=0\n")
    # The writer saves no meta graph and the converter reads none: a stand-in keeps the release's member list.
    (checkpoint / f"{PREFIX}.meta").write_bytes(b"synthetic meta graph placeholder\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(checkpoint, arcname=TOP)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from dsconvert.lm.build_scorer import build_scorer

    directory = tmp_path_factory.mktemp("release")
    (directory / "corpus.txt").write_text(VOCABULARY_TEXT)
    scorer = build_scorer(directory / "corpus.txt", ENGLISH, directory / SCORER)
    return {URL_TARBALL: release_tarball(directory), URL_SCORER: scorer.read_bytes()}


@pytest.fixture(scope="module")
def module_server(assets: dict[str, bytes]) -> Iterator[AssetServer]:
    with serving(assets) as server:
        yield server


@pytest.fixture
def server(module_server: AssetServer, assets: dict[str, bytes]) -> AssetServer:
    module_server.reset(assets)
    return module_server


def get_model(*args: str | Path, base_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DS_RELEASE_BASE_URL"}
    if base_url is not None:
        env["DS_RELEASE_BASE_URL"] = base_url
    return subprocess.run(
        [*GET_MODEL, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The one error line a failed run ends with; no traceback, no second error."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("get_model.py: error: ")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr
    return errors[0]


def leaves_nothing(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), list(out.parent.iterdir())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a clean run: download, convert, record, load --------------------------------------------------------------


@dataclass(frozen=True)
class CleanRun:
    result: subprocess.CompletedProcess[str]
    out: Path
    cache: Path


@pytest.fixture(scope="module")
def clean_run(
    module_server: AssetServer, assets: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> CleanRun:
    """The one conversion of the module: the base URL from DS_RELEASE_BASE_URL, the tarball pinned."""
    module_server.reset(assets)
    root = tmp_path_factory.mktemp("clean")
    out, cache = root / "models" / "ds093", root / "cache"
    pin = f"{TARBALL}={sha256(assets[URL_TARBALL])}"
    result = get_model("--out", out, "--cache", cache, "--sha256", pin, base_url=module_server.base_url)
    assert result.returncode == 0, result.stderr
    return CleanRun(result, out, cache)


def test_clean_run_writes_a_model_that_loads_and_prints_how_to_serve_it(clean_run: CleanRun) -> None:
    from app.settings import Settings
    from app.speech.engine import Engine

    assert (
        clean_run.result.stdout == f"DS_MODEL_DIR={clean_run.out} make serve\n"
    )  # the converter's log: stderr
    loaded = md.load_model_directory(clean_run.out)
    assert loaded.manifest.n_hidden == WIDTH and loaded.alphabet == ENGLISH
    assert loaded.scorer_path is not None and loaded.manifest.source["name"] == "ds093"
    engine = Engine.load(Settings(model_dir=clean_run.out, backend="numpy", stream_batching=False))
    assert "kenlm" in engine.decoder.description
    assert isinstance(engine.transcribe(np.zeros(16000, np.float32)).transcript.text, str)
    # Nothing beside it: no staging directory, no extracted checkpoint; the cache holds the two finished files.
    assert [p.name for p in clean_run.out.parent.iterdir()] == ["ds093"]
    assert sorted(p.name for p in clean_run.cache.iterdir()) == [".lock", TARBALL, SCORER]


def test_download_record_has_the_sha256_of_every_file(clean_run: CleanRun, assets: dict[str, bytes]) -> None:
    record = json.loads((clean_run.out / md.MANIFEST_NAME).read_text())["source"]
    assert record["release"] == "0.9.3" and record["asset"] == "checkpoint" and record["kind"] == "checkpoint"
    assert "/" not in record["file"]  # a name: the extraction folder is gone
    files = record["files"]
    assert set(files) == {TARBALL, SCORER}
    for name, url_path in ((TARBALL, URL_TARBALL), (SCORER, URL_SCORER)):
        assert files[name]["sha256"] == sha256(assets[url_path])
        assert files[name]["size"] == len(assets[url_path])
        assert files[name]["url"].endswith(url_path)
    assert files[TARBALL]["pinned"] and not files[SCORER]["pinned"]


def test_an_existing_model_is_kept_without_force(clean_run: CleanRun, server: AssetServer) -> None:
    before = (clean_run.out / md.MANIFEST_NAME).read_text()
    line = error_line(
        get_model("--out", clean_run.out, "--cache", clean_run.cache, "--base-url", server.base_url)
    )
    assert "exists" in line and "--force" in line
    assert server.requests == [] and (clean_run.out / md.MANIFEST_NAME).read_text() == before


def test_cached_files_are_checked_again_and_reused_offline(clean_run: CleanRun, tmp_path: Path) -> None:
    offline = f"http://127.0.0.1:{free_port()}"
    run = get_model("--download-only", "--cache", clean_run.cache, "--base-url", offline)
    assert run.returncode == 0, run.stderr
    assert f"using {clean_run.cache / TARBALL}" in run.stderr


# --- interrupted, resumed, restarted ---------------------------------------------------------------------------


def test_an_interrupted_download_resumes_with_a_range_request(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    cut = len(assets[URL_TARBALL]) // 3
    server.faults.cut_after[URL_TARBALL] = cut
    args = ("--download-only", "--cache", tmp_path, "--base-url", server.base_url)
    line = error_line(get_model(*args))
    assert f"{server.base_url}{URL_TARBALL}" in line and "run the same command again to resume" in line
    part = tmp_path / f"{TARBALL}.part"
    assert part.stat().st_size == cut and not (tmp_path / TARBALL).exists()

    server.faults.cut_after.clear()
    run = get_model(*args)
    assert run.returncode == 0, run.stderr
    assert server.ranges(URL_TARBALL) == [None, f"bytes={cut}-"]
    assert (tmp_path / TARBALL).read_bytes() == assets[URL_TARBALL] and not part.exists()


def test_a_redirect_is_followed_with_its_range_header(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    """GitHub answers release URLs with a 302 to its object store; the resumed request must keep its Range."""
    server.files["/objects/blob"] = assets[URL_SCORER]
    server.faults.redirect[URL_SCORER] = "/objects/blob"
    (tmp_path / f"{SCORER}.part").write_bytes(assets[URL_SCORER][:100])
    run = get_model("--download-only", "--cache", tmp_path, "--base-url", server.base_url)
    assert run.returncode == 0, run.stderr
    assert server.ranges("/objects/blob") == ["bytes=100-"]
    assert (tmp_path / SCORER).read_bytes() == assets[URL_SCORER]


def test_a_server_that_ignores_range_gets_the_file_from_the_start(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / f"{TARBALL}.part").write_bytes(assets[URL_TARBALL][:1000])
    server.faults.ignore_range = True
    run = get_model("--download-only", "--cache", tmp_path, "--base-url", server.base_url)
    assert run.returncode == 0, run.stderr
    assert "ignored the Range request" in run.stderr and server.ranges(URL_TARBALL) == ["bytes=1000-"]
    assert (tmp_path / TARBALL).read_bytes() == assets[URL_TARBALL]


def test_a_complete_partial_file_is_finished_by_a_416(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / f"{SCORER}.part").write_bytes(assets[URL_SCORER])
    run = get_model("--download-only", "--cache", tmp_path, "--base-url", server.base_url)
    assert run.returncode == 0, run.stderr
    assert server.ranges(URL_SCORER) == [f"bytes={len(assets[URL_SCORER])}-"]
    assert (tmp_path / SCORER).read_bytes() == assets[URL_SCORER]


# --- integrity: truncated files, pins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_path", "complaint"), [(URL_TARBALL, "not a complete .tar.gz"), (URL_SCORER, "scorer")]
)
def test_a_truncated_file_with_an_honest_length_is_deleted_and_nothing_is_converted(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path, url_path: str, complaint: str
) -> None:
    server.faults.truncate[url_path] = (len(assets[url_path]) * 2 // 3, False)
    out, cache = tmp_path / "models" / "ds093", tmp_path / "cache"
    line = error_line(get_model("--out", out, "--cache", cache, "--base-url", server.base_url))
    name = Path(url_path).name
    assert name in line and complaint in line and "deleted it" in line
    assert not (cache / name).exists() and not (cache / f"{name}.part").exists()
    leaves_nothing(out)


def test_a_truncated_file_with_a_lying_length_is_kept_to_resume(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    kept = len(assets[URL_TARBALL]) // 2
    server.faults.truncate[URL_TARBALL] = (kept, True)
    out, cache = tmp_path / "models" / "ds093", tmp_path / "cache"
    line = error_line(get_model("--out", out, "--cache", cache, "--base-url", server.base_url))
    assert URL_TARBALL in line and "run the same command again to resume" in line
    assert (cache / f"{TARBALL}.part").stat().st_size == kept
    leaves_nothing(out)


def test_a_wrong_pin_fails_and_deletes_the_file(server: AssetServer, tmp_path: Path) -> None:
    out, cache = tmp_path / "models" / "ds093", tmp_path / "cache"
    pin = f"{SCORER}={'0' * 64}"
    line = error_line(
        get_model("--out", out, "--cache", cache, "--base-url", server.base_url, "--sha256", pin)
    )
    assert SCORER in line and f"not the pinned {'0' * 64}" in line and "deleted it" in line
    assert not (cache / SCORER).exists() and not (cache / f"{SCORER}.part").exists()
    leaves_nothing(out)


@pytest.mark.parametrize(
    ("pin", "complaint"),
    [
        ("nonsense", "expected NAME=<64 hex digits>"),
        (f"other.bin={'a' * 64}", "'other.bin', which is not downloaded"),
    ],
)
def test_a_malformed_pin_fails_before_any_download(
    server: AssetServer, tmp_path: Path, pin: str, complaint: str
) -> None:
    line = error_line(get_model("--cache", tmp_path, "--base-url", server.base_url, "--sha256", pin))
    assert complaint in line and server.requests == []


def repacked(tarball: bytes, change: str) -> bytes:
    """The tarball with one member dropped, or one added that reaches outside it (a path, a symlink)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            if change == "missing" and member.name == f"{TOP}/flags.txt":
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo(f"{TOP}/../../evil" if change == "traversal" else f"{TOP}/link")
        if change == "symlink":
            extra.type, extra.linkname = tarfile.SYMTYPE, "/etc/passwd"
        if change != "missing":
            dst.addfile(extra, io.BytesIO(b""))
    return out.getvalue()


@pytest.mark.parametrize(
    ("change", "complaint"),
    [("missing", f"lacks {TOP}/flags.txt"), ("traversal", "outside"), ("symlink", "a link or device")],
)
def test_an_archive_with_unexpected_members_is_refused_before_extracting(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path, change: str, complaint: str
) -> None:
    server.files[URL_TARBALL] = repacked(assets[URL_TARBALL], change)
    out = tmp_path / "models" / "ds093"
    line = error_line(get_model("--out", out, "--cache", tmp_path / "cache", "--base-url", server.base_url))
    assert TARBALL in line and complaint in line
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / TARBALL).exists()
    leaves_nothing(out)


def test_the_converters_checks_of_variable_names_stop_the_install(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    """A well-formed archive whose checkpoint lacks the LSTM: scripts/convert.py refuses it, nothing installed."""
    from dsconvert.checkpoint_writer import write_checkpoint
    from dsconvert.weights import LSTM_KERNEL, DeepSpeechWeights, random_weights

    arrays = dict(random_weights(WIDTH, seed=1).arrays)
    del arrays[LSTM_KERNEL]
    bad = tmp_path / "bad"
    with tarfile.open(fileobj=io.BytesIO(assets[URL_TARBALL])) as tar:
        tar.extractall(bad, filter="data")
    write_checkpoint(DeepSpeechWeights(arrays), bad / TOP, step=1466475)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(bad / TOP, arcname=TOP)
    server.files[URL_TARBALL] = buffer.getvalue()
    out = tmp_path / "models" / "ds093"
    run = get_model("--out", out, "--cache", tmp_path / "cache", "--base-url", server.base_url)
    assert "lacks DeepSpeech variables: " + LSTM_KERNEL in run.stderr
    assert "scripts/convert.py failed" in error_line(run)
    leaves_nothing(out)


# --- the server or the network fails ---------------------------------------------------------------------------


def test_404_names_the_url_and_the_setting(server: AssetServer, tmp_path: Path) -> None:
    server.faults.status[URL_TARBALL] = 404
    out = tmp_path / "models" / "ds093"
    line = error_line(get_model("--out", out, "--cache", tmp_path / "cache", "--base-url", server.base_url))
    assert f"{server.base_url}{URL_TARBALL} answered 404 Not Found" in line and "--base-url" in line
    leaves_nothing(out)


def test_another_status_is_reported_too(server: AssetServer, tmp_path: Path) -> None:
    server.faults.status[URL_SCORER] = 503
    line = error_line(get_model("--download-only", "--cache", tmp_path, "--base-url", server.base_url))
    assert f"{URL_SCORER} answered HTTP 503 Service Unavailable" in line


def test_offline_fails_with_one_clear_line(tmp_path: Path) -> None:
    out = tmp_path / "models" / "ds093"
    offline = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused, as with no network
    line = error_line(get_model("--out", out, "--cache", tmp_path / "cache", base_url=offline))
    assert "cannot reach 127.0.0.1" in line and "offline" in line and "--base-url" in line
    leaves_nothing(out)


# --- the other source, and replacing a model ------------------------------------------------------------------


def test_source_pbmm_downloads_the_graph_and_the_scorer(
    server: AssetServer, assets: dict[str, bytes], tmp_path: Path
) -> None:
    server.files["/v0.9.3/deepspeech-0.9.3-models.pbmm"] = b"memory-mapped graph stand-in"
    run = get_model("--source", "pbmm", "--download-only", "--cache", tmp_path, "--base-url", server.base_url)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "deepspeech-0.9.3-models.pbmm", SCORER]
    assert server.ranges(URL_TARBALL) == []


def release_pbmm(directory: Path) -> bytes:
    """What upstream exports as deepspeech-0.9.3-models.pbmm: the static inference graph of the same weights as
    the tarball's checkpoint, memory-mapped."""
    from dsconvert.graph import build_frozen_graph
    from dsconvert.pbmm import write_memmapped_graph
    from dsconvert.weights import random_weights

    frozen = build_frozen_graph(random_weights(WIDTH, seed=93), ENGLISH, 16)
    write_memmapped_graph(frozen.graph_def, directory / "models.pbmm")
    return (directory / "models.pbmm").read_bytes()


def test_the_pbmm_release_converts_to_the_checkpoints_weights(
    server: AssetServer, clean_run: CleanRun, tmp_path: Path
) -> None:
    """The .pbmm path end to end (the English alphabet supplied, --graph on the package): the same network as the
    checkpoint, array for array."""
    server.files["/v0.9.3/deepspeech-0.9.3-models.pbmm"] = release_pbmm(tmp_path)
    out = tmp_path / "models" / "ds093"
    run = get_model("--source", "pbmm", "--out", out, "--cache", tmp_path / "cache", "--base-url", server.base_url)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / md.MANIFEST_NAME).read_text())
    assert manifest["source"]["kind"] == "pbmm" and manifest["source"]["asset"] == "pbmm"
    with np.load(out / md.WEIGHTS_NAME) as got, np.load(clean_run.out / md.WEIGHTS_NAME) as want:
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name])  # the same float32 bytes, no arithmetic


def test_install_replaces_an_existing_model_only_once_the_new_one_is_in(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("get_model", ROOT / "scripts" / "get_model.py")
    assert spec is not None and spec.loader is not None
    get_model_module = importlib.util.module_from_spec(spec)
    sys.modules["get_model"] = get_model_module  # its dataclasses look their module up
    spec.loader.exec_module(get_model_module)
    out, staging = tmp_path / "ds093", tmp_path / ".ds093.partial-x"
    out.mkdir()
    (out / "old").write_text("old")
    (staging / "ds093").mkdir(parents=True)
    (staging / "ds093" / "new").write_text("new")
    get_model_module.install(staging / "ds093", out)
    assert [p.name for p in out.iterdir()] == ["new"]
    assert (staging / "replaced" / "old").exists()  # removed with the staging directory by run()
