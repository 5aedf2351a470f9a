// leukodx clinician page: builds a case from the form (or takes a pasted/uploaded document), posts it to
// the API and shows the Assessment. All judgement comes from the API; this page only presents it, plus
// one convenience computed here: a drug name not in the API's list (GET /v1/drugs) is marked beside its
// field as it is typed, with the closest known names (the same similarity the engine uses: difflib's
// ratio >= 0.8 and one slip of the pen away, two in names of 14 letters or more); after Assess, the server's own `unrecognised` list replaces these hints.
"use strict";

const TESTS = {
  wbc: ["WBC", "10^9/L"], anc: ["ANC (absolute neutrophils)", "10^9/L"], neutrophils_pct: ["Neutrophils %", "%"],
  bands_pct: ["Bands %", "%"], lymphocytes: ["Lymphocytes (absolute)", "10^9/L"], lymphocytes_pct: ["Lymphocytes %", "%"],
  monocytes: ["Monocytes (absolute)", "10^9/L"], monocytes_pct: ["Monocytes %", "%"],
  eosinophils: ["Eosinophils (absolute)", "10^9/L"], eosinophils_pct: ["Eosinophils %", "%"],
  basophils: ["Basophils (absolute)", "10^9/L"], basophils_pct: ["Basophils %", "%"], blasts_pct: ["Blasts %", "%"],
  hemoglobin: ["Haemoglobin", "g/dL"], platelets: ["Platelets", "10^9/L"], mcv: ["MCV", "fL"],
  vitamin_b12: ["Vitamin B12", "pg/mL"], folate: ["Folate", "ng/mL"], copper: ["Copper", "ug/dL"],
};
const UNITS = ["10^9/L", "10*9/L", "G/L", "/nL", "10^3/uL", "K/uL", "/uL", "cells/uL", "cells/mm3", "%", "g/dL", "g/L",
  "mmol/L", "fL", "pg/mL", "pmol/L", "ng/mL", "nmol/L", "ug/dL", "umol/L"];
const URGENCY = { immediate: "Immediate", urgent: "Urgent", routine: "Routine" };
const LIKELIHOOD = { likely: "likely", possible: "possible", less_likely: "less likely" };
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};
let lastAssessment = null;
let lastCase = null;        // the case the page sent (for the chart's drug markers)
let sentRows = { labs: [], medications: [] };   // case index -> form row, for messages about a row
let seq = 0;
let drugIndex = null;

// ---- drug names: known, or close to a known one (as engine/vocabulary.py suggests) -----------------

const key = (text) => text.normalize("NFKC").toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();

// difflib.SequenceMatcher(None, a, b).ratio() without junk heuristics: 2 x matched characters / total.
function ratio(a, b) {
  const matched = (a0, a1, b0, b1) => {
    let best = 0, bi = 0, bj = 0;
    let prev = new Array(b1 - b0 + 1).fill(0);
    for (let i = a0; i < a1; i++) {
      const row = new Array(b1 - b0 + 1).fill(0);
      for (let j = b0; j < b1; j++) {
        if (a[i] === b[j]) {
          row[j - b0 + 1] = prev[j - b0] + 1;
          if (row[j - b0 + 1] > best) { best = row[j - b0 + 1]; bi = i - best + 1; bj = j - best + 1; }
        }
      }
      prev = row;
    }
    if (!best) return 0;
    return best + matched(a0, bi, b0, bj) + matched(bi + best, a1, bj + best, b1);
  };
  return a.length + b.length ? (2 * matched(0, a.length, 0, b.length)) / (a.length + b.length) : 1;
}

// engine/vocabulary.py's _slips: whether a becomes b in at most `most` letters added, dropped, changed or
// two neighbours swapped (a ratio alone offered another real drug: valganciclovir for valaciclovir).
function slips(a, b, most) {
  if (Math.abs(a.length - b.length) > most) return false;
  let before = [], row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] !== b[j - 1] ? 1 : 0));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) next[j] = Math.min(next[j], before[j - 2] + 1);
    }
    if (Math.min(...next) > most) return false;
    before = row; row = next;
  }
  return row[b.length] <= most;
}

// As engine/vocabulary.py reads a name written as RxNorm writes a clinical or branded drug ("ingredient
// strength [/ ingredient strength] dose form [brand]"): only its ingredient and brand parts are compared.
const STRENGTH = /\b\d+(?:[.,]\d+)?\s*(?:mg|mcg|ug|µg|g|ml|unt|units?|meq|mmol|iu|%)(?:\s*\/\s*(?:ml|actuat|hr|h|g|mg|kg|l))?(?=\W|$)/giu;

// Salts and hydrates in drug names, as engine/vocabulary.py leaves them out of the comparison.
const SALTS = new Set(`hydrochloride hcl dihydrochloride hydrobromide sodium disodium potassium calcium magnesium
  maleate sulfate sulphate succinate tartrate bitartrate acetate citrate besylate mesylate fumarate phosphate
  hyclate monohydrate dihydrate trihydrate hemihydrate anhydrous bromide chloride nitrate lactate gluconate
  malate oxalate propionate dipropionate valerate pamoate decanoate enanthate xinafoate furoate`.split(/\s+/));

function drugNamePart(text) {
  const parts = text.split(STRENGTH);
  if (parts.length === 1) return text;
  const brands = [...parts[parts.length - 1].matchAll(/\[([^[\]]+)\]/g)].map((m) => m[1]);
  const named = parts.slice(0, -1).concat(brands).filter((p) => p.replace(/[ /,+-]/g, "")).join(" ");
  return named.trim() ? named : text;
}

