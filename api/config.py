"""Settings from environment variables (prefix LEUKODX_), documented in the README and docs/security.md."""
from __future__ import annotations

import os
import re
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "DeploymentError", "check_deployment", "MIN_AUDIT_KEY"]

MIN_AUDIT_KEY = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEUKODX_", extra="ignore")

    # -- request bodies (checked before any parser sees them) -------------------------------------
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest /v1/assess body accepted (413 above)")
    max_yaml_bytes: int = Field(256 * 1024, ge=1024, description="largest YAML case (application/yaml) accepted")
    max_depth: int = Field(64, ge=8, le=512, description="deepest nesting of a JSON or YAML body (422/400 above)")
    max_case_nodes: int = Field(200_000, ge=1000, description="most values in a case body (JSON or YAML)")
    max_fhir_nodes: int = Field(1_000_000, ge=1000, description="most values in a FHIR Bundle or CDS Hooks body")
    cds_max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024,
                                    description="largest CDS Hooks request (prefetch): years of labs fit")
    fhir_max_body_bytes: int = Field(12 * 1024 * 1024, ge=1024, description="largest FHIR Bundle for /v1/assess/fhir")

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    # -- CDS Hooks authentication ------------------------------------------------------------------
    cds_auth: str = Field("on", description="'off' disables CDS Hooks JWT checks (development only)")
    cds_issuers: str = Field("[]", description='JSON list of trusted issuers: [{"iss": ..., "jwks": {...} | "jwks_url": ...}]')
    cds_jku_allowlist: str = Field("", description="comma-separated JWKS URLs a token's jku may point to")
    cds_public_base_url: str = Field("", description="external base URL of this service, for the JWT audience; "
                                                     "required to start `leukodx serve` with CDS auth on")
    cds_audience_from_request: bool = Field(False, description="development only: without cds_public_base_url, "
                                                               "take the JWT audience from the request's Host header")

    feedback_db_url: str = Field("sqlite:///leukodx-feedback.db",
                                 description="SQLAlchemy URL of the feedback store and of the JWT replay table")
    report_link_minutes: float = Field(60.0, ge=0, le=24 * 60, description="how long the full assessment behind a "
                                        "CDS card's report link can be opened (0: no link); the link holds no patient "
                                        "identifier")

    # -- outbound FHIR (CDS Hooks without prefetch) -----------------------------------------------
    fhir_deadline_seconds: float = Field(3.0, gt=0, le=30, description="one total deadline for all the FHIR queries "
                                                                      "of one CDS call (connect, pages, bodies)")
    fhir_max_pages: int = Field(5, ge=1, le=50, description="pages followed per FHIR search; later pages are "
                                                         "named as not read and the rest is assessed")
    fhir_allow_private: bool = Field(False, description="allow fhirServer URLs on private networks (SSRF guard)")
    fhir_allow_loopback: bool = Field(False, description="development only: allow a fhirServer on loopback "
                                                         "(127.0.0.1, ::1), over plain http")

    # -- the server (`leukodx serve`), per worker process -----------------------------------------
    keep_alive_seconds: int = Field(5, ge=1, le=300, description="an idle keep-alive connection is closed after this")
    header_timeout_seconds: float = Field(10.0, gt=0, le=300, description="a connection that has not sent a whole "
                                                                          "request head in this time is closed")
    body_timeout_seconds: float = Field(30.0, gt=0, le=600, description="a request body not received whole in this "
                                                                        "time closes its connection")
    limit_concurrency: int = Field(128, ge=1, description="requests in progress per worker; more get 503 at once")
    max_connections: int = Field(512, ge=8, description="open connections per worker; more are closed at once")
    worker_healthcheck_seconds: int = Field(10, ge=1, le=300, description="a worker that does not answer the "
                                                                          "supervisor's ping in this time is replaced")

    # -- the network in front of the service (docs/deploy.md) -------------------------------------
    cors_origins: str = Field("*", description="comma-separated origins whose browser pages may call the service "
                                               "(https://ehr.example.org); '*' (CDS Hooks' default, 208): any; empty: "
                                               "no CORS headers")
    forwarded_allow_ips: str = Field("", description="comma-separated addresses of the reverse proxies whose "
                                                     "X-Forwarded-For and X-Forwarded-Proto are believed (client "
                                                     "address, https scheme); empty: those headers are ignored")

    # -- operations: metrics and the audit log (docs/audit.md) -------------------------------------
    metrics: bool = Field(True, description="serve Prometheus metrics at /metrics (scrape it from the monitoring "
                                            "network only); OpenTelemetry tracing is set by the standard OTEL_* "
                                            "variables")
    audit_key: SecretStr = Field(SecretStr(""), description="secret (at least 32 characters) keying the HMAC-SHA256 "
                                                            "of patient references in audit records; unset: records "
                                                            "carry no patient hash")
    audit_log_file: str = Field("", description="append-only file for the audit records (JSON lines, opened with "
                                                "O_APPEND, mode 0600); empty: standard error, as logger leukodx.audit")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        bad = [o for o in cls.origins_of(v) if o != "*" and not _ORIGIN.fullmatch(o)]
        if bad:
            raise ValueError(f"not an origin (scheme://host[:port], no path): {', '.join(bad)}")
        return v

    @staticmethod
    def origins_of(v: str) -> list[str]:
        return [o.strip().rstrip("/") for o in v.split(",") if o.strip()]


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


class DeploymentError(Exception):
    """The settings are not safe to serve with; the message says what to set."""


def check_deployment(settings: Settings) -> None:
    """Refuse settings that would run the service unsafely (raised by `leukodx serve` and the app
    factory before any request is answered)."""
    if settings.cds_auth.lower() != "off" and not settings.cds_public_base_url and not settings.cds_audience_from_request:
        raise DeploymentError(
            "LEUKODX_CDS_PUBLIC_BASE_URL is not set: with CDS Hooks authentication on, the JWT audience must be the "
            "service's external URL (e.g. https://cds.example.org), not the Host header a caller chooses. Set it, or "
            "for development only set LEUKODX_CDS_AUDIENCE_FROM_REQUEST=true (or LEUKODX_CDS_AUTH=off).")
    key = settings.audit_key.get_secret_value()
    if key and len(key) < MIN_AUDIT_KEY:
        raise DeploymentError(
            f"LEUKODX_AUDIT_KEY is {len(key)} characters long: it keys the hash of patient references in the audit "
            f"log and must be at least {MIN_AUDIT_KEY} random characters (e.g. `openssl rand -hex 32`).")
    if settings.audit_log_file:
        if not key:
            raise DeploymentError(
                "LEUKODX_AUDIT_LOG_FILE is set but LEUKODX_AUDIT_KEY is not: audit records name patients only by a "
                "keyed hash, so an audit file needs its key (e.g. `openssl rand -hex 32`, kept in the secret store).")
        from .audit import open_append_only   # the file must be writable before any worker starts
        try:
            os.close(open_append_only(settings.audit_log_file))
        except OSError as e:
            raise DeploymentError(f"LEUKODX_AUDIT_LOG_FILE cannot be opened for appending: {e.strerror}") from None
