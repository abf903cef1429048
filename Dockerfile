# One image for every role: the compose file picks the command (api, worker importance, worker trainer).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MAS_DATA_DIR=/data \
    MAS_HOST=0.0.0.0

WORKDIR /app
# CPU build of torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# (or any CUDA index) for GPU workers.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.2,<3"

COPY pyproject.toml README.md ./
COPY mas ./mas
COPY service ./service
COPY worker ./worker
COPY mas_stream ./mas_stream
RUN pip install . && useradd --create-home --uid 1000 mas && mkdir -p /data && chown mas /data
USER mas
VOLUME ["/data"]
EXPOSE 8000 9101 9102
# The API's probe: docker-compose.yml gives the worker containers (no HTTP API) their own.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 --start-period=60s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
CMD ["mas-stream", "api"]
