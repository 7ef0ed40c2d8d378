#!/usr/bin/env bash
# Prove that images FROM localhost/debian-python:bookworm build (pip over TLS inside the build)
# and run (`--network host`) with podman. Removes its test image afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
TAG=localhost/tuneship-smoke:test
podman image exists localhost/debian-python:bookworm \
  || { echo "smoke: no base image; run deploy/container/build-base-image.sh" >&2; exit 1; }
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"; podman rmi -f "$TAG" >/dev/null 2>&1 || true; podman image prune -f >/dev/null 2>&1 || true' EXIT

cat >"$ctx/Containerfile" <<'CF'
FROM localhost/debian-python:bookworm
RUN pip install --no-cache-dir --root-user-action=ignore six
CMD ["python3", "-c", "import six, sys; print('six', six.__version__, 'on python', sys.version.split()[0])"]
CF

t=$SECONDS
podman build --no-cache -q -t "$TAG" "$ctx" >/dev/null
echo "smoke: podman build ok in $((SECONDS - t)) s ($(podman image inspect --format '{{.Size}}' "$TAG" | numfmt --to=si))"
t=$SECONDS
podman run --rm --network host "$TAG"
echo "smoke: podman run ok in $((SECONDS - t)) s"