function makeDrugIndex(names) {
  const keys = new Map(names.map((n) => [key(n), n]));
  const sorted = [...keys.keys()].sort((x, y) => y.length - x.length);
  const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const pattern = new RegExp(`(?:^| )(${sorted.map(escape).join("|")})(?= |$)`);
  return {
    known(text) {
      const k = key(text);
      return keys.has(k) || pattern.test(k);
    },
    suggest(text, n = 3) {
      const full = key(drugNamePart(text));
      const k = full.split(" ").filter((w) => !SALTS.has(w)).join(" ") || full;   // a salt tells no two drugs apart
      const words = k.split(" ");
      const units = new Set([k]);
      for (const size of [1, 2, 3]) for (let i = 0; i + size <= words.length; i++) units.add(words.slice(i, i + size).join(" "));
      const letters = (u) => (u.match(/\p{L}/gu) || []).length;
      const best = new Map();
      for (const u of [...units].filter((x) => letters(x) >= 4)) {
        for (const cand of keys.keys()) {
          if (Math.abs(cand.length - u.length) > u.length * 0.5) continue;
          const r = ratio(u, cand);
          if (r >= 0.8 && r > (best.get(cand) || 0) && slips(u, cand, u.length >= 14 ? 2 : 1)) best.set(cand, r);
        }
      }
      return [...best.entries()].sort((x, y) => y[1] - x[1]).slice(0, n).map(([c]) => keys.get(c));
    },
  };
}

// ---- the form ----------------------------------------------------------------------------------

function cell(label, control, n, slot) {
  return el("td", { "data-label": label },
    el("label", { for: control.id, class: "cell-label" }, label, el("span", { class: "sr rownum", text: ` (row ${n})` })),
    control, slot ? el("span", { class: "field-error", "data-for": slot, id: `${control.id}-error` }) : null);
}

function renumber(table) {
  [...table.tBodies[0].rows].forEach((row, i) => {
    for (const s of row.querySelectorAll(".rownum")) s.textContent = ` (row ${i + 1})`;
  });
}

function removeButton(table) {
  const b = el("button", { type: "button", class: "remove" }, "Remove", el("span", { class: "sr rownum" }));
  b.addEventListener("click", () => {
    const row = b.closest("tr");
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    renumber(table);
    (next ? next.querySelector("input, select") : $(table.id === "labs" ? "add-lab" : "add-med")).focus();
  });
  return b;
}

function addLab(test = "wbc", value = "", unit = "", time = "", lln = "") {
  const table = $("labs");
  const n = table.tBodies[0].rows.length + 1;
  const id = ++seq;
  const sel = el("select", { id: `lab-test-${id}`, class: "lab-test" });
  for (const [t, [name]] of Object.entries(TESTS)) sel.append(el("option", { value: t, text: name }));
  sel.value = test;
  const unitInput = el("input", { id: `lab-unit-${id}`, class: "lab-unit", list: "unit-list", value: unit || TESTS[test][1], autocomplete: "off" });
  sel.addEventListener("change", () => { unitInput.value = TESTS[sel.value][1]; });
  // a value the lab reported as a bound ("<0.5"): leukodx judges a count below a "<" bound as below it
  const cmp = el("select", { id: `lab-cmp-${id}`, class: "lab-cmp", "aria-label": "Reported as a bound (<, ≤, >, ≥)" });
  for (const [v, t] of [["", "="], ["<", "<"], ["<=", "≤"], [">", ">"], [">=", "≥"]]) cmp.append(el("option", { value: v, text: t }));
  const valueCell = cell("Value", el("input", { id: `lab-value-${id}`, class: "lab-value", type: "number", step: "any", value, inputmode: "decimal" }), n, "value");
  valueCell.insertBefore(cmp, valueCell.querySelector(".lab-value"));
  const row = el("tr", {},
    cell("Test", sel, n, "test"),
    valueCell,
    cell("Unit", unitInput, n, "unit"),
    cell("Lab's lower limit", el("input", { id: `lab-lln-${id}`, class: "lab-lln", type: "number", step: "any", min: "0", value: lln, inputmode: "decimal" }), n, "lln"),
    cell("Date and time", el("input", { id: `lab-time-${id}`, class: "lab-time", type: "datetime-local", value: time }), n, "time"),
    el("td", {}, removeButton(table)));
  table.tBodies[0].append(row);
  renumber(table);
  return row;
}

