# OpenDify in a container (docs/deploy.md):
#
#   docker build -t opendify .
#   docker run -p 8000:8000 -e DIFY_API_BASE=https://dify.example.com/v1 \
#       -e DIFY_API_KEYS=app-... -e VALID_API_KEYS=sk-... --stop-timeout 130 opendify
#
# The gateway listens on every interface in here (SERVER_HOST=0.0.0.0), so it refuses to start
# without client keys: set VALID_API_KEYS, or ALLOW_OPEN_ACCESS=true when something in front of
# it checks keys. Every other setting is the README's table, as environment variables.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned runtime packages (`make lock`), in a layer of their own: code changes reuse it.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Only what runs: the gateway, and the Dify emulator for compose.yaml's demo profile.
COPY openai_to_dify.py config.py gunicorn.conf.py openapi.yaml ./
COPY edge/ edge/
COPY engine/ engine/
COPY dify_io/ dify_io/
COPY core/ core/
COPY dify_emulator/ dify_emulator/

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin opendify
USER opendify

ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8000
EXPOSE 8000

# Ready once Dify's apps are known (/readyz); the slim image has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SERVER_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: gunicorn is PID 1 and gets `docker stop`'s SIGTERM itself, so streams in flight
# finish within GRACEFUL_TIMEOUT (120 s by default: give `docker stop` a longer --time).
CMD ["gunicorn", "-c", "gunicorn.conf.py", "openai_to_dify:app"]
