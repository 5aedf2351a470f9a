// leukodx clinician page: builds a case from the form (or takes a pasted/uploaded document), posts it to
// the API, and shows the Assessment. All judgement comes from the API; this only presents it.
"use strict";

const TESTS = {
  wbc: ["WBC", "10^9/L"], anc: ["ANC (absolute neutrophils)", "10^9/L"], neutrophils_pct: ["Neutrophils %", "%"],
  bands_pct: ["Bands %", "%"], lymphocytes: ["Lymphocytes (absolute)", "10^9/L"], lymphocytes_pct: ["Lymphocytes %", "%"],
  monocytes: ["Monocytes (absolute)", "10^9/L"], eosinophils: ["Eosinophils (absolute)", "10^9/L"],
  blasts_pct: ["Blasts %", "%"], hemoglobin: ["Hemoglobin", "g/dL"], platelets: ["Platelets", "10^9/L"],
  mcv: ["MCV", "fL"], vitamin_b12: ["Vitamin B12", "pg/mL"], folate: ["Folate", "ng/mL"], copper: ["Copper", "ug/dL"],
};
const UNITS = ["10^9/L", "10*9/L", "G/L", "/nL", "10^3/uL", "K/uL", "/uL", "cells/uL", "cells/mm3", "%", "g/dL", "g/L",
  "mmol/L", "fL", "pg/mL", "pmol/L", "ng/mL", "nmol/L", "ug/dL", "umol/L"];
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};
let lastAssessment = null;

function addLab(test = "wbc", value = "", unit = "", time = "") {
  const i = $("labs").tBodies[0].rows.length;
  const sel = el("select", { "aria-label": `Test ${i + 1}`, class: "lab-test" });
  for (const [id, [name]] of Object.entries(TESTS)) sel.append(el("option", { value: id, text: name }));
  sel.value = test;
  const unitInput = el("input", { "aria-label": `Unit ${i + 1}`, class: "lab-unit", list: "unit-list", value: unit || TESTS[test][1] });
  sel.addEventListener("change", () => { unitInput.value = TESTS[sel.value][1]; });
  const row = el("tr", {},
    el("td", {}, sel),
    el("td", {}, el("input", { "aria-label": `Value ${i + 1}`, class: "lab-value", type: "number", step: "any", value })),
    el("td", {}, unitInput, el("span", { class: "field-error", "data-for": "unit" })),
    el("td", {}, el("input", { "aria-label": `Date and time ${i + 1}`, class: "lab-time", type: "datetime-local", value: time })),
    el("td", {}, removeButton()));
  row.querySelector(".lab-value").parentElement.append(el("span", { class: "field-error", "data-for": "value" }));
  $("labs").tBodies[0].append(row);
}

function addMed(name = "", status = "active", start = "", end = "") {
  const i = $("meds").tBodies[0].rows.length;
  const statusSel = el("select", { "aria-label": `Medication status ${i + 1}`, class: "med-status" });
  for (const s of ["active", "stopped", "completed"]) statusSel.append(el("option", { text: s }));
  statusSel.value = status;
  $("meds").tBodies[0].append(el("tr", {},
    el("td", {}, el("input", { "aria-label": `Medication ${i + 1}`, class: "med-name", list: "drug-names", value: name }),
       el("span", { class: "field-error", "data-for": "name" })),
    el("td", {}, statusSel),
    el("td", {}, el("input", { "aria-label": `Start ${i + 1}`, class: "med-start", type: "date", value: start })),
    el("td", {}, el("input", { "aria-label": `End ${i + 1}`, class: "med-end", type: "date", value: end })),
    el("td", {}, removeButton())));
}

function removeButton() {
  const b = el("button", { type: "button", text: "Remove" });
  b.addEventListener("click", () => b.closest("tr").remove());
  return b;
}

