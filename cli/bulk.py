"""Reading a FHIR Bulk Data export for `leukodx screen`: NDJSON files (one resource a line, optionally
gzip) split into partitions on disk by a hash of each resource's patient, so that one partition at a
time holds every resource of its patients and the export is never in memory.

    partition_export(export_dir, work_dir, n)   -> Partitioned (the partition files, counts, problems)

Each partition file holds lines ``<patient ref>\\t<file index>\\t<line number>\\t<the resource's JSON>``;
the resource's own text is copied, not re-serialised. ``Medication`` resources are not a patient's:
they go to one side file that every worker reads (a formulary is small). Resource types the mapping
never reads (Encounter, Claim, ...) are counted and skipped without parsing.

Bad input never stops the read, and each bad line is a :class:`InputProblem` with its file and line:
a line that is not UTF-8, a line that is not whole JSON (a truncated line), a resource with no or an
unknown ``resourceType``, a patient resource without an id, a resource of the patient's without a
Patient subject. A gzip file cut short is a problem at the line where it ends. A patient resource
whose Patient is absent from the export is found later, when its partition is read (screen_worker).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

__all__ = ["InputProblem", "Partitioned", "partition_export", "export_files", "patient_key", "partition_of",
           "USED_TYPES", "SUBJECT_TYPES", "FHIR_R4_TYPES", "PROBLEMS_KEPT_PER_KIND"]

# What the FHIR mapping reads: the Patient and the resources whose subject is the patient, and Medication
# (the target of medicationReference). DiagnosticReport gives its results their draw and time.
SUBJECT_TYPES = frozenset({"Observation", "MedicationRequest", "MedicationStatement", "Condition", "DiagnosticReport"})
USED_TYPES = SUBJECT_TYPES | {"Patient", "Medication"}

FHIR_R4_TYPES = frozenset("""
Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic Binary
BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication CommunicationRequest
CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest
EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit
FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List
Location Measure MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization
MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction
MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
MedicinalProductUndesirableEffect MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder
Observation ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
Provenance Questionnaire QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition
ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment RiskEvidenceSynthesis Schedule
SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap Subscription
Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport
TestScript ValueSet VerificationResult VisionPrescription""".split())

# A problem of one kind in one file is listed this many times; the rest are counted (a file in the
# wrong encoding would otherwise list every line).
PROBLEMS_KEPT_PER_KIND = 100

_TYPE_FIRST = re.compile(rb'\{\s*"resourceType"\s*:\s*"([^"\\]{1,64})"')   # the usual first key
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SUFFIXES = (".ndjson", ".ndjson.gz")


@dataclass
class InputProblem:
    file: str
    line: int
    kind: str        # encoding | json | resource_type | no_patient | patient_missing | gzip | file
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Partitioned:
    """What the read found: partition files, the side file of Medications, the export's files (a
    problem's ``file`` index points into it), counts, and the problems."""
    parts: list[str]
    medications: str
    files: list[str]
    patients_per_part: list[int]
    resources: dict[str, int] = field(default_factory=dict)     # used resource type -> lines
    skipped_types: dict[str, int] = field(default_factory=dict)   # FHIR types the mapping does not read
    problems: list[InputProblem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)  # kind -> every occurrence, listed or not
    bytes_read: int = 0

    @property
    def patients(self) -> int:
        return sum(self.patients_per_part)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [p.as_dict() for p in self.problems]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Partitioned":
        d = dict(d)
        d["problems"] = [InputProblem(**p) for p in d.get("problems", [])]
        return cls(**d)


def export_files(export_dir: Path) -> list[Path]:
    """The export's NDJSON files (``*.ndjson``, ``*.ndjson.gz``, in any sub-folder), sorted by path."""
    return sorted(p for p in export_dir.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))


def patient_key(reference: Any) -> Optional[str]:
    """``Patient/<id>`` for a reference to a patient (relative, absolute or versioned), else None."""
    if not isinstance(reference, str):
        return None
    m = _PATIENT_REF.search(reference.strip())
    return f"Patient/{m.group(1)}" if m else None


def partition_of(key: str, n: int) -> int:
    """The partition of a patient: a stable hash (CRC-32) of its reference, so that every run, process
    and machine agrees."""
    return zlib.crc32(key.encode("utf-8")) % n


class _Problems:
    def __init__(self, out: Partitioned):
        self.out = out
        self.seen: dict[tuple[str, str], int] = {}

    def add(self, file: str, line: int, kind: str, message: str) -> None:
        self.out.problem_counts[kind] = self.out.problem_counts.get(kind, 0) + 1
        n = self.seen.get((file, kind), 0)
        self.seen[(file, kind)] = n + 1
        if n < PROBLEMS_KEPT_PER_KIND:
            self.out.problems.append(InputProblem(file, line, kind, message))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener: Callable[..., BinaryIO] = gzip.open if path.name.endswith(".gz") else open  # type: ignore[assignment]
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, raw


