"""Tests for toolguard.credentials (Credential, Issuer, Verifier) and toolguard.keys.

Time is always a parameter (``NOW``); no test sleeps or asserts on timings.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import pickle
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolguard.credentials import (
    REQUIRED_CLAIMS,
    Credential,
    Issuer,
    RevocationSource,
    Verifier,
    new_jti,
)
from toolguard.errors import (
    ConfigError,
    CredentialError,
    CredentialExpired,
    CredentialInvalid,
    CredentialRevoked,
    ScopeMismatch,
)
from toolguard.keys import KeyRing, PublicKeys, SigningKey

NOW = 1_700_000_000.0
ISS = "toolguard-test"
AUD = "kv-service"
DROP = object()  # marks a header member or claim to leave out

ED = SigningKey.generate("EdDSA")
ES = SigningKey.generate("ES256")
OTHER = SigningKey.generate("EdDSA")  # an attacker's key, unknown to the verifiers
KEYS = PublicKeys({ED.kid: ("EdDSA", ED.public_key), ES.kid: ("ES256", ES.public_key)})
BOTH = ("EdDSA", "ES256")


# -- helpers ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(part: dict[str, Any] | bytes) -> str:
    raw = part if isinstance(part, bytes) else json.dumps(part, separators=(",", ":")).encode()
    return b64(raw)


def header(key: SigningKey = ED, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": key.algorithm, "typ": "at+jwt", "kid": key.kid}
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "agent-runner",
        "aud": AUD,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "jti-0001",
        "task_id": "task-1",
        "intent": "process-job",
        "tool": "kv_set",
        "op": "write",
        "res": ["agents:jobs:42:state"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


def forge(
    head: dict[str, Any] | bytes,
    body: dict[str, Any] | bytes,
    key: SigningKey | None = ED,
    *,
    signature: bytes | None = None,
) -> str:
    signing_input = f"{seg(head)}.{seg(body)}"
    if signature is None:
        signature = key.sign(signing_input.encode()) if key is not None else b"\0" * 64
    return f"{signing_input}.{b64(signature)}"


def valid(key: SigningKey = ED, /, **over: Any) -> str:
    return forge(header(key), claims(**over), key)


def make_verifier(algorithms: Sequence[str] = ("EdDSA",), **kwargs: Any) -> Verifier:
    kwargs.setdefault("keys", KEYS)
    return Verifier(issuer=ISS, audience=AUD, algorithms=algorithms, clock=lambda: NOW, **kwargs)


def mint(issuer: Issuer, **over: Any) -> Credential:
    args: dict[str, Any] = {
        "jti": new_jti(),
        "task_id": "task-1",
        "identity": "agent-runner",
        "intent": "process-job",
        "tool": "kv_set",
        "operation": "write",
        "resources": ["agents:jobs:42:state"],
        "now": NOW,
    }
    args.update(over)
    return issuer.mint(**args)


def noncanonical_header() -> str:
    """A token whose header segment decodes fine but is not canonical base64url."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    raw = json.dumps(header(), separators=(",", ":")).encode()
    while len(b64(raw)) % 4 == 0:
        raw += b" "
    good = b64(raw)
    body = seg(claims())
    for char in alphabet:
        bad = good[:-1] + char
        if bad != good and base64.urlsafe_b64decode(bad + "=" * (-len(bad) % 4)) == raw:
            return f"{bad}.{body}.{b64(ED.sign(f'{bad}.{body}'.encode()))}"
    raise AssertionError("no non-canonical variant found")


def hs256_confusion(secret: bytes) -> str:
    head, body = seg(header(ED, alg="HS256")), seg(claims())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def flip_signature(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def swap_claims(token: str, **over: Any) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{seg(claims(**over))}.{sig}"


def es256_der_signature() -> str:
    signing_input = f"{seg(header(ES))}.{seg(claims())}"
    assert isinstance(ES.private_key, ec.EllipticCurvePrivateKey)
    der = ES.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{signing_input}.{b64(der)}"


def nested_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": "root", "task_id": "t0"}
    for i in range(1, depth):
        act = {"sub": f"s{i}", "task_id": f"t{i}", "act": act}
    return act


def ed_public_pem() -> bytes:
    return ED.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ed_public_raw() -> bytes:
    return ED.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class FakeRevocations:
    """A RevocationSource that records its calls and answers with ``reason``."""

    def __init__(self, reason: str | None = None, error: Exception | None = None) -> None:
        self.reason = reason
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        self.calls.append(
            {"jti": jti, "task_id": task_id, "identity": identity, "chain": list(chain),
             "issued_at": issued_at}
        )  # fmt: skip
        if self.error is not None:
            raise self.error
        return self.reason


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(ED)


@pytest.fixture
def issuer(ring: KeyRing) -> Issuer:
    return Issuer(name=ISS, audience=AUD, keys=ring, ttl=300.0)


@pytest.fixture
def es_issuer() -> Issuer:
    return Issuer(name=ISS, audience=AUD, keys=KeyRing(ES), ttl=300.0)


@pytest.fixture
def verifier() -> Verifier:
    return make_verifier()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "signing-key.pem"


# -- Credential and Issuer -------------------------------------------------------------------


def test_issuer_mint_claims_and_header_are_exact(issuer: Issuer) -> None:
    cred = mint(issuer, now=NOW + 0.75)
    token = cred.token
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": ED.kid}
    body = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert body == {
        "iss": ISS, "sub": "agent-runner", "aud": AUD, "iat": int(NOW), "nbf": int(NOW),
        "exp": int(NOW) + 300, "jti": cred.jti, "task_id": "task-1", "intent": "process-job",
        "tool": "kv_set", "op": "write", "res": ["agents:jobs:42:state"],
    }  # fmt: skip
    assert all(type(body[name]) is int for name in ("iat", "nbf", "exp"))
    assert dict(cred.claims) == {**body, "res": ("agents:jobs:42:state",)}
    assert (cred.issued_at, cred.expires_at) == (float(int(NOW)), float(int(NOW) + 300))
    assert (cred.tool, cred.operation) == ("kv_set", "write")
    assert cred.resources == ("agents:jobs:42:state",)
    assert (cred.jti, cred.task_id, cred.identity, cred.intent) == (
        body["jti"], "task-1", "agent-runner", "process-job",
    )  # fmt: skip
    assert cred.jit is True


def test_issuer_mint_act_only_when_given(issuer: Issuer) -> None:
    assert "act" not in mint(issuer).claims
    act = {"sub": "parent-agent", "task_id": "task-0", "act": {"sub": "root", "task_id": "t"}}
    cred = mint(issuer, act=act)
    assert make_verifier().verify(cred.token)["act"] == act


def test_issuer_mint_audience_override(issuer: Issuer) -> None:
    cred = mint(issuer, audience="mail-service")
    assert cred.claims["aud"] == "mail-service"
    with pytest.raises(CredentialInvalid, match="audience"):
        make_verifier().verify(cred.token)


@pytest.mark.parametrize(
    ("deadline", "exp"),
    [
        pytest.param(None, int(NOW) + 300, id="no-deadline"),
        pytest.param(NOW + 1000, int(NOW) + 300, id="deadline-later"),
        pytest.param(NOW + 60.9, int(NOW) + 60, id="deadline-caps-exp"),
    ],
)
def test_issuer_mint_exp_is_capped_by_deadline(
    issuer: Issuer, deadline: float | None, exp: int
) -> None:
    assert mint(issuer, deadline=deadline).claims["exp"] == exp


@pytest.mark.parametrize("deadline", [NOW - 1, NOW, NOW + 0.5])
def test_issuer_mint_refuses_past_deadline(issuer: Issuer, deadline: float) -> None:
    with pytest.raises(CredentialError, match="task deadline passed") as info:
        mint(issuer, deadline=deadline)
    assert info.value.task_id == "task-1"
    assert info.value.tool == "kv_set"


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"resources": "agents:jobs:42:state"}, id="resources-one-string"),
        pytest.param({"resources": [1]}, id="resources-not-strings"),
        pytest.param({"resources": ""}, id="resources-empty-string"),
        pytest.param({"tool": ""}, id="tool-empty"),
        pytest.param({"jti": None}, id="jti-none"),
        pytest.param({"act": {"sub": object()}}, id="act-not-json"),
        pytest.param({"act": {"sub": "p", "task_id": "t", "x": float("nan")}}, id="act-nan"),
        pytest.param({"now": float("nan")}, id="now-nan"),
        pytest.param({"deadline": float("nan")}, id="deadline-nan"),
    ],
)
def test_issuer_mint_rejects_bad_arguments(issuer: Issuer, over: dict[str, Any]) -> None:
    with pytest.raises(CredentialError):
        mint(issuer, **over)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"ttl": 0.5}, id="ttl-below-1s"),
        pytest.param({"ttl": float("inf")}, id="ttl-infinite"),
        pytest.param({"name": ""}, id="name-empty"),
        pytest.param({"keys": KEYS}, id="keys-without-private-key"),
    ],
)
def test_issuer_rejects_bad_config(ring: KeyRing, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"name": ISS, "audience": AUD, "keys": ring, **kwargs}
    with pytest.raises(ConfigError):
        Issuer(**args)


