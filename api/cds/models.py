"""CDS Hooks 2.0.1 shapes (requests, cards, feedback) as pydantic models, and the card invariants
of the HL7 logical models (cds-resp-1 .. cds-resp-7, cds-fb-1 .. cds-fb-3)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

__all__ = ["Coding", "FhirAuthorization", "HookRequest", "Source", "Action", "Suggestion", "Link", "Card",
           "CardsResponse", "FeedbackEntry", "FeedbackRequest", "card_violations"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Coding(_Open):
    system: Optional[str] = None
    code: Optional[str] = None
    display: Optional[str] = None


class FhirAuthorization(_Open):
    access_token: str = Field(min_length=1, max_length=8192)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: Optional[str] = None


class HookRequest(_Open):
    hook: str = Field(min_length=1, max_length=100)
    hookInstance: str = Field(min_length=1, max_length=200)
    fhirServer: Optional[str] = Field(None, max_length=2000)
    fhirAuthorization: Optional[FhirAuthorization] = None
    context: dict[str, Any]
    prefetch: Optional[dict[str, Any]] = None
    _auth_problem: Optional[str] = PrivateAttr(None)   # why an fhirAuthorization object sent could not be used

    @model_validator(mode="wrap")
    @classmethod
    def _usable_authorization(cls, data: Any, handler: Any) -> "HookRequest":
        """An fhirAuthorization object the service cannot use (no subject, a token longer than any it accepts, an
        expires_in beyond an integer) is set aside and said, not a 400: with the prefetch complete the token is never
        needed, and a refusal had dropped the cards of a patient with an ANC of 0.3. A token_type is read without
        regard to case (RFC 6749 5.1: "bearer" is Bearer)."""
        problem = None
        auth = data.get("fhirAuthorization") if isinstance(data, dict) else None
        if isinstance(auth, dict) and data.get("fhirServer"):    # without fhirServer: cds-r-1's 400, malformed or not
            if isinstance(auth.get("token_type"), str) and auth["token_type"].lower() == "bearer":
                auth = {**auth, "token_type": "Bearer"}
            try:
                FhirAuthorization.model_validate(auth)
            except ValidationError as e:
                problem = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'fhirAuthorization'}: {x['msg']}"
                                    for x in e.errors()[:3])[:300]
                auth = None
            data = {**data, "fhirAuthorization": auth}
        request = handler(data)
        request._auth_problem = problem
        return request

    @model_validator(mode="after")
    def _cds_r_1(self) -> "HookRequest":
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization is given without fhirServer (cds-r-1)")
        return self

    @model_validator(mode="after")
    def _shapes(self) -> "HookRequest":
        """The parts the service walks must have their FHIR shape (a wrong type is a 400, not a 500)."""
        drafts = self.context.get("draftOrders")
        if drafts is None and self.hook in ("order-select", "order-sign"):
            # REQUIRED in both hooks' contexts (HL7 CDS Hooks library): without it no order is checked, and an answer
            # with the patient's card alone had said nothing of that
            raise ValueError(f"context.draftOrders is required for {self.hook}: the orders to check")
        if drafts is not None:
            if not isinstance(drafts, dict):
                raise ValueError("context.draftOrders must be a FHIR Bundle (an object)")
            _list_of_objects(drafts.get("entry"), "context.draftOrders.entry")
        selections = self.context.get("selections")
        if selections is not None and (not isinstance(selections, list)
                                       or not all(isinstance(s, str) for s in selections)):
            raise ValueError("context.selections must be a list of strings (references such as MedicationRequest/1)")
        for key, value in (self.prefetch or {}).items():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                # a list, each item not checked here: the FHIR mapping names an entry that is not an object and
                # assesses the rest (one string among a Bundle's entries had made the whole call a 400, no cards)
                for part in ("entry", "link"):
                    if value.get(part) is not None and not isinstance(value[part], list):
                        raise ValueError(f"prefetch.{key}.{part} must be a list")
        return self

    def __repr__(self) -> str:   # never print the access token
        return f"HookRequest(hook={self.hook!r}, hookInstance={self.hookInstance!r})"


def _list_of_objects(value: Any, where: str) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(x, dict) for x in value)):
        raise ValueError(f"{where} must be a list of objects")


class Source(_Closed):
    label: str
    url: Optional[str] = None
    icon: Optional[str] = None
    topic: Optional[Coding] = None


class Action(_Closed):
    type: Literal["create", "update", "delete"]
    description: str
    resource: Optional[dict[str, Any]] = None
    resourceId: Optional[str] = None


class Suggestion(_Closed):
    label: str
    uuid: Optional[str] = None
    isRecommended: Optional[bool] = None
    actions: Optional[list[Action]] = None
    actionSelectionBehavior: Optional[Literal["all", "any", "at-most-one"]] = None


class Link(_Closed):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: Optional[str] = None
    autolaunchable: Optional[bool] = None
    # HealthChain's CDSResponse (a client EHR teams test with) requires this spelling; the spec's is above
    autoLaunchable: Optional[bool] = None


class Card(_Closed):
    uuid: Optional[str] = None
    summary: str = Field(max_length=140)
    detail: Optional[str] = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: Optional[list[Suggestion]] = None
    selectionBehavior: Optional[Literal["at-most-one", "any"]] = None
    overrideReasons: Optional[list[Coding]] = None
    links: Optional[list[Link]] = None


class CardsResponse(_Closed):
    cards: list[Card]
    systemActions: Optional[list[Action]] = None     # CDS Hooks 2.0.1; leukodx sends none


class _Kept(BaseModel):
    """Feedback is stored: what it holds beyond the spec's fields is not kept (a 900 KB undeclared comment and a
    patient's name had been stored beside a userComment held to 4,000 characters)."""
    model_config = ConfigDict(extra="ignore")


