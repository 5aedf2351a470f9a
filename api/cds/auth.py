"""Verification of the JWT that a CDS Client (the EHR) sends with every CDS Hooks call.

(Longer than leukodx's other modules on purpose: token parsing, key selection, JWKS fetching and
the replay check are one security boundary, read and reviewed as one piece, in the order below.)

CDS Hooks 2.0.1, "Trusting CDS Clients": each request carries
``Authorization: Bearer <JWT>``. The JOSE header has ``alg`` (ES384 and RS384 are the
recommended algorithms; ``none`` and every symmetric algorithm SHALL NOT be used),
``kid`` (required), ``typ`` ("JWT") and an optional ``jku`` (URL of the client's JWK Set).
The payload has ``iss``, ``aud`` (the URL of the CDS Service endpoint being called),
``exp``, ``iat``, ``jti`` (a nonce against replay) and an optional ``tenant``.
The service SHOULD keep an allowlist of ``iss`` and ``jku`` URLs.

What :class:`JwtVerifier` checks, in order:

1. the header is ``Bearer <compact JWS>``;
2. the unverified JOSE header: ``alg`` on :data:`ALLOWED_ALGORITHMS` (asymmetric only),
   no ``crit`` extensions, ``typ`` "JWT" when present;
3. the unverified ``iss`` names a :class:`TrustedIssuer`;
4. the key set: the issuer's inline JWKS, else its ``jwks_url``, else the header's
   ``jku`` only when it is on ``jku_allowlist`` (exact string match; nothing is fetched
   otherwise). A ``jku`` is ignored for issuers whose keys are configured;
5. the key: chosen by ``kid``; its ``kty`` (and EC curve), and its ``alg``/``use``/
   ``key_ops`` when present, must agree with the header ``alg``. The key is bound to
   that one algorithm (PyJWK), which is what defeats "HS256 signed with the public key"
   and other algorithm-confusion tricks;
6. PyJWT verifies the signature, ``iss``, ``aud`` (exact string; an array ``aud`` must
   contain it, RFC 7519) and the presence of ``iss``/``aud``/``exp``/``iat``/``jti``;
7. time, against the injected clock: ``exp`` not passed, ``iat`` (and ``nbf``) not in
   the future, ``exp - iat`` at most ``max_lifetime_seconds``; all with ``leeway_seconds``;
8. ``tenant`` equals the issuer's configured tenant, when one is configured;
9. ``(iss, jti)`` not seen before; it is remembered until ``exp + leeway``, in a
   :class:`ReplayStore`. The service's verifier (:func:`verifier_from_settings`) uses the store the
   application configured with :func:`configure_replay_store`: the ``cds_jti`` table of the
   feedback database (api/feedback.py), shared by every worker process and every replica, so a
   token is accepted once in all. A verifier built directly keeps its own in-memory store.

Every failure raises :class:`AuthError` with a short fixed reason for the logs. The HTTP
layer answers a bare 401 and never echoes the reason. Neither the token nor any claim
value is ever put in a reason or a log record.
"""
from __future__ import annotations

import heapq
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import jwt

from ..inflate import ACCEPT_ENCODING, TooLarge, Undecodable, read_capped
from ..offload import loop_local

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthError",
    "JwtVerifier",
    "ReplayStore",
    "TrustedIssuer",
    "configure_replay_store",
    "http_fetch_jwks",
    "verifier_from_settings",
]

log = logging.getLogger("leukodx.cds.auth")

