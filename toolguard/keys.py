"""Signing keys for toolguard credentials: creation, loading, rotation and JWKS.

A :class:`KeyRing` holds the one *active* :class:`SigningKey` (Ed25519 ``EdDSA`` by default, or
P-256 ``ES256``) and the public halves of *retired* keys, kept so that tokens signed before a
rotation verify until they expire. Keys are loaded once as ``cryptography`` key objects.

On disk::

    <key_file>                 PEM (PKCS#8) private key, mode 0600, in a 0700 directory
    <key_file>.retired.json    retired public keys: [{"jwk", "kid", "retired_at", "keep_until"}]

A key's ``kid`` is its RFC 7638 JWK thumbprint (base64url SHA-256). :meth:`KeyRing.jwks` publishes
the public parts only; :meth:`PublicKeys.from_jwks` gives processes without the private key the
``kid -> (alg, public key)`` map a :class:`~toolguard.credentials.Verifier` needs, and refuses
documents with private or symmetric material. Error messages never contain key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from toolguard.errors import ConfigError, CredentialError
from toolguard.numbers import is_finite_number

__all__ = [
    "ARGS_KEY_ENV",
    "load_args_key",
    "ALGORITHMS",
    "Algorithm",
    "KeyRing",
    "PublicKey",
    "PublicKeySource",
    "PublicKeys",
    "RetiredKey",
    "SigningKey",
]

Algorithm: TypeAlias = Literal["EdDSA", "ES256"]
PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

#: The JWS algorithms toolguard signs and verifies with.
ALGORITHMS: tuple[Algorithm, ...] = ("EdDSA", "ES256")

_MAX_KEY_FILE = 64 * 1024
_MAX_ARCHIVED = 100
_MAX_JWKS_KEYS = 100
_ECDSA = ec.ECDSA(hashes.SHA256())
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# JWK members that only private or symmetric keys have.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url: no padding, no foreign characters, canonical trailing bits."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data


class PublicKeySource(Protocol):
    """Anything that maps a ``kid`` to ``(algorithm, public key object)`` for verification."""

    def public_keys(self) -> Mapping[str, tuple[str, PublicKey]]:
        """The keys to verify with, by kid."""
        ...


class SigningKey:
    """A private signing key with its ``kid``, ``algorithm`` and precomputed JWS header.

    Built from a ``cryptography`` key object (Ed25519 -> ``EdDSA``, P-256 -> ``ES256``);
    immutable. ``repr`` shows only the kid and algorithm.
    """

    __slots__ = ("algorithm", "header_segment", "kid", "private_key", "public_key")

    algorithm: Algorithm
    header_segment: str
    kid: str
    private_key: PrivateKey
    public_key: PublicKey

    def __init__(self, private_key: PrivateKey) -> None:
        algorithm = _algorithm_of(private_key)
        if algorithm is None:
            raise CredentialError(
                "unsupported signing key type; use an Ed25519 (EdDSA) or P-256 (ES256) key"
            )
        public_key = private_key.public_key()
        kid = _thumbprint(_public_jwk(public_key))
        header = {"alg": algorithm, "typ": "at+jwt", "kid": kid}
        values = {
            "algorithm": algorithm,
            "header_segment": b64url_encode(json.dumps(header, separators=(",", ":")).encode()),
            "kid": kid,
            "private_key": private_key,
            "public_key": public_key,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def generate(cls, algorithm: Algorithm = "EdDSA") -> SigningKey:
        """A fresh random key for ``algorithm``."""
        _check_algorithm(algorithm)
        if algorithm == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate())
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data``: 64 raw bytes (ES256: ``r || s``, RFC 7518 §3.4)."""
        key = self.private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        r, s = decode_dss_signature(key.sign(data, _ECDSA))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_jwk(self) -> dict[str, str]:
        """The public JWK, with ``kid``, ``alg`` and ``use``."""
        return _full_jwk(self.kid, self.algorithm, self.public_key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for writing the key file)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SigningKey is immutable")

    def __reduce__(self) -> Any:
        raise TypeError("SigningKey cannot be pickled; load it from its key file instead")

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"


@dataclass(frozen=True)
class RetiredKey:
    """The public half of a rotated-out key, trusted for verification until ``keep_until``."""

    kid: str
    algorithm: Algorithm
    public_key: PublicKey
    retired_at: float
    keep_until: float

    def to_json(self) -> dict[str, Any]:
        """The entry written to the ``.retired.json`` sidecar."""
        jwk = _full_jwk(self.kid, self.algorithm, self.public_key)
        return {
            "jwk": jwk,
            "kid": self.kid,
            "retired_at": self.retired_at,
            "keep_until": self.keep_until,
        }


