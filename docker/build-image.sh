#!/usr/bin/env bash
# Builds the project's image without a registry and without network inside the build:
#
#   docker/build-image.sh [IMAGE]                 default IMAGE: bench:local
#
# 1. The base: BASE_IMAGE (default bench-base:bookworm), made by docker/make-base-image.sh
#    (debootstrap + docker import) when the engine does not have it.
# 2. The wheelhouse, docker/wheels/: every wheel the image installs, fetched by this
#    machine's pip with its own configuration (its indexes, its local wheels, its CA
#    bundle): torch and torchvision, the project's dependencies from pyproject.toml, Ray's
#    cluster extras, and pip/setuptools/wheel to build the package. Wheels already there
#    are kept.
# 3. `docker build --network none` with PIP_OFFLINE=1: pip installs from docker/wheels
#    only (passed in as build context; the runtime stage does not keep them).
#
# TORCH=default: torch and torchvision within pyproject.toml's bounds, as this machine's
#   pip resolves them: PyPI's Linux wheels, which are CUDA builds (on the machine this was
#   measured on, torch 2.14.1 and torchvision 0.29.1 and their CUDA 13 libraries from
#   local disk: a 3.3 GB wheelhouse, a 7 GB image). They run on the CPU too.
# TORCH=cpu: the CPU builds from TORCH_INDEX_URL (default
#   https://download.pytorch.org/whl/cpu), when this machine reaches it (about 2 GB less).
#   A CPU torch needs its own CPU torchvision: PyPI's (CUDA) torchvision does not import
#   with it, which rules out torch 2.13.0+cpu alone.
# TORCH_REQUIREMENTS overrides the torch and torchvision requirements.
#
# Other variables: PYTHON (the pip used to download, default python3), BENCH_UID/BENCH_GID
# (build arguments of the Dockerfile). Needs a Docker engine (DOCKER_HOST).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-bench:local}"
base="${BASE_IMAGE:-bench-base:bookworm}"
python="${PYTHON:-python3}"
wheels="docker/wheels"
bounds='torch>=2.4,<2.16 torchvision>=0.19,<0.31'  # pyproject.toml's
extra=()
case "${TORCH:-default}" in
    default) ;;
    cpu) extra=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}") ;;
    *) echo "build-image.sh: TORCH is default or cpu" >&2; exit 1 ;;
esac
torch_requirements="${TORCH_REQUIREMENTS:-$bounds}"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "== base image $base (docker/make-base-image.sh)"
    docker/make-base-image.sh "$base"
fi

echo "== wheels into $wheels"
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$python" - "$requirements" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
ray = next(d for d in deps if re.match(r"ray\b", d))
deps.append(re.sub(r"ray\[[^\]]*\]", "ray[tune,default]", ray))  # the Dockerfile's cluster extras
deps = [d for d in deps if not re.match(r"(torch|torchvision)\b(?![-_])", d)]  # pinned apart
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
PY
# shellcheck disable=SC2086  # the torch requirements are words
"$python" -m pip download --quiet --quiet --only-binary=:all: --dest "$wheels" "${extra[@]}" \
    $torch_requirements -r "$requirements" "pip>=24" "setuptools>=77" wheel

echo "== docker build $image (FROM $base, offline)"
docker build --network none --build-arg BASE_IMAGE="$base" --build-arg PIP_OFFLINE=1 \
    --build-arg BENCH_UID="${BENCH_UID:-1000}" --build-arg BENCH_GID="${BENCH_GID:-1000}" -t "$image" .
docker image ls "$image"
