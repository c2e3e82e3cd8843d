# syntax=docker/dockerfile:1
# The flowproof image: the `flowproof` console script and nothing else. compose.yaml runs each
# command from it (`db migrate`, `relay`, `consume --sink ...`, `verify`); so can you:
#   docker run --rm flowproof:local check --json
# There is no HEALTHCHECK here: the same image runs one-shot commands (migrate, check, smoke) that
# serve nothing; the long-running services get theirs in compose.yaml.

# --- build: wheels for flowproof and every dependency, so the runtime stage needs no build tools.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowproof ./flowproof
COPY publisher ./publisher
COPY consumers ./consumers
COPY schemas ./schemas
COPY verifier ./verifier
RUN pip wheel --wheel-dir /wheels .

# --- runtime
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    FLOWPROOF_METRICS_HOST=0.0.0.0 \
    FLOWPROOF_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels flowproof
# A fixed numeric id, so `runAsNonRoot` policies and bind-mounted secrets can name it.
RUN groupadd --system --gid 10001 flowproof \
    && useradd --system --uid 10001 --gid flowproof --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin flowproof
USER 10001:10001
EXPOSE 9400
ENTRYPOINT ["flowproof"]
CMD ["--help"]
