"""The order checks' models: a draft order as an adapter reads it (:class:`OrderInput`) and what leukodx says
about it (:class:`OrderCheck`, with a :class:`DoseChange` when it asks for one). engine/orders.py makes them."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .assessment import CpicRecommendation
from .case import Dose

__all__ = ["OrderInput", "OrderCheck", "DoseChange", "Priority", "Advice", "INTERMEDIATE"]

Priority = Literal["critical", "warning", "info"]
Advice = Literal["recommended", "possible", "no"]
INTERMEDIATE = ("intermediate", "possible_intermediate")     # the phenotypes of a reduced function short of poor


class OrderInput(BaseModel):
    """A draft medication order as an adapter reads it."""
    model_config = ConfigDict(extra="forbid")
    key: str
    name: Optional[str] = None
    rxnorm: Optional[str] = None
    atc: Optional[str] = None                         # WHO ATC code, when no RxNorm code names the drug
    indication: Optional[str] = None
    dose: Optional[Union[Dose, str]] = None           # the ordered daily dose, as a case's medication gives it
    weight_kg: Optional[Annotated[float, Field(gt=0, le=1000)]] = None   # the patient's, for mg/kg/day


class DoseChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: Optional[float] = None          # multiply the ordered dose by this
    times: Optional[int] = None             # new frequency: times per `per`
    per: Optional[Literal["day", "week"]] = None
    wording: str
    percent_range: Optional[tuple[int, int]] = None


class OrderCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: str
    drug: str
    drug_name: str
    topic: Literal["thiopurine_pgx", "clozapine_anc", "drug_label", "dmard_monitoring", "interaction", "dosing_frequency",
                   "unknown_drug"]
    priority: Priority
    summary: str
    detail: str
    genotype: Advice = "no"                 # order genotyping of the genes in genes_to_test
    genes_to_test: list[Literal["TPMT", "NUDT15"]] = []   # the genes whose status is unknown
    adjust: Advice = "no"                   # change the ordered dose as dose_change says
    cancel: Advice = "no"                   # choose another drug
    dose_change: Optional[DoseChange] = None
    recommendation: Optional[CpicRecommendation] = None
    sources: list[str]