function addMed(name = "", status = "active", start = "", end = "") {
  const table = $("meds");
  const n = table.tBodies[0].rows.length + 1;
  const id = ++seq;
  const statusSel = el("select", { id: `med-status-${id}`, class: "med-status" });
  for (const s of ["active", "stopped", "completed"]) statusSel.append(el("option", { text: s }));
  statusSel.value = status;
  const hint = el("div", { class: "drug-hint", id: `med-hint-${id}`, "aria-live": "polite" });
  const nameInput = el("input", { id: `med-name-${id}`, class: "med-name", list: "drug-names", value: name,
    autocomplete: "off", "aria-describedby": hint.id });
  nameInput.addEventListener("input", () => { clearTimeout(nameInput.hintTimer); nameInput.hintTimer = setTimeout(() => drugHint(nameInput, hint), 300); });
  nameInput.addEventListener("change", () => drugHint(nameInput, hint));
  const nameCell = cell("Drug", nameInput, n, "name");
  nameCell.append(hint);
  table.tBodies[0].append(el("tr", {},
    nameCell,
    cell("Status", statusSel, n, "status"),
    cell("Start", el("input", { id: `med-start-${id}`, class: "med-start", type: "date", value: start }), n, "start"),
    cell("End", el("input", { id: `med-end-${id}`, class: "med-end", type: "date", value: end }), n, "end"),
    cell("Dose", el("input", { id: `med-dose-${id}`, class: "med-dose", placeholder: "150 mg/day", maxlength: "500" }), n, "dose"),
    cell("Indication", el("input", { id: `med-indication-${id}`, class: "med-indication", maxlength: "500" }), n, "indication"),
    el("td", {}, removeButton(table))));
  renumber(table);
  if (name) drugHint(nameInput, hint);
}

function useName(input, name, hint) {
  const b = el("button", { type: "button", class: "suggestion" }, `Use ${name}`);
  b.addEventListener("click", () => {
    input.value = name;
    input.removeAttribute("aria-invalid");
    hint.replaceChildren();
    hint.className = "drug-hint";
    hint.dataset.for = name;
    input.focus();
  });
  return b;
}

// Beside a medication: nothing for a known name; "not in leukodx's list" and the close names otherwise.
function drugHint(input, hint, server) {
  const text = input.value.trim();
  clearTimeout(input.hintTimer);
  if (!server && hint.dataset.for === text) return;      // already said for this text (and the server's word stands)
  hint.dataset.for = text;
  hint.replaceChildren();
  hint.className = "drug-hint";
  if (!text) return;
  let suggestions;
  if (server) {
    suggestions = server.suggestions;
  } else {
    if (!drugIndex || drugIndex.known(text)) return;
    suggestions = drugIndex.suggest(text);
  }
  hint.className = "drug-hint unknown";
  hint.append(el("strong", { text: server ? "Not recognised by leukodx" : "Not in leukodx's drug list" }),
    " - not assessed as a drug.");
  if (suggestions.length) {
    hint.append(" Did you mean ");
    suggestions.forEach((s, i) => hint.append(i ? " or " : "", useName(input, s, hint)));
    hint.append("?");
  } else if (!server && key(text).length <= 5) {
    hint.append(" Abbreviations are checked when you assess.");
  }
}

function buildCase() {
  const c = { id: "web-case", patient: { sex: $("sex").value }, labs: [], medications: [], history: {} };
  sentRows = { labs: [], medications: [] };
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const yesNo = (id) => ($(id).value === "" ? undefined : $(id).value === "true");
  if (num("age") !== undefined) c.patient.age_years = num("age");
  if (num("weight") !== undefined) c.patient.weight_kg = num("weight");
  if (yesNo("duffy") !== undefined) c.patient.duffy_null = yesNo("duffy");
  if ($("ancestry").value.trim()) c.patient.ancestry = $("ancestry").value.trim();
  if ($("as_of").value) c.as_of = $("as_of").value;
  for (const row of $("labs").tBodies[0].rows) {
    const v = row.querySelector(".lab-value").value;
    if (v === "") continue;
    const lab = { test: row.querySelector(".lab-test").value, value: Number(v), unit: row.querySelector(".lab-unit").value.trim() };
    const t = row.querySelector(".lab-time").value;
    if (t) lab.time = (t.length === 16 ? t + ":00" : t) + "Z";
    const lln = row.querySelector(".lab-lln").value;
    if (lln !== "") lab.lln = Number(lln);
    const cmp = row.querySelector(".lab-cmp").value;
    if (cmp) lab.comparator = cmp;
    c.labs.push(lab);
    sentRows.labs.push(row);
  }
  for (const row of $("meds").tBodies[0].rows) {
    const name = row.querySelector(".med-name").value.trim();
    if (!name) continue;
    const med = { name, status: row.querySelector(".med-status").value };
    for (const f of ["start", "end", "dose", "indication"]) {
      const v = row.querySelector(`.med-${f}`).value.trim();
      if (v) med[f] = v;
    }
    c.medications.push(med);
    sentRows.medications.push(row);
  }
  const h = c.history;
  if ($("tpmt").value.trim()) h.tpmt = $("tpmt").value.trim();
  if ($("tpmt_method").value) h.tpmt_method = $("tpmt_method").value;
  if ($("tpmt_date").value) h.tpmt_test_date = $("tpmt_date").value;
  if ($("nudt15").value.trim()) h.nudt15 = $("nudt15").value.trim();
  if ($("transfusion").value) h.last_transfusion = $("transfusion").value;
  if ($("transplant_organ").value.trim()) {
    h.transplant = { organ: $("transplant_organ").value.trim() };
    if ($("transplant_date").value) h.transplant.date = $("transplant_date").value;
  }
  if (num("temperature") !== undefined) h.temperature_c = num("temperature");
  if ($("temperature_site").value) h.temperature_site = $("temperature_site").value;
  if ($("sustained").checked) h.fever_sustained_1h = true;
  if ($("meds_unknown").checked) h.medications_unknown = true;
  if (yesNo("splenomegaly") !== undefined) h.splenomegaly = yesNo("splenomegaly");
  if (yesNo("alcohol") !== undefined) h.alcohol_use_disorder = yesNo("alcohol");
  const smear = [...document.querySelectorAll("#smear input:checked")].map((x) => x.value);
  if (smear.length) h.smear_findings = smear;
  const conditions = $("conditions").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (conditions.length) h.conditions = conditions;
  return c;
}

