#!/usr/bin/env bash
# Choose how a bento's image gets its base image and its CPU torch, and say why (stderr).
# Sourced by `make bento` before the bento is built (the choice is baked into the bento):
#   - a container registry reachable (normal machine, Docker Hub): BentoML's default base
#     (official python:3.11-slim), nothing set;
#   - no registry (these VMs): TUNESHIP_BASE_IMAGE=localhost/debian-python:bookworm, built offline
#     by build-base-image.sh (`make container-engine`);
#   - PyTorch's CPU index reachable: torch==<ver>+cpu from it (bentofile extra_index_url);
#   - not reachable: TUNESHIP_TORCH_WHEEL=<the local CPU wheel pip is configured to find>.
# Values set by the caller (TUNESHIP_BASE_IMAGE, TUNESHIP_TORCH_WHEEL, TUNESHIP_CUDA_VERSION)
# win. TUNESHIP_IMAGE_PATH=skip turns the probing off.
#   . deploy/container/image-path.sh [python]     (python: the venv interpreter, for the torch version)

_tuneship_image_path() {
  local py="${1:-python3}" say="image-path:"
  [ "${TUNESHIP_IMAGE_PATH:-}" = skip ] && return 0
  _reachable() { curl -s -o /dev/null -m "${TUNESHIP_PROBE_TIMEOUT:-5}" "$1"; }

  if [ -n "${TUNESHIP_CUDA_VERSION:-}" ]; then
    echo "$say GPU variant (TUNESHIP_CUDA_VERSION=$TUNESHIP_CUDA_VERSION): nvidia/cuda base, CUDA torch from PyPI" >&2
    return 0
  fi
  if [ -n "${TUNESHIP_BASE_IMAGE:-}" ]; then
    echo "$say base image $TUNESHIP_BASE_IMAGE (set by caller)" >&2
  elif _reachable https://registry-1.docker.io/v2/; then
    echo "$say Docker Hub reachable: BentoML's default base (official python:3.11-slim)" >&2
  else
    export TUNESHIP_BASE_IMAGE=localhost/debian-python:bookworm
    echo "$say no registry reachable (registry-1.docker.io): base $TUNESHIP_BASE_IMAGE," \
      "built offline by deploy/container/build-base-image.sh (make container-engine)" >&2
  fi

  if [ -n "${TUNESHIP_TORCH_WHEEL:-}" ]; then
    echo "$say torch: bundled wheel $TUNESHIP_TORCH_WHEEL (set by caller)" >&2
  elif _reachable https://download.pytorch.org/whl/cpu/torch/; then
    echo "$say torch: CPU build from https://download.pytorch.org/whl/cpu (bentofile)" >&2
  else
    local ver wheel dir
    ver="$("$py" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null)"
    for dir in $(pip config get global.find-links 2>/dev/null) /opt/wheels; do
      wheel="$(ls "$dir"/torch-"${ver}"-cp311-*.whl 2>/dev/null | head -n1)"
      [ -n "$wheel" ] && break
    done
    if [[ "$ver" == *+cpu && -n "$wheel" ]]; then
      export TUNESHIP_TORCH_WHEEL="$wheel"
      echo "$say torch: PyTorch CPU index unreachable: bundling the local CPU wheel $wheel" >&2
    else
      echo "$say WARNING: PyTorch CPU index unreachable and no local torch-${ver:-?} CPU wheel:" \
        "the image build will fail to install torch" >&2
    fi
  fi
}
_tuneship_image_path "$@"
