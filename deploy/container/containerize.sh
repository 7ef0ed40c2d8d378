#!/usr/bin/env bash
# Build the OCI image of a bento with the engine engine.sh finds (docker, else podman/buildah),
# labelled by image-labels.py; what `make containerize` runs.
#   deploy/container/containerize.sh BENTO IMAGE
# Environment: VENV (default <repo>/.venv) or BENTOML and PY (its bentoml and python);
# EXPERIMENT, for the hint when the bento is missing (default: from BENTO's name).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BENTO IMAGE" >&2
  exit 2
fi
bento=$1 image=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-$here/../../.venv}"
BENTOML="${BENTOML:-$venv/bin/bentoml}"
PY="${PY:-$venv/bin/python}"
experiment="${EXPERIMENT:-${bento%%:*}}"
experiment="${experiment#tuneship-}"

"$BENTOML" get "$bento" >/dev/null 2>&1 || { echo "containerize: no bento $bento:" \
  "run 'make bento experiment=$experiment' first" >&2; exit 1; }
# shellcheck source-path=SCRIPTDIR source=engine.sh
. "$here/engine.sh" || { echo "containerize: no container engine" \
  "(docker, podman or buildah): run 'make container-engine'; see deploy/container/README.md" >&2
  exit 1; }
out=$("$PY" "$here/image-labels.py" "$bento") || exit 1
mapfile -t labels <<< "$out"
base=$("$BENTOML" get "$bento" -o json | "$PY" -c \
  'import json,sys; print(json.load(sys.stdin)["docker"].get("base_image") or "")') || base=""
if [ -n "$base" ] && [ "$CONTAINER_ENGINE" != docker ] && ! "$CONTAINER_ENGINE" image exists "$base"; then
  echo "containerize: base image $base missing: run 'make container-engine'" >&2
  exit 1
fi
echo "$BENTOML containerize $bento --backend $CONTAINER_ENGINE --image-tag $image $(printf '%q ' "${labels[@]}")"
t0=$SECONDS
"$BENTOML" containerize "$bento" --backend "$CONTAINER_ENGINE" --image-tag "$image" "${labels[@]}"
if [ "$CONTAINER_ENGINE" != buildah ]; then
  echo "containerize: built $image in $((SECONDS - t0)) s," \
    "$("$CONTAINER_ENGINE" image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B;" \
    "dangling layers: $CONTAINER_ENGINE image prune -f"
fi
