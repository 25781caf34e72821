# One image for every dicomflow service: the same project `make run` installs.
# compose.yaml picks the service by its command and the extras by the EXTRAS build argument.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
ARG EXTRAS=gateway,descriptor,uploader
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api-gateway ./api-gateway
COPY validator-service ./validator-service
COPY descriptor-service ./descriptor-service
COPY uploader-service ./uploader-service
COPY status-service ./status-service
RUN pip install ".[${EXTRAS}]"

RUN useradd --system --uid 10001 --no-create-home dicomflow \
    && mkdir -p /data/uploads /data/archive \
    && chown -R dicomflow:dicomflow /data
USER dicomflow

ENV HOST=0.0.0.0 \
    LOG_FORMAT=json \
    UPLOADS_PATH=/data/uploads \
    ARCHIVE_PATH=/data/archive