def test_credential_signs_lazily_and_once(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    original = SigningKey.sign

    def counting(self: SigningKey, data: bytes) -> bytes:
        calls.append(data)
        return original(self, data)

    monkeypatch.setattr(SigningKey, "sign", counting)
    cred = mint(issuer)
    assert calls == []
    first = cred.token
    assert cred.token == first
    assert len(calls) == 1


def test_credential_token_is_consistent_across_threads(es_issuer: Issuer) -> None:
    # ES256 signatures are randomized: racing threads must still all see one token.
    for _ in range(5):
        cred = mint(es_issuer)
        barrier = threading.Barrier(8)

        def read(cred: Credential = cred, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return cred.token

        with ThreadPoolExecutor(max_workers=8) as pool:
            tokens = set(pool.map(lambda _: read(), range(8)))
        assert tokens == {cred.token}


def test_credential_repr_and_str_never_show_the_token(issuer: Issuer) -> None:
    cred = mint(issuer)
    token = cred.token
    for text in (repr(cred), str(cred), f"{cred}", f"{cred!r}"):
        assert token not in text
        assert token.split(".")[2] not in text
        assert cred.jti in text and "kv_set" in text and "write" in text
        assert "agents:jobs:42:state" in text and "expires_at" in text


def test_credential_is_immutable(issuer: Issuer) -> None:
    cred = mint(issuer)
    with pytest.raises(AttributeError):
        cred.tool = "kv_delete"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del cred.jti
    with pytest.raises(TypeError):
        cred.claims["op"] = "delete"  # type: ignore[index]
    assert isinstance(cred.resources, tuple)
    assert isinstance(cred.claims["res"], tuple)
    frozen_act = mint(issuer, act={"sub": "p", "task_id": "t0"}).claims["act"]
    with pytest.raises(TypeError):
        frozen_act["sub"] = "x"


def test_credential_claims_are_a_copy(issuer: Issuer) -> None:
    act = {"sub": "parent", "task_id": "task-0"}
    resources = ["agents:jobs:42:state"]
    cred = mint(issuer, act=act, resources=resources)
    act["sub"] = "someone-else"
    resources.append("agents:jobs:43:state")
    claims_ = make_verifier().verify(cred.token)
    assert claims_["act"]["sub"] == "parent"
    assert claims_["res"] == ["agents:jobs:42:state"]


def test_credential_equality_and_hash_by_jti(issuer: Issuer) -> None:
    a = mint(issuer, jti="same")
    b = mint(issuer, jti="same", tool="kv_get", operation="read")
    c = mint(issuer)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != "same"


def test_credential_cannot_be_pickled_and_copies_are_itself(issuer: Issuer) -> None:
    cred = mint(issuer)
    with pytest.raises(TypeError):
        pickle.dumps(cred)
    assert copy.copy(cred) is cred
    assert copy.deepcopy({"c": cred})["c"] is cred


def test_credential_from_token_wraps_a_ready_token() -> None:
    cred = Credential.from_token(
        "s3cr3t-static-api-key",
        jti="j1", task_id="t1", identity="agent", intent="i", tool="mail", operation="write",
        resources=["mailto:a@example.com"], issued_at=NOW, expires_at=NOW + 60,
        claims={"scope": "send"},
    )  # fmt: skip
    assert cred.token == "s3cr3t-static-api-key"
    assert cred.jit is False
    assert cred.claims == {"scope": "send"}
    assert "s3cr3t" not in repr(cred)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="neither"),
        pytest.param({"signer": ED, "token": "t"}, id="both"),
        pytest.param({"token": ""}, id="empty-token"),
    ],
)
def test_credential_needs_exactly_one_of_signer_or_token(kwargs: dict[str, Any]) -> None:
    with pytest.raises(CredentialError):
        Credential(
            jti="j", task_id="t", identity="i", intent="n", tool="x", operation="read",
            resources=(), issued_at=NOW, expires_at=NOW + 1, **kwargs,
        )  # fmt: skip


def test_credential_built_with_signer_signs_its_claims() -> None:
    cred = Credential(
        jti="j", task_id="t", identity="i", intent="n", tool="x", operation="read",
        resources=("r",), issued_at=NOW, expires_at=NOW + 1, claims=claims(), signer=ED,
    )  # fmt: skip
    assert make_verifier().verify(cred.token) == claims()


def test_new_jti_has_128_random_bits() -> None:
    ids = {new_jti() for _ in range(1000)}
    assert len(ids) == 1000
    for jti in ids:
        assert len(base64.urlsafe_b64decode(jti + "==")) >= 16


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=5, max_size=5),
    st.lists(st.text(max_size=12), max_size=3),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
)
def test_issuer_tokens_round_trip_any_text(
    values: list[str], resources: list[str], extra: dict[str, str] | None
) -> None:
    task_id, identity, intent, tool, operation = values
    act = None if extra is None else {**extra, "sub": identity, "task_id": task_id}
    issuer_ = Issuer(name=ISS, audience=AUD, keys=KeyRing(ED))
    cred = issuer_.mint(
        jti="j", task_id=task_id, identity=identity, intent=intent, tool=tool,
        operation=operation, resources=resources, now=NOW, act=act,
    )  # fmt: skip
    got = make_verifier().verify(cred.token, operation=operation, tool=tool)
    assert got == {**dict(cred.claims), "res": resources, **({"act": act} if act else {})}


