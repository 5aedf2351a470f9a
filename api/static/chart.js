// leukodx chart: blood counts over time, drawn as SVG by hand (no charting library: every point is an
// SVG element that can take keyboard focus and carry its own accessible name, which canvas-based
// libraries cannot give, and axe-core can check all of it).
//
// - x: a dated axis (UTC, as the report prints dates); y: x10^9/L on a log scale, so the ANC tier bands
//   (profound < 0.1, severe 0.1-0.5, moderate 0.5-1.0, mild 1.0-1.5, normal) are tall enough to be named
//   inside the plot area; platelets and haemoglobin get their own small panels with their own axes.
// - a point for every value, a series with one value is a point; value and date on hover and on keyboard
//   focus (Tab reaches the chart, the arrow keys move between points, Escape hides the tip).
// - the case's medications as start (solid) and stop (dashed) lines, with the exposure drawn as a bar
//   above the plot and named.
"use strict";

const LeukoChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const DAY = 86400000;
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const SERIES = {
    anc: { name: "ANC", color: "#000000", dash: "", width: 3, shape: "circle" },
    wbc: { name: "WBC", color: "#1a4fb0", dash: "7 4", width: 2, shape: "square" },
    lymphocytes: { name: "Lymphocytes", color: "#1d6b2c", dash: "2 3", width: 2, shape: "triangle" },
    platelets: { name: "Platelets", color: "#5b2a86", dash: "", width: 2, shape: "diamond" },
    hemoglobin: { name: "Haemoglobin", color: "#8a2a0a", dash: "", width: 2, shape: "circle" },
  };
  const BAND_FILL = { profound: "#f3c4c4", severe: "#f8d5c2", moderate: "#fbe5c4", mild: "#fcf1cd", normal: "#e7f2e7" };
  const DRUG_COLOR = "#6a3d9a";
  const X109 = "\u00d710\u2079/L";

  const pad2 = (n) => String(n).padStart(2, "0");
  const day = (t) => { const d = new Date(t); return `${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()}`; };
  const stamp = (t, timed) => {
    const d = new Date(t);
    return day(t) + (timed && (d.getUTCHours() || d.getUTCMinutes()) ? ` ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}` : "");
  };
  const num = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3))));
  // a date or date-time as UTC milliseconds ("2025-02-01" is midnight UTC, as the engine reads it)
  const parseTime = (s) => {
    if (s === null || s === undefined || s === "") return null;
    const text = String(s);
    const t = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(text) ? text + "T00:00:00Z"
      : /[zZ]|[+-]\d{2}:?\d{2}$/.test(text) ? text : text + "Z");
    return Number.isNaN(t) ? null : t;
  };

  function svgEl(parent, tag, attrs = {}, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.append(e);
    return e;
  }

  // Dated ticks: the smallest step (1, 2, 7 or 14 days, then 1, 2, 3, 6, 12, 24 or 60 months from the 1st)
  // that gives at most maxTicks between x0 and x1, but never fewer than two when a smaller step gives two.
  function timeTicks(x0, x1, maxTicks) {
    const candidates = [];
    for (const step of [1, 2, 7, 14]) {
      const out = [];
      for (let t = Math.ceil(x0 / (step * DAY)) * step * DAY; t <= x1; t += step * DAY) out.push(t);
      candidates.push({ ticks: out, monthly: false });
    }
    for (const step of [1, 2, 3, 6, 12, 24, 60]) {
      const d = new Date(x0);
      let k = d.getUTCFullYear() * 12 + d.getUTCMonth();
      if (Date.UTC(Math.floor(k / 12), k % 12, 1) < x0) k += 1;
      while (k % step) k += 1;
      const out = [];
      for (let t = Date.UTC(Math.floor(k / 12), k % 12, 1); t <= x1; k += step, t = Date.UTC(Math.floor(k / 12), k % 12, 1)) out.push(t);
      candidates.push({ ticks: out, monthly: true });
    }
    const i = candidates.findIndex((c) => c.ticks.length <= maxTicks);
    if (i < 0) return candidates[candidates.length - 1];
    return candidates[i].ticks.length < 2 && i > 0 && candidates[i - 1].ticks.length >= 2 ? candidates[i - 1] : candidates[i];
  }

  function logTicks(lo, hi) {
    const out = [];
    for (let k = -3; k <= 4; k++) for (const m of [1, 2, 5]) {
      const v = m * 10 ** k;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(Number(v.toPrecision(2)));
    }
    return out.length > 9 ? out.filter((v) => /^(1|5)/.test(String(v).replace(/^0\.0*/, ""))) : out;
  }

  function linearTicks(lo, hi, count) {
    const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(6)));
    return out;
  }

  // Tier cut-offs from the assessment's own text ("... mild 1.0 to < 1.5; moderate 0.5 to < 1.0 ..."), else the standard ones.
  function cutoffs(text) {
    const grab = (name) => { const m = new RegExp(`${name}[^;]*?([0-9.]+)\\s*to`).exec(text || ""); return m ? Number(m[1]) : null; };
    const mild = grab("mild"), moderate = grab("moderate"), severe = grab("severe");
    const normal = /normal\s*>=\s*([0-9.]+)/.exec(text || "");
    const c = { severe: severe ?? 0.1, moderate: moderate ?? 0.5, mild: mild ?? 1.0, normal: normal ? Number(normal[1]) : 1.5 };
    return [["profound", null, c.severe], ["severe", c.severe, c.moderate], ["moderate", c.moderate, c.mild],
      ["mild", c.mild, c.normal], ["normal", c.normal, null]];
  }

  // The medications as exposures: name, start, end (null when open), status.
  function exposures(medications) {
    return (medications || []).map((m) => ({
      name: m.name || (m.rxnorm ? `RxNorm ${m.rxnorm}` : "medication"),
      start: parseTime(m.start), end: parseTime(m.end), status: m.status || "active",
    })).filter((m) => m.start !== null || m.end !== null);
  }

  // One panel: an <svg> with axes, optional tier bands, the series' lines and points, and the drug lines.
  function panel(spec) {
    const { width, height, x, x0, x1, series, yLabel, log, bands, drugs, drugRows, timed } = spec;
    const M = { top: 8 + drugRows * 16, right: 12, bottom: 34, left: 56 };
    const H = height + M.top + M.bottom;
    const plotW = width - M.left - M.right;
    const svg = svgEl(null, "svg", { width, height: H, viewBox: `0 0 ${width} ${H}`, role: "group",
      "aria-label": spec.label, class: "chart-panel" });
    const values = series.flatMap((s) => s.points.map((p) => p.v));
    let lo, hi, y;
    if (log) {
      const pos = values.filter((v) => v > 0);
      lo = Math.max(0.005, Math.min(0.05, ...(pos.length ? pos.map((v) => v / 1.6) : [0.05])));
      const top = Math.max(5, ...values.map((v) => v * 1.25));
      hi = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].find((v) => v >= top) || top;
      y = (v) => M.top + height - ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * height;
    } else {
      lo = 0;
      hi = Math.max(...values, spec.minTop || 1) * 1.15;
      y = (v) => M.top + height - (v / hi) * height;
    }
    const X = (t) => M.left + ((t - x0) / (x1 - x0)) * plotW;
    // plot area background and the ANC tier bands, named inside the plot
    svgEl(svg, "rect", { x: M.left, y: M.top, width: plotW, height, fill: "#ffffff", stroke: "#595959" });
    if (bands) {
      for (const [name, from, to] of bands) {
        const top = y(Math.min(to ?? hi, hi)), bottom = y(Math.max(from ?? lo, lo));
        if (bottom - top < 1) continue;
        svgEl(svg, "rect", { x: M.left + 1, y: top, width: plotW - 2, height: bottom - top, fill: BAND_FILL[name],
          class: `tier-band band-${name}` });
        const label = from === null ? `${name} < ${to}` : to === null ? `${name} \u2265 ${from}` : `${name} ${from}-${to}`;
        const size = Math.min(12, bottom - top - 2);
        if (size >= 9) svgEl(svg, "text", { x: M.left + 6, y: (top + bottom) / 2 + size / 3, "text-anchor": "start",
          class: `band-label band-label-${name}`, "font-size": size }, label);
      }
    }
    // y axis: ticks, grid and its unit
    const yticks = log ? logTicks(lo, hi) : linearTicks(lo, hi, Math.max(2, Math.floor(height / 40)));
    for (const v of yticks) {
      svgEl(svg, "line", { x1: M.left, x2: M.left + plotW, y1: y(v), y2: y(v), class: "grid" });
      svgEl(svg, "text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, num(v));
    }
    svgEl(svg, "text", { x: 12, y: M.top + height / 2, transform: `rotate(-90 12 ${M.top + height / 2})`,
      "text-anchor": "middle", class: "axis-title" }, yLabel);
    // x axis: dated ticks
    const { ticks, monthly } = timeTicks(x0, x1, Math.max(2, Math.floor(plotW / 80)));
    let lastYear = null;
    for (const t of ticks) {
      const d = new Date(t);
      const yr = d.getUTCFullYear();
      const label = monthly ? `${MONTHS[d.getUTCMonth()]}${yr !== lastYear ? " " + yr : ""}`
        : `${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}${yr !== lastYear ? " " + yr : ""}`;
      lastYear = yr;
      svgEl(svg, "line", { x1: X(t), x2: X(t), y1: M.top + height, y2: M.top + height + 5, stroke: "#595959" });
      svgEl(svg, "text", { x: X(t), y: M.top + height + 18, "text-anchor": "middle", class: "tick" }, label);
    }
    // drug start and stop lines; the exposure bars and names above the main plot
    drugs.forEach((d, i) => {
      const clip = (t) => Math.min(Math.max(t, x0), x1);
      const g = svgEl(svg, "g", { class: "drug-marker" });
      svgEl(g, "title", {}, d.summary);
      if (d.start !== null && d.start >= x0 && d.start <= x1)
        svgEl(g, "line", { x1: X(d.start), x2: X(d.start), y1: M.top, y2: M.top + height, stroke: DRUG_COLOR, "stroke-width": 1.5, class: "drug-start" });
      if (d.end !== null && d.end >= x0 && d.end <= x1)
        svgEl(g, "line", { x1: X(d.end), x2: X(d.end), y1: M.top, y2: M.top + height, stroke: DRUG_COLOR, "stroke-width": 1.5, "stroke-dasharray": "5 3", class: "drug-stop" });
      if (i < drugRows) {
        const yRow = 10 + i * 16;
        const a = clip(d.start ?? x0), b = clip(d.end ?? x1);
        svgEl(g, "line", { x1: X(a), x2: X(b), y1: yRow, y2: yRow, stroke: DRUG_COLOR, "stroke-width": 4, class: "drug-bar" });
        const before = d.start !== null && d.start < x0;
        const text = `${d.name}${before ? ` (since ${day(d.start)})` : d.start !== null ? " start" : ""}${d.end !== null && d.end <= x1 ? ", stopped" : ""}`;
        const anchorLeft = X(a) + 4 < M.left + plotW * 0.6;
        svgEl(g, "text", { x: anchorLeft ? X(a) + 4 : X(b) - 4, y: yRow + 4 + 9, "text-anchor": anchorLeft ? "start" : "end",
          class: "drug-label" }, text);
      }
    });
    // the series: a line through two or more points, and a point for every value (one value is a point)
    for (const s of series) {
      const st = SERIES[s.test];
      const pts = s.points;
      if (pts.length > 1) {
        svgEl(svg, "polyline", { points: pts.map((p) => `${X(p.t)},${y(p.v)}`).join(" "), fill: "none",
          stroke: st.color, "stroke-width": st.width, "stroke-dasharray": st.dash, class: `line line-${s.test}` });
      }
      for (const p of pts) {
        const g = svgEl(svg, "g", { class: `point point-${s.test}`, tabindex: "-1", role: "img",
          "aria-label": p.label, "data-series": s.test, "data-tip": p.label });
        const cx = X(p.t), cy = y(p.v);
        svgEl(g, "circle", { cx, cy, r: 11, class: "hit", fill: "transparent" });
        svgEl(g, "circle", { cx, cy, r: 9, class: "ring", fill: "none" });
        shape(g, st.shape, cx, cy, s.test === "anc" ? 5.5 : 4.5, st.color);
        p.el = g;
      }
      if (s.test === "anc" && pts.length) {
        const last = pts[pts.length - 1];
        svgEl(svg, "text", { x: Math.min(X(last.t) + 9, M.left + plotW - 2), y: y(last.v) - 9,
          "text-anchor": X(last.t) + 60 > M.left + plotW ? "end" : "start", class: "last-value" }, `ANC ${num(last.v)}`);
      }
    }
    return svg;
  }

  function shape(g, kind, cx, cy, r, color) {
    const attrs = { fill: color, stroke: "#ffffff", "stroke-width": 1.2, class: "mark" };
    if (kind === "square") return svgEl(g, "rect", { ...attrs, x: cx - r, y: cy - r, width: 2 * r, height: 2 * r });
    if (kind === "triangle") return svgEl(g, "polygon", { ...attrs, points: `${cx},${cy - r * 1.2} ${cx + r * 1.1},${cy + r * 0.8} ${cx - r * 1.1},${cy + r * 0.8}` });
    if (kind === "diamond") return svgEl(g, "polygon", { ...attrs, points: `${cx},${cy - r * 1.3} ${cx + r * 1.1},${cy} ${cx},${cy + r * 1.3} ${cx - r * 1.1},${cy}` });
    return svgEl(g, "circle", { ...attrs, cx, cy, r });
  }

  function legendSwatch(test) {
    const st = SERIES[test];
    const svg = svgEl(null, "svg", { width: 34, height: 14, viewBox: "0 0 34 14", "aria-hidden": "true", focusable: "false" });
    svgEl(svg, "line", { x1: 1, x2: 33, y1: 7, y2: 7, stroke: st.color, "stroke-width": st.width, "stroke-dasharray": st.dash });
    shape(svg, st.shape, 17, 7, 4, st.color);
    return svg;
  }

  // Keyboard: one tab stop for all the points (roving tabindex); arrows move in time (left/right) and
  // between series (up/down), Home/End to the ends of a series, Escape hides the tip.
  function wireKeys(fig, series, tip) {
    const all = series.flatMap((s) => s.points);
    if (!all.length) return;
    const first = series.find((s) => s.points.length);         // the tab stop: the latest point of the first series (the ANC)
    first.points[first.points.length - 1].el.setAttribute("tabindex", "0");
    const place = (p) => {
      const fr = fig.getBoundingClientRect(), r = p.el.querySelector(".mark").getBoundingClientRect();
      tip.textContent = p.el.getAttribute("data-tip");
      tip.hidden = false;
      const left = Math.min(Math.max(r.left - fr.left + r.width / 2 - tip.offsetWidth / 2, 0), fr.width - tip.offsetWidth);
      tip.style.left = `${left}px`;
      tip.style.top = `${r.top - fr.top - tip.offsetHeight - 10}px`;
    };
    const go = (p) => {
      for (const q of all) q.el.setAttribute("tabindex", q === p ? "0" : "-1");
      p.el.focus();
    };
    for (const s of series) s.points.forEach((p, i) => {
      p.el.addEventListener("focus", () => place(p));
      p.el.addEventListener("blur", () => { tip.hidden = true; });
      p.el.addEventListener("mouseenter", () => place(p));
      p.el.addEventListener("mouseleave", (ev) => { if (ev.relatedTarget !== tip) tip.hidden = true; });
      p.el.addEventListener("keydown", (ev) => {
        const si = series.indexOf(s);
        let next = null;
        if (ev.key === "ArrowRight") next = s.points[i + 1];
        else if (ev.key === "ArrowLeft") next = s.points[i - 1];
        else if (ev.key === "Home") next = s.points[0];
        else if (ev.key === "End") next = s.points[s.points.length - 1];
        else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
          const step = ev.key === "ArrowUp" ? -1 : 1;
          for (let j = si + step; j >= 0 && j < series.length && !next; j += step) {
            if (series[j].points.length)
              next = series[j].points.reduce((b, q) => (Math.abs(q.t - p.t) < Math.abs(b.t - p.t) ? q : b));
          }
        } else if (ev.key === "Escape") { tip.hidden = true; return; }
        else return;
        ev.preventDefault();
        if (next) go(next);
      });
    });
    tip.addEventListener("mouseleave", () => { tip.hidden = true; });
    fig.addEventListener("keydown", (ev) => { if (ev.key === "Escape") tip.hidden = true; });
  }

  // The chart of an assessment's labs and the case's medications, as a <figure>.
  function render({ labs, medications, cutoffsText, width }) {
    const fig = document.createElement("figure");
    fig.id = "chart";
    fig.className = "chart";
    const dated = labs.filter((l) => SERIES[l.test] && l.time);
    const undated = labs.filter((l) => SERIES[l.test] && !l.time).length;
    const cap = document.createElement("figcaption");
    if (!dated.length) {
      cap.textContent = "No dated counts to chart (the values are listed in the table below).";
      fig.append(cap);
      return fig;
    }
    const timed = dated.some((l) => /T(?!00:00)/.test(String(l.time)));
    const byTest = {};
    for (const l of dated) {
      const t = parseTime(l.time);
      (byTest[l.test] = byTest[l.test] || []).push({
        t, v: l.value, test: l.test,
        label: `${SERIES[l.test].name} ${num(l.value)} ${l.unit === "10^9/L" ? X109 : l.unit}, ${stamp(t, timed)}` +
          (l.derived ? " (derived)" : "") + (l.current ? " (current count)" : ""),
      });
    }
    for (const pts of Object.values(byTest)) pts.sort((a, b) => a.t - b.t);
    const times = dated.map((l) => parseTime(l.time));
    let x0 = Math.min(...times), x1 = Math.max(...times);
    const meds = exposures(medications);
    for (const m of meds) {                 // a drug started up to 120 days before the first count is drawn in full
      if (m.start !== null && m.start < x0 && x0 - m.start <= 120 * DAY) x0 = m.start;
      if (m.start !== null && m.start > x1 && m.start - x1 <= 14 * DAY) x1 = m.start;
      if (m.end !== null && m.end > x1 && m.end - x1 <= 14 * DAY) x1 = m.end;
    }
    const span = x1 - x0;
    const padT = span < 2 * DAY ? 3 * DAY : span * 0.05;
    x0 -= padT; x1 += padT;
    const drugs = meds.map((m) => ({ ...m, summary: `${m.name}: ` + [m.start !== null ? `started ${day(m.start)}` : "start not given",
      m.end !== null ? `stopped ${day(m.end)}` : m.status === "active" ? "still taken" : `${m.status}, end not given`].join(", ") }));
    const shown = drugs.filter((d) => (d.start ?? -Infinity) <= x1 && (d.end ?? Infinity) >= x0);
    const W = Math.max(300, Math.min(width || 720, 900));
    const main = ["anc", "wbc", "lymphocytes"].filter((k) => byTest[k]).map((k) => ({ test: k, points: byTest[k] }));
    const tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.hidden = true;
    tip.setAttribute("aria-hidden", "true");
    const panels = [];
    const drugRows = Math.min(shown.length, 4);
    if (main.length) {
      panels.push(panel({ width: W, height: 250, x0, x1, series: main, log: true, bands: cutoffs(cutoffsText),
        yLabel: `${X109} (log scale)`, drugs: shown, drugRows, timed,
        label: `White cell counts over time, ${X109} on a log scale, with the ANC tier bands` }));
    }
    for (const [test, yLabel, minTop] of [["platelets", `Platelets ${X109}`, 200], ["hemoglobin", "Hb g/dL", 12]]) {
      if (!byTest[test]) continue;
      panels.push(panel({ width: W, height: 90, x0, x1, series: [{ test, points: byTest[test] }], log: false, yLabel,
        minTop, drugs: shown, drugRows: main.length ? 0 : drugRows, timed,
        label: `${SERIES[test].name} over time` }));
    }
    const legend = document.createElement("ul");
    legend.className = "legend";
    for (const test of Object.keys(SERIES).filter((k) => byTest[k])) {
      const li = document.createElement("li");
      li.append(legendSwatch(test), ` ${SERIES[test].name} (${byTest[test].length} value${byTest[test].length > 1 ? "s" : ""})`);
      legend.append(li);
    }
    if (shown.length) {
      const li = document.createElement("li");
      const sw = svgEl(null, "svg", { width: 34, height: 14, viewBox: "0 0 34 14", "aria-hidden": "true", focusable: "false" });
      svgEl(sw, "line", { x1: 8, x2: 8, y1: 0, y2: 14, stroke: DRUG_COLOR, "stroke-width": 1.5 });
      svgEl(sw, "line", { x1: 26, x2: 26, y1: 0, y2: 14, stroke: DRUG_COLOR, "stroke-width": 1.5, "stroke-dasharray": "4 2" });
      li.append(sw, " drug start, stop");
      legend.append(li);
    }
    const last = main.length ? main[0].points[main[0].points.length - 1] : null;
    const parts = [];
    if (last) parts.push(`Latest ${last.label}.`);
    parts.push("Tab to the points, then use the arrow keys to move between them; each value and its date are also in the table below.");
    if (drugs.length) parts.push("Medications: " + drugs.map((d) => d.summary).join("; ") + ".");
    if (undated) parts.push(`${undated} undated value${undated > 1 ? "s are" : " is"} not charted.`);
    cap.textContent = parts.join(" ");
    const body = document.createElement("div");
    body.className = "chart-body";
    body.append(...panels);
    fig.append(body, legend, cap, tip);
    wireKeys(fig, [...main, ...["platelets", "hemoglobin"].filter((k) => byTest[k]).map((k) => ({ test: k, points: byTest[k] }))], tip);
    return fig;
  }

  return { render, parseTime, day, cutoffs, timeTicks };
})();
