"""JWT verification of incoming CDS Hooks calls (leukodx.api.cds.auth). No network.

The spec material below is copied verbatim from CDS Hooks 2.0.1 (HL7/cds-hooks tag v2.0.1,
input/pagecontent/index.md, section "Trusting CDS Clients" > "Example"); when the research
copy in tests/fixtures/cds-hooks is present, test_embedded_spec_material_matches_shared_copy
checks that the two agree.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from leukodx.api.cds.auth import (
    AuthError,
    JwtVerifier,
    TrustedIssuer,
    http_fetch_jwks,
    verifier_from_settings,
)

# --- the spec's example (CDS Hooks 2.0.1) --------------------------------------------

SPEC_COMPACT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGly"
    "LWVoci5leGFtcGxlLmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIs"
    "ImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0"
    "MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNh"
    "YzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjGRKlcWB94l"
    "9do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjo"
    "oZdooCSDf2L8-i4awdoUwiEb"
)
SPEC_PAYLOAD = {
    "iss": "https://fhir-ehr.example.com/",
    "aud": "https://cds.example.org/cds-services/some-service",
    "exp": 1422568860,
    "iat": 1311280970,
    "jti": "ee22b021-e1b7-4611-ba5b-8eec6a33ac1e",
    "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
}
SPEC_HEADER = {"alg": "ES384", "typ": "JWT", "kid": "example-kid", "jku": "https://fhir-ehr.example.com/jwk_uri"}
SPEC_JWKS_PUBLIC = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}
# The spec's PUBLISHED example private key: test-only, never trust it in production.
SPEC_JWK_PRIVATE = {
    "kty": "EC",
    "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy",
    "use": "sig",
    "crv": "P-384",
    "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}
# The spec example lives for exp - iat = 111,287,890 s (about 3.5 years), far beyond any
# sane max lifetime; the spec-example test raises max_lifetime_seconds for that reason.
SPEC_LIFETIME = SPEC_PAYLOAD["exp"] - SPEC_PAYLOAD["iat"]

SHARED = Path(__file__).resolve().parent / "fixtures" / "cds-hooks"

ISS = SPEC_PAYLOAD["iss"]
AUD = SPEC_PAYLOAD["aud"]
TENANT = SPEC_PAYLOAD["tenant"]
NOW = 1_750_000_000.0
JKU = "https://fhir-ehr.example.com/jwk_uri"


# --- helpers ----------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fetch:
    """A fetch function that serves fixed JWK Sets and counts calls."""

    def __init__(self, sets: dict[str, dict]) -> None:
        self.sets = sets
        self.calls: list[str] = []

    def __call__(self, url: str) -> dict:
        self.calls.append(url)
        return self.sets[url]


def must_not_fetch(url: str) -> dict:
    raise AssertionError(f"fetch must not be called (asked for {url})")


@pytest.fixture(scope="module")
def spec_private():
    return jwt.PyJWK(SPEC_JWK_PRIVATE).key


@pytest.fixture(scope="module")
def rsa_private():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_jwk(rsa_private) -> dict:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private.public_key()))
    jwk.update(kid="rsa-1", alg="RS384", use="sig")
    return jwk


def claims(**overrides) -> dict:
    base = {
        "iss": ISS,
        "sub": "ehr-client",
        "aud": AUD,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": str(uuid.uuid4()),
        "tenant": TENANT,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def es384_token(key, *, headers: dict | None = None, **overrides) -> str:
    hdr = {"kid": "example-kid", "typ": "JWT"}
    hdr.update(headers or {})
    return jwt.encode(claims(**overrides), key, algorithm="ES384", headers=hdr)


def rs_token(key, alg: str = "RS384", *, kid: str = "rsa-1", **overrides) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def verifier(*, jwks=None, jwks_url=None, tenant=None, clock=None, fetch=must_not_fetch, **kw) -> JwtVerifier:
    if jwks is None and jwks_url is None:
        jwks = SPEC_JWKS_PUBLIC
    issuer = TrustedIssuer(iss=ISS, jwks=jwks, jwks_url=jwks_url, tenant=tenant)
    return JwtVerifier([issuer], clock=clock or Clock(), fetch=fetch, **kw)


def rejected(v: JwtVerifier, token_or_header: str | None, audience: str = AUD, *, raw: bool = False) -> str:
    """Assert the call is refused; return the reason. The token never leaks into it."""
    header = token_or_header if raw else f"Bearer {token_or_header}"
    with pytest.raises(AuthError) as info:
        v.verify(header, audience)
    text = str(info.value)
    if token_or_header:
        for part in token_or_header.replace("Bearer ", "").split("."):
            if len(part) > 8:
                assert part not in text
    assert info.value.__cause__ is None
    return info.value.reason


# --- the spec example ------------------------------------------------------------

def test_embedded_spec_material_matches_shared_copy():
    spec = SHARED / "spec-v2.0.1"
    if not spec.is_dir():
        pytest.skip("research copy of the CDS Hooks spec not present")
    assert (spec / "jwt-example-compact.txt").read_text().strip() == SPEC_COMPACT
    assert json.loads((spec / "jwks-public.json").read_text()) == SPEC_JWKS_PUBLIC
    assert json.loads((spec / "jwk-private-example.json").read_text()) == SPEC_JWK_PRIVATE
    assert json.loads((spec / "jwt-payload.json").read_text()) == SPEC_PAYLOAD
    assert json.loads((spec / "jwt-header.json").read_text()) == SPEC_HEADER


def test_spec_example_token_verifies_with_spec_jwks():
    assert jwt.get_unverified_header(SPEC_COMPACT) == SPEC_HEADER
    v = JwtVerifier(
        [TrustedIssuer(iss=ISS, jwks=SPEC_JWKS_PUBLIC, tenant=TENANT)],
        clock=Clock(SPEC_PAYLOAD["iat"]),
        max_lifetime_seconds=SPEC_LIFETIME,  # the example is valid for ~3.5 years
        fetch=must_not_fetch,  # its jku is ignored: the issuer's keys are configured
    )
    assert v.verify(f"Bearer {SPEC_COMPACT}", AUD) == SPEC_PAYLOAD
    # ... and only once.
    assert rejected(v, SPEC_COMPACT) == "replayed jti"


def test_spec_example_is_refused_under_default_lifetime_and_after_expiry():
    v = JwtVerifier([TrustedIssuer(iss=ISS, jwks=SPEC_JWKS_PUBLIC)], clock=Clock(SPEC_PAYLOAD["iat"]))
    assert rejected(v, SPEC_COMPACT) == "lifetime too long"
    v = JwtVerifier([TrustedIssuer(iss=ISS, jwks=SPEC_JWKS_PUBLIC)], clock=Clock(NOW), max_lifetime_seconds=SPEC_LIFETIME)
    assert rejected(v, SPEC_COMPACT) == "expired"


def test_spec_private_key_matches_spec_public_key(spec_private):
    public = jwt.PyJWK(SPEC_JWKS_PUBLIC["keys"][0]).key
    assert spec_private.public_key().public_numbers() == public.public_numbers()


# --- good tokens -----------------------------------------------------------------

def test_own_es384_token_signed_with_spec_private_key(spec_private):
    v = verifier(tenant=TENANT)
    token = es384_token(spec_private, headers={"jku": "https://evil.example/jwks"})
    got = v.verify(f"Bearer {token}", AUD)
    assert got["iss"] == ISS and got["aud"] == AUD and got["tenant"] == TENANT


def test_rs384_token_with_fresh_rsa_key(rsa_private, rsa_jwk):
    v = verifier(jwks={"keys": [SPEC_JWKS_PUBLIC["keys"][0], rsa_jwk]})
    assert v.verify(f"Bearer {rs_token(rsa_private)}", AUD)["iss"] == ISS


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS384"])
def test_other_allowed_rsa_algorithms(rsa_private, rsa_jwk, alg):
    jwk = dict(rsa_jwk, alg=alg)
    v = verifier(jwks={"keys": [jwk]})
    assert v.verify(f"Bearer {rs_token(rsa_private, alg)}", AUD)


@pytest.mark.parametrize("alg,curve", [("ES256", ec.SECP256R1()), ("ES512", ec.SECP521R1())])
def test_other_allowed_ec_algorithms(alg, curve):
    key = ec.generate_private_key(curve)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k"
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "k"})
    assert verifier(jwks={"keys": [jwk]}).verify(f"Bearer {token}", AUD)


def test_aud_array_containing_the_endpoint_is_accepted(spec_private):
    # RFC 7519 4.1.3 (and the CDS Hooks requirement list) allow an array of strings.
    token = es384_token(spec_private, aud=["https://other.example/x", AUD])
    assert verifier().verify(f"Bearer {token}", AUD)


def test_within_leeway_is_accepted(spec_private):
    clock = Clock()
    v = verifier(clock=clock, leeway_seconds=60)
    assert v.verify(f"Bearer {es384_token(spec_private, iat=int(NOW) + 30)}", AUD)
    assert v.verify(f"Bearer {es384_token(spec_private, iat=int(NOW) - 300, exp=int(NOW) - 30)}", AUD)


def test_bearer_scheme_is_case_insensitive(spec_private):
    assert verifier().verify(f"bearer {es384_token(spec_private)}", AUD)


def test_single_key_without_kid_in_header(spec_private):
    token = jwt.encode(claims(), spec_private, algorithm="ES384")
    assert "kid" not in jwt.get_unverified_header(token)
    assert verifier().verify(f"Bearer {token}", AUD)


# --- attacks and malformed input -------------------------------------------------

@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc.def.ghi", "Bearer abc.def",
     "Bearer abc def.ghi.jkl", "Bearer not-a-jwt", "Bearer a.b.c.d", "Bearer " + "a" * 20000,
     "Bearer %s.%s.sig" % (b64url(b"not json"), b64json({"iss": ISS}))],
)
def test_malformed_header(header):
    assert rejected(verifier(), header, raw=True)


def test_tampered_signature(spec_private):
    token = es384_token(spec_private)
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 0x01
    assert rejected(verifier(), f"{head}.{body}.{b64url(bytes(raw))}") == "bad signature"


def test_tampered_payload(spec_private):
    head, body, sig = es384_token(spec_private).split(".")
    evil = json.loads(base64.urlsafe_b64decode(body + "=="))
    evil["tenant"] = "other-hospital"
    assert rejected(verifier(), f"{head}.{b64json(evil)}.{sig}") == "bad signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none(alg):
    token = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': 'example-kid'})}.{b64json(claims())}."
    assert rejected(verifier(), token) == "alg not allowed"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_public_key_bytes(alg):
    """The classic confusion: sign with HMAC using the server's public key as the secret."""
    public = jwt.PyJWK(SPEC_JWKS_PUBLIC["keys"][0]).key
    secrets = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(SPEC_JWKS_PUBLIC["keys"][0]).encode(),
    ]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    v = verifier()
    for secret in secrets:
        signing_input = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': 'example-kid'})}.{b64json(claims())}"
        sig = hmac.new(secret, signing_input.encode(), digest).digest()
        assert rejected(v, f"{signing_input}.{b64url(sig)}") == "alg not allowed"


