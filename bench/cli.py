"""The command line of `python -m bench`: which report(s) to run.

Expects a gevent-patched process (see bench/__main__.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: python -m bench [faults | all]

  (no argument)  the emulator called directly vs through the gateway; smooth output on vs off
                 -> bench/results/latest.json
  faults         disconnect storms, 1,000 held streams, upstream faults -> bench/results/faults.json
  all            both, one after the other
"""


def _commands() -> dict[tuple[str, ...], list[Callable[[], int]]]:
    from bench import run
    from bench.faults import run as faults

    return {(): [run.main], ("faults",): [faults.main], ("all",): [run.main, faults.main]}


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    chosen = _commands().get(tuple(argv))
    if chosen is None:
        print(USAGE, file=sys.stderr)
        return 2
    status = 0
    for number, command in enumerate(chosen):
        if number:
            print()
        status = max(status, command())
    return status
