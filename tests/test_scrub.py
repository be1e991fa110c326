"""The scrubber's length shortcut (``SecretForms.shortest``) never skips a string that holds a
recognised form of a secret, and its base64 forms are built only when a string is long enough."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolguard.scrub import SecretForms, scrub

_ASCII = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    secret=_ASCII,
    before=st.binary(max_size=5),
    after=st.binary(max_size=5),
    urlsafe=st.booleans(),
)
def test_base64_forms_are_never_shorter_than_the_shortcut(
    secret: str, before: bytes, after: bytes, urlsafe: bool
) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    carried = encode(before + secret.encode() + after).decode("ascii")
    forms = SecretForms([secret])
    assert len(secret) >= forms.shortest
    if any(core in carried for core in forms.cores):
        assert len(carried) >= forms.shortest
        assert scrub(carried, forms) != carried


@settings(max_examples=200, deadline=None)
@given(secret=_ASCII, noise=st.text(max_size=40))
def test_the_exact_and_percent_encoded_secret_are_scrubbed(secret: str, noise: str) -> None:
    from urllib.parse import quote

    forms = SecretForms([secret])
    for carried in (noise + secret + noise, noise + quote(secret, safe="") + noise):
        assert secret not in str(scrub(carried, forms)).replace("[REDACTED]", "\0")


def test_short_results_do_not_build_the_base64_forms() -> None:
    forms = SecretForms(["eyJhbGciOiJFZERTQSJ9." + "x" * 200])
    assert scrub("value-of-key", forms) == "value-of-key"
    assert forms._b64 is None  # nothing long enough was seen
    scrub("y" * 400, forms)
    assert forms._b64 is not None