def test_header_alg_must_match_jwk_kty(rsa_private, rsa_jwk):
    # The header says RS384 but the kid names the EC key: refused before any signature check.
    token = rs_token(rsa_private, kid="example-kid")
    assert rejected(verifier(jwks={"keys": [SPEC_JWKS_PUBLIC["keys"][0], rsa_jwk]}), token) == "key does not match alg"


def test_header_alg_must_match_jwk_kty_when_jwk_has_no_alg(rsa_private, rsa_jwk, spec_private):
    ec_no_alg = {k: v for k, v in SPEC_JWKS_PUBLIC["keys"][0].items() if k != "alg"}
    rsa_no_alg = {k: v for k, v in rsa_jwk.items() if k != "alg"}
    assert rejected(verifier(jwks={"keys": [ec_no_alg]}), rs_token(rsa_private, kid="example-kid")) == "key does not match alg"
    assert rejected(verifier(jwks={"keys": [rsa_no_alg]}), es384_token(spec_private, headers={"kid": "rsa-1"})) == "key does not match alg"
    # Without "alg" on the JWK the key still works for its own family.
    assert verifier(jwks={"keys": [rsa_no_alg]}).verify(f"Bearer {rs_token(rsa_private)}", AUD)


def test_header_alg_must_match_jwk_alg(rsa_private, rsa_jwk):
    # Same RSA key, JWK pinned to RS384, token signed RS256.
    assert rejected(verifier(jwks={"keys": [rsa_jwk]}), rs_token(rsa_private, "RS256")) == "key does not match alg"


