"""Whatever the annotations say, the review answers (never raises), a denial names annotations
under the prefix, and an injection gives a valid, restricted pod that re-admission leaves alone."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.injector.annotations import CREDENTIAL_KEYS, POD_KEYS, PREFIX
from tests.injector.support import apply, pod_review, run, schema_problems
from tests.support.podsecurity import restricted_violations

NAMES = st.sampled_from(["billing", "a", "orders-v2", "Bad", "x_y", "-", "a" * 64])
VALUES = st.one_of(
    st.sampled_from(
        [
            "true",
            "false",
            "apps/billing",
            "https://idp.example/token",
            "http://idp.example/token",
            "client_secret_post",
            "10m",
            "64Mi",
            "0440",
            "1000",
            "app",
            "",
            "../x",
            "ftp://x",
        ]
    ),
    st.text(max_size=20),
)
POD_ANNOTATION = st.tuples(st.sampled_from(sorted(POD_KEYS)), VALUES).map(
    lambda kv: (f"{PREFIX}{kv[0]}", kv[1])
)
CREDENTIAL_ANNOTATION = st.tuples(st.sampled_from(sorted(CREDENTIAL_KEYS)), NAMES, VALUES).map(
    lambda kv: (f"{PREFIX}{kv[0]}-{kv[1]}", kv[2])
)
ANNOTATIONS = st.dictionaries(
    st.one_of(POD_ANNOTATION, CREDENTIAL_ANNOTATION).map(lambda kv: kv[0]),
    VALUES,
    max_size=8,
)
BASE = {
    f"{PREFIX}inject": "true",
    f"{PREFIX}credential-billing": "apps/billing",
    f"{PREFIX}token-endpoint-billing": "https://idp.example/token",
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=ANNOTATIONS, keep_base=st.booleans())
def test_any_annotations_get_an_answer(extra: dict[str, str], keep_base: bool) -> None:
    annotations = {**BASE, **extra} if keep_base else extra
    body = pod_review(annotations)
    outcome = run(body)
    response = outcome.response["response"]
    assert response["uid"] == body["request"]["uid"]
    if outcome.decision == "denied":
        assert response["allowed"] is False
        assert all(p.startswith(f"annotation {PREFIX}") for p in outcome.problems)
        assert outcome.problems
        return
    assert response["allowed"] is True
    if outcome.decision == "skipped":
        assert "patch" not in response
        return
    pod = apply(body, outcome)
    assert schema_problems(pod) == []
    assert restricted_violations(pod) == []
    again = copy.deepcopy(body)
    again["request"]["object"] = pod
    assert run(again).reason == "already injected"
