#!/usr/bin/env bash
# Build the root filesystem of containers/narvl.def without Apptainer, and run narvl's tiny pipeline inside it.
#
#   sudo bash scripts/build_rootfs.sh [ROOTFS]        # default ROOTFS: build/rootfs (git-ignored)
#
# Apptainer has no Debian 12 package, but its image is a root filesystem plus the definition's sections:
#   1. debootstrap builds Debian bookworm (minbase) from Debian's mirror (NARVL_MIRROR, default deb.debian.org),
#      as `Bootstrap: debootstrap` does (containers/narvl-debootstrap.def; narvl.def starts from debian:12 instead);
#   2. %files are copied in, %post runs inside it with bubblewrap (a private mount namespace, the host's
#      resolv.conf for apt, and this machine's pip configuration, local wheel store and CA bundle bound read-only,
#      so pip resolves exactly as install.sh does here: see `pip config list`);
#   3. %test runs inside it with %environment;
#   4. the tiny end-to-end run: a copy of this checkout (git ls-files) inside the root filesystem, the tiny
#      parameters of tests/test_workflow_e2e.py, `snakemake --cores all` with the image's Python, then the outputs
#      are checked. Nothing of the host's .venv is visible inside.
# Every step prints its wall time; the whole log goes to ROOTFS.log. Needs root (debootstrap, namespaces), about
# 7 GB of disk and the network to Debian's mirror and the package index. Run it under `heavy` on shared machines.
set -euo pipefail
cd "$(dirname "$0")/.."

DEF=containers/narvl.def
ROOTFS=${1:-build/rootfs}
MIRROR=${NARVL_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
[ "$(id -u)" = 0 ] || { echo "build_rootfs.sh: needs root (debootstrap, bubblewrap mounts)" >&2; exit 1; }
case "$ROOTFS" in /|/usr|/etc|/root|/home|"") echo "build_rootfs.sh: refusing ROOTFS=$ROOTFS" >&2; exit 1 ;; esac

mkdir -p "$(dirname "$ROOTFS")"
exec > >(tee "$ROOTFS.log") 2>&1
for tool in debootstrap bwrap; do
    command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq debootstrap bubblewrap >/dev/null; }
done

step_start=0
step() { step_start=$(date +%s); printf '\n[build_rootfs] %s\n' "$*"; }
done_step() { printf '[build_rootfs] %s: %d s\n' "$1" "$(( $(date +%s) - step_start ))"; }
total_start=$(date +%s)

# The body of one %section of the definition (up to the next %section), as written.
section() { awk -v want="%$1" '/^%[a-z]+/ { on = ($1 == want); next } on' "$DEF"; }

# pip's configuration on this machine (files, environment, the folders they name), bound read-only inside.
pip_binds=()
for f in /etc/pip.conf /etc/xdg/pip /root/.config/pip /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -e "$f" ] && pip_binds+=(--ro-bind "$f" "$f")
done
pip_env=()
while IFS='=' read -r name value; do pip_env+=(--setenv "$name" "$value"); done < <(env | grep -E '^(PIP_|https?_proxy=|HTTPS?_PROXY=|no_proxy=|NO_PROXY=)' || true)
# the host's CA bundle (it may hold a proxy's certificate that Debian's bundle in the image does not): pip uses it
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_ca" ]; then
    pip_binds+=(--ro-bind "$host_ca" /etc/narvl-host-ca.crt)
    pip_env+=(--setenv PIP_CERT /etc/narvl-host-ca.crt)
fi

# Run a shell script (stdin) inside the root filesystem. Extra bwrap arguments first.
inside() {
    bwrap --bind "$ROOTFS" / --proc /proc --dev /dev --tmpfs /tmp \
        --ro-bind /etc/resolv.conf /etc/resolv.conf "${pip_binds[@]}" \
        --clearenv --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --setenv HOME /root --setenv LANG C.UTF-8 "${pip_env[@]}" --unshare-pid --die-with-parent \
        "$@" /bin/bash -s
}

if [ -e "$ROOTFS" ] && [ ! -f "$ROOTFS/.narvl-rootfs" ]; then
    echo "build_rootfs.sh: $ROOTFS exists and was not made by this script; remove it or choose another" >&2
    exit 1
fi
rm -rf "$ROOTFS"   # made by an earlier run of this script (it has our marker)

step "1. debootstrap $SUITE (minbase) from $MIRROR into $ROOTFS"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null
touch "$ROOTFS/.narvl-rootfs"
du -sh "$ROOTFS" | sed 's/^/[build_rootfs] size after debootstrap: /'
done_step "debootstrap"

step "2. %files and %post"
while read -r src dst; do
    [ -n "$src" ] || continue
    mkdir -p "$ROOTFS$(dirname "$dst")"
    cp -a "$src" "$ROOTFS$dst"
done < <(section files)
{ echo "set -euo pipefail"; section post; } | inside
du -sh "$ROOTFS" | sed 's/^/[build_rootfs] size after %post: /'
done_step "%post"

step "3. %test (with %environment)"
{ section environment; echo "set -euo pipefail"; section test; } | inside
done_step "%test"

step "4. the tiny end-to-end run inside the root filesystem"
src=$ROOTFS/opt/narvl-src
rm -rf "$src" && mkdir -p "$src"
git ls-files -co --exclude-standard -z | (cd . && xargs -0 cp --parents -t "$src")
{ section environment; cat <<'EOF'
set -euo pipefail
cd /opt/narvl-src
python - <<'PY'
from pathlib import Path
from tests.test_workflow_e2e import write_tiny_params
write_tiny_params(Path("tiny-params"), out=Path("/opt/narvl-src/tiny"))
PY
snakemake --cores all --config params_dir=tiny-params
test -s tiny/results/tables/main.md && test -s tiny/results/tables/reproduction.md
python -c "import json, glob; cells = sorted(glob.glob('tiny/results/metrics/*.json')); \
  assert cells and all(json.load(open(c))['metrics'] for c in cells); print(len(cells), 'metrics cells')"
head -3 tiny/results/tables/main.md
EOF
} | inside
done_step "tiny run"
printf '\n[build_rootfs] root filesystem %s: OK, %d s in all\n' "$ROOTFS" "$(( $(date +%s) - total_start ))"