def test_ec_curve_must_match_alg():
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k"
    # ES384 signature over a P-256 key: kty fits, curve does not.
    signing_input = f"{b64json({'alg': 'ES384', 'kid': 'k'})}.{b64json(claims())}"
    sig = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA384).sign(signing_input.encode(), key)
    assert rejected(verifier(jwks={"keys": [jwk]}), f"{signing_input}.{b64url(sig)}") == "key does not match alg"


def test_enc_only_key_is_not_used_for_signatures(spec_private):
    jwk = dict(SPEC_JWKS_PUBLIC["keys"][0], use="enc")
    assert rejected(verifier(jwks={"keys": [jwk]}), es384_token(spec_private)) == "key does not match alg"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_short_rsa_key_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key()))
    jwk["kid"] = "rsa-1"
    token = rs_token(small)
    assert rejected(verifier(jwks={"keys": [jwk]}), token) == "rsa key too short"


def test_wrong_aud(spec_private):
    v = verifier()
    assert rejected(v, es384_token(spec_private, aud="https://cds.example.org/cds-services/other")) == "wrong aud"
    assert rejected(v, es384_token(spec_private, aud=AUD + "/")) == "wrong aud"  # exact string
    assert rejected(v, es384_token(spec_private, aud=None)) == "missing claim aud"


