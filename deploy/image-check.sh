#!/usr/bin/env bash
# Builds the service image from the Dockerfile, unchanged, without Docker, serves it from the image's own root
# filesystem as the image's user, and checks that it answers. As root (buildah, mount and chroot need it):
#
#   bash deploy/image-check.sh    # here (2 cores): ~4 min from nothing, ~3 min after (docs/operations.md)
#
# No Docker engine here, and `podman run` is refused: it raises resource limits, and the container this machine
# is lacks CAP_SYS_RESOURCE, so setrlimit fails. So, in steps:
#   1. Debian's buildah and debootstrap (and curl, python3, git), installed if missing.
#   2. A stand-in for the Dockerfile's base image, python:3.11-slim-bookworm: Debian bookworm (debootstrap,
#      minbase) with Debian's python3.11, python3-venv and pip, `python` and `pip` in /usr/local/bin and no
#      EXTERNALLY-MANAGED marker, stored under the exact name FROM uses, so nothing is ever pulled
#      (--pull=never). Made once, reused after.
#   3. `buildah build --isolation chroot` on the vfs storage driver (no overlay, no user namespaces: both work
#      inside a container) of the Dockerfile as it is, from a snapshot of the checkout. pip inside the build
#      gets this machine's pip configuration (indexes, find-links folder, CA bundle) through a bind mount that
#      exists only while a RUN step runs, never as a file or ENV of the image: the torch wheel comes from the
#      local find-links folder, and PyPI is reached through a proxy whose CA only this machine's bundle holds.
#      No --layers: buildah 1.28 (bookworm's) cannot bind-mount a stage taken from its cache (RUN
#      --mount=from=builder finds no /wheels; buildah issue #4375), and may reuse a RUN --mount layer after the
#      mounted stage changed (#4522). Each run builds everything; the base is what is reused.
#   4. A working container of the image (a writable copy of its root, thrown away at the end). `chroot
#      --userspec` runs the image's CMD there as the image's USER and its primary group, with the image's ENV,
#      HOME and WORKDIR (what `podman run` would do), its --host and --port swapped for 127.0.0.1 and a free
#      port. Then it checks:
#        - GET /readyz turns 200 within IMAGE_CHECK_READY_S;
#        - the server process runs as uid 10001 (real, effective, saved), not in the root group;
#        - POST /generate {"n": 1} answers 200 with the response's fields, one 28x28 PNG and one latent;
#        - no tests/ or docs/ in the app dir (WORKDIR), no /src, none in the installed wheel, nothing left of
#          the build's mounts; the installed packages are the build context's, file for file;
#        - SIGTERM stops it cleanly within the grace period;
#      and prints the image's size. A failed check exits non-zero with a line saying which ("FAILED: ...").
# Every wait is bounded (timeout, curl --max-time, deadlines); the checks' traffic goes to 127.0.0.1 only (apt,
# debootstrap and pip reach their mirrors and indexes while installing and building). The server, the mounts
# and the working containers are cleaned up on any exit.
#
# Settings (environment):
#   IMAGE_CHECK_DIR          buildah's storage (vfs) and the logs, ~1.5 GB; default /var/tmp/latent-cnf-image-check
#   IMAGE_CHECK_IMAGE        the image's name, default localhost/latent-cnf:image-check
#   IMAGE_CHECK_VARIANT      the Dockerfile's VARIANT, default cpu (below); EXTRAS stays the Dockerfile's default
#   IMAGE_CHECK_MIRROR       the Debian mirror for debootstrap, default http://deb.debian.org/debian
#   IMAGE_CHECK_READY_S      how long /readyz may take to turn 200, default 300
#   IMAGE_CHECK_BUILD_S      how long the build may take, default 3600
#   IMAGE_CHECK_PIP_RETRIES  pip's retries in the build (default: pip's, 5); 1 saves ~70 s here (below)
# VARIANT=cpu is the build docker-compose.cpu.yml makes: torch from PyTorch's CPU index. That index is
# unreachable here; pip retries it for each of torch's packages (~70 s in all), then takes the same CPU wheel
# (torch-2.13.0+cpu) from this machine's find-links folder. VARIANT=cuda would take the CUDA build from PyPI
# anywhere else (GBs of NVIDIA libraries); here it too gets the +cpu wheel (a local version sorts above 2.13.0).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${IMAGE_CHECK_DIR:-/var/tmp/latent-cnf-image-check}
IMAGE=${IMAGE_CHECK_IMAGE:-localhost/latent-cnf:image-check}
VARIANT=${IMAGE_CHECK_VARIANT:-cpu}
MIRROR=${IMAGE_CHECK_MIRROR:-http://deb.debian.org/debian}
READY_S=${IMAGE_CHECK_READY_S:-300}
BUILD_S=${IMAGE_CHECK_BUILD_S:-3600}
BASE_S=1800         # debootstrap and committing the base
REQUEST_S=120       # one /generate (the first sample also warms the solver)
STOP_S=40           # the server's graceful stop (CMD gives requests 30 s)
APP_UID=10001       # the Dockerfile's `useradd --uid` and USER; Kubernetes' runAsNonRoot relies on it
SERVE_NAME=latent-cnf-image-check-serve
BASE_NAME=latent-cnf-image-check-base
STORE=$WORK/storage
RUNROOT=$WORK/run

say() { echo "image-check: $*"; }
fail() {
    echo "image-check: FAILED: $*" >&2
    exit 1
}
# buildah on this check's own storage (vfs), never the machine's default one; every call bounded.
bh() { timeout "${BH_S:-600}" buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs "$@"; }

[ "$(id -u)" = 0 ] || fail "run as root: buildah, mount and chroot need it"
mkdir -p "$WORK"

# --- cleanup: the server, the mounts in the served root, the working containers -----------------------------
server_pid=""
serve_root=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq "$STOP_S"); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 1
        done
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ]; then
        kill -KILL -- "-$server_pid" 2>/dev/null || true   # its process group: it, and any child it left
        wait "$server_pid" 2>/dev/null || true
    fi
    unmount_under "$WORK"
    BH_S=300 bh rm --all >/dev/null 2>&1 || true   # the served copy; a failed build's containers too
    exit "$status"
}
# Every mount below a folder, deepest first: /proc and /dev of the served root, the pip folders of the build.
unmount_under() {
    [ -d "$1" ] || return 0
    local m
    awk -v root="$1/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. tools -----------------------------------------------------------------------------------------------
# As deploy/install-debian.sh, but waiting (bounded) for apt's lock: other installs may be running.
missing=()
for tool in buildah debootstrap curl python3 git; do   # each command is its package's name
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing from Debian: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { timeout 600 apt-get -o DPkg::Lock::Timeout=300 update -qq &&
        timeout 900 apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$WORK/apt.log" 2>&1 || fail "apt-get could not install ${missing[*]} (log: $WORK/apt.log)"
    say "installed in $SECONDS s"
fi
exec 9>"$WORK/lock"                 # one check at a time on this storage
flock -n 9 || fail "another image-check is running on $WORK (its lock: $WORK/lock)"
unmount_under "$WORK"               # a previous run killed with -9 may have left its mounts,
BH_S=300 bh rm --all >/dev/null     # ... and working containers (of this check's own storage only)

# --- 2. the stand-in base image -----------------------------------------------------------------------------
# The name FROM resolves to: python:${PYTHON_VERSION}-slim-bookworm with the Dockerfile's PYTHON_VERSION.
python_version=$(sed -n 's/^ARG PYTHON_VERSION=\(.*\)$/\1/p' "$REPO/Dockerfile" | head -1)
from=$(sed -n 's/^FROM \([^ ]*\).*$/\1/p' "$REPO/Dockerfile" | sort -u | tr '\n' ' ' | sed 's/ $//')
from=${from//\$\{PYTHON_VERSION\}/$python_version}
[ "$from" = "python:3.11-slim-bookworm" ] ||
    fail "the Dockerfile's base images are '$from'; the stand-in made here is python:3.11-slim-bookworm only"
base=docker.io/library/$from                  # what the short name means to buildah (and Docker)
if BH_S=60 bh inspect --type image "$base" >/dev/null 2>&1; then
    say "base: $base (the stand-in made earlier)"
else
    say "base: making the stand-in $base from Debian bookworm ($MIRROR)"
    base_start=$SECONDS
    bh from --name "$BASE_NAME" scratch >/dev/null
    root=$(bh mount "$BASE_NAME")
    timeout "$BASE_S" debootstrap --variant=minbase \
        --include=python3.11,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
        bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        fail "debootstrap failed (log: $WORK/debootstrap.log): $(tail -3 "$WORK/debootstrap.log")"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"    # the official image has both on PATH
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED       # pip may install system-wide, as in the official one
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    bh umount "$BASE_NAME" >/dev/null
    # The official image's config: PATH with /usr/local/bin first, a UTF-8 locale, python3 as the command.
    bh config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --env PYTHON_VERSION="$python_version" --cmd '["python3"]' --created-by "deploy/image-check.sh (debootstrap)" \
        "$BASE_NAME"
    BH_S=$BASE_S bh commit --quiet --rm --format docker "$BASE_NAME" "$base" >/dev/null
    say "base: made in $((SECONDS - base_start)) s"
fi

# --- 3. the build -------------------------------------------------------------------------------------------
# The build context: a snapshot of the checkout (tracked files and untracked ones git does not ignore, as a
# fresh clone with these edits would hold; .venv, caches and runs/ stay out), so that edits made meanwhile
# neither reach the build half-way nor fail the comparison with the image below. The Dockerfile's
# .dockerignore then applies to it as to any context.
context=$WORK/context
rm -rf "$context"
mkdir -p "$context"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && git -c safe.directory="$REPO" ls-files -z --cached --others --exclude-standard |
        tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$context"
else
    tar -C "$REPO" --exclude=./.venv --exclude=./.git -cf - . | tar -xf - -C "$context"
fi
[ -f "$context/Dockerfile" ] || fail "the build context $context has no Dockerfile"
# pip inside the build gets this machine's pip configuration (`pip config list`: its files and PIP_* variables):
# its indexes, find-links folders and CA bundle. They reach RUN steps through one bind mount over /root (root's
# home, which pip reads ~/.config/pip/pip.conf from), a folder holding the pip.conf, a copy of the CA bundle and
# read-only bind mounts of every local folder the configuration names. A bind mount over a path the image lacks
# (/etc/pip.conf, /opt/wheels) would leave an empty file or folder behind in the image (buildah creates the
# mount point in the layer); /root exists in the base and comes out of each RUN as it went in.
pip_root=$WORK/pip-root
unmount_under "$pip_root"
rmdir "$pip_root"/local-* 2>/dev/null || true    # empty mount points only; never rm -r here (see above)
mkdir -p "$pip_root/.config/pip"
python3 - "$pip_root" >"$WORK/pip-mounts" <<'EOF'
import ast, os, shutil, subprocess, sys

staging = sys.argv[1]
try:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
except (OSError, subprocess.SubprocessError):
    listed = ""
files, env = {}, {}
for line in listed.splitlines():  # e.g. global.find-links='/opt/wheels' or :env:.cert='/etc/ssl/...'
    key, _, value = line.partition("=")
    scope, _, name = key.rpartition(".")
    if value:
        (env if scope == ":env:" else files)[name] = ast.literal_eval(value)
values = {**files, **env}  # PIP_* variables override the files, as for pip itself
mounts = {}  # host folder -> its name in the staging folder


def inside(path):
    """Where the build sees a host folder: bind-mounted into the staging folder, which is /root there."""
    if path not in mounts:
        mounts[path] = f"local-{len(mounts)}"
    return f"/root/{mounts[path]}"


lines = ["[global]"]
for name in ("index-url", "extra-index-url", "find-links"):
    items = []
    for item in str(values.get(name, "")).split():
        path = item.removeprefix("file://").rstrip("/")
        if path.startswith("/") and os.path.isdir(path):
            # A file:// simple index links to ../../files/...: mount the folder above it.
            top = path if name == "find-links" else os.path.dirname(path)
            item = item.replace(top, inside(top), 1)
        items.append(item)
    if items:
        lines.append(f"{name} = {' '.join(items)}")
if os.environ.get("IMAGE_CHECK_PIP_RETRIES"):  # see the settings at the top
    values["retries"] = os.environ["IMAGE_CHECK_PIP_RETRIES"]
for name in ("trusted-host", "default-timeout", "timeout", "retries"):
    if name in values:
        lines.append(f"{name} = {values[name]}")
ca = values.get("cert") or os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(ca):
    shutil.copyfile(ca, os.path.join(staging, "ca-bundle.crt"))
    lines.append("cert = /root/ca-bundle.crt")
with open(os.path.join(staging, ".config", "pip", "pip.conf"), "w") as f:
    f.write("\n".join(lines) + "\n")
for path, name in mounts.items():
    print(f"{path}\t{name}")
EOF
while IFS=$'\t' read -r host_path name; do
    mkdir -p "$pip_root/$name"
    mount --bind -o ro "$host_path" "$pip_root/$name"
done <"$WORK/pip-mounts"
say "build: $IMAGE (VARIANT=$VARIANT, the Dockerfile's EXTRAS); pip: $(grep -v '^\[' "$pip_root/.config/pip/pip.conf" |
    tr '\n' ';')"
build_start=$SECONDS
BH_S=$BUILD_S bh build --isolation chroot --pull=never --format docker \
    --build-arg VARIANT="$VARIANT" --volume "$pip_root:/root:ro" --tag "$IMAGE" --file "$context/Dockerfile" \
    "$context" \
    >"$WORK/build.log" 2>&1 ||
    fail "the build failed (log: $WORK/build.log):
$(tail -20 "$WORK/build.log")"
say "build: done in $((SECONDS - build_start)) s (log: $WORK/build.log)"
unmount_under "$pip_root"
BH_S=300 bh rmi --prune >/dev/null 2>&1 || true   # the previous build's image, untagged now (vfs: ~2 GB each)

# --- 4. serve from the image's root, as the image's user -------------------------------------------------------
config=$WORK/image-config.json
BH_S=60 bh inspect --type image "$IMAGE" >"$config"
size=$(BH_S=60 bh images --format '{{.Size}}' "$IMAGE" | head -1)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The image's USER, WORKDIR, ENV and CMD (with --host/--port replaced), one per line: what `podman run` uses.
mapfile -t run_spec < <(python3 - "$config" "$port" <<'EOF'
import json, sys

config = json.load(open(sys.argv[1]))["OCIv1"]["config"]
command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
for flag, value in (("--host", "127.0.0.1"), ("--port", sys.argv[2])):
    if flag not in command[:-1]:
        sys.exit(f"the image's command {command} has no {flag}: cannot move it to 127.0.0.1:{sys.argv[2]}")
    command[command.index(flag) + 1] = value
print(config.get("User") or "")
print(config.get("WorkingDir") or "/")
print(len(config.get("Env") or []))
print("\n".join(config.get("Env") or []))
print("\n".join(command))
EOF
) || fail "cannot read the image's configuration ($config)"
user=${run_spec[0]}
workdir=${run_spec[1]}
n_env=${run_spec[2]}
image_env=("${run_spec[@]:3:$n_env}")
command=("${run_spec[@]:$((3 + n_env))}")
[ "$user" = "$APP_UID" ] || fail "the image's USER is '$user', not $APP_UID (numeric, for runAsNonRoot)"

bh from --pull=never --name "$SERVE_NAME" "$IMAGE" >/dev/null
serve_root=$(bh mount "$SERVE_NAME")
# What a container runtime provides: /proc, and a minimal /dev of its own (none of the host's devices).
mount -t proc proc "$serve_root/proc"
mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs "$serve_root/dev"
for node in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    read -r name major minor <<<"$node"
    mknod -m 666 "$serve_root/dev/$name" c "$major" "$minor"
done
mkdir -m 1777 "$serve_root/dev/shm"
ln -s /proc/self/fd "$serve_root/dev/fd"
ln -s /proc/self/fd/0 "$serve_root/dev/stdin"
ln -s /proc/self/fd/1 "$serve_root/dev/stdout"
ln -s /proc/self/fd/2 "$serve_root/dev/stderr"
# As Docker does for `USER <uid>`: the group is the user's primary group and HOME its home, from the image's
# /etc/passwd; chroot adds the user's supplementary groups from the image's /etc/group.
IFS=: read -r gid home < <(awk -F: -v uid="$user" '$3 == uid { print $4 ":" $6 }' "$serve_root/etc/passwd")
[ -n "$gid" ] || fail "uid $user has no entry in the image's /etc/passwd"
server_log=$WORK/server.log
say "serve: chroot --userspec=$user:$gid <image root> ${command[*]} (cwd $workdir)"
setsid chroot --userspec="$user:$gid" "$serve_root" /usr/bin/env -i -C "$workdir" "HOME=$home" "${image_env[@]}" \
    "${command[@]}" >"$server_log" 2>&1 </dev/null &
server_pid=$!                       # setsid, chroot and env exec: this is the server's pid, and its group's
base_url=http://127.0.0.1:$port

# /readyz: 200 once every model is tried and the default one is warm.
deadline=$((SECONDS + READY_S))
ready_start=$SECONDS
code=000
while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited before /readyz was 200:
$(tail -20 "$server_log")"
    code=$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 5 "$base_url/readyz" || true)
    [ "$code" = 200 ] && break
    sleep 1
done
[ "$code" = 200 ] || fail "GET /readyz was not 200 within ${READY_S} s (last: $code):
$(tail -20 "$server_log")"
say "ok: GET /readyz 200 after $((SECONDS - ready_start)) s"

# The process: uid 10001 (real, effective, saved, filesystem), its group, no root group, the given command.
read -r _ uids < <(grep '^Uid:' "/proc/$server_pid/status")
read -r _ gids < <(grep '^Gid:' "/proc/$server_pid/status")
read -r _ groups < <(grep '^Groups:' "/proc/$server_pid/status") || groups=""
[ "$uids" = "$(printf '%s\t%s\t%s\t%s' "$APP_UID" "$APP_UID" "$APP_UID" "$APP_UID")" ] ||
    fail "the server (pid $server_pid) runs as uids '$uids', not $APP_UID"
if [ "$gids" != "$(printf '%s\t%s\t%s\t%s' "$gid" "$gid" "$gid" "$gid")" ] || [ "$gid" = 0 ]; then
    fail "the server (pid $server_pid) runs with gids '$gids', not $gid (the user's group, not root's)"
fi
for group in $groups; do
    [ "$group" != 0 ] || fail "the server (pid $server_pid) is in the root group"
done
server_command=$(tr '\0' ' ' <"/proc/$server_pid/cmdline")
[[ "$server_command" == *"-m service"* ]] || fail "process $server_pid is not the service: $server_command"
say "ok: the server (pid $server_pid) runs as uid $APP_UID, gid $gid, non-root: $server_command"

# One sample: 200, the response's fields, one 28x28 PNG and one latent.
body=$WORK/generate.json
code=$(curl --noproxy '*' -s -o "$body" -w '%{http_code}' --max-time "$REQUEST_S" \
    -H 'Content-Type: application/json' -d '{"n": 1}' "$base_url/generate" || true)
[ "$code" = 200 ] || fail "POST /generate {\"n\": 1} answered $code, not 200: $(head -c 500 "$body" 2>/dev/null)"
python3 - "$body" <<'EOF' || fail "POST /generate's body is not a generate response: $(head -c 500 "$body")"
import base64, json, struct, sys

answer = json.load(open(sys.argv[1]))
fields = {"model", "n", "label", "labels", "seed", "temperature", "nfe", "images", "latents"}
assert fields <= answer.keys(), f"fields missing: {sorted(fields - answer.keys())}"
assert answer["n"] == 1 and len(answer["images"]) == 1 and len(answer["latents"]) == 1, "not one sample"
png = base64.b64decode(answer["images"][0], validate=True)
assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "images[0] is not a PNG"
assert struct.unpack(">II", png[16:24]) == (28, 28), f"images[0] is {struct.unpack('>II', png[16:24])}, not 28x28"
assert answer["latents"][0] and all(isinstance(v, float) for v in answer["latents"][0]), "latents[0] is no vector"
assert isinstance(answer["seed"], int) and answer["nfe"] > 0, "no seed or no function evaluations"
print(f"image-check: ok: POST /generate 200: model {answer['model']}, one 28x28 PNG, "
      f"a {len(answer['latents'][0])}-dim latent, nfe {answer['nfe']}")
EOF

# What the image holds: no tests/ or docs/ in the app dir, no source tree, none in the wheel; and the installed
# packages are the build context's, file for file (every module and checkpoint made it into the wheel).
for folder in tests docs; do
    [ ! -e "$serve_root$workdir/$folder" ] || fail "$workdir/$folder is in the image"
done
[ ! -e "$serve_root/src" ] || fail "/src (the builder's source tree) is in the image"
for left in root/.config/pip root/ca-bundle.crt root/local-0 etc/pip.conf; do   # this check's build mounts
    [ ! -e "$serve_root/$left" ] || fail "/$left, a mount point of this check's build, was left in the image"
done
python3 - "$serve_root" "$context" <<'EOF' || fail "the image's installed packages are not the build context's"
import base64, csv, glob, hashlib, os, sys

root, repo = sys.argv[1:]
records = glob.glob(os.path.join(root, "usr/local/lib/python3*/*-packages/latent_cnf-*.dist-info/RECORD"))
assert len(records) == 1, f"expected one installed latent_cnf, found {records}"
site = os.path.dirname(os.path.dirname(records[0]))
paths = {row[0]: row[1] for row in csv.reader(open(records[0])) if row}
bad = [p for p in paths if p.split("/")[0] in ("tests", "docs")]
assert not bad, f"the wheel installs {bad[:5]}"
stale = []
for path, digest in paths.items():
    if path.split("/")[0] not in ("latent_cnf", "service", "train") or not digest:
        continue
    source = os.path.join(repo, path)
    if not os.path.isfile(source):
        stale.append(f"{path} (not in the context)")
        continue
    ours = base64.urlsafe_b64encode(hashlib.sha256(open(source, "rb").read()).digest()).rstrip(b"=").decode()
    if f"sha256={ours}" != digest:
        stale.append(path)
for package in ("latent_cnf", "service", "train"):
    for source in glob.glob(os.path.join(repo, package, "**", "*.py"), recursive=True):
        path = os.path.relpath(source, repo)
        if path not in paths:
            stale.append(f"{path} (not in the image)")
assert not stale, f"{len(stale)} files differ from the build context: {stale[:8]}"
print(f"image-check: ok: no tests/ or docs/ in the app dir, no /src; the {len(paths)} installed files of "
      f"latent_cnf match the build context ({site.removeprefix(root)})")
EOF

# A clean stop, as on `docker stop`: SIGTERM ends it within the grace period.
kill -TERM "$server_pid"
stop_start=$SECONDS
while kill -0 "$server_pid" 2>/dev/null && [ $((SECONDS - stop_start)) -lt "$STOP_S" ]; do
    sleep 1
done
kill -0 "$server_pid" 2>/dev/null && fail "the server did not stop within ${STOP_S} s of SIGTERM"
stop_status=0
wait "$server_pid" || stop_status=$?
kill -KILL -- "-$server_pid" 2>/dev/null || true     # any child it left (none expected)
server_pid=""
# uvicorn re-raises the signal once shut down, so 143 (killed by SIGTERM) is a clean stop too; its log says.
if ! { [ "$stop_status" = 0 ] || [ "$stop_status" = 143 ]; } ||
    ! grep -q "Application shutdown complete" "$server_log"; then
    fail "the server did not shut down cleanly on SIGTERM (exit $stop_status):
$(tail -5 "$server_log")"
fi
say "ok: SIGTERM stopped it cleanly (exit $stop_status, application shutdown complete) in $((SECONDS - stop_start)) s"

say "ok: image $IMAGE, size $size"
say "all checks passed ($SECONDS s in all)"
