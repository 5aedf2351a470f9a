"""Fetch what the EHR did not prefetch from its FHIR server (CDS Hooks 2.0.1, "FHIR resource access").

:func:`fetch_queries` runs the queries of one CDS call concurrently on one ``httpx.AsyncClient``
under ONE total deadline (connect, every page, every body; ``LEUKODX_FHIR_DEADLINE_SECONDS``), and
never raises: each query gets a :class:`FetchOutcome` (what was had, and a short note when not
complete). What it guarantees:

* the prefetch template is filled from the hook context (`{{context.patientId}}`,
  `{{userPractitionerId}}` ...): a value must be a FHIR id, and ``.``/``..`` are refused, so a
  query can never climb out of the server's base path;
* every URL (the first and each ``Bundle.link[relation=next]``) is parsed with urllib, must carry
  no user information (``user@host``), no backslash, space or control character, and must have
  the fhirServer's scheme, host and port; a page link is never compared as a string;
* every host is resolved for every URL and every address it resolves to is checked: loopback only
  when ``allow_loopback`` (development), private and other non-global addresses only when
  ``allow_private``, link-local (cloud metadata), multicast, unspecified and reserved never; the
  request then goes to the checked address itself (the Host header and the TLS server name stay
  the server's name), so a second DNS answer cannot send it elsewhere;
* the ``fhirAuthorization`` bearer token is sent only there, only over https (plain http only to
  loopback in development), and never logged; redirects are not followed;
* at most ``max_pages`` pages per query (the entries fetched so far come back with a note), at most
  8 MiB per answer and 24 MiB per call, JSON only, parsed with the same depth and size pre-checks
  as request bodies (engine/parse.py);
* the notes are uniform: a closed port, a port that never answers, an answer that is not FHIR JSON
  and a refused address all read "the FHIR server could not be used" (the log says which, without
  the URL); 404 and 400 on a search read "not available on the FHIR server (404)", which callers
  may treat as "this resource type is not offered".
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Optional, Union
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from ..inflate import ACCEPT_ENCODING, TooLarge, Undecodable, aread_capped

__all__ = ["fetch_queries", "fill_template", "FetchError", "FetchOutcome", "UNUSABLE", "pages_note", "not_available",
           "check_url", "address_allowed", "MAX_BODY", "MAX_CALL_BYTES"]

MAX_BODY = 8 * 1024 * 1024          # one answer (decoded)
MAX_CALL_BYTES = 24 * 1024 * 1024   # all answers of one CDS call
MAX_JSON_DEPTH = 64                 # nesting of one answer's JSON
UNUSABLE = "the FHIR server could not be used"

log = logging.getLogger("leukodx.fhir.fetch")

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RELATIVE_PATH = re.compile(r"[A-Z][A-Za-z]{1,63}(/[A-Za-z0-9\-.]{1,64})?")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\uffff\\]")


class FetchError(Exception):
    """The data could not be had; the message says why (no token, no URL in it)."""


@dataclass
class FetchOutcome:
    key: str
    resources: Optional[dict]   # a searchset Bundle of what was fetched (possibly partial), or the resource read
    note: Optional[str]         # None when complete; else a short uniform reason


async def fetch_queries(server: str, token: Optional[str], queries: dict[str, str], *, deadline_seconds: float,
                        max_pages: int, allow_private: bool, allow_loopback: bool,
                        transport: Optional[httpx.AsyncBaseTransport] = None) -> dict[str, FetchOutcome]:
    """Run the ``queries`` (key -> query relative to ``server``, already filled) concurrently, all
    within ``deadline_seconds``. Never raises: every key gets a :class:`FetchOutcome`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    failed = {key: FetchOutcome(key, None, UNUSABLE) for key in queries}
    try:
        base = check_url(server)
        await asyncio.wait_for(_resolve(base, allow_private=allow_private, allow_loopback=allow_loopback),
                               timeout=max(0.0, deadline - loop.time()))
    except (FetchError, asyncio.TimeoutError) as e:
        log.warning("fhirServer refused", extra={"reason": str(e) or "timed out"})
        return failed
    timeout = httpx.Timeout(deadline_seconds)
    limits = httpx.Limits(max_connections=max(1, min(len(queries), 8)), max_keepalive_connections=0)
    progress = {key: _Progress() for key in queries}
    outcomes: dict[str, FetchOutcome] = {}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, transport=transport,
                                 trust_env=False) as client:
        call = _Call(base, server, token, max_pages, allow_private, allow_loopback, client)

        async def one(key: str, relative: str) -> None:
            try:
                outcomes[key] = await call.run(key, relative, progress[key])
            except Exception as e:   # noqa: BLE001 - any failure of one query is that query's outcome
                log.warning("FHIR query failed", extra={"key": key, "reason": _reason(e)})
                outcomes[key] = call._partial(key, progress[key], f"{UNUSABLE}: later pages not read")

        tasks = [asyncio.create_task(one(key, relative)) for key, relative in queries.items()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for key in queries:
        if key not in outcomes:
            log.warning("FHIR query failed", extra={"key": key, "reason": "deadline"})
            outcomes[key] = call._partial(key, progress[key], f"{UNUSABLE} in time: later pages not read")
    return {key: outcomes[key] for key in queries}


def fill_template(template: str, context: dict[str, Any], fhir_authorization: Optional[dict[str, Any]]) -> str:
    """Replace `{{context.x}}` (and `{{userPractitionerId}}`-style shortcuts) with values from the hook.
    A value must be a FHIR id (letters, digits, '-', '.'; at most 64) and not '.', '..' or anything
    with '..' in it. Raises :class:`FetchError`."""
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
        if isinstance(v, bool) or not isinstance(v, (str, int)) or not _FHIR_ID.fullmatch(str(v)) \
                or ".." in str(v) or not str(v).strip("."):
            raise FetchError(f"prefetch template token {name!r} has no usable value in the context")
        return str(v)
    return _TOKEN.sub(value, template)


def not_available(status: int) -> str:
    return f"not available on the FHIR server ({status})"


def pages_note(pages: int) -> str:
    return f"stopped after {pages} pages: later pages not read"


# -- URLs and addresses -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str           # lower case, without brackets
    port: int           # effective port
    path: str
    query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: Any) -> _Url:
    """Parse an absolute http(s) URL strictly: no user information, no backslash, space or control
    character, a host, a valid port. Raises :class:`FetchError`."""
    if not isinstance(url, str) or not url or len(url) > 4096 or _BAD_URL_CHARS.search(url):
        raise FetchError("the URL is not a plain http(s) URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError("the URL is not a plain http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("the URL is not an http(s) URL")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise FetchError("the URL carries user information")
    return _Url(parts.scheme, parts.hostname.lower().rstrip("."),
                port if port is not None else (443 if parts.scheme == "https" else 80), parts.path, parts.query)


def address_allowed(ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address], *, allow_private: bool,
                    allow_loopback: bool) -> bool:
    """May leukodx connect to this address? Loopback only in development; link-local (cloud
    metadata), multicast, unspecified and reserved never; other non-global addresses (private
    networks, shared and documentation ranges) only with ``allow_private``."""
    if isinstance(ip, ipaddress.IPv6Address):
        # an IPv4 address carried in IPv6 is judged as itself: mapped, 6to4 (2002:a9fe:a9fe:: is 169.254.169.254, the
        # cloud metadata, and had passed where a relay routes it) and Teredo's client address
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is not None:
            return address_allowed(carried, allow_private=allow_private, allow_loopback=allow_loopback)
    if ip.is_loopback:
        return allow_loopback
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if not ip.is_global or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):   # fec0::/10, deprecated
        return allow_private
    return True


