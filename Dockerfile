# syntax=docker/dockerfile:1
# py-lever image: one image, two processes (see docker-compose.yml)
#   api:    python -m uvicorn api:app --host 0.0.0.0 --port 8000   (the default CMD)
#   worker: python worker.py
# Runtime dependencies only (pyproject's [project.dependencies]; no dev extras).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what `pip install .` needs: the project metadata and the packages and modules
# pyproject.toml lists ([tool.setuptools] packages and py-modules).
COPY pyproject.toml README.md ./
COPY pylever ./pylever
COPY workflows ./workflows
COPY activities ./activities
COPY api.py worker.py cli.py ./
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
# UVICORN_HTTP is uvicorn's --http option: its h11 protocol plus a 10 s header timeout
# (pylever/edge/http_server.py), so `python -m uvicorn api:app ...` times out stalled clients.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UVICORN_HTTP=pylever.edge.http_server:TimedH11Protocol
RUN groupadd --system --gid 10001 pylever \
 && useradd --system --uid 10001 --gid pylever --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin pylever
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The entry scripts run from /app; everything they import is installed in /opt/venv.
COPY api.py worker.py cli.py ./
USER pylever:pylever
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "api:app", "--host", "0.0.0.0", "--port", "8000"]