# -- interop with PyJWT ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [ED, ES], ids=["EdDSA", "ES256"])
def test_tokens_are_accepted_by_pyjwt(key: SigningKey) -> None:
    issuer_ = Issuer(name=ISS, audience=AUD, keys=KeyRing(key))
    cred = mint(issuer_)
    decoded = jwt.decode(
        cred.token,
        key.public_key,
        algorithms=[key.algorithm],
        audience=AUD,
        issuer=ISS,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                 "require": list(REQUIRED_CLAIMS)},
    )  # fmt: skip
    assert decoded["jti"] == cred.jti
    assert jwt.get_unverified_header(cred.token) == {
        "alg": key.algorithm, "typ": "at+jwt", "kid": key.kid,
    }  # fmt: skip


@pytest.mark.parametrize("key", [ED, ES], ids=["EdDSA", "ES256"])
def test_verifier_accepts_pyjwt_tokens(key: SigningKey) -> None:
    token = jwt.encode(
        claims(), key.private_key, algorithm=key.algorithm,
        headers={"typ": "at+jwt", "kid": key.kid},
    )  # fmt: skip
    assert make_verifier(BOTH).verify(token) == claims()


# -- Verifier: accepting ---------------------------------------------------------------------


@pytest.mark.parametrize("key", [ED, ES], ids=["EdDSA", "ES256"])
def test_verifier_accepts_issued_tokens(key: SigningKey) -> None:
    cred = mint(Issuer(name=ISS, audience=AUD, keys=KeyRing(key)))
    got = make_verifier((key.algorithm,)).verify(
        cred.token, operation="write", resource="agents:jobs:42:state", tool="kv_set"
    )
    assert got["jti"] == cred.jti
    assert got["res"] == ["agents:jobs:42:state"]


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_verifier_accepts_rfc9068_typ_spellings(typ: str) -> None:
    assert make_verifier().verify(forge(header(typ=typ), claims()))["jti"] == "jti-0001"


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"exp": int(NOW) - 4, "iat": int(NOW) - 200, "nbf": int(NOW) - 200},
                     id="expired-within-leeway"),
        pytest.param({"nbf": int(NOW) + 5, "iat": int(NOW) + 5, "exp": int(NOW) + 100},
                     id="nbf-and-iat-within-leeway"),
        pytest.param({"iat": NOW - 0.5, "nbf": NOW - 0.5, "exp": NOW + 299.5}, id="float-times"),
        pytest.param({"res": []}, id="no-resources"),
        pytest.param({"extra": {"any": "thing"}}, id="unknown-claims-ignored"),
        pytest.param({"act": nested_act(16)}, id="act-16-deep"),
    ],
)  # fmt: skip
def test_verifier_accepts_edge_cases(over: dict[str, Any]) -> None:
    assert make_verifier().verify(valid(**over))["jti"] == "jti-0001"


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "now"])
def test_verifier_rejects_non_finite_now(now: Any) -> None:
    with pytest.raises(CredentialInvalid, match="verification time"):
        make_verifier().verify(valid(), now=now)


def test_verifier_uses_clock_when_now_not_given() -> None:
    verifier = make_verifier()
    token = valid()
    assert verifier.verify(token)["jti"] == "jti-0001"
    with pytest.raises(CredentialExpired):
        verifier.verify(token, now=NOW + 10_000)


# -- Verifier: rejecting (the attack table) --------------------------------------------------


def _case(
    build: Callable[[], object],
    error: type[CredentialError],
    rule: str,
    *,
    id: str,
    algorithms: Sequence[str] = ("EdDSA",),
) -> Any:
    return pytest.param(build, error, rule, algorithms, id=id)


