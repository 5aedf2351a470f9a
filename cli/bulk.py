"""Reading a FHIR Bulk Data export for `leukodx screen`: NDJSON files (one resource a line, optionally
gzip) split into partitions on disk by a hash of each resource's patient, so that one partition at a
time holds every resource of its patients and the export is never in memory.

    partition_export(export_dir, work_dir, n, stripes, run)   -> Partitioned (the partition files, counts, problems)

The export is cut into ``stripes`` of about equal size (byte ranges of the NDJSON files at line
boundaries; a gzip file is read whole by one stripe), and each stripe is read by one task, so that
several processes (or a Dask cluster's workers) read at once. A stripe writes one piece per
partition it meets, ``part-<partition>.s<stripe>.tsv``; a partition is the union of its pieces.
Each piece holds lines ``<patient ref>\\t<file index>\\t<line number>\\t<the resource's JSON>``;
the resource's own text is copied, not re-serialised. ``Medication`` resources are not a patient's:
they go to one side file per stripe that every worker reads (a formulary is small). Resource types
the mapping never reads (Encounter, Claim, ...) are counted and skipped without parsing.

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

__all__ = ["InputProblem", "Partitioned", "ReadError", "expected_bytes", "partition_export", "plan_stripes",
           "read_stripe", "stripe_task", "read_partition", "export_files", "patient_key", "partition_of",
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


class ReadError(Exception):
    """A stripe's task failed (its worker died, say): the read cannot be completed."""


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
    """What the read found: each partition's piece files, the side files of Medications, the export's
    files (a problem's ``file`` index points into it), counts, and the problems."""
    parts: list[list[str]]
    medications: list[str]
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

    def add(self, other: "Partitioned") -> None:
        """Count in what another stripe found (its pieces, side file, counts and problems)."""
        for mine, theirs in zip(self.parts, other.parts):
            mine.extend(theirs)
        self.medications.extend(other.medications)
        self.patients_per_part = [a + b for a, b in zip(self.patients_per_part, other.patients_per_part)]
        for mine_d, theirs_d in ((self.resources, other.resources), (self.skipped_types, other.skipped_types),
                                 (self.problem_counts, other.problem_counts)):
            for k, v in theirs_d.items():
                mine_d[k] = mine_d.get(k, 0) + v
        self.problems.extend(other.problems)
        self.bytes_read += other.bytes_read

    def keep_problems(self) -> None:
        """In file and line order, at most PROBLEMS_KEPT_PER_KIND of each kind per file (as each stripe kept)."""
        order = {name: i for i, name in enumerate(self.files)}
        kept: list[InputProblem] = []
        seen: dict[tuple[str, str], int] = {}
        for prob in sorted(self.problems, key=lambda q: (order.get(q.file, -1), q.line)):
            n = seen.get((prob.file, prob.kind), 0)
            seen[(prob.file, prob.kind)] = n + 1
            if n < PROBLEMS_KEPT_PER_KIND:
                kept.append(prob)
        self.problems = kept


def expected_bytes(path: Path) -> int:
    """About what a file holds once read: its size, six times it for gzip (NDJSON compresses about so)."""
    return path.stat().st_size * (6 if path.name.endswith(".gz") else 1)


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


Stripe = list[tuple[int, int, Optional[int], int]]   # (file index, first byte, end byte or None, first line number)

STRIPE_BLOCK = 1024 * 1024    # bytes read at a time while cutting the export into stripes


