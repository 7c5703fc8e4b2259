# docker build -t socratic-lora --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# docker run --gpus all -v $PWD/out:/out -v $HOME/.cache/socratic-lora-docker:/cache -e HF_TOKEN socratic-lora
#
# Base: python:3.11-slim-bookworm. The PyPI torch 2.13.0 wheel for Linux x86_64 is the CUDA build and brings its
# own CUDA runtime, cuDNN and NCCL as nvidia-* wheels, so the host needs only the NVIDIA driver and the container
# toolkit; a CUDA base image would add a second, unused copy of those libraries. Python 3.11 is what
# constraints.txt was tested with.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# make is not pinned: it only runs `make install` in this stage, which the image does not keep, and Debian drops
# superseded versions from its archive, so a pin would break the build whenever the base tag moves to a point
# release, for no gain in what the image contains.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt Makefile ./
COPY pipeline/ pipeline/
COPY eval/ eval/
# The same install step as CI (.ci/run) and the README: torch==2.13.0 first, then the package through
# constraints.txt, the one source of versions.
RUN make install && rm -rf /root/.cache/pip

FROM ${BASE_IMAGE}
# uid 1000 is the uid the Kubernetes manifests run as; its passwd entry is there for code that looks the user up.
# /cache and /out are the only places the job writes to.
RUN useradd --create-home --uid 1000 app && mkdir -p /cache /out && chown 1000:1000 /cache /out
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
# Owned by root: the job can read /app but not change it.
COPY . /app
ARG GIT_COMMIT=""
# Every write goes to /out or /cache; $TMPDIR must be writable but is left as it was (tests/test_container.py runs
# the job from a read-only /app, with a $HOME it cannot write to, and checks that). Hence on the cache volume: the
# Hugging Face caches; matplotlib's config and font cache ($HOME otherwise); torch's compile cache, whose directory
# torch creates as soon as torch._dynamo is imported ($TMPDIR/torchinductor_<user> otherwise); Triton's kernel
# cache (TRL's fused LM head compiles Triton kernels on a GPU; ~/.triton otherwise). Python writes no __pycache__
# into /app. GIT_COMMIT stands in for the .git directory that .dockerignore leaves out, for report.json.
ENV PATH=/app/.venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/cache/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_COMMIT=${GIT_COMMIT}
# A tokenizers setting, not a token (DL3064 matches the word; no secret is set here): off, so that tokenizers does
# not warn and switch its threads off when a process forks after tokenizing.
# hadolint ignore=DL3064
ENV TOKENIZERS_PARALLELISM=false
# Numeric, so that Kubernetes can check runAsNonRoot without a passwd lookup.
USER 1000:1000
VOLUME ["/cache", "/out"]
# HF_TOKEN comes from the environment at run time, or HF_TOKEN_FILE names a mounted secret file: never a layer.
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD ["run", "--config", "configs/gemma3-1b-korean-socratic.yaml", "output.dir=/out/gemma3-1b-korean-socratic"]
