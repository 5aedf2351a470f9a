"""Fetch what the EHR did not prefetch from its FHIR server (CDS Hooks 2.0.1, "FHIR resource access").

* the prefetch template is filled from the hook context (`{{context.patientId}}`, `{{userPractitionerId}}` ...);
* the `fhirAuthorization` bearer token is sent, and never logged;
* strict timeouts, a bounded number of pages (`Bundle.link[relation=next]`) and a bounded body;
* the token only travels over https (plain http only to loopback, for an EHR's local test server);
* no server-side request forgery: the fhirServer must be http(s), and its address must not be a
  private, link-local, multicast or reserved one unless it is loopback (the EHR's own test
  servers) or the operator allowed private networks (LEUKODX_FHIR_ALLOW_PRIVATE);
  redirects are not followed, and every page URL must stay on the fhirServer's origin.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["FetchError", "fill_template", "FhirFetcher", "check_server"]

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
MAX_BODY = 8 * 1024 * 1024


class FetchError(Exception):
    """The data could not be had; the message says why (no token in it)."""


def fill_template(template: str, context: dict[str, Any], fhir_authorization: Optional[dict[str, Any]]) -> str:
    """Replace `{{context.x}}` (and `{{userPractitionerId}}`-style shortcuts) with values from the hook."""
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("context."):
            v = context.get(name[len("context."):])
        elif name == "userPractitionerId":
            v = str(context.get("userId", "")).removeprefix("Practitioner/")
        elif name.startswith("user") and name.endswith("Id"):
            v = str(context.get("userId", "")).split("/")[-1]
        else:
            v = None
        if v is None or not isinstance(v, (str, int)) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", str(v)):
            raise FetchError(f"prefetch template token {name!r} has no usable value in the context")
        return str(v)
    return _TOKEN.sub(value, template)


def check_server(url: str, allow_private: bool) -> None:
    """Refuse fhirServer URLs that would let a caller reach internal networks."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FetchError("fhirServer must be an http(s) URL")
    if parts.username or parts.password:
        raise FetchError("fhirServer must not carry credentials")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise FetchError("fhirServer host cannot be resolved") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_loopback:
            continue
        if parts.scheme != "https":
            raise FetchError("fhirServer must use https (the access token must not travel in clear)")
        if not allow_private and (ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
                                  or ip.is_unspecified):
            raise FetchError("fhirServer points to a private or reserved address, which is not allowed")


@dataclass
class FhirFetcher:
    base_url: str
    token: Optional[str]
    timeout: float = 5.0
    max_pages: int = 5
    allow_private: bool = False
    transport: Optional[httpx.BaseTransport] = None   # tests

    def __post_init__(self) -> None:
        check_server(self.base_url, self.allow_private)
        self._origin = urlsplit(self.base_url)._replace(path="", query="", fragment="").geturl()

    def get(self, relative: str) -> Any:
        """GET a FHIR query relative to the server base; follows `next` links up to max_pages and
        returns one searchset Bundle (or the single resource read)."""
        url = urljoin(self.base_url.rstrip("/") + "/", relative.lstrip("/"))
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        entries: list[Any] = []
        first: Optional[dict[str, Any]] = None
        with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 3.0)),
                          follow_redirects=False, transport=self.transport) as client:
            for _ in range(self.max_pages):
                if not url.startswith(self._origin):
                    raise FetchError("a FHIR page link leaves the fhirServer")
                doc = self._get_json(client, url, headers)
                if doc.get("resourceType") == "OperationOutcome":
                    raise FetchError("the FHIR server answered with an OperationOutcome")
                if doc.get("resourceType") != "Bundle":
                    return doc
                first = first or doc
                entries.extend(doc.get("entry") or [])
                url = next((link.get("url") for link in doc.get("link") or [] if link.get("relation") == "next"), None)
                if not url:
                    break
            else:
                raise FetchError(f"the FHIR search has more than {self.max_pages} pages")
        return {**(first or {}), "entry": entries, "link": []}

    @staticmethod
    def _get_json(client: httpx.Client, url: str, headers: dict[str, str]) -> dict[str, Any]:
        try:
            with client.stream("GET", url, headers=headers) as r:
                if r.status_code != 200:
                    raise FetchError(f"the FHIR server answered {r.status_code}")
                body = b""
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise FetchError("the FHIR server's answer is too large")
        except httpx.TimeoutException:
            raise FetchError("the FHIR server did not answer in time") from None
        except httpx.HTTPError as e:
            raise FetchError(f"the FHIR server could not be reached ({type(e).__name__})") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise FetchError("the FHIR server's answer is not JSON") from None
        if not isinstance(doc, dict):
            raise FetchError("the FHIR server's answer is not a FHIR resource")
        return doc