def plan_stripes(files: list[Path], stripes: int) -> list[Stripe]:
    """The export cut into at most ``stripes`` stripes of about equal size, at line boundaries, each
    range with the number of its first line. Counting the lines before a cut reads the bytes once
    (C-speed counting, no parsing); a gzip file is one range (it cannot be entered in the middle)."""
    sizes = [expected_bytes(p) for p in files]
    target = max(1, -(-sum(sizes) // max(1, stripes)))
    out: list[Stripe] = [[]]
    filled = 0
    for fi, path in enumerate(files):
        if filled >= target:
            out.append([])
            filled = 0
        if path.name.endswith(".gz"):
            ranges: list[tuple[int, Optional[int], int, int]] = [(0, None, 1, sizes[fi])]
        else:
            ranges = _cut(path, target - filled, target)
        for i, (start, end, first_line, size) in enumerate(ranges):
            if i > 0:                     # each cut closes a stripe
                out.append([])
                filled = 0
            out[-1].append((fi, start, end, first_line))
            filled += size
    return [s for s in out if s]


def _cut(path: Path, first: int, every: int) -> list[tuple[int, Optional[int], int, int]]:
    """(start, end, first line, size) ranges of a plain file: the first cut after about ``first``
    bytes (what the current stripe still wants), then every ``every`` bytes, each at a line's end."""
    size = path.stat().st_size
    out: list[tuple[int, Optional[int], int, int]] = []
    start, line, want = 0, 1, max(1, first)
    with open(path, "rb") as f:
        pos, lines_before = 0, 0
        while start + want < size:
            # count lines up to the cut point, then up to the end of the line it falls in
            cut = start + want
            while pos < cut:
                block = f.read(min(STRIPE_BLOCK, cut - pos))
                if not block:
                    break
                lines_before += block.count(b"\n")
                pos += len(block)
            rest = f.readline()
            pos += len(rest)
            lines_before += rest.endswith(b"\n")
            if pos >= size:
                break
            out.append((start, pos, line, pos - start))
            start, line, want = pos, lines_before + 1, every
    out.append((start, None, line, size - start))
    return out


def _lines(path: Path, start: int = 0, end: Optional[int] = None, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file (gzip or not) from byte ``start`` to ``end`` (both at line starts)."""
    opener: Callable[..., BinaryIO] = gzip.open if path.name.endswith(".gz") else open  # type: ignore[assignment]
    with opener(path, "rb") as f:
        if start:
            f.seek(start)
        pos = start
        for n, raw in enumerate(f, first_line):
            yield n, raw
            pos += len(raw)
            if end is not None and pos >= end:
                return


def partition_export(export_dir: Path, work_dir: Path, n: int, stripes: int = 1,
                     run: Optional[Callable[[list[dict[str, Any]]], Iterator[tuple[dict[str, Any], Any, Optional[str]]]]] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> Partitioned:
    """Split every resource of the export into ``n`` partitions in ``work_dir`` (see the module
    docstring), reading ``stripes`` stripes as tasks of ``run`` (the screen's executor: yields (task,
    result, error) as each is done; None: one after another here). ``progress(bytes_read,
    bytes_total)`` is called as stripes finish (and now and then within one, when read here)."""
    files = export_files(export_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    names = [str(p.relative_to(export_dir)) for p in files]
    out = Partitioned(parts=[[] for _ in range(n)], medications=[], files=names, patients_per_part=[0] * n)
    total = sum(map(expected_bytes, files)) or 1
    tasks = [{"export": str(export_dir), "files": names, "ranges": stripe, "work": str(work_dir), "n": n,
              "stripe": i} for i, stripe in enumerate(plan_stripes(files, stripes))]
    if run is None:
        for task in tasks:
            done = out.bytes_read
            out.add(read_stripe(task, (lambda b: progress(done + b, total)) if progress else None))
    else:
        for task, result, error in run(tasks):
            if error is not None:
                raise ReadError(f"reading stripe {task['stripe']} of the export failed: {error}")
            out.add(Partitioned.from_dict(result))
            if progress is not None:
                progress(out.bytes_read, total)
    for pieces in out.parts:    # in stripe order (the file names sort so), whichever stripe finished first
        pieces.sort()
    out.medications.sort()
    out.keep_problems()
    if progress is not None:
        progress(total, total)
    return out


def read_stripe(task: dict[str, Any], progress: Optional[Callable[[int], None]] = None) -> Partitioned:
    """Read one stripe of the export (``task``: export, files, ranges, work, n, stripe) into its
    pieces; returns what it found. A task of the screen's executor (:func:`stripe_task`).
    ``progress(bytes read in this stripe)`` is called now and then."""
    export, work, n, stripe = Path(task["export"]), Path(task["work"]), task["n"], task["stripe"]
    names: list[str] = task["files"]
    out = Partitioned(parts=[[] for _ in range(n)], medications=[], files=names, patients_per_part=[0] * n)
    problems = _Problems(out)
    handles = _Pieces(work, stripe, out)
    try:
        for fi, start, end, first_line in task["ranges"]:
            path, name, last = export / names[fi], names[fi], first_line - 1
            try:
                for last, raw in _lines(path, start, end, first_line):
                    out.bytes_read += len(raw)
                    if progress is not None and last % 2000 == 0:
                        progress(out.bytes_read)
                    _one_line(raw, fi, name, last, n, handles, out, problems)
            except (EOFError, OSError, zlib.error) as e:   # a gzip file cut short, or not gzip at all
                problems.add(name, last + 1, "gzip" if path.name.endswith(".gz") else "file",
                             f"the file cannot be read from this line on: {e}")
    finally:
        handles.close()
    return out


def stripe_task(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`read_stripe` for a process pool or a Dask worker: the result as a plain dict."""
    return read_stripe(task).as_dict()


class _Pieces:
    """A stripe's piece files, opened on first use: one per partition it meets, and its Medications file."""

    def __init__(self, work: Path, stripe: int, out: Partitioned):
        self.work, self.stripe, self.out = work, stripe, out
        self.handles: dict[int, BinaryIO] = {}
        self.meds: Optional[BinaryIO] = None

    def part(self, p: int) -> BinaryIO:
        h = self.handles.get(p)
        if h is None:
            path = self.work / f"part-{p:05d}.s{self.stripe:04d}.tsv"
            h = self.handles[p] = open(path, "wb", buffering=64 * 1024)
            self.out.parts[p].append(str(path))
        return h

    def medications(self) -> BinaryIO:
        if self.meds is None:
            path = self.work / f"medications.s{self.stripe:04d}.ndjson"
            self.meds = open(path, "wb")
            self.out.medications.append(str(path))
        return self.meds

    def close(self) -> None:
        for h in [*self.handles.values(), *([self.meds] if self.meds else [])]:
            h.close()


def _one_line(raw: bytes, fi: int, name: str, lineno: int, n: int, pieces: _Pieces, out: Partitioned,
              problems: _Problems) -> None:
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
        pieces.medications().write(line + b"\n")
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
    pieces.part(p).write(b"%s\t%d\t%d\t%s\n" % (key.encode("utf-8"), fi, lineno, line))


def read_partition(paths: list[str]) -> Iterator[tuple[str, int, int, bytes]]:
    """The lines of a partition's pieces: (patient ref, file index, line number, resource JSON)."""
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                key, fi, lineno, line = raw.rstrip(b"\n").split(b"\t", 3)
                yield key.decode("utf-8"), int(fi), int(lineno), line


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
