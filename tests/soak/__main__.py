"""``python -m tests.soak`` (``make soak``): one soak against servers it starts itself, then
``RELIABILITY.md`` and ``RELIABILITY.json`` written from it. Exits 1 when the soak failed
(the files are written either way and say so).

Options: ``--seconds`` (default 600), ``--replicas`` (5), ``--seed`` (default ``$SOAK_SEED``,
else random; printed), ``--out`` (the directory for the two files; default the checkout),
``--workdir`` (keep the replicas' files and logs there).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

from tests.soak.plan import Plan
from tests.soak.report import MD_NAME, write
from tests.soak.soak import failures, soak
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer, find_bao_binary

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the replicas' files and logs here"
    )
    args = parser.parse_args(argv)
    seed = args.seed
    if seed is None:
        seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**32))
    # 200 kills in the default ten minutes, in proportion for shorter runs
    plan = Plan(
        seconds=args.seconds,
        replicas=args.replicas,
        seed=seed,
        min_kills=int(200 * args.seconds / 600),
    )
    print(f"soak: {args.seconds:.0f} s, {args.replicas} replicas, seed {seed}", flush=True)
    with (
        OpenBaoServer(binary=find_bao_binary()) as openbao,
        IdpServer() as idp,
        tempfile.TemporaryDirectory(prefix="token-sidecar-soak-") as scratch,
    ):
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        record = soak(openbao, idp, root, plan)
    problems = failures(record)
    record["verdict"] = {"passed": not problems, "failures": problems}
    write(record, args.out)
    chaos, server = record["chaos"], record["server"]
    print(
        f"soak: {chaos['kills']} kills, {chaos['freezes']} freezes, {chaos['seals']} seals, "
        f"{server['rotations']} rotations, reuse {server['reuse']}, revoked grants "
        f"{server['revoked_grants']}, window hits {record['operator']['window_hits']}; "
        f"{'passed' if not problems else 'FAILED'} (see {args.out / MD_NAME})",
        flush=True,
    )
    for problem in problems:
        print(f"soak: {problem}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
