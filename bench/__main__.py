"""`python -m bench`: the Dify emulator called directly vs the same traffic through the gateway.

See bench/README.md for what each figure means and its target.
"""

# The load client is gevent-based: patch before anything imports socket, ssl or requests.
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from bench.run import main  # noqa: E402

sys.exit(main())
