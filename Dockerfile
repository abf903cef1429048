# One image for every role: docker-compose.yml and deploy/k8s/ pick the command
# (`mas-stream api`, `mas-stream worker importance`, `mas-stream worker trainer`).
# Build stage: a virtualenv with torch, the pinned dependencies (constraints.txt) and the wheel.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# The CPU build of torch by default. For GPU workers build with a CUDA wheel index and a torch
# release it has, e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# --build-arg TORCH_VERSION=2.6.0 (constraints.txt keeps torch a range for that reason).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY mas ./mas
COPY mas_stream ./mas_stream
COPY service ./service
COPY worker ./worker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir --constraint constraints.txt /wheels/mas_stream-*.whl

# Runtime stage: the virtualenv alone on a slim base, run by a numeric non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    MAS_DATA_DIR=/data \
    MAS_HOST=0.0.0.0
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 mas \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data --shell /usr/sbin/nologin mas \
    && mkdir /data \
    && chown 10001:10001 /data
WORKDIR /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000 9101 9102
# The API's probe, on the port MAS_PORT names; the worker containers get theirs from
# docker-compose.yml (`python -m mas_stream.probe importance|trainer`).
HEALTHCHECK --interval=10s --timeout=3s --retries=3 --start-period=60s \
  CMD ["python", "-m", "mas_stream.probe", "api"]
CMD ["mas-stream", "api"]