class KeyRing:
    """The active signing key plus retired public keys; a :class:`PublicKeySource`.

    ``archived``: retired keys past their ``keep_until``. They verify no credential any more,
    but the audit checkpoints they signed still verify (:meth:`history_keys`).
    """

    __slots__ = ("_history", "_public", "active", "archived", "retired")

    active: SigningKey
    retired: tuple[RetiredKey, ...]
    archived: tuple[RetiredKey, ...]
    _public: Mapping[str, tuple[str, PublicKey]]
    _history: Mapping[str, tuple[str, PublicKey]]

    def __init__(
        self,
        active: SigningKey,
        *,
        retired: Iterable[RetiredKey] = (),
        archived: Iterable[RetiredKey] = (),
    ) -> None:
        kept = tuple(r for r in retired if r.kid != active.kid)
        public: dict[str, tuple[str, PublicKey]] = {
            r.kid: (r.algorithm, r.public_key) for r in kept
        }
        public[active.kid] = (active.algorithm, active.public_key)
        old = tuple(r for r in archived if r.kid not in public)
        history: dict[str, tuple[str, PublicKey]] = {
            r.kid: (r.algorithm, r.public_key) for r in old
        }
        history.update(public)
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "retired", kept)
        object.__setattr__(self, "archived", old)
        object.__setattr__(self, "_public", MappingProxyType(public))
        object.__setattr__(self, "_history", MappingProxyType(history))

    @classmethod
    def generate(cls, algorithm: Algorithm = "EdDSA") -> KeyRing:
        """An in-memory ring with a fresh key (tests, ephemeral processes)."""
        return cls(SigningKey.generate(algorithm))

    @classmethod
    def load(
        cls,
        key_file: str | os.PathLike[str],
        *,
        algorithm: Algorithm | None = None,
        create: bool = True,
        now: float | None = None,
    ) -> KeyRing:
        """Load the PEM key at ``key_file`` and its retired keys still within ``keep_until``
        (older retired keys are kept in ``archived``, for checkpoint signatures only).

        A missing file is created (``algorithm``, default EdDSA; mode 0600, parent dir 0700)
        when ``create`` is true (a guard first checks that no audit trail signed by a lost key
        is there: :func:`toolguard.integrity.guard_keys`). ``algorithm=None`` accepts whatever
        the file holds; a given algorithm must match it. Loose permissions or a garbled file
        raise :class:`CredentialError`.
        """
        if algorithm is not None:
            _check_algorithm(algorithm)
        path = Path(os.fspath(key_file))
        active = _load_or_create(path, algorithm or "EdDSA", create=create)
        if algorithm is not None and active.algorithm != algorithm:
            raise CredentialError(
                f"signing key file {path} holds an {active.algorithm} key, not {algorithm}; "
                "pass the matching algorithm or rotate the key with `toolguard keys rotate`"
            )
        now = time.time() if now is None else now
        every = _read_retired(_retired_path(path))
        retired = [r for r in every if r.keep_until > now]
        archived = [r for r in every if r.keep_until <= now]
        return cls(active, retired=retired, archived=archived)

    @classmethod
    def from_pem(cls, pem_text: str | bytes, *, source: str = "$TOOLGUARD_SIGNING_KEY") -> KeyRing:
        """A ring from PEM text (e.g. an environment variable named by ``source``)."""
        data = pem_text.encode("utf-8") if isinstance(pem_text, str) else bytes(pem_text)
        return cls(_parse_private_pem(data, source))

    @classmethod
    def rotate(
        cls,
        key_file: str | os.PathLike[str],
        *,
        algorithm: Algorithm | None = None,
        now: float | None = None,
        max_ttl: float = 3600.0,
    ) -> KeyRing:
        """Replace the key at ``key_file`` with a new one and retire the old public key.

        The old key stays trusted for verification until ``now + max_ttl`` (set ``max_ttl`` to
        at least the longest credential lifetime). Retired keys past their ``keep_until`` stay
        in the sidecar (the newest 100) as ``archived``: no credential verifies with them any
        more, but the audit checkpoints they signed still do. The sidecar is written first,
        then the private key is replaced atomically, so a crash in between loses nothing.
        """
        if not is_finite_number(max_ttl) or max_ttl <= 0:
            raise ConfigError("max_ttl must be a positive number of seconds")
        now = time.time() if now is None else now
        path = Path(os.fspath(key_file))
        old = cls.load(path, create=False, now=now)
        new = SigningKey.generate(algorithm or old.active.algorithm)
        gone = RetiredKey(
            kid=old.active.kid,
            algorithm=old.active.algorithm,
            public_key=old.active.public_key,
            retired_at=now,
            keep_until=now + max_ttl,
        )
        retired = [*old.retired, gone]
        archived = list(old.archived)[-_MAX_ARCHIVED:]
        sidecar = json.dumps([r.to_json() for r in [*archived, *retired]], indent=2).encode()
        _write_atomic(_retired_path(path), sidecar, replace=True)
        _write_atomic(path, new.private_pem(), replace=True)
        return cls(new, retired=retired, archived=archived)

    def public_keys(self) -> Mapping[str, tuple[str, PublicKey]]:
        """``kid -> (algorithm, public key)`` for the active and retired keys (read-only)."""
        return self._public

    def history_keys(self) -> Mapping[str, tuple[str, PublicKey]]:
        """:meth:`public_keys` plus the archived keys: for audit checkpoint signatures only,
        never for credentials."""
        return self._history

    def jwks(self) -> dict[str, Any]:
        """A JWKS document with the public parts of the active and retired keys."""
        return {"keys": [_full_jwk(kid, alg, key) for kid, (alg, key) in self._public.items()]}

    @staticmethod
    def from_jwks(doc: Mapping[str, Any] | str | os.PathLike[str]) -> PublicKeys:
        """The verification keys of a JWKS document (or a path to one); see :class:`PublicKeys`."""
        return PublicKeys.from_jwks(doc)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeyRing is immutable")

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active!r}, retired={[r.kid for r in self.retired]!r})"