def test_expired(spec_private):
    token = es384_token(spec_private, iat=int(NOW) - 600, exp=int(NOW) - 61)
    assert rejected(verifier(leeway_seconds=60), token) == "expired"


def test_iat_in_the_future(spec_private):
    token = es384_token(spec_private, iat=int(NOW) + 120, exp=int(NOW) + 400)
    assert rejected(verifier(leeway_seconds=60), token) == "iat in the future"


def test_nbf_in_the_future(spec_private):
    assert rejected(verifier(), es384_token(spec_private, nbf=int(NOW) + 120)) == "not yet valid"


def test_lifetime_too_long(spec_private):
    token = es384_token(spec_private, exp=int(NOW) + 3601)
    assert rejected(verifier(max_lifetime_seconds=3600), token) == "lifetime too long"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "iss"])
def test_missing_required_claim(spec_private, claim):
    reason = rejected(verifier(), es384_token(spec_private, **{claim: None}))
    assert reason in (f"missing claim {claim}", "missing iss")


@pytest.mark.parametrize("overrides", [{"exp": "later"}, {"iat": True}, {"jti": ""}, {"jti": 42}, {"jti": "x" * 300}])
def test_bad_claim_types(spec_private, overrides):
    assert rejected(verifier(), es384_token(spec_private, **overrides))


def test_replayed_jti(spec_private):
    v = verifier()
    token = es384_token(spec_private)
    assert v.verify(f"Bearer {token}", AUD)
    assert rejected(v, token) == "replayed jti"
    # A new token reusing the jti is a replay too.
    same_jti = es384_token(spec_private, jti=jwt.decode(token, options={"verify_signature": False})["jti"])
    assert rejected(v, same_jti) == "replayed jti"


