#!/usr/bin/env bash
# Makes a Debian base image without a registry: bootstrap a minimal root file system
# (debootstrap, or mmdebstrap when installed: the same packages, about 1.5x faster), then
# `docker import` it. The Dockerfile builds on it (BASE_IMAGE), and the Docker
# executor's tests run trials in it with the host's Python and virtual environment
# mounted read-only.
#
#   docker/make-base-image.sh [IMAGE]            default IMAGE: bench-base:bookworm
#
# Environment:
#   SUITE      Debian release (default bookworm: Python 3.11, as the project's wheels)
#   MIRROR     Debian mirror (default: the first deb.debian.org-style URI apt uses here,
#              else http://deb.debian.org/debian)
#   PACKAGES   packages added to the minimal base (default python3,python3-venv,ca-certificates)
#   BOOTSTRAP  debootstrap or mmdebstrap (default: mmdebstrap when on PATH)
#   CACHE_DIR  debootstrap only: keep the downloaded .deb files there between runs (optional)
#   ROOTFS_TAR write the root file system's tarball there too (optional), so that the
#              next `docker import` needs no debootstrap
#   CHANGES    extra `docker import --change` instructions, one per line (optional), e.g.
#              "ENV PATH=/srv/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#
# Needs root, debootstrap or mmdebstrap (apt-get install debootstrap) and a Docker engine
# (DOCKER_HOST). Measured on a 2-core machine: debootstrap about 50 s unloaded (2 min 15 s
# while another job kept both cores busy), mmdebstrap 1 min 30 s under the same load; the
# image is 169 MB; `docker import` takes about 5 s.
set -euo pipefail

image="${1:-bench-base:bookworm}"
suite="${SUITE:-bookworm}"
packages="${PACKAGES:-python3,python3-venv,ca-certificates}"

if [ "$(id -u)" != 0 ]; then
    echo "make-base-image.sh: debootstrap needs root" >&2
    exit 1
fi
bootstrap="${BOOTSTRAP:-$(command -v mmdebstrap >/dev/null && echo mmdebstrap || echo debootstrap)}"
command -v "$bootstrap" >/dev/null || { echo "make-base-image.sh: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
command -v docker >/dev/null || { echo "make-base-image.sh: no docker client on PATH" >&2; exit 1; }

mirror="${MIRROR:-}"
if [ -z "$mirror" ]; then
    # The mirror apt uses here (deb822 .sources or one-line .list), the main archive only.
    mirror="$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list \
        | grep -v -- '-security' | head -n 1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1}')" || true
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-rootfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tarball="${ROOTFS_TAR:-$work/rootfs.tar}"

echo "$bootstrap $suite from $mirror (+ $packages)" >&2
if [ "$bootstrap" = mmdebstrap ]; then
    # Writes the tarball itself, apt's lists and downloaded packages left out.
    mmdebstrap --variant=minbase --include="$packages" --quiet "$suite" "$tarball" "$mirror" >"$work/bootstrap.log" 2>&1 \
        || { tail -n 30 "$work/bootstrap.log" >&2; exit 1; }
else
    rootfs="$work/rootfs"
    cache=()
    if [ -n "${CACHE_DIR:-}" ]; then
        mkdir -p "$CACHE_DIR"
        cache=(--cache-dir="$(cd "$CACHE_DIR" && pwd)")
    fi
    debootstrap --variant=minbase --include="$packages" "${cache[@]}" "$suite" "$rootfs" "$mirror" >"$work/bootstrap.log" 2>&1 \
        || { tail -n 30 "$work/bootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar -C "$rootfs" -c . >"$tarball"
fi

change=(--change 'CMD ["/bin/bash"]')
while IFS= read -r line; do
    [ -n "$line" ] && change+=(--change "$line")
done <<<"${CHANGES:-}"
docker import "${change[@]}" "$tarball" "$image" >/dev/null
echo "$image"
