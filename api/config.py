"""Settings from environment variables (prefix LEUKODX_), documented in the README."""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEUKODX_", extra="ignore")

    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    cds_auth: str = Field("on", description="'off' disables CDS Hooks JWT checks (development only)")
    cds_issuers: str = Field("[]", description='JSON list of trusted issuers: [{"iss": ..., "jwks": {...} | "jwks_url": ...}]')
    cds_jku_allowlist: str = Field("", description="comma-separated JWKS URLs a token's jku may point to")
    cds_public_base_url: str = Field("", description="external base URL of this service, for the JWT audience "
                                                     "(default: the URL the request arrived at)")
    cds_max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest CDS Hooks request (prefetch): years of labs fit")
    fhir_max_body_bytes: int = Field(12 * 1024 * 1024, ge=1024, description="largest FHIR Bundle for /v1/assess/fhir")
    feedback_db_url: str = Field("sqlite:///leukodx-feedback.db", description="SQLAlchemy URL of the feedback store")
    fhir_timeout_seconds: float = Field(5.0, gt=0, le=30)
    fhir_max_pages: int = Field(5, ge=1, le=50)
    fhir_allow_private: bool = Field(False, description="allow fhirServer URLs on private networks (SSRF guard)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