_INV = CredentialInvalid
ATTACKS = [
    # shape and encoding
    _case(lambda: None, _INV, "credential.shape", id="not-a-string"),
    _case(lambda: 42, _INV, "credential.shape", id="int"),
    _case(lambda: valid().encode(), _INV, "credential.shape", id="bytes"),
    _case(lambda: "", _INV, "credential.shape", id="empty"),
    _case(lambda: valid(pad="x" * 9000), _INV, "credential.shape", id="huge"),
    _case(lambda: ".".join(valid().split(".")[:2]), _INV, "credential.shape", id="two-segments"),
    _case(lambda: valid() + ".AAAA", _INV, "credential.shape", id="four-segments"),
    _case(lambda: valid() + "\n", _INV, "credential.shape", id="trailing-newline"),
    _case(lambda: " " + valid(), _INV, "credential.shape", id="leading-space"),
    _case(lambda: "é" + valid(), _INV, "credential.shape", id="non-ascii"),
    _case(lambda: valid().replace(".", "=.", 1), _INV, "credential.shape", id="padded-base64"),
    _case(lambda: "+/" + valid(), _INV, "credential.shape", id="standard-base64-alphabet"),
    _case(lambda: valid().rsplit(".", 1)[0] + ".", _INV, "credential.shape", id="empty-signature"),
    _case(noncanonical_header, _INV, "credential.header", id="non-canonical-base64"),
    _case(lambda: "A" + valid(), _INV, "credential.header", id="bad-base64-length"),
    _case(lambda: forge(b"not json", claims()), _INV, "credential.header", id="header-not-json"),
    _case(lambda: forge(b"\xff\xfe{}", claims()), _INV, "credential.header", id="header-not-utf8"),
    _case(lambda: forge(b"[]", claims()), _INV, "credential.header", id="header-array"),
    _case(lambda: forge(b'"EdDSA"', claims()), _INV, "credential.header", id="header-string"),
    _case(lambda: forge(b"null", claims()), _INV, "credential.header", id="header-null"),
    _case(
        lambda: forge(
            f'{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{ED.kid}"}}'.encode(), claims()
        ),
        _INV, "credential.header", id="header-duplicate-alg",
    ),
    _case(
        lambda: forge(
            f'{{"alg":"EdDSA","typ":"at+jwt","kid":"{ED.kid}","x":NaN}}'.encode(), claims()
        ),
        _INV, "credential.header", id="header-nan",
    ),
    _case(
        lambda: forge(b'{"x":' + b"[" * 1500 + b"]" * 1500 + b"}", claims()),
        _INV, "credential.header", id="header-deeply-nested",
    ),
    # claims that are not a JSON object (correctly signed)
    _case(lambda: forge(header(), b"garbage"), _INV, "credential.claims", id="claims-not-json"),
    _case(lambda: forge(header(), b"[1,2]"), _INV, "credential.claims", id="claims-array"),
    _case(lambda: forge(header(), b"\xff"), _INV, "credential.claims", id="claims-not-utf8"),
    _case(
        lambda: forge(header(), json.dumps(claims()).replace("}", ',"exp":9999999999}').encode()),
        _INV, "credential.claims", id="claims-duplicate-exp",
    ),
    _case(
        lambda: forge(header(), json.dumps(claims()).replace("}", ',"x":Infinity}').encode()),
        _INV, "credential.claims", id="claims-infinity-constant",
    ),
    # algorithm
    _case(lambda: forge(header(alg="none"), claims(), None), _INV, "credential.alg", id="alg-none"),
    _case(
        lambda: forge(header(alg="none"), claims()).rsplit(".", 1)[0] + ".",
        _INV, "credential.shape", id="alg-none-empty-signature",
    ),
    _case(lambda: forge(header(alg="NoNe"), claims()), _INV, "credential.alg", id="alg-none-case"),
    _case(lambda: forge(header(alg=DROP), claims()), _INV, "credential.alg", id="alg-missing"),
    _case(lambda: forge(header(alg=["EdDSA"]), claims()), _INV, "credential.alg", id="alg-list"),
    _case(lambda: forge(header(alg="RS256"), claims()), _INV, "credential.alg", id="alg-RS256"),
    _case(
        lambda: hs256_confusion(ed_public_pem()),
        _INV, "credential.alg", id="alg-hs256-confusion-pem", algorithms=BOTH,
    ),
    _case(
        lambda: hs256_confusion(ed_public_raw()),
        _INV, "credential.alg", id="alg-hs256-confusion-raw", algorithms=BOTH,
    ),
    _case(lambda: valid(ES), _INV, "credential.alg", id="alg-not-pinned"),
    _case(
        lambda: forge(header(ED, alg="ES256"), claims(), ES),
        _INV, "credential.alg", id="alg-header-mismatches-key-es256", algorithms=BOTH,
    ),
    _case(
        lambda: forge(header(ES, alg="EdDSA"), claims(), ED),
        _INV, "credential.alg", id="alg-header-mismatches-key-eddsa", algorithms=BOTH,
    ),
    # signature
    _case(lambda: flip_signature(valid()), _INV, "credential.signature", id="wrong-signature"),
    _case(
        lambda: flip_signature(valid(ES)),
        _INV, "credential.signature", id="wrong-signature-es256", algorithms=BOTH,
    ),
    _case(
        lambda: forge(header(), claims(), signature=ED.sign(b"x")[:63]),
        _INV, "credential.signature", id="signature-short",
    ),
    _case(
        lambda: forge(header(), claims(), signature=ED.sign(b"x") + b"\0"),
        _INV, "credential.signature", id="signature-long",
    ),
    _case(lambda: forge(header(), claims(), None), _INV, "credential.signature", id="sig-zeros"),
    _case(
        lambda: forge(header(ED), claims(), OTHER),
        _INV, "credential.signature", id="other-key-same-kid",
    ),
    _case(
        lambda: swap_claims(valid(), op="delete"), _INV, "credential.signature", id="claims-swapped"
    ),
    _case(
        es256_der_signature, _INV, "credential.signature", id="es256-der-signature",
        algorithms=BOTH,
    ),
    # kid
    _case(lambda: forge(header(kid=DROP), claims()), _INV, "credential.kid", id="kid-missing"),
    _case(lambda: forge(header(kid=None), claims()), _INV, "credential.kid", id="kid-null"),
    _case(lambda: forge(header(kid=7), claims()), _INV, "credential.kid", id="kid-int"),
    _case(lambda: forge(header(kid=""), claims()), _INV, "credential.kid", id="kid-empty"),
    _case(lambda: forge(header(kid="k" * 129), claims()), _INV, "credential.kid", id="kid-long"),
    _case(lambda: valid(OTHER), _INV, "credential.kid", id="kid-unknown"),
    _case(
        lambda: forge(header(kid="../../../etc/passwd"), claims()),
        _INV, "credential.kid", id="kid-path",
    ),
    # headers that would pick the key or change processing (signed by the attacker)
    _case(
        lambda: forge(header(jku="https://evil.example/jwks.json"), claims(), OTHER),
        _INV, "credential.header.jku", id="header-jku",
    ),
    _case(
        lambda: forge(header(x5u="https://evil.example/cert.pem"), claims(), OTHER),
        _INV, "credential.header.x5u", id="header-x5u",
    ),
    _case(
        lambda: forge(header(jwk=OTHER.public_jwk()), claims(), OTHER),
        _INV, "credential.header.jwk", id="header-jwk-embedded-key",
    ),
    _case(
        lambda: forge(header(x5c=["MIIB..."]), claims(), OTHER),
        _INV, "credential.header.x5c", id="header-x5c",
    ),
    _case(
        lambda: forge(header(crit=["exp"], exp=1), claims()),
        _INV, "credential.header.crit", id="header-crit",
    ),
    _case(lambda: forge(header(crit=[]), claims()), _INV, "credential.header.crit", id="crit-[]"),
    _case(lambda: forge(header(cty="JWT"), claims()), _INV, "credential.header.cty", id="cty-jwt"),
    _case(lambda: forge(header(b64=False), claims()), _INV, "credential.header.b64", id="b64"),
    # typ
    _case(lambda: forge(header(typ=DROP), claims()), _INV, "credential.typ", id="typ-missing"),
    _case(lambda: forge(header(typ="JWT"), claims()), _INV, "credential.typ", id="typ-jwt"),
    _case(lambda: forge(header(typ=1), claims()), _INV, "credential.typ", id="typ-int"),
    _case(lambda: forge(header(typ="dpop+jwt"), claims()), _INV, "credential.typ", id="typ-dpop"),
    _case(lambda: forge(header(typ="at+jwt2"), claims()), _INV, "credential.typ", id="typ-suffix"),
    # issuer and audience
    _case(lambda: valid(iss="evil"), _INV, "credential.claims.iss", id="iss-other"),
    _case(lambda: valid(iss=ISS + "-evil"), _INV, "credential.claims.iss", id="iss-prefix"),
    _case(lambda: valid(iss=ISS[:-1]), _INV, "credential.claims.iss", id="iss-truncated"),
    _case(lambda: valid(iss=ISS.upper()), _INV, "credential.claims.iss", id="iss-case"),
    _case(lambda: valid(iss=ISS + " "), _INV, "credential.claims.iss", id="iss-whitespace"),
    _case(lambda: valid(iss=[ISS]), _INV, "credential.claims.iss", id="iss-list"),
    _case(lambda: valid(aud="other-service"), _INV, "credential.claims.aud", id="aud-other"),
    _case(lambda: valid(aud=[AUD]), _INV, "credential.claims.aud", id="aud-list-of-one"),
    _case(lambda: valid(aud=[AUD, "x"]), _INV, "credential.claims.aud", id="aud-list-of-two"),
    _case(lambda: valid(aud=AUD.upper()), _INV, "credential.claims.aud", id="aud-case"),
    _case(lambda: valid(aud=None), _INV, "credential.claims.aud", id="aud-null"),
    # claim types
    _case(lambda: valid(sub=""), _INV, "credential.claims.sub", id="sub-empty"),
    _case(lambda: valid(sub=5), _INV, "credential.claims.sub", id="sub-int"),
    _case(lambda: valid(jti=1234), _INV, "credential.claims.jti", id="jti-int"),
    _case(lambda: valid(task_id=None), _INV, "credential.claims.task_id", id="task_id-null"),
    _case(lambda: valid(intent=["x"]), _INV, "credential.claims.intent", id="intent-list"),
    _case(lambda: valid(tool={"n": 1}), _INV, "credential.claims.tool", id="tool-object"),
    _case(lambda: valid(op=True), _INV, "credential.claims.op", id="op-bool"),
    _case(lambda: valid(exp=str(int(NOW) + 300)), _INV, "credential.claims.exp", id="exp-string"),
    _case(lambda: valid(exp=True), _INV, "credential.claims.exp", id="exp-bool"),
    _case(lambda: valid(exp=None), _INV, "credential.claims.exp", id="exp-null"),
    _case(lambda: valid(iat="now"), _INV, "credential.claims.iat", id="iat-string"),
    _case(lambda: valid(nbf=False), _INV, "credential.claims.nbf", id="nbf-bool"),
    _case(lambda: valid(iat=[int(NOW)]), _INV, "credential.claims.iat", id="iat-list"),
    _case(
        lambda: forge(header(), json.dumps(claims()).replace("}", ',"exp":1e400}').encode()),
        _INV, "credential.claims", id="exp-duplicate-infinite",
    ),
    _case(
        lambda: forge(header(), json.dumps(claims(exp=DROP))[:-1].encode() + b',"exp":1e400}'),
        _INV, "credential.claims.exp", id="exp-infinite",
    ),
    _case(lambda: valid(res="agents:jobs:42:state"), _INV, "credential.claims.res", id="res-str"),
    _case(lambda: valid(res=[1, 2]), _INV, "credential.claims.res", id="res-ints"),
    _case(lambda: valid(res=None), _INV, "credential.claims.res", id="res-null"),
    _case(lambda: valid(res={"a": "b"}), _INV, "credential.claims.res", id="res-object"),
    _case(lambda: valid(res=[["a"]]), _INV, "credential.claims.res", id="res-nested-list"),
    _case(lambda: valid(act="parent"), _INV, "credential.claims.act", id="act-string"),
    _case(lambda: valid(act={"sub": "p"}), _INV, "credential.claims.act", id="act-no-task-id"),
    _case(lambda: valid(act={"task_id": "t"}), _INV, "credential.claims.act", id="act-no-sub"),
    _case(lambda: valid(act=nested_act(17)), _INV, "credential.claims.act", id="act-too-deep"),
    # time
    _case(
        lambda: valid(iat=int(NOW) - 100, nbf=int(NOW) - 100, exp=int(NOW) - 10),
        CredentialExpired, "credential.exp", id="expired",
    ),
    _case(
        lambda: valid(iat=int(NOW) - 100, nbf=int(NOW) - 100, exp=int(NOW) - 5),
        CredentialExpired, "credential.exp", id="expired-at-leeway-boundary",
    ),
    _case(
        lambda: valid(iat=int(NOW), nbf=int(NOW) + 60, exp=int(NOW) + 120),
        CredentialExpired, "credential.nbf", id="nbf-future",
    ),
    _case(
        lambda: valid(iat=int(NOW) + 60, nbf=int(NOW), exp=int(NOW) + 120),
        _INV, "credential.iat", id="iat-future",
    ),
    _case(
        lambda: valid(exp=int(NOW) + 301), _INV, "credential.lifetime", id="lifetime-too-long"
    ),
    _case(
        lambda: valid(iat=int(NOW), exp=int(NOW) - 1), _INV, "credential.lifetime",
        id="exp-before-iat",
    ),
    _case(lambda: valid(exp=int(NOW)), _INV, "credential.lifetime", id="exp-equals-iat"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "rule", "algorithms"), ATTACKS)
