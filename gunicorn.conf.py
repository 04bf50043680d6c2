"""gunicorn settings for OpenDify: plain assignments from the environment (and `.env`).

Imports nothing heavy: the gevent worker monkey-patches the process after this file is read.
"""

import os

from dotenv import load_dotenv

_default_env_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env")
load_dotenv(os.environ.get("OPENDIFY_ENV_FILE") or _default_env_file, override=False)

bind = f"{os.environ.get('SERVER_HOST', '127.0.0.1')}:{os.environ.get('SERVER_PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "2"))
worker_class = "gevent"
# Concurrent connections per worker (held streams count); also sizes the Dify connection pool.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# A watchdog for a stuck worker, not a limit on stream length (gevent workers keep beating).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM/SIGHUP in-flight streams get this long to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "120"))
keepalive = int(os.environ.get("KEEPALIVE", "5"))
preload_app = False
control_socket_disable = True
accesslog = os.environ.get("ACCESS_LOG", "-") or None
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
