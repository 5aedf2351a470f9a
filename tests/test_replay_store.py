"""Issue 12, finding 5 (and the SQLite races of finding 8): JWT ids are remembered in the feedback
database, so every worker process and every replica accepts a token once in all; a fresh SQLite
file survives concurrent first writes."""
from __future__ import annotations

import json
import multiprocessing
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from leukodx.api.cds import auth as cds_auth
from leukodx.api.cds.auth import AuthError, JwtVerifier, TrustedIssuer, verifier_from_settings
from leukodx.api.cds.models import FeedbackEntry
from leukodx.api.feedback import FeedbackStore, SqlReplayStore

ISS = "https://ehr.example.org"
AUD = "http://127.0.0.1/cds-services/leukodx-patient-view"


def _worker(url: str, keys: list[str], start_at: float, queue) -> None:   # in a child process
    while time.time() < start_at:                  # start together, on a file no one has opened yet
        time.sleep(0.001)
    try:
        store = FeedbackStore(url)
        accepted = [k for k in keys if store.replay.add((ISS, k), time.time() + 300, time.time())]
        entry = FeedbackEntry(card=str(uuid.uuid4()), outcome="overridden", outcomeTimestamp="2025-01-01T00:00:00Z",
                              overrideReason={"userComment": "x"})
        stored = sum(store.add("leukodx-patient-view", [entry]) for _ in range(20))
        queue.put(("ok", accepted, stored))
    except Exception as e:   # noqa: BLE001 - reported to the test
        queue.put(("error", f"{type(e).__name__}: {e}", 0))


def test_two_processes_on_a_fresh_sqlite_file_accept_each_jti_once(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.db"
    keys = [f"jti-{i}" for i in range(150)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3
    procs = [ctx.Process(target=_worker, args=(url, keys, start_at, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[0] == "ok" for r in results), results
    accepted = [k for r in results for k in r[1]]
    assert sorted(accepted) == sorted(keys)          # every jti accepted exactly once, across processes
    assert sum(r[2] for r in results) == 60          # and every feedback write committed
    assert len(list(FeedbackStore(url).export())) == 60


def test_two_engines_on_one_file_share_the_replay_table(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = FeedbackStore(url).replay, FeedbackStore(url).replay    # two engines, as two workers have
    assert a.add((ISS, "one"), 1000.0, 10.0) is True
    assert b.add((ISS, "one"), 1000.0, 20.0) is False
    assert b.add(("https://other.example.org", "one"), 1000.0, 20.0) is True   # (iss, jti) is the key


def test_an_expired_jti_is_purged_and_may_be_used_again(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path}/expiry.db")
    replay = SqlReplayStore(store, purge_every=0)
    assert replay.add((ISS, "a"), 100.0, 10.0) and replay.add((ISS, "b"), 500.0, 10.0)
    assert not replay.add((ISS, "a"), 200.0, 50.0)
    assert replay.add((ISS, "a"), 300.0, 150.0)       # its row had expired at 100
    assert len(replay) == 2
    replay.add((ISS, "c"), 900.0, 600.0)             # purges every row expired by 600
    assert len(replay) == 1


@pytest.fixture
def signing():
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", alg="ES384", use="sig")
    return key, {"keys": [public]}


def token(key, jti: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": jti}, key, algorithm="ES384",
                      headers={"kid": "k1", "typ": "JWT"})


def test_a_token_is_accepted_once_by_two_verifiers_sharing_the_database(tmp_path, signing):
    key, jwks = signing
    url = f"sqlite:///{tmp_path}/verifiers.db"
    one = JwtVerifier([TrustedIssuer(ISS, jwks=jwks)], replay_store=FeedbackStore(url).replay)
    two = JwtVerifier([TrustedIssuer(ISS, jwks=jwks)], replay_store=FeedbackStore(url).replay)
    t = token(key, "shared-jti")
    assert one.verify(f"Bearer {t}", AUD)["jti"] == "shared-jti"
    with pytest.raises(AuthError, match="replayed jti"):
        two.verify(f"Bearer {t}", AUD)


def test_the_service_verifier_uses_the_configured_store(tmp_path, signing):
    key, jwks = signing
    url = f"sqlite:///{tmp_path}/configured.db"
    store = FeedbackStore(url)
    cds_auth.configure_replay_store(lambda: store.replay)
    try:
        text = json.dumps([{"iss": ISS, "jwks": jwks}])
        worker_1, worker_2 = verifier_from_settings(text, []), verifier_from_settings(text, [])
        t = token(key, "configured-jti")
        worker_1.verify(f"Bearer {t}", AUD)
        with pytest.raises(AuthError, match="replayed jti"):
            worker_2.verify(f"Bearer {t}", AUD)
        assert len(store.replay) == 1
    finally:
        cds_auth.configure_replay_store(None)


def test_a_broken_store_refuses_the_token(signing):
    key, jwks = signing

    class Down:
        def add(self, *a):
            raise RuntimeError("database is down")

    v = JwtVerifier([TrustedIssuer(ISS, jwks=jwks)], replay_store=Down())
    with pytest.raises(AuthError, match="replay store unavailable"):
        v.verify(f"Bearer {token(key, 'x')}", AUD)