def test_verifier_rejects(
    build: Callable[[], object],
    error: type[CredentialError],
    rule: str,
    algorithms: Sequence[str],
) -> None:
    token = build()
    with pytest.raises(error) as info:
        make_verifier(algorithms).verify(token)  # type: ignore[arg-type]
    assert type(info.value) is error
    assert info.value.rule == rule
    if isinstance(token, str) and len(token) > 16:
        for text in (str(info.value), repr(info.value)):
            assert token not in text
            signature = token.split(".")[-1]
            assert len(signature) < 8 or signature not in text


def test_verifier_baseline_forgeries_are_valid() -> None:
    """The attack table's builders produce accepted tokens when nothing is wrong."""
    assert make_verifier().verify(valid()) == claims()
    assert make_verifier(BOTH).verify(valid(ES)) == claims()
    assert make_verifier(BOTH).verify(valid()) == claims()


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS, ids=[f"missing-{c}" for c in REQUIRED_CLAIMS])
def test_verifier_rejects_missing_claim(claim: str) -> None:
    token = valid(**{claim: DROP})
    with pytest.raises(CredentialInvalid, match=f"required claim.*{claim}") as info:
        make_verifier().verify(token)
    assert info.value.rule == "credential.claims"
    assert token not in str(info.value)


def test_verifier_checks_header_before_signature() -> None:
    bad_sig = forge(header(jku="https://evil.example"), claims(), signature=b"\x01" * 64)
    with pytest.raises(CredentialInvalid) as info:
        make_verifier().verify(bad_sig)
    assert info.value.rule == "credential.header.jku"


def test_verifier_wraps_unexpected_errors() -> None:
    class FlakyKeys:
        """Answers once (at construction), then fails."""

        def __init__(self) -> None:
            self.calls = 0

        def public_keys(self) -> Any:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("key store down")
            return KEYS.public_keys()

    with pytest.raises(CredentialInvalid, match="could not be verified") as info:
        make_verifier(keys=FlakyKeys()).verify(valid())
    assert isinstance(info.value.__cause__, RuntimeError)

    def broken_clock() -> float:
        raise OSError("no clock")

    verifier = Verifier(issuer=ISS, audience=AUD, keys=KEYS, clock=broken_clock)
    with pytest.raises(CredentialInvalid) as info:
        verifier.verify(valid())
    assert isinstance(info.value.__cause__, OSError)


# -- Verifier: scope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"operation": "delete"}, id="operation"),
        pytest.param({"operation": "WRITE"}, id="operation-case"),
        pytest.param({"tool": "kv_delete"}, id="tool"),
        pytest.param({"resource": "agents:jobs:43:state"}, id="resource-other"),
        pytest.param({"resource": "agents:jobs:42"}, id="resource-prefix"),
        pytest.param({"resource": "agents:jobs:42:state:x"}, id="resource-extension"),
        pytest.param({"resource": "agents:jobs:*"}, id="resource-glob"),
        pytest.param({"resource": "AGENTS:jobs:42:state"}, id="resource-case"),
        pytest.param({"resource": ""}, id="resource-empty"),
    ],
)
def test_verifier_scope_mismatch(kwargs: dict[str, Any]) -> None:
    token = valid()
    with pytest.raises(ScopeMismatch) as info:
        make_verifier().verify(token, **kwargs)
    assert info.value.tool == "kv_set"
    assert info.value.task_id == "task-1"
    assert token not in str(info.value)


def test_verifier_scope_match_on_any_listed_resource() -> None:
    token = valid(res=["a:1", "b:2"])
    assert make_verifier().verify(token, resource="b:2", operation="write", tool="kv_set")


# -- Verifier: revocation and replay ---------------------------------------------------------


def test_verifier_asks_revocation_source_with_chain_and_iat() -> None:
    source = FakeRevocations()
    act = {"sub": "parent", "task_id": "task-0", "act": {"sub": "root", "task_id": "task-root"}}
    make_verifier(revocations=source).verify(valid(act=act))
    assert source.calls == [{
        "jti": "jti-0001", "task_id": "task-1", "identity": "agent-runner",
        "chain": ["task-0", "task-root"], "issued_at": int(NOW),
    }]  # fmt: skip


@pytest.mark.parametrize("reason", ["incident 17", ""])
def test_verifier_rejects_revoked(reason: str) -> None:
    token = valid()
    with pytest.raises(CredentialRevoked, match="revoked") as info:
        make_verifier(revocations=FakeRevocations(reason)).verify(token)
    assert reason in str(info.value)
    assert info.value.task_id == "task-1"
    assert token not in str(info.value)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("db down"), TimeoutError(), CredentialInvalid("weird"), KeyError("x")],
    ids=["runtime", "timeout", "credential-error", "key-error"],
)
def test_verifier_fails_closed_when_revocation_store_fails(error: Exception) -> None:
    with pytest.raises(CredentialRevoked, match="fail closed") as info:
        make_verifier(revocations=FakeRevocations(error=error)).verify(valid())
    assert info.value.__cause__ is error


