# leukodx: the REST and CDS Hooks API in a container (docs/deploy.md).
#   docker build -t leukodx .
#   docker run -p 8000:8000 -e LEUKODX_CDS_PUBLIC_BASE_URL=https://cds.example.org leukodx
# Plain HTTP on port 8000: put a TLS proxy in front. Settings are LEUKODX_* environment variables.
# tests/test_deploy.py reads this file and runs its CMD and HEALTHCHECK as plain processes.

# ---- build: wheels for leukodx and every dependency (durable-rules is a source package with C code)
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock README.md __init__.py ./
COPY api api
COPY cli cli
COPY engine engine
COPY rules rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock '.[postgres]'

# ---- run: the wheels installed normally, no compiler, a non-root user
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEUKODX_PORT=8000 \
    LEUKODX_WORKERS=2 \
    LEUKODX_CACHE_DIR=/var/cache/leukodx \
    LEUKODX_FEEDBACK_DB_URL=sqlite:////var/lib/leukodx/feedback.db
RUN groupadd --system --gid 10001 leukodx \
    && useradd --system --uid 10001 --gid leukodx --home-dir /var/lib/leukodx --no-create-home \
       --shell /usr/sbin/nologin leukodx \
    && install -d -o leukodx -g leukodx -m 0750 /var/lib/leukodx /var/cache/leukodx
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'leukodx[postgres]' && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/leukodx
# Parse the knowledge base and the unit definitions once, into LEUKODX_CACHE_DIR: each worker then
# starts from the cache. The check also fails the build on a broken knowledge base.
RUN leukodx rules check
VOLUME ["/var/lib/leukodx"]
EXPOSE 8000
# Ready = rules loaded and the engine answering (GET /readyz is 200). Python's urllib: no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LEUKODX_PORT', '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]
# First the database's schema (a failure stops the start, with its message: docs/deploy.md), then
# exec: leukodx serve is PID 1 and gets SIGTERM from `docker stop` (its workers finish their requests).
CMD ["sh", "-c", "python -m leukodx.api.migrations upgrade && exec leukodx serve --host 0.0.0.0 --port \"$LEUKODX_PORT\" --workers \"$LEUKODX_WORKERS\""]