# alg -> (required JWK kty, required EC curve or None). Asymmetric algorithms only:
# "none" and HS256/HS384/HS512 are refused before any key is looked at (CDS Hooks 2.0.1,
# "JWT Signing Algorithm": no unsecured JWS, no symmetric algorithm).
_ALG_KEY: dict[str, tuple[str, str | None]] = {
    "ES384": ("EC", "P-384"),  # SHALL support (recommended)
    "RS384": ("RSA", None),    # SHALL support (recommended)
    "ES256": ("EC", "P-256"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS512": ("RSA", None),
    "PS384": ("RSA", None),
}
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(_ALG_KEY)

MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256
VERIFY_THREADS = 8                    # token checks at once per worker (a JWKS fetch can wait up to 4 s)
_VERIFY_LIMITERS: dict[Any, Any] = {}
JWKS_MAX_BYTES = 1024 * 1024
JWKS_TIMEOUT_SECONDS = 2.0
JWKS_CACHE_TTL_SECONDS = 600.0
# A kid that is not in a fetched key set triggers at most one refetch per URL in this
# interval (key rotation), so unknown kids cannot be used to hammer the client's server.
JWKS_MIN_REFRESH_SECONDS = 30.0
JWKS_CACHE_MAX_URLS = 256
# After a failed fetch, calls naming that URL fail at once for this long: a token needs no valid signature
# to make leukodx fetch its issuer's keys, so 400 forged tokens had made 333 fetches of a slow JWKS
# endpoint and filled the thread pool (security red-team). One fetch per URL runs at a time; the callers
# that wait for it take its answer.
JWKS_FAILURE_BACKOFF_SECONDS = 10.0

_BEARER = re.compile(r"^Bearer[ ]+([^ ]+)[ ]*$", re.IGNORECASE)
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class AuthError(Exception):
    """The request is not authenticated. ``reason`` is short, fixed text for the logs;
    it never contains the token or claim values. Answer a bare 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksFetchError(Exception):
    """The JWK Set could not be fetched (network, status, size or JSON problem)."""


def _check_jwks_url(url: Any, what: str) -> str:
    """https only; plain http only for loopback (tests, local development)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what}: must be a non-empty URL string")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return url
    raise ValueError(f"{what}: must be an https URL (plain http only for 127.0.0.1/localhost): {url!r}")


def _check_jwks_shape(jwks: Any, what: str) -> dict:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{what}: a JWK Set must be an object with a 'keys' array")
    return jwks


@dataclass
class TrustedIssuer:
    """A CDS Client the service trusts. Keys come from ``jwks`` (inline JWK Set), else
    from ``jwks_url``; with neither, the token's ``jku`` is used if it is allowlisted on
    the verifier. ``tenant``, when set, must equal the token's ``tenant`` claim."""

    iss: str
    jwks: dict | None = None
    jwks_url: str | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.iss, str) or not self.iss:
            raise ValueError("TrustedIssuer.iss must be a non-empty string")
        if self.jwks is not None:
            _check_jwks_shape(self.jwks, f"issuer {self.iss!r} jwks")
        if self.jwks_url is not None:
            _check_jwks_url(self.jwks_url, f"issuer {self.iss!r} jwks_url")
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise ValueError(f"issuer {self.iss!r}: tenant must be a non-empty string")


def http_fetch_jwks(url: str, *, transport: httpx.BaseTransport | None = None) -> dict:
    """GET a JWK Set: 2 s timeouts and a 2 s wall-clock deadline, no redirects, at most 1 MiB of body decoded,
    HTTP 200 and a JSON object only. ``transport`` is for tests.

    The exchange runs in a thread of its own that the caller waits for at most the deadline: httpx's timeouts are
    per read, so an endpoint trickling its headers had held calls (and the threads /readyz needs) for minutes
    (security red-team round 27). A fetch still stuck on a URL is not started again beside it."""
    _check_jwks_url(url, "jwks url")
    with _STUCK_LOCK:
        stuck = _STUCK.get(url)
        if stuck is not None and stuck.is_alive():
            raise JwksFetchError("an earlier fetch of this URL has not ended")
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=_fetch_into, args=(url, transport, outcome), daemon=True,
                                  name="leukodx-jwks-fetch")
        _STUCK[url] = worker
        worker.start()
    worker.join(JWKS_TIMEOUT_SECONDS)
    if worker.is_alive():
        raise JwksFetchError("timed out")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["jwks"]


_STUCK: dict[str, threading.Thread] = {}      # url -> its latest fetch, which may still be running
_STUCK_LOCK = threading.Lock()