def test_revocation_source_protocol_is_satisfied_by_the_fake() -> None:
    source: RevocationSource = FakeRevocations()
    assert source.revoked_reason(jti="j", task_id="t", identity="i", chain=[], issued_at=0) is None


def test_verifier_not_consulted_for_invalid_tokens() -> None:
    source = FakeRevocations()
    with pytest.raises(CredentialInvalid):
        make_verifier(revocations=source).verify(flip_signature(valid()))
    assert source.calls == []


def test_verifier_single_use_rejects_replay() -> None:
    verifier = make_verifier(single_use=True)
    token = valid()
    assert verifier.verify(token)
    with pytest.raises(CredentialRevoked, match="replayed") as info:
        verifier.verify(token)
    assert token not in str(info.value)
    assert make_verifier(single_use=True).verify(token)  # each verifier keeps its own set
    assert make_verifier().verify(token)  # and reuse is fine when not single-use


def test_verifier_single_use_does_not_consume_on_rejection() -> None:
    verifier = make_verifier(single_use=True)
    token = valid()
    with pytest.raises(ScopeMismatch):
        verifier.verify(token, operation="delete")
    assert verifier.verify(token, operation="write")


def test_verifier_single_use_is_thread_safe() -> None:
    verifier = make_verifier(single_use=True)
    token = valid()
    barrier = threading.Barrier(16)

    def attempt(_: int) -> bool:
        barrier.wait()
        try:
            verifier.verify(token)
        except CredentialRevoked:
            return False
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1


def test_verifier_replay_cache_is_bounded_and_pruned_by_exp() -> None:
    verifier = make_verifier(single_use=True, replay_cache_size=2)
    assert verifier.verify(valid(jti="a"))
    assert verifier.verify(valid(jti="b"))
    with pytest.raises(CredentialRevoked, match="fail closed"):
        verifier.verify(valid(jti="c"))
    later = NOW + 10_000  # a and b expired long ago: their entries are dropped
    fresh = {"iat": int(later), "nbf": int(later), "exp": int(later) + 300}
    assert verifier.verify(valid(jti="c", **fresh), now=later)
    assert verifier.verify(valid(jti="d", **fresh), now=later)
    with pytest.raises(CredentialRevoked, match="replayed"):
        verifier.verify(valid(jti="d", **fresh), now=later)


# -- Verifier: configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"leeway": -1}, id="leeway-negative"),
        pytest.param({"leeway": 61}, id="leeway-over-60"),
        pytest.param({"leeway": float("nan")}, id="leeway-nan"),
        pytest.param({"leeway": True}, id="leeway-bool"),
        pytest.param({"max_ttl": 0}, id="max-ttl-zero"),
        pytest.param({"max_ttl": float("inf")}, id="max-ttl-infinite"),
        pytest.param({"algorithms": ["HS256"]}, id="algorithms-hs256"),
        pytest.param({"algorithms": ["none"]}, id="algorithms-none"),
        pytest.param({"algorithms": "EdDSA"}, id="algorithms-a-string"),
        pytest.param({"algorithms": []}, id="algorithms-empty"),
        pytest.param({"algorithms": ["ES256"], "keys": KeyRing(ED)}, id="algorithms-no-key"),
        pytest.param({"issuer": ""}, id="issuer-empty"),
        pytest.param({"replay_cache_size": 0}, id="replay-cache-zero"),
    ],
)
def test_verifier_rejects_bad_config(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"issuer": ISS, "audience": AUD, "keys": KEYS, **kwargs}
    with pytest.raises(ConfigError):
        Verifier(**args)


@pytest.mark.parametrize("leeway", [0, 60, 2.5])
def test_verifier_accepts_leeway_in_range(leeway: float) -> None:
    assert make_verifier(leeway=leeway).leeway == leeway


def test_issuer_verifier_helper_pins_ring_algorithms(issuer: Issuer) -> None:
    cred = mint(issuer)
    verifier = issuer.verifier()
    assert verifier.algorithms == {"EdDSA"}
    assert verifier.verify(cred.token, now=NOW)["jti"] == cred.jti


# -- keys: files -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keyring_load_creates_key_0600_in_dir_0700(key_file: Path) -> None:
    ring = KeyRing.load(key_file)
    assert ring.active.algorithm == "EdDSA"
    assert _mode(key_file) == 0o600
    assert _mode(key_file.parent) == 0o700
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert KeyRing.load(key_file).active.kid == ring.active.kid
    assert sorted(p.name for p in key_file.parent.iterdir()) == [key_file.name]


def test_keyring_load_creates_es256_key(key_file: Path) -> None:
    ring = KeyRing.load(key_file, algorithm="ES256")
    assert ring.active.algorithm == "ES256"
    assert isinstance(ring.active.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ring.active.private_key.curve, ec.SECP256R1)
    assert KeyRing.load(key_file).active.algorithm == "ES256"


def test_keyring_load_rejects_algorithm_mismatch(key_file: Path) -> None:
    KeyRing.load(key_file, algorithm="ES256")
    with pytest.raises(CredentialError, match="ES256 key, not EdDSA"):
        KeyRing.load(key_file, algorithm="EdDSA")


def test_keyring_load_keeps_existing_directory_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    KeyRing.load(tmp_path / "k.pem")
    assert _mode(tmp_path) == 0o755


def test_keyring_load_missing_file_without_create(key_file: Path) -> None:
    with pytest.raises(CredentialError, match="does not exist") as info:
        KeyRing.load(key_file, create=False)
    assert str(key_file) in str(info.value)
    assert not key_file.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601])
def test_keyring_load_rejects_loose_permissions(key_file: Path, mode: int) -> None:
    KeyRing.load(key_file)
    os.chmod(key_file, mode)
    with pytest.raises(CredentialError, match="chmod 600") as info:
        KeyRing.load(key_file)
    assert str(key_file) in str(info.value)