def partition_export(export_dir: Path, work_dir: Path, n: int,
                     progress: Optional[Callable[[int, int], None]] = None) -> Partitioned:
    """Split every resource of the export into ``n`` partition files in ``work_dir`` (see the module
    docstring). ``progress(bytes_read, bytes_total)`` is called now and then."""
    files = export_files(export_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    parts = [work_dir / f"part-{i:05d}.tsv" for i in range(n)]
    meds_path = work_dir / "medications.ndjson"
    out = Partitioned(parts=[str(p) for p in parts], medications=str(meds_path),
                      files=[str(p.relative_to(export_dir)) for p in files], patients_per_part=[0] * n)
    problems = _Problems(out)
    total = sum(p.stat().st_size * (6 if p.name.endswith(".gz") else 1) for p in files) or 1
    handles = [open(p, "wb", buffering=64 * 1024) for p in parts]
    try:
        with open(meds_path, "wb") as meds:
            for fi, path in enumerate(files):
                name, last = out.files[fi], 0
                try:
                    for last, raw in _lines(path):
                        out.bytes_read += len(raw)
                        if progress is not None and last % 2000 == 0:
                            progress(out.bytes_read, total)
                        _one_line(raw, fi, name, last, n, handles, meds, out, problems)
                except (EOFError, OSError, zlib.error) as e:   # a gzip file cut short, or not gzip at all
                    problems.add(name, last + 1, "gzip" if path.name.endswith(".gz") else "file",
                                 f"the file cannot be read from this line on: {e}")
    finally:
        for h in handles:
            h.close()
    if progress is not None:
        progress(total, total)
    return out


def _one_line(raw: bytes, fi: int, name: str, lineno: int, n: int, handles: list[BinaryIO], meds: BinaryIO,
              out: Partitioned, problems: _Problems) -> None:
    line = raw.strip()
    if not line:
        return
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.add(name, lineno, "encoding", f"not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                                               f"the line was skipped")
        return
    m = _TYPE_FIRST.match(line)
    if m is not None:
        rtype = m.group(1).decode("utf-8")
        if rtype in FHIR_R4_TYPES and rtype not in USED_TYPES:    # not read by the mapping: no need to parse
            if not line.endswith(b"}"):
                problems.add(name, lineno, "json", f"a {rtype} line is not whole JSON (truncated?); skipped")
            else:
                out.skipped_types[rtype] = out.skipped_types.get(rtype, 0) + 1
            return
    try:
        res = json.loads(line)
    except ValueError as e:
        problems.add(name, lineno, "json", f"not whole JSON (truncated?): {e}; the line was skipped")
        return
    rtype = res.get("resourceType") if isinstance(res, dict) else None
    if not isinstance(rtype, str) or rtype not in FHIR_R4_TYPES:
        shown = f"{rtype!r}"[:80] if isinstance(rtype, str) else "no resourceType"
        problems.add(name, lineno, "resource_type", f"unknown resource type ({shown}): not a FHIR R4 resource; "
                                                    f"the line was skipped")
        return
    if rtype not in USED_TYPES:
        out.skipped_types[rtype] = out.skipped_types.get(rtype, 0) + 1
        return
    if rtype == "Medication":
        meds.write(line + b"\n")
        out.resources[rtype] = out.resources.get(rtype, 0) + 1
        return
    if rtype == "Patient":
        rid = res.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            problems.add(name, lineno, "no_patient", "a Patient without a valid id cannot be screened; skipped")
            return
        key = f"Patient/{rid}"
    else:
        subject = res.get("subject")
        key = patient_key(subject.get("reference")) if isinstance(subject, dict) else None
        if key is None:
            shown = f" ({subject.get('reference')!r})"[:90] if isinstance(subject, dict) else ""
            problems.add(name, lineno, "no_patient", f"{rtype}/{res.get('id', '?')}: its subject is not a Patient "
                                                     f"reference{shown}; skipped")
            return
    p = partition_of(key, n)
    if rtype == "Patient":
        out.patients_per_part[p] += 1
    out.resources[rtype] = out.resources.get(rtype, 0) + 1
    handles[p].write(b"%s\t%d\t%d\t%s\n" % (key.encode("utf-8"), fi, lineno, line))


def read_partition(path: str) -> Iterator[tuple[str, int, int, bytes]]:
    """The lines of a partition file: (patient ref, file index, line number, resource JSON)."""
    with open(path, "rb") as f:
        for raw in f:
            key, fi, lineno, line = raw.rstrip(b"\n").split(b"\t", 3)
            yield key.decode("utf-8"), int(fi), int(lineno), line


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
