#!/usr/bin/env bash
# Install narvl into .venv/ in this checkout: pinned dependencies (requirements.txt + requirements.lock),
# narvl itself (editable), DeepSpeed's shared-memory op compiled once (else the first training compiles it), and Java
# from Debian's packages when it is missing (pycocoevalcap's PTB tokenizer and METEOR need it). Safe to re-run: it
# does nothing when .venv already matches the pinned files.
#
#   bash install.sh            # then: .venv/bin/snakemake --cores all   or   .venv/bin/python -m pytest
#
# Environment: PYTHON (default python3.11, else python3) picks the interpreter; it must be Python 3.11.
# NARVL_INSTALL_MIN_FREE_GB (default 8): free space required where .venv goes and in $TMPDIR before installing.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '[install] %s\n' "$*"; }

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[ -n "$PYTHON" ] || { echo "install.sh: no python3 found; install Python 3.11" >&2; exit 1; }
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || { echo "install.sh: $PYTHON is Python $version; narvl pins wheels for Python 3.11" >&2; exit 1; }

if ! command -v java >/dev/null 2>&1; then
    log "Java is missing: installing Debian's default-jre-headless (for pycocoevalcap's tokenizer and METEOR)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq default-jre-headless >/dev/null \
        || { echo "install.sh: could not install Java; install default-jre-headless and re-run" >&2; exit 1; }
fi

stamp=.venv/.narvl-install-stamp
want=$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
    log ".venv is up to date"
    exit 0
fi

# The pinned environment takes about 6 GB in .venv (torch's CUDA build), and pip unpacks each wheel in the temporary
# folder first: refuse early, with the figures, rather than fail half-way with "No space left on device".
need_gb=${NARVL_INSTALL_MIN_FREE_GB:-8}
case "$need_gb" in
    ''|*[!0-9]*) echo "install.sh: NARVL_INSTALL_MIN_FREE_GB=$need_gb: expected a whole number of GB" >&2; exit 1 ;;
esac
for dir in . "${TMPDIR:-/tmp}"; do
    [ -d "$dir" ] || continue  # (a TMPDIR that does not exist: pip says so itself)
    read -r have mount < <(df -Pk "$dir" | awk 'NR == 2 { printf "%d %s\n", $4 / 1048576, $6 }')
    if [ "$have" -lt "$need_gb" ]; then
        echo "install.sh: only $have GB free on the file system of $(cd "$dir" && pwd) ($mount); installing needs about $need_gb GB there (.venv takes about 6 GB, pip unpacks wheels in \$TMPDIR). Free some space, or point TMPDIR elsewhere; NARVL_INSTALL_MIN_FREE_GB=N changes the threshold" >&2
        exit 1
    fi
done

start=$(date +%s)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log "installing pinned dependencies into .venv (pip; about 2 minutes with a local wheel store)"
# (this machine's pip.conf names extra index folders that may not exist: drop pip's warnings about them)
.venv/bin/python -m pip install --no-cache-dir -q --disable-pip-version-check \
    -r requirements.txt -c requirements.lock 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -m pip install --no-cache-dir -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -m pip check
log "compiling DeepSpeed's shared-memory op (once per environment; else the first training compiles it)"
.venv/bin/python -c 'from narvl.train.main import build_deepspeed_ops; build_deepspeed_ops()' >/dev/null \
    || { echo "install.sh: could not compile DeepSpeed's shared-memory op (it needs a C++ compiler: g++; the error is above)" >&2; exit 1; }
echo "$want" >"$stamp"
log "done in $(( $(date +%s) - start )) s"
