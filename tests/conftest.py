"""Shared fixtures: real servers on 127.0.0.1 (see tests/support) and a leaked-task check."""

from tests.support.deployment import deployment  # noqa: F401
from tests.support.idp_fixtures import idp, idp_server  # noqa: F401  # re-exported fixtures
from tests.support.openbao_fixtures import openbao, openbao_server  # noqa: F401
