"""``python -m sidecar``: the same entry point as the ``token-sidecar`` console script."""

from sidecar.cli import main

raise SystemExit(main())
