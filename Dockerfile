# bench: one image for the CLI, the Ray head (which also runs the grid's
# driver), the Ray workers, and the trials of the Docker executor (bench grid
# --executor docker --image IMAGE runs `python3 -m bench.grid.docker_worker` in
# it). Every container built from it carries the same Python, Ray, torch and
# bench versions, which Ray requires across a cluster.
#
# Offline (no registry, no network in the build): docker/build-image.sh makes a
# Debian base with debootstrap (docker/make-base-image.sh), downloads every wheel
# into docker/wheels with this machine's pip, then builds with PIP_OFFLINE=1:
#   docker/build-image.sh bench:cpu
# which amounts to
#   docker/make-base-image.sh bench-base:bookworm
#   docker build --network none --build-arg BASE_IMAGE=bench-base:bookworm \
#     --build-arg PIP_OFFLINE=1 -t bench:cpu .
#
# CPU build from the registries (default):
#   docker build -t bench:cpu .
#
# CUDA build: the PyTorch CUDA wheels bundle the CUDA runtime libraries, so the
# default Python base works; the host needs an NVIDIA driver recent enough for
# the chosen CUDA version and the NVIDIA Container Toolkit (run with --gpus all,
# or docker-compose.gpu.yml with compose).
#   docker build \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#     -t bench:cu130 .
# Older drivers: use .../whl/cu128 or .../whl/cu126 instead. Offline:
# TORCH=cuda docker/build-image.sh bench:cuda (the CUDA wheels from local disk).
#
# CUDA build on a CUDA runtime base image: the base must provide python3.11
# (with the venv module) on PATH; the same image is used for both stages.
#   docker build \
#     --build-arg BASE_IMAGE=<cuda-runtime-image-with-python3.11> \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#     -t bench:cu130 .
#
# Match the in-container user to the host user that owns bind-mounted
# directories such as ./reports:
#   docker build --build-arg BENCH_UID="$(id -u)" --build-arg BENCH_GID="$(id -g)" -t bench:cpu .
#
# Usage:
#   docker run --rm bench:cpu --help
#   docker run --rm -v "$PWD/reports:/app/reports" bench:cpu grid norm-vs-batch
#   docker run --rm --shm-size=2g --entrypoint ray bench:cpu start --head --block
#   bench grid norm-vs-batch --executor docker --image bench:cpu   # each trial in a container

ARG BASE_IMAGE=python:3.11.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------- builder ---
FROM ${BASE_IMAGE} AS builder
ARG TORCH_INDEX_URL
# 1: pip installs from the wheels in docker/wheels only (docker/build-image.sh
# fills it), so the build needs no network; 0: the indexes too.
ARG PIP_OFFLINE=0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_INDEX=${PIP_OFFLINE} \
    PATH=/opt/venv/bin:$PATH

# The wheelhouse (a README alone unless docker/build-image.sh filled it); this
# stage only: the runtime image copies the installed environment.
COPY docker/wheels/ /wheels/

RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade "pip>=24"

# torch/torchvision first, from the index that selects CPU or CUDA wheels.
# The version bounds are the ones in pyproject.toml, so the later
# `pip install .` keeps these wheels instead of pulling PyPI's default build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch>=2.4,<2.16" "torchvision>=0.19,<0.31"

WORKDIR /src

# Dependencies in their own layer so that editing the package does not
# re-download them. README.md is optional for the build (glob).
COPY pyproject.toml README.md* ./
RUN python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Cluster extras at exactly the Ray version the project resolved: `default`
# provides the dashboard, job submission (`ray job submit`) and the cluster
# agents started by `ray start`. No `client` extra: the grid's driver runs
# inside the cluster, never through Ray Client (ray://).
RUN RAY_VERSION="$(python3 -c 'import ray; print(ray.__version__)')" \
    && pip install --no-cache-dir "ray[tune,default]==${RAY_VERSION}"

# The package, and the studies it ships: setup.py maps ablations/ into it as
# bench/studies, so the image runs them from any directory.
COPY setup.py ./
COPY bench/ ./bench/
COPY ablations/ ./ablations/
RUN pip install --no-cache-dir . \
    && pip check

# ---------------------------------------------------------------- runtime ---
FROM ${BASE_IMAGE} AS runtime

ARG BENCH_UID=1000
ARG BENCH_GID=1000

LABEL org.opencontainers.image.title="bench" \
      org.opencontainers.image.description="Benchmark and ablation harness for deep-learning training (CLI, Ray head and Ray worker)" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    BENCH_DATA_DIR=/data \
    BENCH_STORE=/results/results.sqlite

# Non-root user; the directories that are meant to be volumes are created and
# owned here so that named volumes mounted on them inherit that ownership.
RUN groupadd --gid "${BENCH_GID}" bench \
    && useradd --uid "${BENCH_UID}" --gid bench --create-home --home-dir /home/bench --shell /bin/bash bench \
    && mkdir -p /app/reports /data /results \
    && chown -R bench:bench /app /data /results

COPY --from=builder /opt/venv /opt/venv

# Studies are looked up in ./ablations first (docker-compose.yml mounts the
# host's there), then among those installed with the package.
WORKDIR /app

USER ${BENCH_UID}:${BENCH_GID}

# No HEALTHCHECK: the image runs one-shot CLI commands as well as Ray nodes;
# docker-compose.yml defines a health check for the long-running Ray head.
ENTRYPOINT ["bench"]
CMD ["--help"]
