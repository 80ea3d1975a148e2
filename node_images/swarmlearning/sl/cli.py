"""``swarmctl sl start``: run an SL node in the foreground (same flags as ``python -m swarmlearning.sl``).

For ``swarmlearning.cli.swarmctl``: ``register(subparsers)`` adds the ``sl`` command group.
"""

from __future__ import annotations

import argparse
from typing import Any

from swarmlearning.sl.main import add_arguments, run


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sl", help="SL nodes (the swarm side of a site)")
    s = p.add_subparsers(dest="sl_cmd", required=True)
    st = s.add_parser(
        "start",
        help="run an SL node in the foreground (what the SL image runs)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(st)
    st.set_defaults(func=run)