def _fetch_into(url: str, transport: httpx.BaseTransport | None, outcome: dict[str, Any]) -> None:
    try:
        outcome["jwks"] = _fetch_jwks(url, transport)
    except JwksFetchError as e:
        outcome["error"] = e
    except Exception as e:   # noqa: BLE001 - any other failure is a failed fetch, said by its type
        outcome["error"] = JwksFetchError(type(e).__name__)


def _fetch_jwks(url: str, transport: httpx.BaseTransport | None) -> dict:
    try:
        with httpx.Client(timeout=httpx.Timeout(JWKS_TIMEOUT_SECONDS), follow_redirects=False,
                          transport=transport) as client:
            with client.stream("GET", url, headers={"Accept": "application/jwk-set+json, application/json",
                                                    "Accept-Encoding": ACCEPT_ENCODING}) as resp:
                if resp.status_code != 200:
                    raise JwksFetchError(f"HTTP status {resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > JWKS_MAX_BYTES:
                    raise JwksFetchError("body too large")
                body = read_capped(resp, JWKS_MAX_BYTES)
    except httpx.HTTPError as exc:
        raise JwksFetchError(type(exc).__name__) from None
    except TooLarge:
        raise JwksFetchError("body too large") from None
    except Undecodable:
        raise JwksFetchError("content coding not read") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise JwksFetchError("not JSON") from None
    if not isinstance(data, dict):
        raise JwksFetchError("not a JSON object")
    return data


class _JwksCache:
    """JWK Sets fetched by URL, kept ``ttl`` seconds. Only configured URLs (issuer
    ``jwks_url`` or the jku allowlist) ever reach it, and it is capped anyway."""

    def __init__(self, fetch: Callable[[str], dict], clock: Callable[[], float], *,
                 ttl: float = JWKS_CACHE_TTL_SECONDS, min_refresh: float = JWKS_MIN_REFRESH_SECONDS,
                 max_urls: int = JWKS_CACHE_MAX_URLS, backoff: float = JWKS_FAILURE_BACKOFF_SECONDS) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._max_urls = max_urls
        self._backoff = backoff
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[dict, float]] = {}
        self._failed: dict[str, float] = {}                 # url -> when its last fetch failed
        self._fetching: dict[str, threading.Lock] = {}      # url -> held while one call fetches it

    def _cached(self, url: str, refresh: bool, now: float) -> Optional[dict]:
        with self._lock:
            entry = self._entries.get(url)
            failed = self._failed.get(url)
        if entry is not None:
            jwks, fetched_at = entry
            age = now - fetched_at
            if 0 <= age < self._ttl and (not refresh or age < self._min_refresh):
                return jwks
        if failed is not None and 0 <= now - failed < self._backoff:
            raise AuthError("jwks fetch failed")
        return None

    def get(self, url: str, *, refresh: bool = False) -> tuple[dict, bool]:
        """The key set for ``url`` and whether it was fetched by this call. ``refresh``
        asks for a new copy (unknown kid), honoured at most once per ``min_refresh``; a
        URL whose fetch failed is not tried again for ``backoff`` seconds."""
        now = self._clock()
        cached = self._cached(url, refresh, now)
        if cached is not None:
            return cached, False
        with self._lock:
            fetching = self._fetching.setdefault(url, threading.Lock())
        # one fetch per URL at a time; a caller waits for another's at most twice a fetch's deadline (waiters had had
        # no limit: forged tokens naming a slow endpoint's issuer held every thread)
        if not fetching.acquire(timeout=2 * JWKS_TIMEOUT_SECONDS):
            raise AuthError("jwks fetch failed")
        try:
            return self._fetch_once(url, now)
        finally:
            fetching.release()

    def _fetch_once(self, url: str, now: float) -> tuple[dict, bool]:
        """The fetch itself, under the URL's lock: unless the call this one waited for fetched it or failed."""
        with self._lock:
            entry, failed = self._entries.get(url), self._failed.get(url)
        if entry is not None and entry[1] >= now:        # fetched by the call this one waited for
            return entry[0], False
        if failed is not None and failed >= now:         # or failed while this one waited
            raise AuthError("jwks fetch failed")
        try:
            jwks = self._fetch(url)
            _check_jwks_shape(jwks, "fetched JWK Set")
        except Exception as exc:  # any failure of the fetch function means "no keys"
            log.warning("JWKS fetch failed", extra={"jwks_url": url, "error_type": type(exc).__name__})
            with self._lock:
                self._failed[url] = self._clock()
            raise AuthError("jwks fetch failed") from None
        with self._lock:
            self._failed.pop(url, None)
            self._entries[url] = (jwks, self._clock())
            while len(self._entries) > self._max_urls:
                oldest = min(self._entries, key=lambda u: self._entries[u][1])
                del self._entries[oldest]
        return jwks, True