def _write_key_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _pem(key: Any, encryption: Any = None) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def test_keyring_load_garbled_file_names_it_without_key_material(key_file: Path) -> None:
    pem = ED.private_pem()
    truncated = pem[: len(pem) // 2]
    _write_key_file(key_file, truncated)
    with pytest.raises(CredentialError, match="not a readable PEM private key") as info:
        KeyRing.load(key_file)
    message = str(info.value)
    assert str(key_file) in message
    for line in pem.decode().splitlines()[1:-1]:
        assert line not in message


@pytest.mark.parametrize(
    ("make_pem", "match"),
    [
        pytest.param(lambda: _pem(rsa.generate_private_key(65537, 2048)), "not an Ed25519",
                     id="rsa"),
        pytest.param(lambda: _pem(ec.generate_private_key(ec.SECP384R1())), "not an Ed25519",
                     id="p384"),
        pytest.param(lambda: _pem(ed448.Ed448PrivateKey.generate()), "not an Ed25519",
                     id="ed448"),
        pytest.param(
            lambda: _pem(ed25519.Ed25519PrivateKey.generate(),
                         serialization.BestAvailableEncryption(b"pw")),
            "encrypted", id="encrypted",
        ),
        pytest.param(lambda: b"", "not a readable PEM", id="empty"),
        pytest.param(lambda: b"\x00\xff" * 40, "not a readable PEM", id="binary"),
    ],
)  # fmt: skip
def test_keyring_load_rejects_unusable_keys(
    key_file: Path, make_pem: Callable[[], bytes], match: str
) -> None:
    _write_key_file(key_file, make_pem())
    with pytest.raises(CredentialError, match=match):
        KeyRing.load(key_file)


def test_keyring_load_rejects_directory(tmp_path: Path) -> None:
    target = tmp_path / "dir.pem"
    target.mkdir(mode=0o700)
    with pytest.raises(CredentialError, match="not a regular file"):
        KeyRing.load(target)


def test_keyring_from_pem(key_file: Path) -> None:
    ring = KeyRing.from_pem(ED.private_pem().decode())
    assert ring.active.kid == ED.kid
    with pytest.raises(CredentialError, match=r"\$TOOLGUARD_SIGNING_KEY"):
        KeyRing.from_pem("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CredentialError, match="MY_VAR"):
        KeyRing.from_pem("", source="MY_VAR")


def test_signing_key_repr_and_pickle_hide_the_private_key() -> None:
    assert repr(ED) == f"SigningKey(kid={ED.kid!r}, algorithm='EdDSA')"
    with pytest.raises(TypeError):
        pickle.dumps(ED)
    with pytest.raises(AttributeError):
        ED.kid = "x"


# -- keys: kid and signatures against RFC 8037 test vectors -----------------------------------

RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def _rfc8037_key() -> SigningKey:
    raw = base64.urlsafe_b64decode(RFC8037_D + "=")
    return SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(raw))


def test_kid_is_rfc7638_thumbprint() -> None:
    key = _rfc8037_key()  # RFC 8037 appendix A.3 gives this key's thumbprint
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert key.public_jwk()["x"] == RFC8037_X


def test_kid_of_p256_key_is_thumbprint_of_sorted_members() -> None:
    jwk = ES.public_jwk()
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    assert ES.kid == b64(digest)
    assert list(members) == sorted(members)


def test_eddsa_signature_matches_rfc8037_vector() -> None:
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    expected = (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )
    assert b64(_rfc8037_key().sign(signing_input)) == expected


# -- keys: JWKS ------------------------------------------------------------------------------


def test_keyring_jwks_has_public_parts_only(key_file: Path) -> None:
    ring = KeyRing.load(key_file, algorithm="ES256")
    (entry,) = ring.jwks()["keys"]
    assert set(entry) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert entry["kid"] == ring.active.kid and entry["alg"] == "ES256" and entry["use"] == "sig"
    (ed_entry,) = KeyRing(ED).jwks()["keys"]
    assert set(ed_entry) == {"kty", "crv", "x", "kid", "alg", "use"}


def test_verifier_from_jwks_alone_verifies(tmp_path: Path, issuer: Issuer) -> None:
    cred = mint(issuer)
    doc = json.loads(json.dumps(issuer.keys.jwks()))  # as shipped to another process
    assert "PRIVATE" not in json.dumps(doc) and '"d"' not in json.dumps(doc)
    verifier = Verifier.from_jwks(doc, issuer=ISS, audience=AUD, clock=lambda: NOW)
    assert verifier.verify(cred.token)["jti"] == cred.jti
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(doc))
    from_file = Verifier.from_jwks(str(path), issuer=ISS, audience=AUD, clock=lambda: NOW)
    assert from_file.verify(cred.token)["jti"] == cred.jti
    assert KeyRing.from_jwks(doc).public_keys().keys() == {ED.kid}
    assert PublicKeys.from_jwks(doc).jwks() == doc


def test_public_keys_from_jwks_defaults_kid_to_thumbprint() -> None:
    entry = ED.public_jwk()
    del entry["kid"], entry["alg"], entry["use"]
    assert set(PublicKeys.from_jwks({"keys": [entry]}).public_keys()) == {ED.kid}


def _jwk(**over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = dict(ES.public_jwk())
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not DROP}


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"keys": [_jwk(d="AAAA")]}, id="private-d"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, id="oct"),
        pytest.param({"keys": [{"kty": "oct", "kid": "h"}]}, id="oct-without-k"),
        pytest.param({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, id="rsa"),
        pytest.param({"keys": [_jwk(crv="P-384")]}, id="unknown-crv"),
        pytest.param({"keys": [{**ED.public_jwk(), "crv": "X25519"}]}, id="okp-x25519"),
        pytest.param({"keys": [_jwk(kty=DROP)]}, id="no-kty"),
        pytest.param({"keys": [_jwk(x="not base64!")]}, id="bad-x-encoding"),
        pytest.param({"keys": [_jwk(x=ES.public_jwk()["x"] + "=")]}, id="padded-x"),
        pytest.param({"keys": [_jwk(x=b64(b"\x01" * 31))]}, id="short-x"),
        pytest.param({"keys": [_jwk(y=DROP)]}, id="missing-y"),
        pytest.param({"keys": [_jwk(x=b64(b"\x01" * 32), y=b64(b"\x02" * 32))]},
                     id="point-not-on-curve"),
        pytest.param({"keys": [_jwk(alg="EdDSA")]}, id="alg-mismatch"),
        pytest.param({"keys": [_jwk(alg="HS256")]}, id="alg-hs256"),
        pytest.param({"keys": [_jwk(use="enc")]}, id="use-enc"),
        pytest.param({"keys": [_jwk(key_ops=["encrypt"])]}, id="key-ops-no-verify"),
        pytest.param({"keys": [_jwk(kid=5)]}, id="kid-int"),
        pytest.param({"keys": [_jwk(), _jwk()]}, id="duplicate-kid"),
        pytest.param({"keys": ["not-an-object"]}, id="entry-not-object"),
        pytest.param({"keys": {"a": 1}}, id="keys-not-list"),
        pytest.param({"nokeys": []}, id="no-keys-member"),
        pytest.param([], id="not-an-object"),
        pytest.param({"keys": [_jwk(kid=str(i)) for i in range(101)]}, id="too-many"),
    ],
)  # fmt: skip
def test_public_keys_from_jwks_rejects(doc: Any) -> None:
    with pytest.raises(CredentialError):
        PublicKeys.from_jwks(doc)


def test_public_keys_from_jwks_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read JWKS file"):
        PublicKeys.from_jwks(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CredentialError, match="cannot read JWKS file"):
        PublicKeys.from_jwks(str(tmp_path / "bad.json"))


def test_public_keys_rejects_mismatched_pairs() -> None:
    with pytest.raises(CredentialError):
        PublicKeys({"k": ("ES256", ED.public_key)})
    with pytest.raises(CredentialError):
        PublicKeys({"k": ("HS256", ED.public_key)})


# -- keys: rotation --------------------------------------------------------------------------


def test_keyring_rotate_keeps_old_tokens_valid_until_expiry(key_file: Path) -> None:
    old_ring = KeyRing.load(key_file, now=NOW)
    old_cred = mint(Issuer(name=ISS, audience=AUD, keys=old_ring))
    old_token = old_cred.token

    new_ring = KeyRing.rotate(key_file, now=NOW + 10, max_ttl=3600)
    new_cred = mint(Issuer(name=ISS, audience=AUD, keys=new_ring), now=NOW + 10)
    assert new_ring.active.kid != old_ring.active.kid
    assert jwt.get_unverified_header(new_cred.token)["kid"] == new_ring.active.kid
    assert set(new_ring.public_keys()) == {old_ring.active.kid, new_ring.active.kid}

    verifier = make_verifier(keys=new_ring)
    assert verifier.verify(old_token, now=NOW + 20)["jti"] == old_cred.jti
    assert verifier.verify(new_cred.token, now=NOW + 20)["jti"] == new_cred.jti
    with pytest.raises(CredentialExpired):  # old tokens still die at their own exp
        verifier.verify(old_token, now=NOW + 400)

    # a reload (another process) sees the same keys; the JWKS alone verifies both
    reloaded = KeyRing.load(key_file, now=NOW + 20)
    assert reloaded.active.kid == new_ring.active.kid
    assert set(reloaded.public_keys()) == set(new_ring.public_keys())
    from_jwks = Verifier.from_jwks(reloaded.jwks(), issuer=ISS, audience=AUD)
    assert from_jwks.verify(old_token, now=NOW + 20)["jti"] == old_cred.jti

    # past keep_until the retired key is dropped
    assert set(KeyRing.load(key_file, now=NOW + 10 + 3600).public_keys()) == {new_ring.active.kid}


