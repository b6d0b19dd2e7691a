"""Run several ``vidpar`` commands one after the other in each process of one torchrun launch, recording each
command's exit code, stderr and duration per rank: many bad-input probes for the price of one torchrun start
(~5 s here). Each command is the real CLI entry (``vidpar.cli.main``) on every rank, as ``torchrun -m vidpar``
runs it.

Usage: ``torchrun --nproc-per-node N tests/probe_runner.py PROBES.json OUT_DIR`` (PROBES.json: a list of
``{"name": ..., "argv": [...]}``); writes ``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time


def main() -> None:
    probes = json.load(open(sys.argv[1], encoding="utf-8"))
    out_dir = sys.argv[2]
    from vidpar.cli import main as vidpar_main

    results = []
    for probe in probes:
        err = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stderr(err):
            try:
                code = vidpar_main(probe["argv"])
            except SystemExit as e:  # argparse's own errors
                code = e.code
        results.append({"name": probe["name"], "code": code, "stderr": err.getvalue(),
                        "seconds": time.monotonic() - t0})
    with open(os.path.join(out_dir, f"rank{os.environ.get('RANK', '0')}.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