def test_failed_tokens_do_not_burn_their_jti(spec_private):
    v = verifier()
    jti = str(uuid.uuid4())
    rejected(v, es384_token(spec_private, jti=jti), audience="https://cds.example.org/other")
    assert v.verify(f"Bearer {es384_token(spec_private, jti=jti)}", AUD)


def test_jti_is_scoped_per_issuer(spec_private):
    other = "https://other-ehr.example.org"
    v = JwtVerifier([TrustedIssuer(iss=ISS, jwks=SPEC_JWKS_PUBLIC), TrustedIssuer(iss=other, jwks=SPEC_JWKS_PUBLIC)],
                    clock=Clock(), fetch=must_not_fetch)
    assert v.verify(f"Bearer {es384_token(spec_private, jti='same')}", AUD)
    assert v.verify(f"Bearer {es384_token(spec_private, jti='same', iss=other)}", AUD)


def test_replay_cache_forgets_expired_and_fails_closed_when_full(spec_private):
    clock = Clock()
    v = verifier(clock=clock, jti_cache_size=2, leeway_seconds=0)
    assert v.verify(f"Bearer {es384_token(spec_private, exp=int(NOW) + 10)}", AUD)
    assert v.verify(f"Bearer {es384_token(spec_private, exp=int(NOW) + 20)}", AUD)
    assert rejected(v, es384_token(spec_private)) == "replay cache full"
    clock.now = NOW + 10  # the first entry's token can no longer be accepted: its slot frees
    assert v.verify(f"Bearer {es384_token(spec_private, iat=int(NOW) + 10, exp=int(NOW) + 100)}", AUD)


def test_replay_cache_is_thread_safe(spec_private):
    v = verifier()
    token = es384_token(spec_private)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            v.verify(f"Bearer {token}", AUD)
            results.append(True)
        except AuthError:
            results.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_unknown_iss(spec_private):
    v = verifier()
    assert rejected(v, es384_token(spec_private, iss="https://evil.example/")) == "untrusted iss"
    assert rejected(v, es384_token(spec_private, iss=ISS.rstrip("/"))) == "untrusted iss"  # exact match


def test_kid_not_found(spec_private):
    token = es384_token(spec_private, headers={"kid": "no-such-kid"})
    assert rejected(verifier(), token) == "kid not found"


def test_several_keys_and_no_kid(spec_private):
    second = ec.generate_private_key(ec.SECP384R1())
    jwk2 = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(second.public_key()))
    jwk2["kid"] = "second"
    token = jwt.encode(claims(), spec_private, algorithm="ES384")
    assert rejected(verifier(jwks={"keys": [SPEC_JWKS_PUBLIC["keys"][0], jwk2]}), token) == "ambiguous key"


def test_wrong_tenant(spec_private):
    v = verifier(tenant=TENANT)
    assert rejected(v, es384_token(spec_private, tenant="another-hospital")) == "wrong tenant"
    assert rejected(v, es384_token(spec_private, tenant=None)) == "wrong tenant"


def test_unknown_crit_and_wrong_typ(spec_private):
    v = verifier()
    # PyJWT's own header parsing already refuses crit extensions it does not implement.
    reason = rejected(v, es384_token(spec_private, headers={"crit": ["x-ext"], "x-ext": 1}))
    assert reason in ("crit header not supported", "malformed jose header")
    assert rejected(v, es384_token(spec_private, headers={"typ": "at+jwt"})) == "typ is not JWT"


def test_signed_by_another_key_with_same_kid():
    attacker = ec.generate_private_key(ec.SECP384R1())
    assert rejected(verifier(), es384_token(attacker)) == "bad signature"


# --- jku and fetched key sets ----------------------------------------------------

