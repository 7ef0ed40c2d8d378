#!/usr/bin/env bash
# Install the rootful container toolchain used by `bentoml containerize --backend podman`
# (podman, buildah, runc) plus debootstrap/uidmap for the offline base image.
# Idempotent and fast when everything is present. Never fails the caller: if it cannot
# install, it prints why and exits 0 (engine.sh / build-base-image.sh then report clearly).
set -euo pipefail

PKGS=(podman buildah runc debootstrap uidmap)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "container engine: already installed (${PKGS[*]})"
  exit 0
fi

skip() { echo "container engine: NOT installed (${missing[*]}): $*" >&2; exit 0; }

command -v apt-get >/dev/null || skip "no apt-get (not Debian/Ubuntu); install podman or Docker yourself"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  { command -v sudo >/dev/null && sudo -n true 2>/dev/null; } || skip "need root or passwordless sudo"
  SUDO="sudo -n"
fi

echo "container engine: installing ${missing[*]}"
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y "${missing[@]}"; then
  # Package lists may be missing or stale on a fresh machine: refresh once and retry.
  $SUDO apt-get update -qq || skip "apt-get update failed (no access to the Debian mirror?)"
  $SUDO apt-get install -y "${missing[@]}" || skip "apt-get install failed"
fi
echo "container engine: installed in $((SECONDS - start)) s ($(podman --version), $(buildah --version | cut -d' ' -f1-3))"