class ReplayStore(Protocol):
    """Where seen ``(iss, jti)`` pairs are remembered."""

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Remember ``key`` until ``expires_at``; False if it is already remembered (a replay)."""


class _ReplayCache:
    """Seen ``(iss, jti)`` pairs in this process's memory, each kept until the token could no longer be accepted.
    Bounded: when full of live entries it fails closed (refuses new tokens) rather than
    forget a live jti, which would re-open a replay window."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("jti_cache_size must be at least 1")
        self._max = max_entries
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Remember ``key``; False if it is already remembered (a replay)."""
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                when, old = heapq.heappop(self._heap)
                if self._expiry.get(old) == when:
                    del self._expiry[old]
            if key in self._expiry:
                return False
            if len(self._expiry) >= self._max:
                log.warning("JWT replay cache full; refusing tokens until entries expire")
                raise AuthError("replay cache full")
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key_fits(jwk: dict, alg: str) -> bool:
    kty, crv = _ALG_KEY[alg]
    if jwk.get("kty") != kty:
        return False
    if crv is not None and jwk.get("crv") != crv:
        return False
    if "alg" in jwk and jwk["alg"] != alg:
        return False
    if "use" in jwk and jwk["use"] != "sig":
        return False
    if "key_ops" in jwk and (not isinstance(jwk["key_ops"], list) or "verify" not in jwk["key_ops"]):
        return False
    return True


def _public_key(jwk: dict, alg: str) -> jwt.PyJWK:
    """The public part of ``jwk`` as a PyJWK bound to exactly ``alg``."""
    kty, _ = _ALG_KEY[alg]
    members = ("kty", "crv", "x", "y") if kty == "EC" else ("kty", "n", "e")
    public = {m: jwk[m] for m in members if m in jwk}
    try:
        key = jwt.PyJWK(public, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthError("unusable key") from None
    if kty == "RSA" and key.key.key_size < MIN_RSA_BITS:
        raise AuthError("rsa key too short")
    return key


class JwtVerifier:
    """Verifies the bearer JWT of a CDS Hooks request. Thread-safe; one per process."""

    def __init__(
        self,
        issuers: list[TrustedIssuer],
        *,
        jku_allowlist: Iterable[str] = (),
        leeway_seconds: int = 60,
        max_lifetime_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str], dict] | None = None,
        jti_cache_size: int = 100_000,
        replay_store: Optional[ReplayStore] = None,
    ) -> None:
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if not isinstance(issuer, TrustedIssuer):
                raise TypeError("issuers must be TrustedIssuer objects")
            if issuer.iss in self._issuers:
                raise ValueError(f"duplicate trusted issuer {issuer.iss!r}")
            self._issuers[issuer.iss] = issuer
        if isinstance(jku_allowlist, str):
            raise TypeError("jku_allowlist must be a list of URLs, not a string")
        self._jku_allowlist = frozenset(_check_jwks_url(u, "jku_allowlist entry") for u in jku_allowlist)
        if leeway_seconds < 0 or max_lifetime_seconds <= 0:
            raise ValueError("leeway_seconds must be >= 0 and max_lifetime_seconds > 0")
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock
        self._jwks_cache = _JwksCache(fetch or http_fetch_jwks, clock)
        self._replay: ReplayStore = replay_store if replay_store is not None else _ReplayCache(jti_cache_size)

    # -- public -------------------------------------------------------------------

    def verify(self, authorization_header: str | None, audience: str) -> dict:
        """The verified claims of the request's JWT, or :class:`AuthError`.
        ``audience`` is the full URL of the CDS Service endpoint that was called."""
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience must be the called CDS Service URL")
        token = self._bearer_token(authorization_header)
        header = self._unverified_header(token)
        alg = header["alg"]
        issuer = self._issuer(token)
        key = self._key(issuer, header, alg)
        claims = self._decode(token, key, alg, audience, issuer.iss)
        now = self._clock()
        exp = self._check_times(claims, now)
        if issuer.tenant is not None and claims.get("tenant") != issuer.tenant:
            raise AuthError("wrong tenant")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise AuthError("bad jti")
        try:
            fresh = self._replay.add((issuer.iss, jti), exp + self._leeway, now)
        except AuthError:
            raise
        except Exception as exc:   # the shared store is down: fail closed
            log.error("JWT replay store failed; refusing the token", extra={"error_type": type(exc).__name__})
            raise AuthError("replay store unavailable") from None
        if not fresh:
            raise AuthError("replayed jti")
        return claims

    async def verify_async(self, authorization_header: str | None, audience: str) -> dict:
        """:meth:`verify` in a worker thread: a JWKS fetch or the replay store's database write never
        holds the event loop. At most :data:`VERIFY_THREADS` at once, apart from the threads other routes run in
        (forged tokens naming a slow JWKS endpoint's issuer had taken them all: /readyz timed out)."""
        limiter = loop_local(_VERIFY_LIMITERS, None, lambda: anyio.CapacityLimiter(VERIFY_THREADS))
        return await anyio.to_thread.run_sync(self.verify, authorization_header, audience, limiter=limiter)

    # -- steps --------------------------------------------------------------------

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if not isinstance(authorization_header, str) or not authorization_header:
            raise AuthError("missing authorization header")
        if len(authorization_header) > MAX_TOKEN_CHARS:
            raise AuthError("authorization header too long")
        match = _BEARER.match(authorization_header)
        if match is None:
            raise AuthError("authorization header is not 'Bearer <token>'")
        token = match.group(1)
        if _COMPACT_JWS.match(token) is None:
            raise AuthError("bearer token is not a compact JWS")
        return token

    @staticmethod
    def _unverified_header(token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed jose header") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthError("alg not allowed")
        if "crit" in header:
            raise AuthError("crit header not supported")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthError("typ is not JWT")
        if "kid" in header and not isinstance(header["kid"], str):
            raise AuthError("kid is not a string")
        if "jku" in header and not isinstance(header["jku"], str):
            raise AuthError("jku is not a string")
        return header

    def _issuer(self, token: str) -> TrustedIssuer:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed payload") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthError("missing iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthError("untrusted iss")
        return issuer

    def _key(self, issuer: TrustedIssuer, header: dict, alg: str) -> jwt.PyJWK:
        kid = header.get("kid")
        if issuer.jwks is not None:
            return self._pick(issuer.jwks, kid, alg)
        url = issuer.jwks_url
        if url is None:
            jku = header.get("jku")
            if jku is None:
                raise AuthError("no keys for issuer and no jku")
            if jku not in self._jku_allowlist:
                raise AuthError("jku not allowlisted")
            url = jku
        jwks, fresh = self._jwks_cache.get(url)
        try:
            return self._pick(jwks, kid, alg)
        except AuthError:
            if fresh:
                raise
        # Not in a cached copy: the client may have rotated its keys. Refetch (rate-limited).
        jwks, _ = self._jwks_cache.get(url, refresh=True)
        return self._pick(jwks, kid, alg)

    @staticmethod
    def _pick(jwks: dict, kid: str | None, alg: str) -> jwt.PyJWK:
        keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
        if kid is not None:
            named = [k for k in keys if k.get("kid") == kid]
            if not named:
                raise AuthError("kid not found")
            fitting = [k for k in named if _key_fits(k, alg)]
            if not fitting:
                raise AuthError("key does not match alg")
        else:
            fitting = [k for k in keys if _key_fits(k, alg)]
            if not fitting:
                raise AuthError("no key for alg")
        if len(fitting) > 1:
            raise AuthError("ambiguous key")
        return _public_key(fitting[0], alg)

    @staticmethod
    def _decode(token: str, key: jwt.PyJWK, alg: str, audience: str, iss: str) -> dict:
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                options={
                    "require": ["iss", "aud", "exp", "iat", "jti"],
                    # Times are checked in _check_times against the injected clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong aud") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong iss") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim}") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("alg not allowed") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None

    def _check_times(self, claims: dict, now: float) -> float:
        exp, iat = claims["exp"], claims["iat"]
        if not _number(exp) or not _number(iat):
            raise AuthError("exp/iat not numbers")
        if exp <= now - self._leeway:
            raise AuthError("expired")
        if iat > now + self._leeway:
            raise AuthError("iat in the future")
        if "nbf" in claims:
            if not _number(claims["nbf"]):
                raise AuthError("nbf not a number")
            if claims["nbf"] > now + self._leeway:
                raise AuthError("not yet valid")
        if exp <= iat:
            raise AuthError("exp not after iat")
        if exp - iat > self._max_lifetime:
            raise AuthError("lifetime too long")
        return float(exp)


_SHARED_REPLAY: Optional[Callable[[], ReplayStore]] = None
_PROCESS_REPLAY = _ReplayCache(100_000)


def configure_replay_store(factory: Optional[Callable[[], ReplayStore]]) -> None:
    """Set where the service's verifiers remember token ids: ``factory()`` is asked for the store at
    each verification (so the database is opened on first use). The application calls this with the
    feedback database's ``cds_jti`` table; ``None`` falls back to this process's memory."""
    global _SHARED_REPLAY
    _SHARED_REPLAY = factory


class _ConfiguredReplayStore:
    """The store :func:`configure_replay_store` named, looked up at each call."""

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        factory = _SHARED_REPLAY
        store = factory() if factory is not None else _PROCESS_REPLAY
        return store.add(key, expires_at, now)


_ISSUER_FIELDS = frozenset({"iss", "jwks", "jwks_url", "tenant"})


def verifier_from_settings(issuers_json: str, jku_allowlist: list[str], **options: Any) -> JwtVerifier:
    """A verifier from configuration text, e.g. an environment variable::

        [{"iss": "https://ehr.example.org", "jwks": {"keys": [...]}},
         {"iss": "https://other.example.org", "jwks_url": "https://other.example.org/jwks", "tenant": "t1"}]

    ``options`` go to :class:`JwtVerifier` (leeway_seconds, max_lifetime_seconds, replay_store ...);
    without ``replay_store``, token ids go to the store set by :func:`configure_replay_store`.
    Raises ValueError on bad configuration (never starts with a half-read allowlist)."""
    try:
        raw = json.loads(issuers_json)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"trusted issuers: not valid JSON ({exc})") from None
    if not isinstance(raw, list):
        raise ValueError("trusted issuers: must be a JSON array of objects")
    issuers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"trusted issuers[{i}]: must be an object")
        unknown = set(item) - _ISSUER_FIELDS
        if unknown:
            raise ValueError(f"trusted issuers[{i}]: unknown fields {sorted(unknown)}")
        if "iss" not in item:
            raise ValueError(f"trusted issuers[{i}]: 'iss' is required")
        issuers.append(TrustedIssuer(**item))
    options.setdefault("replay_store", _ConfiguredReplayStore())
    return JwtVerifier(issuers, jku_allowlist=list(jku_allowlist), **options)