// ---- errors, in plain words --------------------------------------------------------------------

// Fields outside the tables, by the JSON pointer of the case field they fill (longest first).
const FIELDS = { "/patient/age_years": "age", "/patient/sex": "sex", "/patient/weight_kg": "weight",
  "/patient/duffy_null": "duffy", "/patient/ancestry": "ancestry", "/as_of": "as_of", "/history/tpmt_method": "tpmt_method",
  "/history/tpmt_test_date": "tpmt_date", "/history/tpmt": "tpmt", "/history/nudt15": "nudt15",
  "/history/last_transfusion": "transfusion", "/history/transplant/date": "transplant_date",
  "/history/transplant": "transplant_organ", "/history/temperature_c": "temperature",
  "/history/temperature_site": "temperature_site",
  "/history/fever_sustained_1h": "sustained", "/history/medications_unknown": "meds_unknown", "/history/splenomegaly": "splenomegaly",
  "/history/alcohol_use_disorder": "alcohol", "/history/smear_findings": "smear-blasts", "/history/conditions": "conditions" };
const COLUMN = { test: "test", value: "value", unit: "unit", lln: "lower limit", lln_unit: "lower limit", time: "date and time",
  name: "drug", rxnorm: "drug", status: "status", start: "start", end: "end", dose: "dose", indication: "indication" };