def test_jku_not_on_allowlist_is_never_fetched(spec_private):
    fetch = Fetch({})
    v = JwtVerifier([TrustedIssuer(iss=ISS)], jku_allowlist=[JKU], clock=Clock(), fetch=fetch)
    for jku in ["https://evil.example/jwks", JKU + "/", JKU.upper(), "http://fhir-ehr.example.com/jwk_uri"]:
        assert rejected(v, es384_token(spec_private, headers={"jku": jku})) == "jku not allowlisted"
    assert rejected(v, es384_token(spec_private)) == "no keys for issuer and no jku"
    assert fetch.calls == []


def test_jku_ignored_when_issuer_keys_are_configured():
    attacker = ec.generate_private_key(ec.SECP384R1())
    attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    attacker_jwk["kid"] = "example-kid"
    fetch = Fetch({JKU: {"keys": [attacker_jwk]}})
    v = JwtVerifier([TrustedIssuer(iss=ISS, jwks=SPEC_JWKS_PUBLIC)], jku_allowlist=[JKU], clock=Clock(), fetch=fetch)
    assert rejected(v, es384_token(attacker, headers={"jku": JKU})) == "bad signature"
    assert fetch.calls == []


def test_jku_on_allowlist_is_fetched_once_and_cached(spec_private):
    fetch = Fetch({JKU: SPEC_JWKS_PUBLIC})
    clock = Clock()
    v = JwtVerifier([TrustedIssuer(iss=ISS)], jku_allowlist=[JKU], clock=clock, fetch=fetch)
    for _ in range(3):
        assert v.verify(f"Bearer {es384_token(spec_private, headers={'jku': JKU})}", AUD)
    assert fetch.calls == [JKU]
    clock.now = NOW + 601  # past the 10-minute cache TTL
    token = es384_token(spec_private, headers={"jku": JKU}, iat=int(clock.now), exp=int(clock.now) + 60)
    assert v.verify(f"Bearer {token}", AUD)
    assert fetch.calls == [JKU, JKU]


def test_issuer_jwks_url_is_fetched_and_cached(spec_private):
    url = "https://fhir-ehr.example.com/.well-known/jwks.json"
    fetch = Fetch({url: SPEC_JWKS_PUBLIC})
    v = verifier(jwks_url=url, fetch=fetch)
    for _ in range(2):
        # A header jku is ignored for an issuer with a configured jwks_url.
        assert v.verify(f"Bearer {es384_token(spec_private, headers={'jku': 'https://evil.example/'})}", AUD)
    assert fetch.calls == [url]


def test_unknown_kid_refetches_once_for_key_rotation(spec_private):
    url = "https://fhir-ehr.example.com/jwks"
    new = ec.generate_private_key(ec.SECP384R1())
    new_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(new.public_key()))
    new_jwk.update(kid="rotated", alg="ES384")
    fetch = Fetch({url: SPEC_JWKS_PUBLIC})
    clock = Clock()
    v = verifier(jwks_url=url, fetch=fetch, clock=clock)
    assert v.verify(f"Bearer {es384_token(spec_private)}", AUD)
    fetch.sets[url] = {"keys": [SPEC_JWKS_PUBLIC["keys"][0], new_jwk]}
    # Within the minimum refresh interval an unknown kid does not trigger a fetch.
    assert rejected(v, es384_token(new, headers={"kid": "rotated"})) == "kid not found"
    assert fetch.calls == [url]
    clock.now = NOW + 31
    token = es384_token(new, headers={"kid": "rotated"}, iat=int(clock.now), exp=int(clock.now) + 60)
    assert v.verify(f"Bearer {token}", AUD)
    assert fetch.calls == [url, url]
    # Random kids cannot force more fetches.
    for i in range(5):
        rejected(v, es384_token(new, headers={"kid": f"junk-{i}"}, iat=int(clock.now)))
    assert fetch.calls == [url, url]


