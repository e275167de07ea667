"""The user's side of a login at the test authorization server, driven with httpx.

node oidc-provider's device page (``/device``), its development login form (any login name)
and its consent form are plain HTML forms with cookies; :class:`User` fills them in as a
person at a browser would, for the device flow (:meth:`User.approve_device`,
:meth:`User.deny_device`) and for the browser flow (:meth:`User.log_in`, which follows the
redirect to the loopback listener of ``token-sidecar seed``).
"""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin

import httpx

__all__ = ["User", "UserError"]

_XSRF = re.compile(r'name="xsrf" value="([^"]+)"')
_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"')


class UserError(AssertionError):
    """A page was not what a user would expect to see."""


class User:
    """One person with one browser (cookie jar); a context manager."""

    def __init__(self, issuer: str, login: str = "test-user") -> None:
        self.issuer = issuer
        self.login = login
        self._http = httpx.Client(base_url=issuer, follow_redirects=True, timeout=10.0)

    def __enter__(self) -> User:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    # -- the device flow ----------------------------------------------------------------

    def _device_confirmation(self, user_code: str) -> str:
        page = self._http.get("/device")
        xsrf = self._field(_XSRF, page, "the device page's xsrf")
        confirm = self._http.post("/device", data={"xsrf": xsrf, "user_code": user_code})
        if "op.deviceConfirmForm" not in confirm.text:
            raise UserError(f"no confirmation form for code {user_code}: {confirm.text[:300]}")
        return self._field(_XSRF, confirm, "the confirmation's xsrf")

    def approve_device(self, user_code: str) -> None:
        """Enter the code at ``/device``, confirm, log in and consent."""
        xsrf = self._device_confirmation(user_code)
        page = self._http.post(
            "/device", data={"xsrf": xsrf, "user_code": user_code, "confirm": "yes"}
        )
        page = self._interactions(page)
        if "Sign-in Success" not in page.text:
            raise UserError(f"the device login did not succeed: {page.text[-1500:]}")

    def deny_device(self, user_code: str) -> None:
        """Enter the code and press Abort (the server then answers ``access_denied``)."""
        xsrf = self._device_confirmation(user_code)
        page = self._http.post(
            "/device", data={"xsrf": xsrf, "user_code": user_code, "abort": "yes"}
        )
        if "interrupted" not in page.text:
            raise UserError(f"the abort was not acknowledged: {page.text[:300]}")

    # -- the browser flow ---------------------------------------------------------------

    def log_in(self, authorization_url: str) -> httpx.Response:
        """Open the URL, log in and consent; the last redirect reaches the loopback listener,
        whose answer is returned."""
        return self._interactions(self._http.get(authorization_url))

    # -- the pages ----------------------------------------------------------------------

    def _interactions(self, page: httpx.Response) -> httpx.Response:
        for _ in range(4):
            if 'name="prompt" value="login"' in page.text:
                page = self._submit(page, {"prompt": "login", "login": self.login, "password": "x"})
            elif 'name="prompt" value="consent"' in page.text:
                page = self._submit(page, {"prompt": "consent"})
            else:
                return page
        raise UserError("the login did not finish after four forms")

    def _submit(self, page: httpx.Response, data: dict[str, str]) -> httpx.Response:
        action = html.unescape(self._field(_FORM_ACTION, page, "a form"))
        return self._http.post(urljoin(str(page.url), action), data=data)

    @staticmethod
    def _field(pattern: re.Pattern[str], page: httpx.Response, what: str) -> str:
        match = pattern.search(page.text)
        if match is None:
            raise UserError(f"{what} is missing from {page.url}: {page.text[:300]}")
        return match.group(1)