function clearErrors() {
  const box = $("form-error");
  box.hidden = true;
  box.replaceChildren();
  for (const e of document.querySelectorAll(".field-error")) e.textContent = "";
  for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

function fieldLabel(id) {
  const label = document.querySelector(`label[for="${id}"]`);
  return label ? label.textContent.replace(/\s*\(row \d+\)/, "").trim() : id;
}

function besideField(id, message) {
  const input = $(id);
  let slot = $(`${id}-error`);
  if (!slot) {
    slot = el("span", { class: "field-error", id: `${id}-error` });
    (input.closest(".field, .check, fieldset.inner") || input).insertAdjacentElement(input.closest(".field") ? "beforeend" : "afterend", slot);
    if (input.type !== "checkbox") input.setAttribute("aria-describedby", [input.getAttribute("aria-describedby"), slot.id].filter(Boolean).join(" "));
  }
  slot.textContent = message;
  input.setAttribute("aria-invalid", "true");
}

const PLAIN = {
  0: "The leukodx server could not be reached. Check the connection and try again.",
  400: "leukodx could not read the request.",
  406: "leukodx cannot answer in the format asked for.",
  413: "The document is too large for leukodx to read.",
  415: "leukodx cannot read this kind of document: paste a case as JSON or YAML, or a FHIR R4 Bundle in JSON.",
  429: "The server is busy. Wait a moment and try again.",
  500: "Something went wrong on the server, not in the case. It has been logged; please try again.",
  503: "The server is not ready yet. Wait a moment and try again.",
};

// Problem details -> a summary at the top of the form, and each message beside the field it concerns.
function showProblem(status, problem, fromForm) {
  const box = $("form-error");
  const items = [];
  const errors = problem.errors || [];
  for (const err of errors) {
    const pointer = err.pointer || "";
    const field = fromForm && Object.keys(FIELDS).find((p) => pointer === p || pointer.startsWith(p + "/"));
    if (field) {
      besideField(FIELDS[field], err.detail);
      items.push([`${fieldLabel(FIELDS[field])}: ${err.detail}`, FIELDS[field]]);
      continue;
    }
    const m = /^\/(labs|medications)\/(\d+)\/?(\w*)/.exec(pointer);
    const row = m && fromForm ? sentRows[m[1]][Number(m[2])] : null;
    if (row) {
      const table = m[1] === "labs" ? "blood counts" : "medications";
      const slot = row.querySelector(`.field-error[data-for="${m[3] === "lln_unit" ? "lln" : m[3]}"]`) || row.querySelector(".field-error");
      slot.textContent = err.detail;
      const input = slot.parentElement.querySelector("input, select");
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", [input.getAttribute("aria-describedby"), slot.id].filter(Boolean).join(" "));
      const n = row.sectionRowIndex + 1;
      items.push([`${table[0].toUpperCase() + table.slice(1)}, row ${n}${m[3] ? `, ${COLUMN[m[3]] || m[3]}` : ""}: ${err.detail}`, input.id]);
    } else {
      const where = (err.loc || "").replace(/\[(\d+)\]/g, (_, i) => ` ${Number(i) + 1}`).replaceAll(".", ", ").replaceAll("_", " ");
      items.push([(where ? `${fromForm ? "" : "In the document, "}${where}: ` : "") + err.detail, null]);
    }
  }
  let summary;
  if (status === 422 && errors.length) {
    const marked = items.filter((i) => i[1]).length;
    summary = errors.length === 1 ? "One entry needs correcting before the case can be assessed"
      : `${errors.length} entries need correcting before the case can be assessed`;
    summary += marked ? (marked === errors.length ? (errors.length === 1 ? "; it is marked beside its field." : "; each is marked beside its field.")
      : "; those in the form are marked beside their fields.") : ":";
  } else {
    summary = status in PLAIN ? PLAIN[status] : `The server answered ${status}${problem.title ? ` (${problem.title})` : ""}.`;
    if (problem.detail && status !== 500) summary += ` ${problem.detail}`;
  }
  box.replaceChildren(el("h3", { text: "The case could not be assessed" }), el("p", { text: summary }));
  if (items.length) {
    const ul = el("ul");
    for (const [text, id] of items) {
      if (!id) { ul.append(el("li", { text })); continue; }
      const a = el("a", { href: `#${id}`, text });
      a.addEventListener("click", (ev) => { ev.preventDefault(); $(id).focus(); });
      ul.append(el("li", {}, a));
    }
    box.append(ul);
  }
  box.hidden = false;
  box.focus();
}

// ---- sending the case --------------------------------------------------------------------------

function medsFromFhir(bundle) {
  const res = (bundle.entry || []).map((e) => e.resource || {});
  const meds = Object.fromEntries(res.filter((r) => r.resourceType === "Medication").map((r) => [`Medication/${r.id}`, r]));
  const name = (r) => {
    const cc = r.medicationCodeableConcept || (r.medicationReference && (meds[r.medicationReference.reference] || {}).code);
    return cc ? cc.text || ((cc.coding || [])[0] || {}).display : null;
  };
  const out = [];
  for (const r of res) {
    if (!["MedicationStatement", "MedicationRequest", "MedicationAdministration"].includes(r.resourceType)) continue;
    const period = r.effectivePeriod || ((r.dispenseRequest || {}).validityPeriod) || {};
    out.push({ name: name(r), status: r.status === "active" ? "active" : "stopped",
      start: period.start || r.effectiveDateTime || r.authoredOn || null, end: period.end || null });
  }
  return out.filter((m) => m.name);
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  let body, path = "/v1/assess", type = "application/json", fromForm = false;
  const pasted = $("paste").value.trim();
  const file = $("upload").files[0];
  const text = pasted || (file ? await file.text() : "");
  lastCase = null;
  if (text) {
    body = text;
    if (/"resourceType"\s*:\s*"Bundle"/.test(text)) { path = "/v1/assess/fhir"; type = "application/fhir+json"; }
    else if (!/^\s*[{[]/.test(text)) type = "application/yaml";
    try {
      const doc = JSON.parse(text);
      lastCase = doc.resourceType === "Bundle" ? { medications: medsFromFhir(doc) } : doc;
    } catch (e) { /* YAML, or not valid: the server says what is wrong; no drug markers on the chart */ }
  } else {
    lastCase = buildCase();
    body = JSON.stringify(lastCase);
    fromForm = true;
  }
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Assessing ...";
  try {
    let r;
    try {
      r = await fetch(path, { method: "POST", headers: { "content-type": type, accept: "application/json" }, body });
    } catch (e) {
      showProblem(0, {}, false);
      $("result").hidden = true;
      return;
    }
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) { showProblem(r.status, doc, fromForm); $("result").hidden = true; return; }
    lastAssessment = doc;
    if (fromForm) serverHints(doc);
    render(doc);
  } finally {
    button.disabled = false;
    button.textContent = "Assess";
  }
}

// The server's verdict on names replaces the page's own hints.
function serverHints(a) {
  sentRows.medications.forEach((row, i) => {
    const u = a.unrecognised.find((x) => x.field === `medications[${i}]`);
    const input = row.querySelector(".med-name"), hint = row.querySelector(".drug-hint");
    if (u) drugHint(input, hint, u);
    else { clearTimeout(input.hintTimer); hint.replaceChildren(); hint.className = "drug-hint"; hint.dataset.for = input.value.trim(); }
  });
  const conds = a.unrecognised.filter((u) => u.field.startsWith("history.conditions"));
  let slot = $("conditions-hint");
  if (!slot) {
    slot = el("div", { id: "conditions-hint", class: "drug-hint", "aria-live": "polite" });
    $("conditions").insertAdjacentElement("afterend", slot);
    $("conditions").setAttribute("aria-describedby", slot.id);
  }
  slot.className = conds.length ? "drug-hint unknown" : "drug-hint";
  slot.textContent = conds.length ? "Not recognised, not assessed: " + conds.map((u) => `"${u.text}"` +
    (u.suggestions.length ? ` (did you mean ${u.suggestions.join(" or ")}?)` : "")).join("; ") : "";
}

// ---- the result --------------------------------------------------------------------------------

const when = (t) => (t ? LeukoChart.day(LeukoChart.parseTime(t)) + (/T(?!00:00)(\d{2}:\d{2})/.test(String(t)) ? ` ${/T(\d{2}:\d{2})/.exec(String(t))[1]}` : "") : "undated");
const x109 = (u) => (u === "10^9/L" ? "\u00d710\u2079/L" : u);

// "Surname AB, Surname CD, ..." -> "Surname et al."; else the citation's first phrase; with the year.
function shortCitation(s) {
  const m = /^([^,.[]+?) [A-Z]{1,3}(?: Jr)?(, [^,.]+? [A-Z]{1,3}(?: Jr)?)*(, et al)?\./.exec(s.citation);
  let who;
  if (m) who = m[2] || m[3] ? `${m[1]} et al.` : m[1];
  else who = s.citation.split(/(?<![A-Z])\.(?:\s|$)/)[0].slice(0, 60);
  return `${who} ${s.year || ""}`.trim();
}

class Citations {
  constructor(sources) { this.sources = sources; this.order = []; }
  // Numbered links ([1], [2]) to the full entries at the end, numbered in the order first cited.
  mark(ids) {
    const span = el("span", { class: "cites" });
    const nums = [];
    for (const id of ids || []) {
      if (!this.sources[id]) continue;
      if (!this.order.includes(id)) this.order.push(id);
      const n = this.order.indexOf(id) + 1;
      if (!nums.includes(n)) nums.push(n);
    }
    nums.sort((x, y) => x - y).forEach((n) => {
      const s = this.sources[this.order[n - 1]];
      span.append(" ", el("a", { href: `#src-${n}`, class: "cite", title: shortCitation(s) }, `[${n}]`));
    });
    return span;
  }
}

function sourceLink(s, n) {
  const url = s.url || (s.pmid ? `https://pubmed.ncbi.nlm.nih.gov/${s.pmid}/` : s.doi ? `https://doi.org/${s.doi}` : null);
  const li = el("li", { id: `src-${n}`, value: n, tabindex: "-1" }, `${s.citation} `);
  if (url) li.append(el("a", { href: url, class: "source-link", rel: "noopener" }, url));
  return li;
}

function box(id, cls, title, items) {
  const ul = el("ul");
  for (const it of items) ul.append(el("li", {}, ...[].concat(it)));
  return el("div", { class: cls, id }, el("h3", { text: title }), ul);
}

function render(a) {
  const out = $("result");
  const cite = new Citations(a.sources);
  const c = (ids) => cite.mark(ids);
  out.replaceChildren();
  out.hidden = false;
  const title = el("h2", { id: "result-title", tabindex: "-1", text: `Assessment of ${a.case_id}` + (a.as_of ? `, as of ${LeukoChart.day(LeukoChart.parseTime(a.as_of))}` : "") });
  out.append(title);
  // first: what must be acted on, and what leukodx could not read or did not recognise
  if (a.alerts.length) {
    const worst = ["critical", "warning", "info"].find((s) => a.alerts.some((x) => x.severity === s));
    const ul = el("ul");
    for (const al of a.alerts) {
      ul.append(el("li", { class: `alert alert-${al.severity}` }, el("strong", { text: al.title }), ` ${al.description}`, c(al.sources)));
    }
    out.append(el("div", { id: "alerts", class: `banner banner-${worst}`, role: "alert" },
      el("h3", { text: a.alerts.length === 1 ? `Alert (${worst})` : `${a.alerts.length} alerts (most severe: ${worst})` }), ul));
  }
  if (a.unrecognised.length) {
    out.append(box("unrecognised", "not-assessed", `Not recognised (${a.unrecognised.length}): not assessed; check the spelling`,
      a.unrecognised.map((u) => {
        const what = u.field.startsWith("medications") ? `Medication ${Number(/\d+/.exec(u.field)[0]) + 1}`
          : u.field.startsWith("history.conditions") ? "Condition" : u.field;
        return `${what} "${u.text}" (${u.kind})` + (u.suggestions.length ? ` - did you mean ${u.suggestions.join(" or ")}?` : " - no close name known");
      })));
  }
  if (a.not_assessed.length) {
    out.append(box("not-assessed", "not-assessed", `Not assessed (${a.not_assessed.length}): left out because they could not be read`,
      a.not_assessed.map((n) => `${n.field}${n.value ? ` (${n.value})` : ""}: ${n.reason}`)));
  }
  // the tier as a badge with the ANC and its date; the count it rests on
  const t = a.risk_tier;
  const source = { reported: "reported", derived: "derived", lower_of_reported_and_derived: "lower of reported and derived", bounded_by_wbc: "bounded by the WBC" }[t.anc_source] || "";
  const ancText = t.anc !== null ? `ANC ${t.anc_comparator || ""}${t.anc} ${x109("10^9/L")}` + (source ? ` (${source})` : "") + (t.anc_time ? `, drawn ${when(t.anc_time)}` : "") +
    (t.anc_age_days !== null && t.anc_age_days !== undefined ? `, ${t.anc_age_days} day${t.anc_age_days === 1 ? "" : "s"} before the assessment date` : "")
    : t.tier_at_least ? `${t.tier_at_least} or worse: the ANC cannot exceed the WBC ${t.anc_at_most} ${x109("10^9/L")}` : "no ANC";
  const summary = el("div", { class: "summary" },
    el("p", { id: "tier", class: "tier" }, el("span", { class: `badge tier-${t.tier}` }, `Risk tier: ${t.tier}`), " ",
      el("span", { class: "tier-anc", text: ancText }), c(t.sources)),
    el("p", { class: a.cbc.current ? "cbc" : "cbc stale", id: "cbc" }, el("strong", { text: a.cbc.current ? "Count: " : "No current count: " }), a.cbc.note));
  // a reported ANC's basis only restates the badge's line: not repeated
  const restates = t.anc_source === "reported" && t.anc !== null && t.basis.startsWith(`ANC ${t.anc} x10^9/L as reported (`);
  if (t.basis && !restates) summary.append(el("p", { class: "basis", text: t.basis }));
  if (t.duffy_null_note) summary.append(el("p", { class: "note", text: t.duffy_null_note }));
  const grades = ["wbc", "anc", "lymphocytes"].filter((k) => a.ctcae[k]).map((k) => `${k === "lymphocytes" ? "Lymphocytes" : k.toUpperCase()} grade ${a.ctcae[k].grade} (${a.ctcae[k].criterion})`);
  if (grades.length) summary.append(el("p", { id: "ctcae" }, `CTCAE v${a.ctcae.version}: ${grades.join("; ")}`, c(a.ctcae.sources)));
  out.append(summary);
  if (a.findings.length) {
    out.append(el("h3", { text: "Findings" }));
    const ul = el("ul", { id: "findings" });
    for (const f of a.findings) ul.append(el("li", {}, el("strong", { text: f.title }), `: ${f.description}`, c(f.sources)));
    out.append(ul);
  }
  if (a.interactions.length) {
    out.append(el("h3", { text: "Interactions" }));
    const ul = el("ul", { id: "interactions" });
    for (const i of a.interactions) {
      ul.append(el("li", { class: "interaction" }, el("strong", { text: i.title }), ` (${i.drugs.map((s) => s.join(", ")).join(" + ")}): ${i.effect} ${i.action}`, c(i.sources)));
    }
    out.append(ul);
  }
  // the counts over time, and the values used
  out.append(el("h3", { text: "Blood counts over time" }));
  const chartSlot = el("div", { id: "chart-slot" });
  out.append(chartSlot);
  out.append(valuesTable(a, c));
  // causes, with their likelihood as a label
  out.append(el("h3", { text: "Causes, ranked" }));
  if (!a.causes.length) {
    out.append(el("p", { id: "no-causes", text: "No cause is supported by the data given." +
      (a.unrecognised.length ? " A name leukodx did not recognise (above) was not assessed." : "") }));
  }
  const causes = el("ol", { id: "causes" });
  for (const cause of a.causes) {
    const li = el("li", { class: "cause" },
      el("p", { class: "cause-head" }, el("span", { class: `likelihood likelihood-${cause.likelihood}` }, LIKELIHOOD[cause.likelihood]), " ",
        el("strong", { text: cause.title }), ` score ${cause.score}` + (cause.agents.length ? `; agents: ${cause.agents.join(", ")}` : "")));
    if (cause.description) li.append(el("p", { class: "cause-desc" }, cause.description, c(cause.sources)));
    const ev = el("ul", { class: "evidence" });
    for (const e of cause.evidence) {
      const label = { for: "Supports", against: "Against", neutral: "Neutral" }[e.direction];
      ev.append(el("li", { class: `ev ev-${e.direction}` }, el("span", { class: "ev-label" }, `${label}: `), e.statement, c(e.sources)));
    }
    li.append(ev);
    causes.append(li);
  }
  out.append(causes);
  // steps, grouped by urgency
  out.append(el("h3", { text: "Next steps" }));
  if (!a.steps.length) out.append(el("p", { text: "No step is raised by the data given." }));
  for (const u of ["immediate", "urgent", "routine"]) {
    const steps = a.steps.filter((s) => s.urgency === u);
    if (!steps.length) continue;
    const sec = el("section", { class: `steps steps-${u}`, "aria-labelledby": `steps-${u}` },
      el("h4", { id: `steps-${u}` }, el("span", { class: `urgency urgency-${u}` }, URGENCY[u]), ` (${steps.length})`));
    const ul = el("ul");
    for (const s of steps) ul.append(el("li", { class: `step step-${u}` }, el("strong", { text: s.title }), c(s.sources), el("br"), s.rationale));
    sec.append(ul);
    out.append(sec);
  }
  if (a.steps_not_advised.length) {
    const sec = el("section", { class: "steps steps-not-advised", "aria-labelledby": "steps-not" }, el("h4", { id: "steps-not", text: "Not advised" }));
    const ul = el("ul");
    for (const b of a.steps_not_advised) ul.append(el("li", {}, el("strong", { text: b.title }), `: ${b.reason}`, c(b.sources)));
    sec.append(ul);
    out.append(sec);
  }
  const p = a.pharmacogenomics;
  if (p.recommendations.length || p.note || p.tpmt.phenotype !== "unknown" || p.nudt15.phenotype !== "unknown") {
    out.append(el("h3", { text: "Thiopurine pharmacogenomics" }));
    out.append(el("p", { id: "pgx", text: `TPMT ${p.tpmt.phenotype}${p.tpmt.diplotype ? ` (${p.tpmt.diplotype})` : ""}; NUDT15 ${p.nudt15.phenotype}${p.nudt15.diplotype ? ` (${p.nudt15.diplotype})` : ""}` +
      (p.tpmt_reliable ? "" : ". The TPMT activity is not reliable (measured soon after a transfusion).") }));
    for (const rec of p.recommendations) {
      const d = el("div", { class: "cpic" }, el("p", {}, el("strong", { text: `CPIC, ${rec.drug}` }), ` (${rec.classification})`, c(rec.sources)));
      if (rec.update_2024) {
        d.append(el("p", { text: rec.update_2024 }), el("p", { class: "superseded", text: `Superseded 2020 text: ${rec.recommendation}` }));
      } else d.append(el("p", { text: rec.recommendation }));
      if (rec.note) d.append(el("p", { class: "note", text: rec.note }));
      out.append(d);
    }
    if (p.note) out.append(el("p", { class: "note", text: p.note }));
  }
  if (a.missing_data.length) out.append(el("h3", { text: "Missing data, and why it matters" }), listOf(a.missing_data.map((m) => m.item), "missing"));
  if (a.warnings.length) out.append(el("h3", { text: "Warnings" }), listOf(a.warnings, "warnings"));
  // every source cited above, numbered in order; any other the assessment carries after them
  for (const id of Object.keys(a.sources)) if (!cite.order.includes(id)) cite.order.push(id);
  out.append(el("h3", { text: "Sources" }));
  const src = el("ol", { id: "sources" });
  cite.order.forEach((id, i) => src.append(sourceLink(a.sources[id], i + 1)));
  out.append(src);
  const dl = el("button", { type: "button", id: "download", text: "Download the assessment (JSON)" });
  dl.addEventListener("click", () => {
    const blob = new Blob([JSON.stringify(lastAssessment, null, 2)], { type: "application/json" });
    el("a", { href: URL.createObjectURL(blob), download: `${a.case_id}-assessment.json` }).click();
  });
  out.append(dl, el("p", { class: "disclaimer", text: a.disclaimer }));
  drawChart();
  title.focus();
  title.scrollIntoView();
}

function listOf(items, id) {
  const ul = el("ul", { id });
  for (const x of items) ul.append(el("li", { text: x }));
  return ul;
}

function drawChart() {
  const slot = $("chart-slot");
  if (!slot || !lastAssessment) return;
  const a = lastAssessment;
  slot.replaceChildren(LeukoChart.render({ labs: a.labs, medications: (lastCase || {}).medications || [],
    cutoffsText: a.risk_tier.cutoffs, width: slot.clientWidth || 720 }));
}

// The values the rules read: one row per value, as reported where converted, the limit and the date.
function valuesTable(a, c) {
  const limits = Object.fromEntries(a.reference_limits.map((l) => [l.test, l]));
  const order = Object.keys(TESTS);
  const labs = [...a.labs].sort((x, y) => (order.indexOf(x.test) - order.indexOf(y.test)) || String(x.time).localeCompare(String(y.time)));
  const wrap = el("div", { class: "values" });
  const table = el("table", { id: "values", class: "rows" },
    el("caption", { text: "Values used (after unit conversion), with their dates" }),
    el("thead", {}, el("tr", {}, ...["Test", "Value used", "As reported", "Lower limit", "Taken", "Count"].map((h) => el("th", { scope: "col", text: h })))));
  const body = el("tbody");
  for (const l of labs) {
    const bound = l.comparator ? { "<=": "≤", ">=": "≥" }[l.comparator] || l.comparator : "";
    const reported = l.derived ? `derived: ${l.derivation || ""}` : l.original && (bound || l.original.value !== l.value || l.original.unit !== l.unit)
      ? `${bound}${l.original.value} ${l.original.unit}` : "same";
    const lim = l.lln !== null && l.lln !== undefined ? `${l.lln} (the lab's)` : limits[l.test] ? `${limits[l.test].lln} ${x109(limits[l.test].unit)}` : "";
    body.append(el("tr", { class: l.current ? "current" : "" },
      el("th", { scope: "row", "data-label": "Test", text: (TESTS[l.test] || [l.name])[0] }),
      el("td", { "data-label": "Value used", text: `${bound}${l.value} ${x109(l.unit)}` }),
      el("td", { "data-label": "As reported", text: reported }),
      el("td", { "data-label": "Lower limit", text: lim, class: lim ? null : "empty" }),
      el("td", { "data-label": "Taken", text: when(l.time) }),
      el("td", { "data-label": "Count", text: l.current ? "current" : l.age_days !== null && l.age_days !== undefined ? `earlier (${l.age_days} days before)` : "earlier" })));
  }
  table.append(body);
  wrap.append(table);
  if (a.reference_limits.length) {
    const ul = el("ul", { class: "limits" });
    for (const l of a.reference_limits) ul.append(el("li", {}, `${(TESTS[l.test] || [l.test])[0]} lower limit ${l.lln} ${x109(l.unit)}: ${l.basis}`, c(l.sources)));
    wrap.append(ul);
  }
  return wrap;
}

async function init() {
  const units = el("datalist", { id: "unit-list" });
  for (const u of UNITS) units.append(el("option", { value: u }));
  document.body.append(units);
  addLab("wbc"); addLab("anc"); addLab("hemoglobin"); addLab("platelets");
  addMed();
  $("add-lab").addEventListener("click", () => addLab().querySelector("select").focus());
  $("add-med").addEventListener("click", () => { addMed(); $("meds").tBodies[0].lastElementChild.querySelector("input").focus(); });
  $("case-form").addEventListener("submit", submit);
  let resize = null, lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => { if (window.innerWidth !== lastWidth) { lastWidth = window.innerWidth; drawChart(); } }, 150);
  });
  try {
    const names = await (await fetch("/v1/drugs")).json();
    for (const n of names) $("drug-names").append(el("option", { value: n }));
    drugIndex = makeDrugIndex(names);
    for (const input of document.querySelectorAll(".med-name")) if (input.value) drugHint(input, input.parentElement.querySelector(".drug-hint"));
  } catch (e) { /* the hints and autocomplete are a convenience; the server still checks every name */ }
  const report = /^\/report\/([A-Za-z0-9_-]{20,100})$/.exec(window.location.pathname);
  if (report) {          // the CDS card's link: the full assessment, for as long as the link lives
    const r = await fetch(`/v1/reports/${report[1]}`);
    if (r.ok) render(await r.json());
    else showProblem(r.status, await r.json().catch(() => ({ title: "The report has expired or does not exist." })), false);
  }
  document.body.dataset.ready = "true";
}
init();