async def _resolve(url: _Url, *, allow_private: bool, allow_loopback: bool) -> str:
    """The address to connect to for ``url``: every address the host resolves to must be allowed.
    Raises :class:`FetchError`."""
    try:
        ips = [ipaddress.ip_address(url.host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            raise FetchError("the host cannot be resolved") from None
        ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not ips:
        raise FetchError("the host cannot be resolved")
    for ip in ips:
        if not address_allowed(ip, allow_private=allow_private, allow_loopback=allow_loopback):
            raise FetchError("the host has an address leukodx must not reach")
    if url.scheme != "https" and not all(ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and
                                                            ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
                                         for ip in ips):
        raise FetchError("plain http is only allowed to loopback (the access token must not travel in clear)")
    first = ips[0]
    return f"[{first}]" if first.version == 6 else str(first)


# -- one call ---------------------------------------------------------------------------------------

class _Status(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass
class _Progress:
    first: Optional[dict] = None
    entries: list[Any] = field(default_factory=list)
    pages: int = 0


class _Call:
    def __init__(self, base: _Url, base_text: str, token: Optional[str], max_pages: int, allow_private: bool,
                 allow_loopback: bool, client: httpx.AsyncClient):
        self.base, self.base_text, self.token = base, base_text, token
        self.max_pages, self.allow_private, self.allow_loopback = max_pages, allow_private, allow_loopback
        self.client = client
        self.bytes_read = 0

    def first_url(self, relative: str) -> str:
        path = relative.split("?", 1)[0] if isinstance(relative, str) else ""
        if not _RELATIVE_PATH.fullmatch(path) or path.rsplit("/", 1)[-1].strip(".") == "" or ".." in path \
                or "#" in relative:
            raise FetchError("the query is not a relative FHIR query")
        url = urljoin(self.base_text.rstrip("/") + "/", relative)
        parsed = check_url(url)
        base_path = self.base.path.rstrip("/") + "/"
        if parsed.origin != self.base.origin or not (parsed.path + "/").startswith(base_path):
            raise FetchError("the query leaves the fhirServer")
        return url

    async def get_json(self, url: str) -> dict:
        parsed = check_url(url)
        if parsed.origin != self.base.origin:
            raise FetchError("a page link leaves the fhirServer")
        address = await _resolve(parsed, allow_private=self.allow_private, allow_loopback=self.allow_loopback)
        pinned = urlunsplit((parsed.scheme, f"{address}:{parsed.port}", parsed.path or "/", parsed.query, ""))
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": ACCEPT_ENCODING, "Host": parsed.host_header()}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        request = self.client.build_request("GET", pinned, headers=headers, extensions=extensions)
        response = await self.client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise _Status(response.status_code)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY:
                raise FetchError("the answer is too large")
            body = await aread_capped(response, MAX_BODY)     # decoded under the cap: a gzip bomb meets it
        except TooLarge:
            raise FetchError("the answer is too large") from None
        except Undecodable:
            raise FetchError("the answer's content coding is not one leukodx reads") from None
        finally:
            await response.aclose()
        self.bytes_read += len(body)
        if self.bytes_read > MAX_CALL_BYTES:
            raise FetchError("the answers of this call are too large")
        from leukodx.engine.errors import CaseError
        from leukodx.engine.parse import load_json_document

        from ..offload import run_cpu
        try:
            doc = await run_cpu(load_json_document, body, "FHIR answer", MAX_BODY, MAX_JSON_DEPTH,
                                abandon_on_cancel=True)
        except CaseError:
            raise FetchError("the answer is not usable JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise FetchError("the answer is not a FHIR resource")
        if doc["resourceType"] == "OperationOutcome":
            raise FetchError("the answer is an OperationOutcome")
        return doc

    async def run(self, key: str, relative: str, progress: _Progress) -> FetchOutcome:
        url: Optional[str] = self.first_url(relative)
        while url is not None:
            if progress.pages == self.max_pages:
                return self._partial(key, progress, pages_note(self.max_pages))
            try:
                doc = await self.get_json(url)
            except _Status as e:
                if progress.pages == 0 and e.status in (400, 404):
                    return FetchOutcome(key, None, not_available(e.status))
                raise FetchError(f"the server answered {e.status}") from None
            if doc["resourceType"] != "Bundle":
                if progress.pages == 0:
                    return FetchOutcome(key, doc, None)
                raise FetchError("a page is not a Bundle")
            entries, links = doc.get("entry", []), doc.get("link", [])
            if entries is None:
                entries = []
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries) \
                    or not isinstance(links, list):
                raise FetchError("the Bundle is malformed (entry or link is not a list of objects)")
            progress.first = progress.first or doc
            progress.entries.extend(entries)
            progress.pages += 1
            nxt = [lk.get("url") for lk in links if isinstance(lk, dict) and lk.get("relation") == "next"]
            url = urljoin(url, nxt[0]) if nxt and isinstance(nxt[0], str) else None
        return FetchOutcome(key, self._bundle(progress), None)

    @staticmethod
    def _bundle(progress: _Progress) -> dict:
        first = {k: v for k, v in (progress.first or {"resourceType": "Bundle", "type": "searchset"}).items()
                 if k not in ("entry", "link", "total")}
        return {**first, "entry": list(progress.entries), "link": []}

    def _partial(self, key: str, progress: _Progress, note: str) -> FetchOutcome:
        if progress.pages == 0:
            return FetchOutcome(key, None, UNUSABLE)
        return FetchOutcome(key, self._bundle(progress), note)


def _reason(e: BaseException) -> str:
    if isinstance(e, FetchError):
        return str(e)
    return type(e).__name__
