"""launchd/: the plist template renders to a valid launchd job, and install.sh / uninstall.sh behave (on Linux).

The scripts run for real against a fake `launchctl` on PATH that records its calls and keeps a loaded/not-loaded
state, and in `--dry-run`, whose output (the rendered plist between BEGIN/END lines, the launchctl commands) is
asserted. Nothing here touches the real ~/Library: HOME is a temporary directory.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHD = REPO / "launchd"
INSTALL = LAUNCHD / "install.sh"
UNINSTALL = LAUNCHD / "uninstall.sh"
LIB = LAUNCHD / "lib.sh"
LABEL = "local.deepspeech.stt"

# Keys launchd.plist(5) documents, with the types it expects; a typo or a wrong type fails here as on the Mac.
LAUNCHD_KEYS: dict[str, type | tuple[type, ...]] = {
    "Label": str,
    "ProgramArguments": list,
    "WorkingDirectory": str,
    "EnvironmentVariables": dict,
    "UserName": str,
    "InitGroups": bool,
    "RunAtLoad": bool,
    "KeepAlive": (bool, dict),
    "ThrottleInterval": int,
    "ExitTimeOut": int,
    "ProcessType": str,
    "SoftResourceLimits": dict,
    "HardResourceLimits": dict,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}
PLIST_TYPES = (dict, list, str, int, bool)
# macOS's OPEN_MAX: a soft RLIMIT_NOFILE above it (or above kern.maxfilesperproc) is refused by setrlimit.
DARWIN_OPEN_MAX = 10240

FAKE_LAUNCHCTL = """#!/bin/bash
# Records each call; a job is "loaded" while its state file exists.
echo "$*" >> "$FAKE_LAUNCHCTL_LOG"
state="$FAKE_LAUNCHCTL_STATE"
case $1 in
print) [[ -f $state ]] || { echo "Could not find service" >&2; exit 113; } ;;
bootout) [[ -f $state ]] || { echo "Boot-out failed: 3: No such process" >&2; exit 3; }; rm -f "$state" ;;
bootstrap) [[ -z ${FAKE_BOOTSTRAP_FAIL:-} ]] || { echo "Bootstrap failed: 125: Domain does not support specified action" >&2; exit 125; }
  [[ ! -f $state ]] || { echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; }; touch "$state" ;;
