"""Compile KenLM's `build_binary` from the `kenlm` sdist on PyPI, cached, so scorers can be built from text.

Why compile at all: the PyPI `kenlm` wheel/sdist only installs the *query* bindings, and no maintained PyPI
package ships the `build_binary` executable. The sdist does carry the full C++ sources of `lm/` and `util/`.

Why not cmake: KenLM's CMakeLists.txt makes Boost (program_options, system, thread, unit_test_framework) a
REQUIRED dependency for the whole tree, but `build_binary` itself needs none of it (upstream's own
`compile_query_only.sh` builds it from `util/double-conversion/*.cc util/*.cc lm/*.cc` with a bare g++). We do
the same thing from Python so the only build-time requirement is a C++ compiler (Debian: `g++`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Pinned so the cache key (and the binary format it writes) only changes when we say so.
KENLM_VERSION = "0.3.0"
# Upstream default (`KENLM_MAX_ORDER=6` in compile_query_only.sh and setup.py).
KENLM_MAX_ORDER = 6

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "kenlm"
CACHE_ENV = "DSCONVERT_KENLM_CACHE"


class KenLMBuildError(RuntimeError):
    """Compiling or running KenLM's tools failed; the message says what to install or fix."""


def cache_dir() -> Path:
    """Where the sdist and the compiled binary live (git-ignored `.cache/kenlm/` unless overridden)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else DEFAULT_CACHE_DIR


def _cxx() -> str:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise KenLMBuildError(
            f"C++ compiler {compiler!r} not found: building KenLM's build_binary needs one "
            "(Debian: apt-get install g++; or set CXX)"
        )
    return compiler


def _flags() -> list[str]:
    # Same flags as upstream's compile_query_only.sh / setup.py. No HAVE_ZLIB etc.: we only ever feed it
    # plain-text ARPA files we wrote ourselves, so compressed input support is not needed.
    return ["-O3", "-DNDEBUG", f"-DKENLM_MAX_ORDER={KENLM_MAX_ORDER}", "-std=c++11", "-DHAVE_CLOCKGETTIME"]


def _stamp(compiler: str) -> str:
    """Cache key: KenLM version, compiler identity and flags; a change rebuilds."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    text = "|".join([KENLM_VERSION, compiler, *version, *_flags()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _find_or_download_sdist(directory: Path) -> Path:
    sdist = directory / f"kenlm-{KENLM_VERSION}.tar.gz"
    if sdist.exists():
        return sdist
    # pip's ordinary client, sdist only (`--no-binary kenlm`). Not `--no-binary :all:`: that would also force
    # the sdist's build requirements (cmake!) to be compiled from source just to prepare metadata.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "kenlm"]
    cmd += ["-d", str(directory), f"kenlm=={KENLM_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not sdist.exists():
        raise KenLMBuildError(f"could not download the kenlm {KENLM_VERSION} sdist:\n{proc.stderr[-2000:]}")
    return sdist


def _sources(src: Path) -> list[Path]:
    """The library sources build_binary links against: everything but tests and other mains."""
    files: list[Path] = []
    for pattern in ("util/double-conversion/*.cc", "util/*.cc", "lm/*.cc"):
        files += sorted(p for p in src.glob(pattern) if not p.name.endswith(("test.cc", "main.cc")))
    return files


def _compile(src: Path, out_dir: Path, compiler: str, jobs: int) -> Path:
    objects_dir = out_dir / "obj"
    objects_dir.mkdir(parents=True)
    base = [compiler, f"-I{src}", *_flags()]

    def one(path: Path) -> Path:
        obj = objects_dir / (str(path.relative_to(src)).replace("/", "_")[:-3] + ".o")
        proc = subprocess.run([*base, "-c", str(path), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KenLMBuildError(f"compiling {path.relative_to(src)} failed:\n{proc.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objects = list(pool.map(one, _sources(src)))
    binary = out_dir / "build_binary"
    link = [*base, str(src / "lm" / "build_binary_main.cc"), *map(str, objects), "-o", str(binary)]
    link += ["-lrt", "-pthread"] if sys.platform.startswith("linux") else []
    proc = subprocess.run(link, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KenLMBuildError(f"linking build_binary failed:\n{proc.stderr[-4000:]}")
    shutil.rmtree(objects_dir)
    return binary


def ensure_build_binary(directory: Path | None = None, jobs: int | None = None) -> Path:
    """Return the cached `build_binary`, compiling it once (idempotent, safe across concurrent callers)."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    compiler = _cxx()
    stamp = _stamp(compiler)
    final = directory / f"bin-{stamp}" / "build_binary"
    if final.exists():
        return final
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the binary below
        if final.exists():
            return final
        sdist = _find_or_download_sdist(directory)
        with tempfile.TemporaryDirectory(dir=directory, prefix="build-") as tmp:
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
            src = Path(tmp) / f"kenlm-{KENLM_VERSION}"
            started = time.monotonic()
            binary = _compile(src, Path(tmp) / "out", compiler, jobs or os.cpu_count() or 1)
            elapsed = time.monotonic() - started
            final.parent.mkdir(exist_ok=True)
            os.replace(binary, final)  # atomic: a half-built binary is never visible under the final name
            (final.parent / "BUILD_SECONDS").write_text(f"{elapsed:.1f}\n")
    return final


def build_binary(
    arpa_path: Path,
    out_path: Path,
    *,
    data_structure: str = "trie",
    quantize_bits: int | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Convert an ARPA file to a KenLM binary the way DeepSpeech's generate_lm.py does (always `-v`)."""
    if data_structure not in ("trie", "probing"):
        raise ValueError("data_structure must be 'trie' or 'probing'")
    tool = ensure_build_binary()
    # `-v`: do not append the vocabulary strings after the search data. DeepSpeech's generate_lm.py always
    # passes it, and it matters: the scorer trailer is read at KenLM's GetEndOfSearchOffset(), so anything
    # KenLM wrote after its search structures would sit where DeepSpeech expects the 'TRIE' magic.
    cmd = [str(tool), "-v"]
    if quantize_bits is not None:
        if data_structure != "trie":
            raise ValueError("KenLM only quantizes the trie data structure")
        cmd += ["-q", str(quantize_bits), "-a", "255"]  # upstream release scorer: -a 255 -q 8 trie
    cmd += [*extra_args, data_structure, str(arpa_path), str(out_path)]
    # -S caps the sort memory for the trie build (KenLM's default is 80% of RAM).
    if data_structure == "trie":
        cmd[1:1] = ["-S", "10%", "-T", str(Path(out_path).parent)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KenLMBuildError(f"build_binary failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return Path(out_path)


if __name__ == "__main__":
    t0 = time.monotonic()
    path = ensure_build_binary()
    print(f"{path} ready in {time.monotonic() - t0:.1f} s")
