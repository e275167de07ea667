"""The operator commands: ``seed``, ``status`` and ``retire`` (wiring, above the adapters).

Operators run these from a laptop or a CI job with the same configuration as ``run``;
:func:`run_command` builds what a command needs, runs it, reports a failure with its exit
code (:mod:`sidecar.operator.output`) and closes everything. Imported only when one of
these commands is given, so ``run`` starts as fast as before.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from sidecar.clock import SystemClock
from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.operator.context import Operator
from sidecar.operator.output import Reporter
from sidecar.operator.retire import retire
from sidecar.operator.seed import SeedOptions, seed
from sidecar.operator.status import status

__all__ = ["run_command"]


def _endpoints(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "device_authorization": getattr(args, "device_authorization_endpoint", None),
        "authorization": getattr(args, "authorization_endpoint", None),
        "revocation": getattr(args, "revocation_endpoint", None),
    }


async def run_command(
    settings: Settings, args: argparse.Namespace, *, out: TextIO, err: TextIO
) -> int:
    reporter = Reporter(args.output, out=out, err=err)
    clock = SystemClock()
    operator = Operator.open(settings, clock)
    try:
        if args.command == "seed":
            options = SeedOptions(
                credential=args.credential,
                flow=args.flow,
                replace=args.replace,
                no_browser=args.no_browser,
                port=args.port,
                by=args.by,
                login_timeout=args.timeout,
                endpoints=_endpoints(args),
            )
            return await seed(operator, options, reporter, clock=clock)
        if args.command == "status":
            return await status(operator, args.credential, reporter, clock=clock)
        return await retire(
            operator,
            args.credential,
            reporter,
            clock=clock,
            by=args.by,
            timeout=args.timeout,
            endpoints=_endpoints(args),
        )
    except SidecarError as exc:
        return reporter.failed(exc)
    finally:
        await operator.aclose()