class PublicKeys:
    """A read-only ``kid -> (algorithm, public key)`` map; a :class:`PublicKeySource`."""

    __slots__ = ("_keys",)

    _keys: Mapping[str, tuple[str, PublicKey]]

    def __init__(self, keys: Mapping[str, tuple[str, PublicKey]]) -> None:
        checked: dict[str, tuple[str, PublicKey]] = {}
        for kid, (alg, key) in keys.items():
            if not isinstance(kid, str) or not kid or _algorithm_of_public(key) != alg:
                raise CredentialError(
                    f"key {kid!r} is not a valid (algorithm, public key) pair; "
                    "use EdDSA with Ed25519 or ES256 with P-256 public keys"
                )
            checked[kid] = (alg, key)
        object.__setattr__(self, "_keys", MappingProxyType(checked))

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any] | str | os.PathLike[str]) -> PublicKeys:
        """Parse a JWKS document (a mapping, or a path to a JSON file).

        Entries must be public ``OKP``/``Ed25519`` or ``EC``/``P-256`` signing keys; private
        members (``d``, ...), symmetric keys (``oct``), unknown types or curves, duplicate kids
        and bad encodings raise :class:`CredentialError`. A missing ``kid`` defaults to the
        RFC 7638 thumbprint.
        """
        where = "JWKS document"
        if isinstance(doc, (str, os.PathLike)):
            where = f"JWKS file {os.fspath(doc)}"
            try:
                doc = json.loads(Path(os.fspath(doc)).read_bytes())
            except (OSError, ValueError) as exc:
                raise CredentialError(
                    f"cannot read {where}; check the path and that it holds JSON"
                ) from exc
        entries = doc.get("keys") if isinstance(doc, Mapping) else None
        if not isinstance(entries, list) or len(entries) > _MAX_JWKS_KEYS:
            raise CredentialError(
                f'{where} must be an object with a "keys" list of at most {_MAX_JWKS_KEYS} keys'
            )
        keys: dict[str, tuple[str, PublicKey]] = {}
        for index, entry in enumerate(entries):
            kid, alg, key = _parse_public_jwk(entry, f"{where}, key #{index}")
            if kid in keys:
                raise CredentialError(f"{where} has two keys with kid {kid!r}; kids must be unique")
            keys[kid] = (alg, key)
        return cls(keys)

    def public_keys(self) -> Mapping[str, tuple[str, PublicKey]]:
        """``kid -> (algorithm, public key)`` (read-only)."""
        return self._keys

    def jwks(self) -> dict[str, Any]:
        """These keys as a JWKS document."""
        return {"keys": [_full_jwk(kid, alg, key) for kid, (alg, key) in self._keys.items()]}

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PublicKeys is immutable")

    def __repr__(self) -> str:
        return f"PublicKeys(kids={list(self._keys)!r})"


