"""deploy/image-check.sh, checked statically: it parses, it still matches the Dockerfile, it makes every check.

The script itself builds the image with buildah and serves it (minutes, root, GBs of disk): it is run by hand
or by its own CI step (docs/operations.md, "Checking the image without Docker"), never from here.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO

SCRIPT = REPO / "deploy" / "image-check.sh"
DOCKERFILE = (REPO / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def script() -> str:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing"
    return SCRIPT.read_text()


def test_parses_and_is_strict(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in script
    assert "\ntrap cleanup EXIT\n" in script, "the server, mounts and containers must go on any exit"


def test_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is missing (Debian: apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_builds_the_dockerfile_unchanged_without_a_registry(script: str) -> None:
    # The stand-in base the script makes is the one every FROM names, with the Dockerfile's PYTHON_VERSION.
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)$", DOCKERFILE, re.M)
    assert version
    bases = {b.replace("${PYTHON_VERSION}", version.group(1)) for b in re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)}
    assert bases == {"python:3.11-slim-bookworm"}, f"the script's stand-in base no longer matches: {bases}"
    assert '[ "$from" = "python:3.11-slim-bookworm" ]' in script
    assert "debootstrap --variant=minbase" in script and "EXTERNALLY-MANAGED" in script
    # buildah on vfs with chroot isolation, the repository's Dockerfile as it is, nothing pulled.
    build = re.search(r"bh build (.*?)>\"\$WORK/build.log\"", script, re.S)
    assert build, "no `bh build` line"
    for flag in ("--isolation chroot", "--pull=never", '--file "$context/Dockerfile"'):
        assert flag in build.group(1), flag
    assert "--storage-driver vfs" in script
    assert "--build-arg EXTRAS" not in script, "EXTRAS must stay the Dockerfile's default"


def test_serves_from_the_image_root_as_its_user(script: str) -> None:
    # The image's user is the Dockerfile's uid, and the script checks for that very uid.
    uid = re.search(r"useradd .*--uid (\d+)", DOCKERFILE)
    assert uid and re.search(rf"^USER {uid.group(1)}$", DOCKERFILE, re.M)
    assert re.search(rf"^APP_UID={uid.group(1)}\b", script, re.M)
    assert 'setsid chroot --userspec="$user:$gid" "$serve_root"' in script  # not `podman run` (setrlimit)
    # The image's CMD keeps --host and --port, which the script moves to 127.0.0.1 and a free port.
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd and '"--host"' in cmd.group(1) and '"--port"' in cmd.group(1)
    assert '("--host", "127.0.0.1")' in script


def test_makes_every_check(script: str) -> None:
    checks = {
        "readiness within a bounded wait": ['"$base_url/readyz"', "deadline=$((SECONDS + READY_S))"],
        "one sample": ["""-d '{"n": 1}' "$base_url/generate" """.strip(), '"images"', '"latents"', "(28, 28)"],
        "non-root uid": ["^Uid:", "^Gid:", "root group"],
        "no tests/ or docs/": ["for folder in tests docs", '("tests", "docs")'],
        "a clean stop": ['kill -TERM "$server_pid"', "Application shutdown complete"],
        "the image size": ["{{.Size}}", 'say "ok: image $IMAGE, size $size"'],
        "a clear failure": ['echo "image-check: FAILED: $*" >&2', "exit 1"],
    }
    for check, needles in checks.items():
        for needle in needles:
            assert needle in script, f"{check}: {needle!r} is gone"


def test_talks_to_loopback_only_and_every_wait_is_bounded(script: str) -> None:
    urls = set(re.findall(r"https?://[^\s\"'/:]+", script))
    assert urls <= {"http://127.0.0.1", "http://deb.debian.org"}, urls  # the Debian mirror: debootstrap's default
    for line in script.splitlines():
        if re.match(r"\s*(code=\$\()?curl ", line):
            assert "--max-time" in line, line
        if re.match(r"\s*(\{ )?(timeout \d+ )?apt-get ", line):
            assert "timeout" in line and "Lock::Timeout" in line, line
    assert re.search(r"^bh\(\) \{ timeout ", script, re.M), "every buildah call runs under timeout"
    assert 'timeout "$BASE_S" debootstrap' in script


def test_documented() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "## Checking the image without Docker" in operations
    assert "bash deploy/image-check.sh" in operations
