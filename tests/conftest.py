"""Shared fixtures: real servers on 127.0.0.1 (see tests/support).

Leaked tasks fail the tests that drive async code: ``tests/unit/fakes.run_without_leaks`` for
the core, the ``serving`` helper of ``tests/unit/test_server.py`` for the HTTP server.
"""

from tests.support.deployment import deployment  # noqa: F401
from tests.support.idp_fixtures import idp, idp_server  # noqa: F401  # re-exported fixtures
from tests.support.mtls import cc, certificates, mtls_idp, mtls_idp_server  # noqa: F401
from tests.support.openbao_fixtures import openbao, openbao_server  # noqa: F401
