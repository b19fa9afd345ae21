# One image for every recsim-stream service (updater, query API, simulator, Ray head/worker), used by
# docker-compose.yml and deploy/ray/kuberay.yaml as recsim-stream:latest. Ray comes from
# requirements.lock (ray==2.60.0, as pinned in pyproject.toml): every Ray node and driver must run it.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
COPY pyproject.toml requirements.lock README.md ./
COPY recsim_stream ./recsim_stream
COPY services ./services
# /data/snapshots and /data/checkpoints exist in the image so that a named volume mounted there starts
# owned by the recsim user (Docker copies the image's folder into a new volume; a missing one is root's).
# torch from PyTorch's CPU wheel index (recsim-stream uses torch on CPU only): PyPI's Linux wheel pulls
# the CUDA libraries of requirements.lock's nvidia-* pins, gigabytes no container here uses. The lock's
# torch==2.15.0 matches the CPU build 2.15.0+cpu (a local version label is ignored by ==).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c requirements.lock . \
    && useradd --create-home --uid 1000 recsim && mkdir -p /data/snapshots /data/checkpoints && chown -R recsim /data
USER recsim
# The training path's compiled loops (numba, recsim_stream/compiled.py) are cached on disk: in a folder
# the service user owns (site-packages is root's), filled at build time so no container compiles them
# at start (one on another CPU model compiles once, into the same folder).
ENV NUMBA_CACHE_DIR=/home/recsim/.cache/numba
RUN python -c "import recsim_stream.trainer"
ENTRYPOINT ["recsim-stream"]
