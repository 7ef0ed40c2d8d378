#!/usr/bin/env bash
# Build localhost/debian-python:bookworm without a registry: debootstrap a minimal Debian
# bookworm (Python 3.11 + venv + pip) from the apt mirror this machine already uses, add the
# host's local CA certificates (TLS is intercepted here), and `podman import` the rootfs.
# Only needed where no registry is reachable; with Docker + Docker Hub use python:3.11-slim.
#
#   deploy/container/build-base-image.sh [--tag-python-slim]
#     --tag-python-slim  also tag the image docker.io/library/python:3.11-slim, so Dockerfiles
#                        that default to it (BentoML without docker.base_image) build offline.
# Env: TUNESHIP_CACHE (rootfs location, default ~/.cache/tuneship), DEBIAN_MIRROR (override).
# Idempotent: exits early if the image exists; reuses a finished rootfs if one is cached.
set -euo pipefail

IMAGE=localhost/debian-python:bookworm
SLIM_TAG=docker.io/library/python:3.11-slim
SUITE=bookworm
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TUNESHIP_CACHE:-$HOME/.cache/tuneship}"
ROOTFS="$CACHE/rootfs/debian-python-$SUITE"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

tag_slim=0
[ "${1:-}" = "--tag-python-slim" ] && tag_slim=1

die() { echo "build-base-image: $*" >&2; exit 1; }
log() { echo "build-base-image: $*"; }
t0=$SECONDS
step() { log "$1 ($((SECONDS - t0)) s elapsed)"; }

command -v podman >/dev/null || die "podman missing: run .ci/install-container-engine.sh"

if podman image exists "$IMAGE"; then
  log "$IMAGE already exists, skipping build"
else
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
  command -v debootstrap >/dev/null || die "debootstrap missing: run .ci/install-container-engine.sh"

  if [ ! -f "$ROOTFS/.tuneship-complete" ]; then
    # The Debian mirror apt uses here: one-line (.list) or deb822 (.sources) entries for $SUITE.
    mirror="${DEBIAN_MIRROR:-$(
      { awk -v s="$SUITE" '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1)==s) print $i; break } }' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        awk -v s="$SUITE" 'BEGIN{RS=""} { u=""; ok=0
            for (i=1;i<=NF;i++) { if ($i=="URIs:") u=$(i+1); if ($i=="Suites:") for (j=i+1;j<=NF && $j !~ /:$/;j++) if ($j==s) ok=1 }
            if (ok && u!="") print u }' /etc/apt/sources.list.d/*.sources 2>/dev/null
      } | head -n1)}"
    mirror="${mirror:-http://deb.debian.org/debian}"

    step "debootstrap $SUITE from $mirror into $ROOTFS"
    rm -rf "$ROOTFS"; mkdir -p "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      "$SUITE" "$ROOTFS" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed, see $CACHE/debootstrap.log"

    step "adding host CA certificates"
    shopt -s nullglob
    certs=(/usr/local/share/ca-certificates/*.crt)
    [ ${#certs[@]} -gt 0 ] && cp "${certs[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >>"$CACHE/debootstrap.log" 2>&1 \
      || die "update-ca-certificates failed, see $CACHE/debootstrap.log"
    log "  ${#certs[@]} host CA file(s) added"

    # Smaller image: no downloaded .debs or package lists (Dockerfiles run apt-get update first).
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
    touch "$ROOTFS/.tuneship-complete"
  else
    step "reusing cached rootfs $ROOTFS"
  fi

  step "podman import -> $IMAGE"
  tar -C "$ROOTFS" --exclude=./.tuneship-complete -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
  log "built $IMAGE in $((SECONDS - t0)) s, $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si)"
fi

if [ "$tag_slim" = 1 ] && ! podman image exists "$SLIM_TAG"; then
  podman tag "$IMAGE" "$SLIM_TAG"
  log "tagged $SLIM_TAG (a Debian python3 3.11, not the official image)"
fi
log "done in $((SECONDS - t0)) s"