def test_fetch_failure_is_an_auth_error(spec_private):
    def broken(url: str) -> dict:
        raise OSError("connection refused")

    v = JwtVerifier([TrustedIssuer(iss=ISS)], jku_allowlist=[JKU], clock=Clock(), fetch=broken)
    assert rejected(v, es384_token(spec_private, headers={"jku": JKU})) == "jwks fetch failed"
    v = JwtVerifier([TrustedIssuer(iss=ISS)], jku_allowlist=[JKU], clock=Clock(), fetch=lambda u: {"no": "keys"})
    assert rejected(v, es384_token(spec_private, headers={"jku": JKU})) == "jwks fetch failed"


# --- default HTTP fetch (mock transport, no network) ------------------------------

def test_http_fetch_reads_a_jwks():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=SPEC_JWKS_PUBLIC))
    assert http_fetch_jwks(JKU, transport=transport) == SPEC_JWKS_PUBLIC


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(302, headers={"Location": "https://evil.example/jwks"}),
        httpx.Response(404, json={}),
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, content=b"{" + b" " * (1024 * 1024 + 10) + b"}"),
    ],
    ids=["redirect", "404", "not-json", "not-object", "too-large"],
)
def test_http_fetch_refuses(response):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return response

    from leukodx.api.cds.auth import JwksFetchError

    with pytest.raises(JwksFetchError):
        http_fetch_jwks(JKU, transport=httpx.MockTransport(handler))
    assert seen == [JKU]  # never followed a redirect


def test_a_jwks_fetch_that_does_not_end_is_given_up_at_its_deadline_and_not_started_again_beside_it():
    """Security red-team round 27: an endpoint trickling its headers was never cut off (httpx's timeouts are per read),
    and forged tokens naming its issuer held calls and /readyz for minutes. The caller waits the deadline at most; a
    fetch of that URL still running is not started again."""
    import threading

    from leukodx.api.cds.auth import JwksFetchError
    release = threading.Event()

    def stalls(request: httpx.Request) -> httpx.Response:
        release.wait(30)
        return httpx.Response(200, json=SPEC_JWKS_PUBLIC)

    url = "https://stalling.example/jwks"
    try:
        with pytest.raises(JwksFetchError, match="timed out"):
            http_fetch_jwks(url, transport=httpx.MockTransport(stalls))
        with pytest.raises(JwksFetchError, match="an earlier fetch of this URL has not ended"):
            http_fetch_jwks(url, transport=httpx.MockTransport(stalls))
    finally:
        release.set()


def test_a_caller_waiting_for_another_callers_jwks_fetch_gives_up():
    """The waiters of a fetch in progress had no limit; they give up after twice a fetch's deadline."""
    import threading

    from leukodx.api.cds import auth
    started, release = threading.Event(), threading.Event()

    def slow(url: str) -> dict:
        started.set()
        release.wait(30)
        return SPEC_JWKS_PUBLIC

    cache = auth._JwksCache(slow, Clock())
    first = threading.Thread(target=lambda: cache.get(JKU), daemon=True)
    first.start()
    try:
        assert started.wait(5)
        with pytest.raises(AuthError, match="jwks fetch failed"):
            cache.get(JKU)
    finally:
        release.set()
        first.join(5)


