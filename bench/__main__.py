"""`python -m bench [faults | all]`: see bench/cli.py and bench/README.md.

`python -m bench` compares the Dify emulator called directly with the same traffic through
the gateway; `faults` runs the fault and load report; `all` runs both.
"""

# The load client is gevent-based: patch before anything imports socket, ssl or requests.
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from bench.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