function buildCase() {
  const c = { id: "web-case", patient: { sex: $("sex").value }, labs: [], medications: [], history: {} };
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  if (num("age") !== undefined) c.patient.age_years = num("age");
  if (num("weight") !== undefined) c.patient.weight_kg = num("weight");
  if ($("duffy").value) c.patient.duffy_null = $("duffy").value === "true";
  if ($("ancestry").value.trim()) c.patient.ancestry = $("ancestry").value.trim();
  if ($("as_of").value) c.as_of = $("as_of").value;
  for (const row of $("labs").tBodies[0].rows) {
    const v = row.querySelector(".lab-value").value;
    if (v === "") continue;
    const lab = { test: row.querySelector(".lab-test").value, value: Number(v), unit: row.querySelector(".lab-unit").value.trim() };
    const t = row.querySelector(".lab-time").value;
    if (t) lab.time = t + ":00Z";
    c.labs.push(lab);
  }
  for (const row of $("meds").tBodies[0].rows) {
    const name = row.querySelector(".med-name").value.trim();
    if (!name) continue;
    const med = { name, status: row.querySelector(".med-status").value };
    if (row.querySelector(".med-start").value) med.start = row.querySelector(".med-start").value;
    if (row.querySelector(".med-end").value) med.end = row.querySelector(".med-end").value;
    c.medications.push(med);
  }
  const h = c.history;
  if ($("tpmt").value.trim()) h.tpmt = $("tpmt").value.trim();
  if ($("nudt15").value.trim()) h.nudt15 = $("nudt15").value.trim();
  if ($("transfusion").value) h.last_transfusion = $("transfusion").value;
  if (num("temperature") !== undefined) h.temperature_c = num("temperature");
  if ($("sustained").checked) h.fever_sustained_1h = true;
  const conditions = $("conditions").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (conditions.length) h.conditions = conditions;
  return c;
}