@pytest.mark.parametrize("url", ["http://ehr.example.com/jwks", "ftp://x/jwks", "file:///etc/passwd", "jwks"])
def test_http_fetch_and_config_refuse_non_https(url):
    with pytest.raises(ValueError):
        http_fetch_jwks(url, transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    with pytest.raises(ValueError):
        TrustedIssuer(iss=ISS, jwks_url=url)
    with pytest.raises(ValueError):
        JwtVerifier([], jku_allowlist=[url])


def test_loopback_http_is_allowed_for_tests():
    TrustedIssuer(iss=ISS, jwks_url="http://127.0.0.1:8123/jwks")
    TrustedIssuer(iss=ISS, jwks_url="http://localhost/jwks")


# --- configuration ---------------------------------------------------------------

def test_verifier_from_settings(spec_private):
    text = json.dumps([
        {"iss": ISS, "jwks": SPEC_JWKS_PUBLIC, "tenant": TENANT},
        {"iss": "https://sandbox.cds-hooks.org", "jwks_url": "https://sandbox.cds-hooks.org/.well-known/jwks.json"},
    ])
    v = verifier_from_settings(text, [JKU], clock=Clock(), fetch=must_not_fetch)
    assert v.verify(f"Bearer {es384_token(spec_private)}", AUD)["tenant"] == TENANT
    assert rejected(v, es384_token(spec_private, tenant="x")) == "wrong tenant"


@pytest.mark.parametrize(
    "text",
    ["not json", "{}", "[1]", '[{"jwks": {"keys": []}}]', '[{"iss": "a", "jwks_uri": "https://x"}]',
     '[{"iss": "a", "jwks_url": "http://x.example/jwks"}]', '[{"iss": "a", "jwks": {"kty": "EC"}}]',
     '[{"iss": "a"}, {"iss": "a"}]', '[{"iss": ""}]'],
)
def test_verifier_from_settings_refuses_bad_configuration(text):
    with pytest.raises(ValueError):
        verifier_from_settings(text, [])


def test_real_world_jwks_files_load_and_bind_alg():
    """The sandbox's and Inferno's published public key sets are usable as configuration;
    a token naming Inferno's RSA key with alg ES384 is refused before any signature check."""
    sandbox = SHARED / "sandbox" / "sandbox-jwks-public.json"
    inferno = SHARED / "inferno-crd-test-kit" / "crd_jwks_public_only.json"
    if not (sandbox.is_file() and inferno.is_file()):
        pytest.skip("research copy of the CDS Hooks material not present")
    inferno_jwks = json.loads(inferno.read_text())
    v = verifier_from_settings(
        json.dumps([{"iss": "https://sandbox.cds-hooks.org", "jwks": json.loads(sandbox.read_text())},
                    {"iss": "https://inferno.healthit.gov", "jwks": inferno_jwks}]),
        [], clock=Clock(), fetch=must_not_fetch)
    rsa_kid = next(k["kid"] for k in inferno_jwks["keys"] if k["kty"] == "RSA")
    fake = f"{b64json({'alg': 'ES384', 'typ': 'JWT', 'kid': rsa_kid})}.{b64json(claims(iss='https://inferno.healthit.gov'))}.{b64url(b'x' * 96)}"
    assert rejected(v, fake) == "key does not match alg"
    ec_kid = next(k["kid"] for k in inferno_jwks["keys"] if k["kty"] == "EC")
    fake = f"{b64json({'alg': 'ES384', 'typ': 'JWT', 'kid': ec_kid})}.{b64json(claims(iss='https://inferno.healthit.gov'))}.{b64url(b'x' * 96)}"
    assert rejected(v, fake) == "bad signature"


def test_a_failed_jwks_fetch_is_not_repeated_for_a_while_and_one_fetch_serves_concurrent_calls():
    """400 forged tokens naming an issuer with a slow JWKS endpoint had made 333 fetches and filled the thread
    pool (security red-team): a failure is remembered for JWKS_FAILURE_BACKOFF_SECONDS, and callers arriving
    while a fetch runs take its answer."""
    from leukodx.api.cds.auth import JWKS_FAILURE_BACKOFF_SECONDS, AuthError, _JwksCache
    now = [1000.0]
    calls: list[str] = []

    def failing(url):
        calls.append(url)
        raise OSError("down")
    cache = _JwksCache(failing, lambda: now[0])
    for _ in range(5):
        with pytest.raises(AuthError):
            cache.get("https://ehr.example.org/jwks")
    assert len(calls) == 1
    now[0] += JWKS_FAILURE_BACKOFF_SECONDS + 1
    with pytest.raises(AuthError):
        cache.get("https://ehr.example.org/jwks")
    assert len(calls) == 2

    gate = threading.Event()

    def slow(url):
        calls.append(url)
        gate.wait(5)
        return {"keys": []}
    cache = _JwksCache(slow, time.monotonic)
    calls.clear()
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("https://ehr.example.org/jwks")))
               for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 8 and sum(fresh for _, fresh in results) == 1
