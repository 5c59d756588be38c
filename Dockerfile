# The TraceLab image: the `tracelab` CLI with the server, proxy and notebook extras, the built
# web UI, the example notebooks and the sample agent. docker-compose.yml runs it as `ingest`,
# `api` (API :8000 + UI :3000), `proxy` (:8888), `agent` and `jupyterlab`.
#   docker build -t tracelab .
FROM node:20-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
# vite writes to ../tracelab/server/static
RUN mkdir -p /src/tracelab/server && npm run build

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 TRACELAB_HOME=/data
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tracelab ./tracelab
COPY tracelab_sdk ./tracelab_sdk
COPY --from=web /src/tracelab/server/static ./tracelab/server/static
# One resolve for every extra (see README, "Dependencies"), plus the vendor SDKs the sample
# agent drives (stripe, sendgrid, openai, twilio, boto3).
RUN pip install ".[server,proxy,notebook]" stripe sendgrid "openai<3" twilio boto3
COPY notebooks ./notebooks
COPY examples ./examples
RUN mkdir -p /data
VOLUME /data
EXPOSE 8000 3000 4318 8888
CMD ["tracelab", "up", "--host", "0.0.0.0"]
