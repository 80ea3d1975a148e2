"""An SL node that drops out of a securely aggregated round at a chosen step, as a crashed site would.

``python -m tests.chaos.secagg_dropout --at mask|reveal [python -m swarmlearning.sl flags]`` runs an
ordinary SL node whose process exits (code 3) the first time its part of secure aggregation reaches
``--at``: ``mask`` — it has shared its keys but never sends its masked input (the leader must rebuild its
pairwise masks from the survivors' shares); ``reveal`` — its masked input is in, but it never reveals its
shares (the others' reveals must suffice). The fault sits in this launcher, not in the SL node: nothing
outside a process can stop it between two steps that are milliseconds apart.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from swarmlearning.privacy import secagg
from swarmlearning.sl.main import main as sl_main

EXIT_CODE = 3


def drop_out_at(step: str) -> None:
    def exit_instead(self: secagg.Participant, *args: Any, **kwargs: Any) -> Any:
        sys.stderr.write(f"secagg_dropout: {self.me} exits instead of its {step} step\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)

    setattr(secagg.Participant, step, exit_instead)


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--at", choices=("mask", "reveal"), required=True)
    known, rest = parser.parse_known_args()
    drop_out_at(known.at)
    return sl_main(rest)


if __name__ == "__main__":
    sys.exit(main())