enable) ;;
*) echo "fake launchctl: unexpected $1" >&2; exit 64 ;;
esac
"""

# `sudo -n -u USER CMD...`, the only way install.sh uses sudo (to check what a daemon's user can read). FAKE_SUDO
# says how it behaves: unset, like a sudo that wants a password (-n: fail at once); `self`, runs CMD as the caller,
# except that a command naming FAKE_SUDO_DENY fails (a permission problem, injected); `runuser`, runs CMD really
# as USER (root only), as sudo would.
FAKE_SUDO = """#!/bin/bash
[[ $1 == -n && $2 == -u && $# -ge 4 ]] || { echo "fake sudo: unexpected $*" >&2; exit 64; }
user=$3
shift 3
echo "sudo -u $user $*" >> "$FAKE_LAUNCHCTL_LOG"
case ${FAKE_SUDO:-} in
self) [[ -z ${FAKE_SUDO_DENY:-} || " $* " != *" $FAKE_SUDO_DENY "* ]] || exit 1; exec "$@" ;;
runuser) exec runuser -u "$user" -- "$@" ;;
*) echo "sudo: a password is required" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: a temporary HOME, no DS_* settings, no sudo, a fake launchctl first on PATH."""
    home = tmp_path / "home"
    home.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    launchctl = fake_bin / "launchctl"
    launchctl.write_text(FAKE_LAUNCHCTL)
    launchctl.chmod(0o755)
    # plutil -lint, approximated by plistlib: the real install lints the plist before loading it.
    plutil = fake_bin / "plutil"
    plutil.write_text(
        f'#!/bin/sh\necho "plutil $*" >> "$FAKE_LAUNCHCTL_LOG"\nexec {sys.executable} -c '
        '\'import plistlib, sys; plistlib.load(open(sys.argv[2], "rb")); print(sys.argv[2] + ": OK")\' "$@"\n'
    )
    plutil.chmod(0o755)
    sudo = fake_bin / "sudo"
    sudo.write_text(FAKE_SUDO)
    sudo.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DS_") and k != "SUDO_USER"}
    environ.update(
        HOME=str(home),
        PATH=f"{fake_bin}:{environ.get('PATH', '/usr/bin:/bin')}",
        FAKE_LAUNCHCTL_LOG=str(tmp_path / "launchctl.log"),
        FAKE_LAUNCHCTL_STATE=str(tmp_path / "loaded"),
    )
    return environ


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models" / "good model & co"  # a space and an XML metacharacter on purpose
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text("{}")
    return directory


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in virtualenv, so the tests do not depend on how this one was made."""
    directory = tmp_path / "venv"
    (directory / "bin").mkdir(parents=True)
    (directory / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for name in ("python", "uvicorn"):
        (directory / "bin" / name).write_text("#!/bin/sh\n")
        (directory / "bin" / name).chmod(0o755)
    return directory


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def dry_run(env: dict[str, str], *args: str) -> tuple[str, Path, dict[str, Any]]:
    """install.sh --dry-run: its output, the plist path it would write, and that plist parsed."""
    result = run(INSTALL, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^----- BEGIN (.+) -----\n(.*?)^----- END \1 -----$", result.stdout, re.M | re.S)
    assert match, result.stdout
    return result.stdout, Path(match.group(1)), plistlib.loads(match.group(2).encode())


def check_plist_types(value: Any, where: str = "") -> None:
    assert isinstance(value, PLIST_TYPES), f"{where}: {type(value).__name__} is not a launchd plist type"
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            check_plist_types(item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_plist_types(item, f"{where}[{i}]")


def test_agent_plist_renders_a_valid_launchd_job(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    out, path, job = dry_run(env, "--model-dir", str(model_dir), "--venv", str(venv))

    assert path == Path(env["HOME"]) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    check_plist_types(job)
    for key, value in job.items():
        assert key in LAUNCHD_KEYS, f"unexpected key {key}"
        assert isinstance(value, LAUNCHD_KEYS[key]), key
    assert plistlib.loads(plistlib.dumps(job)) == job  # what plutil -lint would accept round-trips

    assert job["Label"] == LABEL
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] is True or job["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(job["ThrottleInterval"], int) and not isinstance(job["ThrottleInterval"], bool)
    assert 1 <= job["ThrottleInterval"] <= 60
    assert job["ProcessType"] in {"Interactive", "Standard"}
    assert job["ExitTimeOut"] > 20  # longer than uvicorn's graceful shutdown
    soft, hard = job["SoftResourceLimits"]["NumberOfFiles"], job["HardResourceLimits"]["NumberOfFiles"]
    # launchd's default hard limit is unlimited, which setrlimit refuses as a soft limit.
    assert 1024 <= soft <= hard <= DARWIN_OPEN_MAX
    assert set(job["SoftResourceLimits"]) == set(job["HardResourceLimits"]) == {"NumberOfFiles"}
    assert "UserName" not in job  # an agent runs as the user who installed it

    args = job["ProgramArguments"]
    assert args[0] == str(venv / "bin" / "python") and Path(args[0]).is_absolute()
    assert args[1:] == ["-m", "app"]  # host, port and everything else come from DS_* variables
    assert job["EnvironmentVariables"]["DS_HOST"] == "127.0.0.1"
    assert job["EnvironmentVariables"]["DS_PORT"] == "8000"
    assert all(isinstance(a, str) for a in args)

    assert job["WorkingDirectory"] == str(REPO)
    environment = job["EnvironmentVariables"]
    assert environment["DS_MODEL_DIR"] == str(model_dir)  # XML-escaped in the file, exact once parsed
    assert Path(environment["DS_MODEL_DIR"]).is_absolute()
    assert environment["PATH"].startswith(str(venv / "bin") + ":")
    assert all(isinstance(v, str) for v in environment.values())
    logs = Path(env["HOME"]) / "Library" / "Logs" / LABEL
    assert job["StandardOutPath"] == str(logs / "stdout.log")
    assert job["StandardErrorPath"] == str(logs / "stderr.log")

    rendered = out.split("----- BEGIN", 1)[1].split("----- END", 1)[0]
    assert not re.search(r"@[A-Z_]+@", rendered), "a placeholder was left in the plist"
    assert rendered.split("\n", 1)[1].startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')

    domain = f"gui/{os.getuid()}"
    assert f"+ launchctl bootout {domain}/{LABEL}" in out
    assert f"+ launchctl bootstrap {domain} {path}" in out
    assert out.index("launchctl bootout") < out.index("launchctl bootstrap")
    assert f"launchctl print {domain}/{LABEL}" in out  # the status hint
    assert str(logs / "stderr.log") in out.split("----- END", 1)[1]  # log paths printed
    assert not path.exists() and not logs.exists()  # a dry run changes nothing


def test_options_and_env_pass_through(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    env = {**env, "DS_BEAM_WIDTH": "100", "DS_DECODER": "greedy"}
    _, path, job = dry_run(
        env,
        *("--model-dir", str(model_dir), "--venv", str(venv)),
        *("--host", "0.0.0.0", "--port", "8123", "--label", "org.example.stt"),
        *("--env", "DS_DECODER=beam", "--env", "DS_COMPUTE_UNITS=CPU_AND_NE", "--env", "NOTE=a<b>&c=d"),
        *("--log-dir", "/var/tmp/stt-logs"),
    )
    assert path.name == "org.example.stt.plist"
    assert job["Label"] == "org.example.stt"
    environment = job["EnvironmentVariables"]
    assert environment["DS_HOST"] == "0.0.0.0"
    assert environment["DS_PORT"] == "8123"
    assert environment["DS_BEAM_WIDTH"] == "100"  # from the shell
    assert environment["DS_DECODER"] == "beam"  # --env wins over the shell
    assert environment["DS_COMPUTE_UNITS"] == "CPU_AND_NE"
    assert environment["NOTE"] == "a<b>&c=d"
    assert job["StandardOutPath"] == "/var/tmp/stt-logs/stdout.log"


def test_wyoming_for_home_assistant(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    _, _, job = dry_run(
        env,
        *("--model-dir", str(model_dir), "--venv", str(venv)),
        *("--wyoming", "tcp://0.0.0.0:10300", "--zeroconf", "mac-mini-stt"),
    )
    assert job["EnvironmentVariables"]["DS_WYOMING_URI"] == "tcp://0.0.0.0:10300"
    assert job["EnvironmentVariables"]["DS_WYOMING_ZEROCONF"] == "mac-mini-stt"
    _, _, plain = dry_run(env, "--model-dir", str(model_dir), "--venv", str(venv))
    assert "DS_WYOMING_URI" not in plain["EnvironmentVariables"]  # off unless asked for


def test_a_batch_job_worker(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    out, path, job = dry_run(
        env, "--model-dir", str(model_dir), "--venv", str(venv), "--worker", "--redis", "redis://mini.local:6379/0"
    )
    assert job["ProgramArguments"][1:] == ["-m", "app.worker"]
    assert job["Label"] == "local.deepspeech.stt-worker" and path.name == "local.deepspeech.stt-worker.plist"
    assert job["EnvironmentVariables"]["DS_REDIS_URL"] == "redis://mini.local:6379/0"
    assert "jobs:    from redis://mini.local:6379/0" in out
    _, _, service = dry_run(env, "--model-dir", str(model_dir), "--venv", str(venv))
    assert service["ProgramArguments"][1:] == ["-m", "app"]


def test_model_dir_defaults_to_ds_model_dir_relative_to_where_you_run(
    env: dict[str, str], model_dir: Path, venv: Path
) -> None:
    env = {**env, "DS_MODEL_DIR": os.path.relpath(model_dir, REPO)}
    _, _, job = dry_run(env, "--venv", str(venv))
    assert job["EnvironmentVariables"]["DS_MODEL_DIR"] == str(model_dir)


def test_default_venv_is_the_repositorys(env: dict[str, str], model_dir: Path) -> None:
    if not (REPO / ".venv" / "bin" / "uvicorn").exists():
        pytest.skip("no .venv with uvicorn in this checkout (make venv)")
    _, _, job = dry_run(env, "--model-dir", str(model_dir))
    assert job["ProgramArguments"][0] == str(REPO / ".venv" / "bin" / "python")


def test_system_daemon(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    user = "nobody"
    out, path, job = dry_run(
        env, "--system", "--user", user, "--model-dir", str(model_dir), "--venv", str(venv)
    )
    assert path == Path("/Library/LaunchDaemons") / f"{LABEL}.plist"
    assert job["UserName"] == user
    assert job["InitGroups"] is True
    assert job["StandardOutPath"] == f"/Library/Logs/{LABEL}/stdout.log"
    assert f"+ launchctl bootout system/{LABEL}" in out
    assert f"+ launchctl bootstrap system {path}" in out
    assert f"+ chown {user} /Library/Logs/{LABEL}" in out
    assert f"sudo launchctl print system/{LABEL}" in out
    if os.geteuid() != 0:
        assert "needs sudo" in out

    # What the daemon's user must be able to do is printed (the fake sudo wants a password, so not run), the
    # reads before anything is created, the log writes once the logs are chowned, all before the bootstrap.
    assert "# (these checks run for real under sudo)" in out
    checks = [line for line in out.splitlines() if line.startswith(f"+ sudo -n -u {user} test ")]
    assert checks[:3] == [
        f"+ sudo -n -u {user} test -x {REPO}",
        f"+ sudo -n -u {user} test -r {REPO}/app/__main__.py",
        f"+ sudo -n -u {user} test -x {venv}/bin/python",
    ]
    assert checks[-2:] == [
        f"+ sudo -n -u {user} test -w /Library/Logs/{LABEL}/stdout.log",
        f"+ sudo -n -u {user} test -w /Library/Logs/{LABEL}/stderr.log",
    ]
    assert any(" test -r " in line and line.endswith("/manifest.json") for line in checks)
    assert out.index(checks[0]) < out.index("+ mkdir") < out.index("+ chown") < out.index(checks[-1])
    assert out.index(checks[-1]) < out.index("launchctl bootstrap")


@pytest.mark.parametrize(
    ("denied", "reason"),
    [
        ("{repo}", "cannot enter the checkout"),
        ("{repo}/app/__main__.py", "cannot read the service's code"),
        ("{venv}/bin/python", "cannot run the virtualenv's Python"),
        ("{venv}/pyvenv.cfg", "cannot read the virtualenv"),
        ("{model}/manifest.json", "cannot read the model directory"),
    ],
)
def test_a_daemon_user_that_cannot_read_is_refused(
    env: dict[str, str], model_dir: Path, venv: Path, denied: str, reason: str
) -> None:
    """Injected: the fake sudo runs the checks as the caller and fails the one naming `denied`."""
    path = denied.format(repo=REPO, venv=venv, model=model_dir)
    env = {**env, "FAKE_SUDO": "self", "FAKE_SUDO_DENY": path}
    result = run(
        INSTALL,
        *("--dry-run", "--system", "--user", "nobody", "--model-dir", str(model_dir), "--venv", str(venv)),
        env=env,
    )
    one_line_error(result, f"the daemon's user 'nobody' {reason}", path, "chmod o+rX", "--user NAME")
    assert "+ mkdir" not in result.stdout and "bootstrap" not in result.stdout  # refused before anything
    last_check = Path(env["FAKE_LAUNCHCTL_LOG"]).read_text().splitlines()[-1]
    # The check was run, not just printed.
    assert last_check.startswith("sudo -u nobody test -") and last_check.endswith(f" {path}")


@pytest.fixture
def temporary_user() -> Iterator[str]:
    """A real system user with no home, removed afterwards (needs root, runuser and useradd: Linux)."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("runuser", "useradd", "userdel")):
        pytest.skip("a temporary user needs root, runuser, useradd and userdel")
    name = f"dsstt-test-{os.getpid()}"
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if created.returncode != 0:
        pytest.skip(f"useradd failed: {created.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


def test_a_real_daemon_user_is_checked_as_that_user(env: dict[str, str], temporary_user: str) -> None:
    """The checks run as the daemon's user (the fake sudo switches with runuser, as sudo would): what it may read
    passes, a model directory only root can enter is refused with the reason."""
    if subprocess.run(["runuser", "-u", temporary_user, "--", "test", "-r", str(INSTALL)]).returncode != 0:
        pytest.skip(f"{REPO} is not readable by other users")
    # Not under tmp_path: pytest's base temporary directory is private to the user running the tests.
    shared = Path(tempfile.mkdtemp(prefix="stt-launchd-"))
    try:
        shared.chmod(0o755)
        venv = shared / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        for name in ("python", "uvicorn"):
            (venv / "bin" / name).write_text("#!/bin/sh\n")
            (venv / "bin" / name).chmod(0o755)
        model = shared / "model"
        model.mkdir()
        (model / "manifest.json").write_text("{}")
        args = [
            "--dry-run",
            "--system",
            "--user",
            temporary_user,
            "--model-dir",
            str(model),
            "--venv",
            str(venv),
        ]
        env = {**env, "FAKE_SUDO": "runuser"}

        result = run(INSTALL, *args, env=env)
        assert result.returncode == 0, result.stderr
        assert "run for real under sudo" not in result.stdout
        calls = Path(env["FAKE_LAUNCHCTL_LOG"]).read_text()
        assert f"sudo -u {temporary_user} test -r {model}/manifest.json" in calls  # run, not just printed

        model.chmod(0o700)  # root's alone
        result = run(INSTALL, *args, env=env)
        one_line_error(
            result, f"the daemon's user '{temporary_user}' cannot read the model directory", str(model)
        )
    finally:
        shutil.rmtree(shared)


def test_system_daemon_needs_root(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root")
    result = run(INSTALL, "--system", "--model-dir", str(model_dir), "--venv", str(venv), env=env)
    assert result.returncode != 0
    assert "sudo launchd/install.sh --system" in result.stderr


def copy_checkout(root: Path) -> Path:
    """The launchd scripts copied into a checkout at `root` (for the checks on where a checkout is); its
    install.sh."""
    (root / "launchd").mkdir(parents=True)
    for name in ("install.sh", "lib.sh", "local.deepspeech.stt.plist.in"):
        shutil.copy2(LAUNCHD / name, root / "launchd" / name)
    return root / "launchd" / "install.sh"


# Folders under HOME that macOS privacy protection (TCC) keeps launchd jobs out of, and how the error names them.
PROTECTED = [
    ("Documents", "~/Documents"),
    ("Desktop", "~/Desktop"),
    ("Downloads", "~/Downloads"),
    ("Library/Mobile Documents/com~apple~CloudDocs", "iCloud Drive (~/Library/Mobile Documents)"),
]


@pytest.mark.parametrize("what", ["checkout", "virtualenv", "model directory"])
@pytest.mark.parametrize(("folder", "place"), PROTECTED)
def test_protected_folders_are_refused(
    env: dict[str, str], model_dir: Path, venv: Path, what: str, folder: str, place: str
) -> None:
    inside = Path(env["HOME"]) / folder / "stt"
    script, venv_arg, model_arg = INSTALL, venv, model_dir
    if what == "checkout":
        script = copy_checkout(inside)
    elif what == "virtualenv":
        venv_arg = Path(shutil.copytree(venv, inside))
    else:
        model_arg = Path(shutil.copytree(model_dir, inside))
    result = run(script, "--dry-run", "--model-dir", str(model_arg), "--venv", str(venv_arg), env=env)
    one_line_error(result, f"the {what} {inside} is in {place}, ", "privacy protection (TCC)", "launchd jobs")
    assert result.stdout == ""


@pytest.mark.parametrize("what", ["checkout", "virtualenv", "model directory"])
def test_protected_folders_are_found_through_symlinks(
    env: dict[str, str], model_dir: Path, venv: Path, what: str
) -> None:
    home = Path(env["HOME"])
    real = home / "Downloads" / "stt"
    link = home / "stt"  # what the user typed; where the files are is what TCC checks
    script, venv_arg, model_arg = INSTALL, venv, model_dir
    if what == "checkout":
        copy_checkout(real)
        script = link / "launchd" / "install.sh"
    elif what == "virtualenv":
        shutil.copytree(venv, real)
        venv_arg = link
    else:
        shutil.copytree(model_dir, real)
        model_arg = link
    link.symlink_to(real)
    result = run(script, "--dry-run", "--model-dir", str(model_arg), "--venv", str(venv_arg), env=env)
    one_line_error(result, f"the {what} {link} (really {real}) is in ~/Downloads")


def test_folders_that_only_look_protected_are_fine(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    home = Path(env["HOME"])
    for near_miss in ("Documents-old/stt", "src/Documents/stt", "Library/Mobile"):
        model = Path(shutil.copytree(model_dir, home / near_miss))
        _, _, job = dry_run(env, "--model-dir", str(model), "--venv", str(venv))
        assert job["EnvironmentVariables"]["DS_MODEL_DIR"] == str(model)
    # A link out of a protected folder is fine, and is kept as given (a models/current link can be repointed).
    (home / "Documents").mkdir()
    (home / "Documents" / "current").symlink_to(model_dir)
    link = home / "models-current"
    link.symlink_to(model_dir)
    _, _, job = dry_run(env, "--model-dir", str(link), "--venv", str(venv))
    assert job["EnvironmentVariables"]["DS_MODEL_DIR"] == str(link)


@pytest.mark.parametrize(
    ("path", "place"),
    [
        ("/Volumes/Backup/stt", "an external volume (/Volumes/...)"),
        ("/Volumes/USB", "an external volume (/Volumes/...)"),
        ("/Users/me/Desktop", "~/Desktop"),
        ("/Users/me/Documents/src/stt", "~/Documents"),
        ("/Users/me/Library/Mobile Documents/x", "iCloud Drive (~/Library/Mobile Documents)"),
        ("/Users/other/Downloads/stt", "/Users/.../Downloads"),  # a daemon's --user may not be HOME's owner
        ("/Users/other/Library/Mobile Documents/x", "iCloud Drive (/Users/.../Library/Mobile Documents)"),
        ("/Users/me", ""),
        ("/Users/me/src/stt", ""),
        ("/Users/me/Documents2/stt", ""),
        ("/Users/me/src/Documents/stt", ""),
        ("/Users/other/src/Downloads", ""),
        ("/usr/local/stt", ""),
        ("/VolumesX/stt", ""),
    ],
)
def test_protected_place(path: str, place: str) -> None:
    """lib.sh's classification of a resolved path, /Volumes included (which cannot be made on Linux)."""
    result = subprocess.run(
        ["bash", "-c", 'prog=test; source "$1"; protected_place "$2" "$3"', "-", str(LIB), path, "/Users/me"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == place


def test_help_names_what_the_job_runs(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    result = run(INSTALL, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert "bin/python -m app" in result.stdout
    assert "uvicorn" not in result.stdout  # the job runs python -m app, not uvicorn's command line
    assert "~/Documents" in result.stdout and "/Volumes" in result.stdout
    _, _, job = dry_run(env, "--model-dir", str(model_dir), "--venv", str(venv))
    assert job["ProgramArguments"][1:] == ["-m", "app"]


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("install.sh: error: ", "uninstall.sh: error: ")), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bogus"], ["unknown option '--bogus'"]),
        (["--port", "http"], ["--port", "'http'"]),
        (["--port", "0"], ["--port"]),
        (["--port", "65536"], ["--port"]),
        (["--port"], ["--port needs a value"]),
        (["--env", "NOEQUALS"], ["KEY=VALUE"]),
        (["--env", "1BAD=x"], ["not an environment variable name"]),
        (["--env", "DS_MODEL_DIR=/x"], ["--model-dir"]),
        (["--env", "DS_PORT=9000"], ["--host/--port"]),
        (["--label", "bad label"], ["--label"]),
        (["--host", "a b"], ["--host"]),
        (["--user", "nobody"], ["--system"]),
        (["--system", "--user", "no-such-user-here"], ["no user named"]),
        (["--wyoming", "http://0.0.0.0:10300"], ["--wyoming", "tcp://HOST:PORT"]),
        (["--worker"], ["--worker needs --redis"]),
        (["--redis", "mini:6379"], ["--redis must be redis://"]),
        (["--wyoming", "tcp://0.0.0.0"], ["--wyoming"]),
        (["--zeroconf", "stt"], ["--zeroconf needs --wyoming"]),
        (["--wyoming", "tcp://0.0.0.0:10300", "--zeroconf", "a b"], ["--zeroconf NAME"]),
    ],
)
def test_bad_options(
    env: dict[str, str], model_dir: Path, venv: Path, args: list[str], expected: list[str]
) -> None:
    result = run(INSTALL, "--dry-run", "--model-dir", str(model_dir), "--venv", str(venv), *args, env=env)
    one_line_error(result, *expected)
    assert result.stdout == ""


def test_missing_model_dir_says_what_to_run(env: dict[str, str], tmp_path: Path, venv: Path) -> None:
    result = run(INSTALL, "--dry-run", "--model-dir", str(tmp_path / "nope"), "--venv", str(venv), env=env)
    one_line_error(result, "no model directory", "make serve")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(INSTALL, "--dry-run", "--model-dir", str(empty), "--venv", str(venv), env=env)
    one_line_error(result, "manifest.json", "make serve", "scripts/convert.py")


def test_missing_venv_says_what_to_run(env: dict[str, str], model_dir: Path, tmp_path: Path) -> None:
    result = run(
        INSTALL, "--dry-run", "--model-dir", str(model_dir), "--venv", str(tmp_path / "nope"), env=env
    )
    one_line_error(result, "make venv")
    bare = tmp_path / "bare"
    (bare / "bin").mkdir(parents=True)
    result = run(INSTALL, "--dry-run", "--model-dir", str(model_dir), "--venv", str(bare), env=env)
    one_line_error(result, "uvicorn", "make venv")


def test_agent_under_sudo_is_refused(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")
    result = run(
        INSTALL, "--model-dir", str(model_dir), "--venv", str(venv), env={**env, "SUDO_USER": "someone"}
    )
    one_line_error(result, "without sudo")


def launchctl_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_LAUNCHCTL_LOG"])
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_install_and_uninstall_for_real_are_idempotent(
    env: dict[str, str], model_dir: Path, venv: Path
) -> None:
    service = f"gui/{os.getuid()}/{LABEL}"
    plist = Path(env["HOME"]) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    logs = Path(env["HOME"]) / "Library" / "Logs" / LABEL
    args = ("--model-dir", str(model_dir), "--venv", str(venv), "--wait", "0")

    first = run(INSTALL, *args, env=env)
    assert first.returncode == 0, first.stderr
    calls = launchctl_calls(env)
    assert calls[0].startswith(f"plutil -lint {plist}.tmp.")
    assert calls[1:] == [
        f"print {service}",
        f"enable {service}",
        f"bootstrap gui/{os.getuid()} {plist}",
    ]
    job = plistlib.loads(plist.read_bytes())
    assert job["EnvironmentVariables"]["DS_MODEL_DIR"] == str(model_dir)
    assert stat.S_IMODE(plist.stat().st_mode) == 0o644
    assert logs.is_dir()
    assert list(plist.parent.iterdir()) == [plist]  # no temporary file left behind

    # Again, with a secret: the loaded job is booted out and replaced, and the plist becomes owner-only.
    second = run(INSTALL, *args, "--port", "8001", "--env", "DS_API_KEY=s3cret", env=env)
    assert second.returncode == 0, second.stderr
    calls = launchctl_calls(env)
    assert calls[1:3] == [f"print {service}", f"bootout {service}"]
    assert calls[-1] == f"bootstrap gui/{os.getuid()} {plist}"
    job = plistlib.loads(plist.read_bytes())
    assert job["EnvironmentVariables"]["DS_PORT"] == "8001"
    assert job["EnvironmentVariables"]["DS_API_KEY"] == "s3cret"
    assert stat.S_IMODE(plist.stat().st_mode) == 0o600

    removed = run(UNINSTALL, env=env)
    assert removed.returncode == 0, removed.stderr
    assert f"bootout {service}" in launchctl_calls(env)
    assert not plist.exists()
    assert logs.is_dir()  # logs are kept by default

    again = run(UNINSTALL, "--remove-logs", env=env)
    assert again.returncode == 0, again.stderr
    assert "not loaded" in again.stdout
    assert "bootout" not in " ".join(launchctl_calls(env))
    assert not logs.exists()


def test_a_failed_bootstrap_says_why(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    result = run(
        INSTALL,
        *("--model-dir", str(model_dir), "--venv", str(venv), "--wait", "0"),
        env={**env, "FAKE_BOOTSTRAP_FAIL": "1"},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("install.sh: error: launchctl bootstrap gui/"), result.stderr
    assert "stderr.log" in last and "--system" in last


def test_uninstall_dry_run(env: dict[str, str]) -> None:
    result = run(UNINSTALL, "--dry-run", "--system", "--label", "org.example.stt", env=env)
    assert result.returncode == 0, result.stderr
    assert "+ launchctl bootout system/org.example.stt" in result.stdout
    assert "+ rm -f /Library/LaunchDaemons/org.example.stt.plist" in result.stdout
    assert not Path(env["FAKE_LAUNCHCTL_LOG"]).exists()
    one_line_error(run(UNINSTALL, "--nope", env=env), "unknown option '--nope'")


def test_without_launchctl_the_scripts_say_so(env: dict[str, str], model_dir: Path, venv: Path) -> None:
    if shutil.which("launchctl", path=os.environ.get("PATH")):
        pytest.skip("a real launchctl is installed")
    env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    one_line_error(
        run(INSTALL, "--model-dir", str(model_dir), "--venv", str(venv), env=env), "launchctl not found"
    )
    one_line_error(run(UNINSTALL, env=env), "launchctl not found")


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; make test installs it)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", "--external-sources", str(INSTALL), str(UNINSTALL)],
        cwd=REPO,  # `source=launchd/lib.sh` directives are relative to the repository
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable_bash() -> None:
    for script in (INSTALL, UNINSTALL):
        assert script.read_text().startswith("#!/bin/bash\n")  # macOS's /bin/bash
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