def test_keyring_rotate_writes_sidecar_and_replaces_key_atomically(key_file: Path) -> None:
    old = KeyRing.load(key_file, now=NOW)
    KeyRing.rotate(key_file, now=NOW + 10, max_ttl=600)
    sidecar = key_file.with_name(key_file.name + ".retired.json")
    entries = json.loads(sidecar.read_text())
    assert entries == [{
        "jwk": old.active.public_jwk(), "kid": old.active.kid,
        "retired_at": NOW + 10, "keep_until": NOW + 610,
    }]  # fmt: skip
    assert "d" not in entries[0]["jwk"]
    assert _mode(key_file) == 0o600 and _mode(sidecar) == 0o600
    assert sorted(p.name for p in key_file.parent.iterdir()) == sorted(
        [key_file.name, sidecar.name]
    )


def test_keyring_rotate_twice_prunes_expired_retired_keys(key_file: Path) -> None:
    first = KeyRing.load(key_file, now=NOW)
    second = KeyRing.rotate(key_file, now=NOW + 10, max_ttl=100)
    third = KeyRing.rotate(key_file, now=NOW + 50, max_ttl=100)
    assert [r.kid for r in third.retired] == [first.active.kid, second.active.kid]
    fourth = KeyRing.rotate(key_file, now=NOW + 500, max_ttl=100)
    assert [r.kid for r in fourth.retired] == [third.active.kid]


def test_keyring_rotate_can_change_algorithm(key_file: Path) -> None:
    old = KeyRing.load(key_file, now=NOW)
    old_token = mint(Issuer(name=ISS, audience=AUD, keys=old)).token
    new = KeyRing.rotate(key_file, algorithm="ES256", now=NOW)
    new_token = mint(Issuer(name=ISS, audience=AUD, keys=new)).token
    assert new.active.algorithm == "ES256"
    verifier = make_verifier(BOTH, keys=new)
    assert verifier.verify(old_token)["iss"] == ISS
    assert verifier.verify(new_token)["iss"] == ISS
    with pytest.raises(CredentialInvalid, match="not allowed"):
        make_verifier(("EdDSA",), keys=new).verify(new_token)


def test_keyring_rotate_missing_key_file(key_file: Path) -> None:
    with pytest.raises(CredentialError, match="does not exist"):
        KeyRing.rotate(key_file, now=NOW)


def test_keyring_rotate_rejects_bad_max_ttl(key_file: Path) -> None:
    KeyRing.load(key_file)
    with pytest.raises(ConfigError):
        KeyRing.rotate(key_file, max_ttl=0)


def test_keyring_load_survives_crash_between_sidecar_and_key_swap(key_file: Path) -> None:
    ring = KeyRing.load(key_file, now=NOW)
    sidecar = key_file.with_name(key_file.name + ".retired.json")
    entry = {"jwk": ring.active.public_jwk(), "kid": ring.active.kid,
             "retired_at": NOW, "keep_until": NOW + 60}  # fmt: skip
    sidecar.write_text(json.dumps([entry]))
    os.chmod(sidecar, 0o600)
    again = KeyRing.load(key_file, now=NOW)
    assert again.active.kid == ring.active.kid
    assert again.retired == ()
    assert len(again.jwks()["keys"]) == 1


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("{}", id="not-a-list"),
        pytest.param('[{"kid": "x"}]', id="entry-missing-members"),
        pytest.param(
            json.dumps([{"jwk": ED.public_jwk(), "kid": OTHER.kid, "retired_at": NOW,
                         "keep_until": NOW + 60}]),
            id="kid-mismatch",
        ),
        pytest.param(
            json.dumps([{"jwk": {**ED.public_jwk(), "kid": "custom"}, "kid": "custom",
                         "retired_at": NOW, "keep_until": NOW + 60}]),
            id="kid-not-thumbprint",
        ),
        pytest.param(
            json.dumps([{"jwk": ED.public_jwk(), "kid": ED.kid, "retired_at": "then",
                         "keep_until": NOW + 60}]),
            id="bad-times",
        ),
        pytest.param(
            json.dumps([{"jwk": {**ED.public_jwk(), "d": "AAAA"}, "kid": ED.kid,
                         "retired_at": NOW, "keep_until": NOW + 60}]),
            id="private-material",
        ),
    ],
)  # fmt: skip
def test_keyring_load_rejects_damaged_sidecar(key_file: Path, content: str) -> None:
    KeyRing.load(key_file)
    sidecar = key_file.with_name(key_file.name + ".retired.json")
    sidecar.write_text(content)
    os.chmod(sidecar, 0o600)
    with pytest.raises(CredentialError, match=r"retired-keys file .* is damaged"):
        KeyRing.load(key_file, now=NOW)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_keyring_load_rejects_writable_sidecar(key_file: Path, mode: int) -> None:
    KeyRing.load(key_file, now=NOW)
    KeyRing.rotate(key_file, now=NOW)
    sidecar = key_file.with_name(key_file.name + ".retired.json")
    os.chmod(sidecar, mode)
    with pytest.raises(CredentialError, match="chmod 600"):
        KeyRing.load(key_file, now=NOW)


# -- property tests: nothing but CredentialError escapes the verifier ------------------------

_FUZZ_VERIFIER = make_verifier(BOTH, revocations=FakeRevocations(), single_use=True)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
_b64_segment = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=80
)


def _assert_only_credential_errors(token: object) -> None:
    try:
        result = _FUZZ_VERIFIER.verify(token)  # type: ignore[arg-type]
    except CredentialError:
        return
    assert isinstance(result, dict)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), _json))
def test_verifier_random_input_raises_only_credential_errors(token: object) -> None:
    _assert_only_credential_errors(token)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(_b64_segment, _b64_segment, _b64_segment)
def test_verifier_random_segments_raise_only_credential_errors(a: str, b: str, c: str) -> None:
    _assert_only_credential_errors(f"{a}.{b}.{c}")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "jku", "cty", "x"]), _json, max_size=4
    ),
    st.dictionaries(st.sampled_from([*REQUIRED_CLAIMS, "act", "x"]), _json, max_size=8),
    st.booleans(),
)
@pytest.mark.slow
def test_verifier_signed_random_json_raises_only_credential_errors(
    head_over: dict[str, Any], body_over: dict[str, Any], es: bool
) -> None:
    key = ES if es else ED
    _assert_only_credential_errors(forge({**header(key), **head_over}, claims(**body_over), key))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_verifier_signed_random_bytes_raise_only_credential_errors(h: bytes, b: bytes) -> None:
    _assert_only_credential_errors(forge(h, b))
    _assert_only_credential_errors(forge(header(), b))
