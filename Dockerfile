# One image for every recsim-stream service (updater, query API, simulator, Ray head/worker).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml requirements.lock README.md ./
COPY recsim_stream ./recsim_stream
COPY services ./services
RUN pip install -c requirements.lock . && useradd --create-home recsim && mkdir -p /data && chown recsim /data
USER recsim
ENTRYPOINT ["recsim-stream"]