function clearErrors() {
  $("form-error").textContent = "";
  for (const e of document.querySelectorAll(".field-error")) e.textContent = "";
  for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

// Fields outside the tables, by the JSON pointer of the case field they fill.
const FIELDS = { "/patient/age_years": "age", "/patient/sex": "sex", "/patient/weight_kg": "weight",
  "/patient/duffy_null": "duffy", "/patient/ancestry": "ancestry", "/as_of": "as_of", "/history/tpmt": "tpmt",
  "/history/nudt15": "nudt15", "/history/last_transfusion": "transfusion", "/history/temperature_c": "temperature",
  "/history/conditions": "conditions" };

function besideField(id, message) {
  const input = $(id);
  let slot = input.parentElement.querySelector(".field-error");
  if (!slot) { slot = el("span", { class: "field-error" }); input.insertAdjacentElement("afterend", slot); }
  slot.textContent = message;
  input.setAttribute("aria-invalid", "true");
}

// Problem details -> messages beside the fields they concern (pointer /labs/2/unit -> row 3, unit).
function showProblem(problem, fromForm) {
  const general = [];
  for (const err of problem.errors || []) {
    const field = fromForm && Object.keys(FIELDS).find((p) => (err.pointer || "").startsWith(p));
    if (field) { besideField(FIELDS[field], err.detail); continue; }
    const m = /^\/(labs|medications)\/(\d+)\/?(\w*)/.exec(err.pointer || "");
    const table = m && fromForm ? $(m[1] === "labs" ? "labs" : "meds") : null;
    const row = table ? table.tBodies[0].rows[Number(m[2])] : null;
    const slot = row ? (row.querySelector(`.field-error[data-for="${m[3]}"]`) || row.querySelector(".field-error")) : null;
    if (slot) {
      slot.textContent = err.detail;
      const input = slot.parentElement.querySelector("input, select");
      if (input) input.setAttribute("aria-invalid", "true");
    } else {
      general.push(`${err.loc || ""}: ${err.detail}`);
    }
  }
  $("form-error").textContent = [problem.title, problem.detail, ...general].filter(Boolean).join(" - ");
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  let body, path = "/v1/assess", type = "application/json", fromForm = false;
  const pasted = $("paste").value.trim();
  const file = $("upload").files[0];
  const text = pasted || (file ? await file.text() : "");
  if (text) {
    body = text;
    if (/"resourceType"\s*:\s*"Bundle"/.test(text)) { path = "/v1/assess/fhir"; type = "application/fhir+json"; }
    else if (!/^\s*[{[]/.test(text)) type = "application/yaml";
  } else {
    body = JSON.stringify(buildCase());
    fromForm = true;
  }
  const r = await fetch(path, { method: "POST", headers: { "content-type": type }, body });
  const doc = await r.json().catch(() => ({ title: `HTTP ${r.status}` }));
  if (!r.ok) { showProblem(doc, fromForm); $("result").hidden = true; return; }
  lastAssessment = doc;
  render(doc);
}

function sourceLink(s) {
  const url = s.url || (s.pmid ? `https://pubmed.ncbi.nlm.nih.gov/${s.pmid}/` : s.doi ? `https://doi.org/${s.doi}` : null);
  const li = el("li", { id: `src-${s.id}` }, `[${s.id}] ${s.citation} `);
  if (url) li.append(el("a", { href: url, class: "source-link", rel: "noopener", text: url }));
  return li;
}

function render(a) {
  const out = $("result");
  out.replaceChildren();
  out.hidden = false;
  out.append(el("h2", { text: `Assessment of ${a.case_id}` + (a.as_of ? ` (as of ${a.as_of})` : "") }));
  out.append(el("p", { class: a.cbc.current ? "cbc" : "cbc stale", id: "cbc" }, el("strong", { text: a.cbc.current ? "Count: " : "No current count: " }), a.cbc.note));
  if (a.unrecognised.length) {
    const box = el("div", { class: "not-assessed", id: "unrecognised" }, el("strong", { text: `Not recognised (${a.unrecognised.length}): not assessed; check the spelling` }));
    const ul = el("ul");
    for (const u of a.unrecognised) ul.append(el("li", { text: `${u.field} "${u.text}" (${u.kind})` + (u.suggestions.length ? ` - did you mean ${u.suggestions.join(" or ")}?` : "") }));
    box.append(ul);
    out.append(box);
  }
  if (a.not_assessed.length) {
    const box = el("div", { class: "not-assessed", id: "not-assessed" }, el("strong", { text: `Not assessed (${a.not_assessed.length}): left out because they could not be read` }));
    const ul = el("ul");
    for (const n of a.not_assessed) ul.append(el("li", { text: `${n.field}${n.value ? ` (${n.value})` : ""}: ${n.reason}` }));
    box.append(ul);
    out.append(box);
  }
  for (const al of a.alerts) out.append(el("div", { class: "alert", role: "alert" }, el("strong", { text: al.title }), ` ${al.description}`));
  const t = a.risk_tier;
  const source = t.anc_source ? t.anc_source.replaceAll("_", " ") : "";
  out.append(el("p", { class: "tier", id: "tier" }, el("strong", { text: `Risk tier: ${t.tier}` }),
    (t.anc !== null ? ` (ANC ${t.anc} x10^9/L, ${source})` : "") +
    (t.tier_at_least ? ` - ${t.tier_at_least} or worse (the ANC cannot exceed the WBC ${t.anc_at_most})` : "")));
  out.append(el("p", { text: t.basis }));
  if (t.duffy_null_note) out.append(el("p", { text: t.duffy_null_note }));
  const grades = ["wbc", "anc", "lymphocytes"].filter((k) => a.ctcae[k]).map((k) => `${k.toUpperCase()} grade ${a.ctcae[k].grade}`);
  if (grades.length) out.append(el("p", { text: `CTCAE v${a.ctcae.version}: ${grades.join(", ")}` }));
  out.append(chart(a));
  out.append(el("h3", { text: "Causes, ranked" }));
  if (!a.causes.length) out.append(el("p", { text: "No cause is supported by the data given." }));
  const causes = el("ol", { id: "causes" });
  for (const c of a.causes) {
    const li = el("li", { class: "cause" }, el("strong", { text: c.title }),
      ` - ${c.likelihood} (score ${c.score})` + (c.agents.length ? `; agents: ${c.agents.join(", ")}` : ""));
    const ev = el("ul");
    for (const e of c.evidence) {
      const item = el("li", {}, `${e.direction}: ${e.statement} `);
      for (const sid of e.sources) item.append(el("a", { href: `#src-${sid}`, text: `[${sid}]` }), " ");
      ev.append(item);
    }
    li.append(ev);
    causes.append(li);
  }
  out.append(causes);
  out.append(el("h3", { text: "Next steps" }));
  for (const u of ["immediate", "urgent", "routine"]) {
    const steps = a.steps.filter((s) => s.urgency === u);
    if (!steps.length) continue;
    out.append(el("h4", { text: u }));
    const ul = el("ul");
    for (const s of steps) ul.append(el("li", { class: `step urgency-${u}` }, el("strong", { text: s.title }), ` - ${s.rationale}`));
    out.append(ul);
  }
  for (const b of a.steps_not_advised) out.append(el("p", { text: `Not advised: ${b.title} - ${b.reason}` }));
  if (a.missing_data.length) {
    out.append(el("h3", { text: "Missing data, and why it matters" }));
    const ul = el("ul");
    for (const m of a.missing_data) ul.append(el("li", { text: m.item }));
    out.append(ul);
  }
  if (a.warnings.length) {
    out.append(el("h3", { text: "Warnings" }));
    const ul = el("ul");
    for (const w of a.warnings) ul.append(el("li", { text: w }));
    out.append(ul);
  }
  out.append(el("h3", { text: "Sources" }));
  const src = el("ol", { id: "sources" });
  for (const s of Object.values(a.sources)) src.append(sourceLink(s));
  out.append(src);
  const dl = el("button", { type: "button", id: "download", text: "Download the assessment (JSON)" });
  dl.addEventListener("click", () => {
    const blob = new Blob([JSON.stringify(lastAssessment, null, 2)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `${a.case_id}-assessment.json` });
    link.click();
  });
  out.append(dl, el("p", { text: a.disclaimer }));
  out.scrollIntoView();
}

// Counts over time as an SVG line chart; the ANC tier bands are drawn behind, labelled in text.
function chart(a) {
  const series = {};
  for (const lab of a.labs) {
    if (!["wbc", "anc", "lymphocytes", "hemoglobin", "platelets"].includes(lab.test) || !lab.time) continue;
    (series[lab.test] = series[lab.test] || []).push([Date.parse(lab.time), lab.value]);
  }
  const fig = el("figure", { id: "chart" });
  const names = Object.keys(series);
  if (!names.length) { fig.append(el("figcaption", { text: "No dated counts to chart." })); return fig; }
  const W = 640, H = 260, P = 40, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Blood counts over time; ANC tier bands behind the ANC line");
  const xs = names.flatMap((n) => series[n].map((p) => p[0]));
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1;
  const x = (t) => P + (x1 === x0 ? (W - 2 * P) / 2 : ((t - x0) / (x1 - x0)) * (W - 2 * P));
  const yMax = Math.max(4, ...((series.anc || []).map((p) => p[1])), ...((series.wbc || []).map((p) => p[1])));
  const y = (v) => H - P - (Math.min(v, yMax) / yMax) * (H - 2 * P);
  const add = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); svg.append(e); return e; };
  const bands = [[0, 0.1, "profound", "#f2c6c6"], [0.1, 0.5, "severe", "#f6d6c6"], [0.5, 1.0, "moderate", "#f8e7c8"], [1.0, 1.5, "mild", "#fbf3d2"]];
  for (const [lo, hi, name, fill] of bands) {
    if (lo >= yMax) continue;
    add("rect", { x: P, y: y(hi), width: W - 2 * P, height: y(lo) - y(hi), fill, class: "tier-band" });
    add("text", { x: W - P + 2, y: y((lo + hi) / 2) + 4 }).textContent = name;
  }
  const styles = { anc: ["#000", ""], wbc: ["#1a55c6", "6 3"], lymphocytes: ["#2a7d2a", "2 2"], hemoglobin: ["#7a2a8a", "8 2 2 2"], platelets: ["#555", "1 4"] };
  for (const n of names) {
    const pts = series[n].sort((p, q) => p[0] - q[0]);
    const scale = n === "platelets" ? (v) => v / 100 : n === "hemoglobin" ? (v) => v / 4 : (v) => v;
    add("polyline", { points: pts.map(([t, v]) => `${x(t)},${y(scale(v))}`).join(" "), fill: "none",
      stroke: styles[n][0], "stroke-width": n === "anc" ? 3 : 1.5, "stroke-dasharray": styles[n][1], class: `line-${n}` });
    const [tl, vl] = pts[pts.length - 1];
    add("text", { x: x(tl) + 3, y: y(scale(vl)) - 3 }).textContent = `${n} ${vl}`;
  }
  add("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#000" });
  add("text", { x: 2, y: P - 8 }).textContent = "x10^9/L (platelets /100, Hb /4)";
  fig.append(svg, el("figcaption", { text: `Series: ${names.join(", ")}. Shaded bands mark the ANC tiers (named at right).` }));
  return fig;
}

async function init() {
  const units = el("datalist", { id: "unit-list" });
  for (const u of UNITS) units.append(el("option", { value: u }));
  document.body.append(units);
  try {
    const names = await (await fetch("/v1/drugs")).json();
    for (const n of names) $("drug-names").append(el("option", { value: n }));
  } catch (e) { /* autocomplete is a convenience */ }
  addLab("wbc"); addLab("anc"); addLab("hemoglobin"); addLab("platelets");
  addMed();
  $("add-lab").addEventListener("click", () => addLab());
  $("add-med").addEventListener("click", () => addMed());
  $("case-form").addEventListener("submit", submit);
}
init();
