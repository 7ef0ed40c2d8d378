#!/usr/bin/env bash
# Run an image in the background and wait for its /readyz; what `make container-run` runs.
#   deploy/container/run.sh IMAGE NAME HOST PORT READY_TIMEOUT
# podman: --network host with BENTOML_HOST/BENTOML_PORT (what works on these VMs); docker:
# -p HOST:PORT:3000. TUNESHIP_API_KEY is passed to the container only if set. On timeout or
# exit: the last 40 log lines, then the container is removed.
set -euo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 IMAGE NAME HOST PORT READY_TIMEOUT" >&2
  exit 2
fi
image=$1 name=$2 host=$3 port=$4 ready_timeout=$5
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# shellcheck source-path=SCRIPTDIR source=engine.sh
. "$here/engine.sh" || { echo "container-run: no container engine; run" \
  "'make container-engine', see deploy/container/README.md" >&2; exit 1; }
if [ "$CONTAINER_ENGINE" = buildah ]; then
  echo "container-run: buildah builds but does not run images: install podman or Docker" >&2
  exit 1
fi
"$CONTAINER_ENGINE" rm -f "$name" >/dev/null 2>&1 || true
if [ "$CONTAINER_ENGINE" = podman ]; then
  net=(--network host -e "BENTOML_HOST=$host" -e "BENTOML_PORT=$port")
else
  net=(-p "$host:$port:3000")
fi
key=()
if [ -n "${TUNESHIP_API_KEY:-}" ]; then key=(-e TUNESHIP_API_KEY); fi
echo "$CONTAINER_ENGINE run -d --name $name ${net[*]} $image"
"$CONTAINER_ENGINE" run -d --name "$name" "${net[@]}" "${key[@]}" "$image" >/dev/null
url="http://$host:$port"
deadline=$((SECONDS + ready_timeout))
until curl -sf -m 2 -o /dev/null "$url/readyz"; do
  if [ "$("$CONTAINER_ENGINE" inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ] \
    || [ "$SECONDS" -ge "$deadline" ]; then
    echo "container-run: $name not ready at $url/readyz within $ready_timeout s:" >&2
    "$CONTAINER_ENGINE" logs --tail 40 "$name" >&2 || true
    "$CONTAINER_ENGINE" rm -f "$name" >/dev/null || true
    exit 1
  fi
  sleep 1
done
echo "container-run: $image ready at $url (container $name)"
echo "  logs: $CONTAINER_ENGINE logs -f $name"
echo "  stop: $CONTAINER_ENGINE rm -f $name"