def verify_signature(algorithm: str, key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` (JWS form) over ``data`` is valid for ``key`` and ``algorithm``."""
    if len(signature) != 64:
        return False
    try:
        if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
        if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, _ECDSA)
            return True
    except InvalidSignature:
        return False
    return False


# -- JWK helpers ---------------------------------------------------------------------------


def _check_algorithm(algorithm: object) -> None:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")


def _algorithm_of(key: object) -> Algorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def _algorithm_of_public(key: object) -> Algorithm | None:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def _public_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7638 required members of ``key``'s JWK."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(jwk), sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def _full_jwk(kid: str, algorithm: str, key: PublicKey) -> dict[str, str]:
    return {**_public_jwk(key), "kid": kid, "alg": algorithm, "use": "sig"}


def _parse_public_jwk(entry: object, where: str) -> tuple[str, Algorithm, PublicKey]:
    if not isinstance(entry, Mapping):
        raise CredentialError(f"{where} is not a JSON object")
    if _PRIVATE_MEMBERS & set(entry):
        raise CredentialError(
            f"{where} holds private or symmetric key material; publish public keys only"
        )
    kty, crv = entry.get("kty"), entry.get("crv")
    try:
        if kty == "OKP" and crv == "Ed25519":
            alg: Algorithm = "EdDSA"
            key: PublicKey = ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(entry.get("x")))
        elif kty == "EC" and crv == "P-256":
            alg = "ES256"
            x = int.from_bytes(_coordinate(entry.get("x")), "big")
            y = int.from_bytes(_coordinate(entry.get("y")), "big")
            key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        else:
            raise CredentialError(
                f"{where} has kty {str(kty)[:20]!r} / crv {str(crv)[:20]!r}; only OKP/Ed25519 "
                "and EC/P-256 signing keys are accepted (symmetric 'oct' keys never are)"
            )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CredentialError(f"{where} has a badly encoded public key; re-export it") from exc
    if entry.get("alg", alg) != alg or entry.get("use", "sig") != "sig":
        raise CredentialError(f"{where}: 'alg' must be {alg} and 'use' must be 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise CredentialError(f"{where}: 'key_ops' does not allow 'verify'")
    kid = entry.get("kid", _thumbprint(_public_jwk(key)))
    if not isinstance(kid, str) or not kid or len(kid) > 128:
        raise CredentialError(f"{where}: 'kid' must be a non-empty string of at most 128 chars")
    return kid, alg, key


def _coordinate(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("missing coordinate")
    data = b64url_decode(value)
    if len(data) != 32:
        raise ValueError("coordinate must be 32 bytes")
    return data


# -- files ---------------------------------------------------------------------------------


def _retired_path(path: Path) -> Path:
    return path.with_name(path.name + ".retired.json")


def _load_or_create(path: Path, algorithm: Algorithm, *, create: bool) -> SigningKey:
    try:
        return _parse_private_pem(_read_private(path), str(path))
    except FileNotFoundError:
        if not create:
            raise CredentialError(
                f"signing key file {path} does not exist; create it with "
                "`toolguard keys create` (or load it with create=True)"
            ) from None
    key = SigningKey.generate(algorithm)
    _ensure_dir(path.parent)
    if _write_atomic(path, key.private_pem(), replace=False):
        return key
    # Another process created it first: use theirs.
    return _parse_private_pem(_read_private(path), str(path))


def _read_private(path: Path, *, what: str = "signing key", nofollow: bool = False) -> bytes:
    """Read a private key file, refusing loose permissions (checked on the open descriptor);
    with ``nofollow``, a symbolic link too."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CredentialError(
            f"cannot open {what} file {path} ({exc.strerror}); it must be a regular file "
            "readable by the user running toolguard, and by no one else (chmod 600)"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialError(f"{what} path {path} is not a regular file; fix the path")
        if os.name == "posix" and info.st_mode & 0o077:
            raise CredentialError(
                f"{what} file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        chunks = []
        size = 0
        while size <= _MAX_KEY_FILE:
            chunk = os.read(fd, _MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise CredentialError(f"{what} file {path} is too large to be a key; fix it")
    return data


def _parse_private_pem(data: bytes, source: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise CredentialError(
            f"signing key from {source} is encrypted; supply an unencrypted PKCS#8 PEM key "
            "and protect it with file permissions"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CredentialError(
            f"signing key from {source} is not a readable PEM private key; restore it, or "
            "move it aside and let toolguard create a new one (`toolguard keys create`)"
        ) from exc
    if (
        not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey))
        or _algorithm_of(key) is None
    ):
        raise CredentialError(
            f"signing key from {source} is not an Ed25519 or P-256 key; "
            "create a supported one with `toolguard keys create`"
        )
    return SigningKey(key)


def _read_retired(path: Path) -> list[RetiredKey]:
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            raw = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CredentialError(f"cannot read retired-keys file {path} ({exc.strerror})") from exc
    if os.name == "posix" and info.st_mode & 0o022:
        raise CredentialError(
            f"retired-keys file {path} is writable by group or others; anyone who can write "
            f"it can add a trusted key. Run `chmod 600 {path}`"
        )
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise ValueError("not a list")
        retired = []
        for index, entry in enumerate(entries):
            kid, alg, key = _parse_public_jwk(entry["jwk"], f"{path}, entry #{index}")
            times = entry["retired_at"], entry["keep_until"]
            if entry["kid"] != kid or kid != _thumbprint(_public_jwk(key)):
                raise ValueError("kid does not match the key")
            if not all(is_finite_number(t) for t in times):
                raise ValueError("bad times")
            retired.append(RetiredKey(kid, alg, key, float(times[0]), float(times[1])))
    except (ValueError, TypeError, KeyError, CredentialError) as exc:
        raise CredentialError(
            f"retired-keys file {path} is damaged; restore it, or delete it (tokens signed "
            "by retired keys then stop verifying)"
        ) from exc
    return retired


def _ensure_dir(directory: Path) -> None:
    if directory.exists():
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.name == "posix":
        os.chmod(directory, 0o700)


def _write_atomic(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` with mode 0600 via a temporary file.

    ``replace=True`` swaps it in with ``os.replace``; otherwise the file is published with
    ``os.link`` (which never overwrites) and ``False`` is returned when ``path`` already exists.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise CredentialError(
            f"cannot write key file {path} ({exc.strerror}); check the directory's permissions"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            if os.name == "posix":
                os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem: exclusive create instead
                return _write_exclusive(path, data)
    except OSError as exc:
        raise CredentialError(f"cannot write key file {path} ({exc.strerror})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return True


def _write_exclusive(path: Path, data: bytes) -> bool:
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the arguments key (the keyed digest of a call's arguments, docs/audit.md) --------------

ARGS_KEY_ENV = "TOOLGUARD_ARGS_KEY"
"""The arguments key as 64 hex characters; wins over the key file."""
_ARGS_KEY_BYTES = 32


def load_args_key(path: Path | None, *, create: bool = True) -> bytes:
    """The arguments key that keys ``args_sha256`` (:class:`toolguard.redaction.Redactor`):
    ``$TOOLGUARD_ARGS_KEY`` (64 hex characters) if set, else the file at ``path`` (64 hex
    characters, mode 0600, a regular file, not a link), created with a new random key when
    missing and ``create`` is true (as signing keys are: a 0700 directory, a temporary file
    linked into place, so a concurrent creator's key wins, never a partial one). Raises
    :class:`ConfigError` for a missing (``create=False``), unreadable, loosely permitted or
    malformed key, or no key at all (``path`` None and no ``$TOOLGUARD_ARGS_KEY``)."""
    env = os.environ.get(ARGS_KEY_ENV)
    if env:
        return _parse_args_key(env, f"${ARGS_KEY_ENV}")
    if path is None:
        raise ConfigError(
            "the arguments key is needed: pass --config (its args_key_file), --key-file, or "
            f"set ${ARGS_KEY_ENV}",
            problems=[("args_key_file", "missing")],
        )
    try:
        return _read_args_key(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"the arguments key file {path} does not exist; point args_key_file (or "
                f"${ARGS_KEY_ENV}) at the key the guard used",
                problems=[("args_key_file", "missing")],
            ) from None
    data = (secrets.token_hex(_ARGS_KEY_BYTES) + "\n").encode("ascii")
    try:
        _ensure_dir(path.parent)
        _write_atomic(path, data, replace=False)  # False: another process's key is there
    except (OSError, CredentialError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(
            f"cannot create the arguments key file {path} ({why}); make its directory "
            f"writable, point args_key_file elsewhere, or set ${ARGS_KEY_ENV} to 64 hex "
            "characters",
            problems=[("args_key_file", "cannot create")],
        ) from exc
    return _read_args_key(path)


def _read_args_key(path: Path) -> bytes:
    try:
        data = _read_private(path, what="the arguments key", nofollow=True)
    except CredentialError as exc:
        raise ConfigError(str(exc), problems=[("args_key_file", "unreadable")]) from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return _parse_args_key(text, str(path))


def _parse_args_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != _ARGS_KEY_BYTES:
        raise ConfigError(
            f"the arguments key from {source} must be {_ARGS_KEY_BYTES * 2} hex characters "
            f"({_ARGS_KEY_BYTES} random bytes); create one with "
            '`python -c "import secrets; print(secrets.token_hex(32))"`',
            problems=[("args_key_file", "malformed key")],
        )
    return key
