"""gunicorn settings for OpenDify, taken from config.py's table (validated there, once).

Imports nothing heavy: the gevent worker monkey-patches the process after this file is read.
A bad value stops the master at once with one line naming the variable.
"""

from config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as exc:
    raise SystemExit(f"error: {exc}") from None

bind = f"{_settings.server_host}:{_settings.server_port}"
workers = _settings.workers
worker_class = "gevent"
# Concurrent connections per worker (held streams count); also sizes the Dify connection pool.
worker_connections = _settings.worker_connections
# A watchdog for a stuck worker, not a limit on stream length (gevent workers keep beating).
timeout = _settings.gunicorn_timeout
# On SIGTERM/SIGHUP in-flight streams get this long to finish.
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
preload_app = False
control_socket_disable = True
accesslog = _settings.access_log
loglevel = _settings.log_level.lower()
