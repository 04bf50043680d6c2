"""gunicorn settings for OpenDify, taken from config.py's table (validated there, once).

Imports nothing heavy: the gevent worker monkey-patches the process after this file is read.
A bad value stops the master at once with one line naming the variable. The master first lifts
its open-files limit to the hard limit: the workers inherit it, and WORKER_CONNECTIONS (and with
it the Dify pool and MAX_CONCURRENT_REQUESTS) defaults to what it allows. With METRICS on, the
master gives its workers one directory to count into (prometheus_client's multiprocess mode,
PROMETHEUS_MULTIPROC_DIR), so GET /metrics adds up every worker; the master removes it when it
exits. gunicorn reads this file again on SIGHUP, in the same master, whose environment then
already names the directory: OPENDIFY_OWNS_METRICS_DIR (`<master pid>:<directory>`), set beside
it, tells that reading the directory is still this master's own, to be removed at its exit.
"""

import os
import shutil
import tempfile

from config import ConfigError, load_settings, raise_open_files_limit
from edge.logs import error_exit, gunicorn_log_config

_OWNED = "OPENDIFY_OWNS_METRICS_DIR"

_open_files = raise_open_files_limit()
try:
    _settings = load_settings()
except ConfigError as exc:
    raise error_exit(str(exc)) from None

bind = f"{_settings.server_host}:{_settings.server_port}"
workers = _settings.workers
worker_class = "gevent"
# Concurrent connections per worker (held streams count); also sizes the Dify connection pool.
# By default two open files each (client and Dify sockets) within the open-files limit.
worker_connections = _settings.worker_connections
# A watchdog for a stuck worker, not a limit on stream length (gevent workers keep beating).
timeout = _settings.gunicorn_timeout
# On SIGTERM/SIGHUP in-flight streams get this long to finish.
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
preload_app = False
control_socket_disable = True
loglevel = _settings.log_level.lower()
# With LOG_FORMAT=json the gateway writes its own access lines (edge/observe.py), with more fields.
accesslog = None if _settings.log_format == "json" else _settings.access_log
logconfig_dict = gunicorn_log_config(_settings.log_format == "json", _settings.log_level)


def _metrics_directory() -> str | None:
    """The directory this server made for the workers' counts (None: METRICS is off, or the
    operator set PROMETHEUS_MULTIPROC_DIR). It is read when the workers import prometheus_client,
    so it is set before they start."""
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owner, _, owned = os.environ.get(_OWNED, "").partition(":")
    if current and current == owned and owner == str(os.getpid()):
        return current  # this file read again (SIGHUP) by the master that made the directory
    if not _settings.metrics or (current and current != owned):
        return None
    # Not set yet, or the directory of the master that re-executed this one (SIGUSR2), which
    # removes it when it exits: a directory of this server's own.
    made = tempfile.mkdtemp(prefix="opendify-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    os.environ[_OWNED] = f"{os.getpid()}:{made}"
    return made


_metrics_dir = _metrics_directory()


def when_ready(server):
    server.log.info("Open files limit %d: %d connections and %d concurrent requests per worker", _open_files,
                    _settings.worker_connections, _settings.max_concurrent_requests)


def post_fork(server, worker):
    """gevent records where each greenlet was spawned, for its debugging reports (which the
    gateway never asks for): a walk of the stack at every spawn, and ~300 bytes per held stream."""
    import gevent

    gevent.config.track_greenlet_tree = False


def child_exit(server, worker):
    """A worker's live gauges (streams being relayed) leave with it; its counts stay."""
    if _settings.metrics:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
