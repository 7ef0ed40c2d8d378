#!/usr/bin/env bash
# Pick the backend for `bentoml containerize --backend <name>`.
#   Called:  deploy/container/engine.sh     -> prints docker|podman|buildah on stdout (diagnostics on stderr)
#   Sourced: . deploy/container/engine.sh   -> sets and exports CONTAINER_ENGINE (and CONTAINERS_CONF
#                                              for podman/buildah) in the current shell
# Exit/return 1 with a clear message if no engine is available.

_tuneship_engine() {
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
    CONTAINER_ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    CONTAINER_ENGINE=podman
  elif command -v buildah >/dev/null 2>&1; then
    CONTAINER_ENGINE=buildah
  else
    echo "no container engine: install podman (make container-engine) or Docker" >&2
    return 1
  fi
  if [ "$CONTAINER_ENGINE" != docker ]; then
    # Keep a caller's own file if set; otherwise use the project's (runc + ulimits quirks).
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
    echo "engine: $CONTAINER_ENGINE (CONTAINERS_CONF=$CONTAINERS_CONF)" >&2
  else
    echo "engine: docker ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))" >&2
  fi
  export CONTAINER_ENGINE
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  _tuneship_engine || exit 1
  echo "$CONTAINER_ENGINE"
else
  _tuneship_engine
fi