class ReasonCoding(_Kept):
    system: Optional[str] = Field(None, max_length=500)
    code: Optional[str] = Field(None, max_length=200)
    display: Optional[str] = Field(None, max_length=500)


class OverrideReason(_Kept):
    reason: Optional[ReasonCoding] = None
    userComment: Optional[str] = Field(None, max_length=4000)


class AcceptedSuggestion(_Kept):
    id: str = Field(min_length=1, max_length=200)


class FeedbackEntry(_Kept):
    card: str = Field(min_length=1, max_length=200)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = []
    overrideReason: Optional[OverrideReason] = None
    outcomeTimestamp: str = Field(min_length=1, max_length=64)

    @field_validator("outcomeTimestamp")
    @classmethod
    def _instant(cls, v: str) -> str:
        """An ISO 8601 date and time, as the spec's instant is (any text had been stored: a name, an MRN)."""
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("outcomeTimestamp must be an ISO 8601 date and time, such as 2026-12-03T10:00:00Z") from None
        return v

    @model_validator(mode="after")
    def _invariants(self) -> "FeedbackEntry":
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an accepted outcome needs acceptedSuggestions (cds-fb-2)")
        if self.overrideReason is not None and self.overrideReason.reason is None and not self.overrideReason.userComment:
            raise ValueError("overrideReason needs a reason, a userComment or both (cds-fb-3)")
        return self


class FeedbackRequest(_Kept):
    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        """No NUL character anywhere: PostgreSQL cannot store one (a 500 that lost the whole batch)."""
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, str) and "\x00" in item:
                raise ValueError("feedback holds a NUL character (U+0000), which cannot be stored")
            if isinstance(item, dict):
                stack += [*item.keys(), *item.values()]
            elif isinstance(item, list):
                stack += item
        return data


def card_violations(card: dict[str, Any]) -> list[str]:
    """The logical-model rules a card (as JSON) breaks; empty when it is valid."""
    out = []
    try:
        Card.model_validate(card)
    except Exception as e:  # pydantic ValidationError
        out.append(f"shape: {e}")
    suggestions = card.get("suggestions") or []
    if card.get("selectionBehavior") == "at-most-one" and sum(bool(s.get("isRecommended")) for s in suggestions) > 1:
        out.append("cds-resp-1: at most one suggestion may be recommended with at-most-one")
    for s in suggestions:
        for a in s.get("actions") or []:
            if a.get("type") == "delete" and (not a.get("resourceId") or a.get("resource")):
                out.append("cds-resp-2: delete needs resourceId and no resource")
            if not a.get("description"):
                out.append("cds-resp-5: every action needs a description")
        if s.get("actionSelectionBehavior") not in (None, "all", "any", "at-most-one"):
            out.append("cds-resp-7")
    for link in card.get("links") or []:
        if link.get("type") != "smart" and link.get("appContext"):
            out.append("cds-resp-3: appContext only for smart links")
    if any(not r.get("display") for r in card.get("overrideReasons") or []):
        out.append("cds-resp-4: every override reason needs a display")
    if suggestions and not card.get("selectionBehavior"):
        out.append("cds-resp-6: suggestions need selectionBehavior")
    if len(card.get("summary", "")) >= 140:
        out.append("summary must be under 140 characters")
    return out
