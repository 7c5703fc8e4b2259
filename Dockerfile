# docker build -t socratic-lora .
# docker run --gpus all -v $PWD/out:/out -v $HOME/.cache/socratic-lora-docker:/cache -e HF_TOKEN socratic-lora
#
# Base: python:3.11-slim-bookworm. The PyPI torch 2.13.0 wheel for Linux x86_64 is the CUDA build and brings its
# own CUDA runtime, cuDNN and NCCL as nvidia-* wheels, so the host needs only the NVIDIA driver and the container
# toolkit; a CUDA base image would add a second, unused copy of those libraries. Python 3.11 is what
# constraints.txt was tested with.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt Makefile ./
COPY pipeline/ pipeline/
COPY eval/ eval/
# The same install step as CI (.ci/run) and the README: torch==2.13.0 first, then the package through
# constraints.txt, the one source of versions.
RUN make install && rm -rf /root/.cache/pip

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 1000 app && mkdir -p /cache /out && chown app:app /cache /out
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --chown=app:app . /app
ARG GIT_COMMIT=""
ENV PATH=/app/.venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    GIT_COMMIT=${GIT_COMMIT} \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
USER app
VOLUME ["/cache", "/out"]
# HF_TOKEN comes from the environment at run time, or HF_TOKEN_FILE names a mounted secret file: never a layer.
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD ["run", "--config", "configs/gemma3-1b-korean-socratic.yaml", "output.dir=/out/gemma3-1b-korean-socratic"]
