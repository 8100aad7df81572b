// A run page (/runs/NAME, or /runs/A/vs/B side by side): learning curves, confusion matrix,
// per-digit accuracy and the test mistakes, from GET /api/runs/NAME.
"use strict";

const main = document.getElementById("runs");
const root = main.dataset.root;
const names = main.dataset.runs ? main.dataset.runs.split("/") : [];
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = { train: "#8e8e93", val: "#ff9f0a", test: "#0a84ff", drawings: "#bf5af2" };

document.getElementById("compare").addEventListener("change", (event) => {
  const other = event.target.value;
  const path = other && other !== names[0] ? `runs/${encodeURIComponent(names[0])}/vs/${encodeURIComponent(other)}` : `runs/${encodeURIComponent(names[0])}`;
  location.href = root + path;
});
if (names[1]) document.getElementById("compare").value = names[1];

function element(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function svg(tag, attributes) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  return e;
}

// One chart of `key` against step, a line per split; log scale for the loss.
function chart(curves, key, title, log) {
  const W = 300, H = 180, L = 44, B = 24, T = 18;
  const value = (r) => (log ? Math.log10(Math.max(r[key], 1e-6)) : r[key]);
  const rows = curves.filter((r) => typeof r[key] === "number");
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart" });
  box.appendChild(svg("text", { x: L, y: 12, class: "chart-title" })).textContent = title;
  if (!rows.length) return box;
  const steps = rows.map((r) => r.step), values = rows.map(value);
  let [x0, x1, y0, y1] = [Math.min(...steps), Math.max(...steps), Math.min(...values), Math.max(...values)];
  if (!log && key === "accuracy") y0 = Math.max(y0, y1 - 0.1); // the last tenth is what differs
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1e-3;
  const px = (s) => L + ((s - x0) / (x1 - x0)) * (W - L - 8);
  const py = (v) => T + (1 - (Math.max(v, y0) - y0) / (y1 - y0)) * (H - T - B);
  box.appendChild(svg("line", { x1: L, y1: H - B, x2: W - 8, y2: H - B, class: "axis" }));
  box.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    const label = log ? (10 ** v).toPrecision(2) : key === "accuracy" ? `${(100 * v).toFixed(1)}%` : v.toFixed(2);
    box.appendChild(svg("text", { x: L - 4, y: py(v) + 4, class: "tick", "text-anchor": "end" })).textContent = label;
  }
  box.appendChild(svg("text", { x: W - 8, y: H - 6, class: "tick", "text-anchor": "end" })).textContent = `step ${x1}`;
  for (const split of Object.keys(COLOURS)) {
    const own = rows.filter((r) => r.split === split);
    if (!own.length) continue;
    const points = own.map((r) => `${px(r.step).toFixed(1)},${py(value(r)).toFixed(1)}`).join(" ");
    box.appendChild(svg("polyline", { points, fill: "none", stroke: COLOURS[split], "stroke-width": 1.5, "data-split": split }));
    const last = own[own.length - 1];
    box.appendChild(svg("circle", { cx: px(last.step), cy: py(value(last)), r: 2.5, fill: COLOURS[split] }));
  }
  return box;
}

function legend() {
  const p = element("p", undefined, "legend muted");
  for (const [split, colour] of Object.entries(COLOURS)) {
    const swatch = element("span", "", "swatch");
    swatch.style.background = colour;
    p.append(swatch, ` ${split} `);
  }
  return p;
}

function showCurves(section, curves) {
  const box = section.querySelector(".charts");
  if (!curves.length) return box.replaceChildren(element("p", "no metrics.jsonl in this run", "muted"));
  box.replaceChildren(chart(curves, "loss", "loss (cross-entropy, log scale)", true), chart(curves, "accuracy", "accuracy", false), legend());
}

function showConfusion(section, counts) {
  const table = section.querySelector(".confusion");
  const head = element("tr");
  head.append(element("th", ""), ...counts.map((_, j) => element("th", j)));
  const most = Math.max(...counts.flatMap((row, i) => row.filter((_, j) => j !== i)), 1);
  const rows = counts.map((row, i) => {
    const tr = element("tr");
    tr.appendChild(element("th", i));
    row.forEach((n, j) => {
      const td = element("td", n || "");
      td.dataset.count = n;
      // The diagonal in green; mistakes in red, by their share of the most frequent mistake.
      td.style.background = i === j ? "#30a14e33" : n ? `rgba(255, 59, 48, ${(0.15 + 0.85 * n / most).toFixed(3)})` : "";
      tr.appendChild(td);
    });
    return tr;
  });
  table.replaceChildren(head, ...rows);
}

function showPerDigit(section, perClass) {
  const list = section.querySelector(".per-digit");
  list.replaceChildren(...Object.entries(perClass).map(([digit, accuracy]) => {
    const li = element("li");
    li.dataset.accuracy = accuracy;
    const track = element("span", undefined, "bar");
    const fill = element("span", undefined, "fill");
    // The bar spans 95-100%: every digit is above 95% and the differences are in the last points.
    fill.style.width = `${Math.max(0, Math.min(100, (accuracy - 0.95) * 2000)).toFixed(1)}%`;
    track.appendChild(fill);
    li.append(element("span", digit), track, element("span", `${(100 * accuracy).toFixed(2)}%`, "pct"));
    return li;
  }));
}

function showMistakes(section, name, mistakes) {
  const list = section.querySelector(".mistakes");
  list.replaceChildren(...mistakes.map((m) => {
    const li = element("li");
    const link = element("a");
    link.href = `${root}?run=${encodeURIComponent(name)}&test=${m.index}`;
    link.title = `test digit #${m.index}: labelled ${m.label}, answered ${m.predicted} (${(100 * m.confidence).toFixed(0)}%)`;
    const img = element("img");
    img.src = m.image;
    img.alt = link.title;
    link.append(img, element("span", `${m.label}→${m.predicted}`));
    li.appendChild(link);
    return li;
  }));
}

async function load(section) {
  const name = section.dataset.run;
  const status = section.querySelector(".status");
  const response = await fetch(`${root}api/runs/${encodeURIComponent(name)}`);
  const info = await response.json();
  if (!response.ok) { status.textContent = `error: ${info.error}`; return; }
  const run = info.run;
  const accuracy = info.report ? `, test accuracy ${(100 * info.report.test_accuracy).toFixed(2)}% (${info.report.test_errors} errors)` : "";
  section.querySelector(".summary").textContent = `${run.model}, step ${run.step}${accuracy}`;
  showCurves(section, info.curves);
  if (info.report_status === "making") {
    status.textContent = "making the evaluation report (once; the rest of the app keeps answering)…";
    setTimeout(() => load(section), 1000);
    return;
  }
  if (info.report_status === "failed") { status.textContent = `no report: ${info.report_problem}`; return; }
  status.textContent = "";
  section.dataset.ready = "true";
  showConfusion(section, info.report.confusion_matrix);
  showPerDigit(section, info.report.per_class_accuracy);
  showMistakes(section, name, info.mistakes);
  const shown = info.mistakes.length, all = info.report.test_errors;
  section.querySelector(".mistakes-count").textContent = shown < all ? `(the ${shown} most confident of ${all})` : `(all ${all})`;
}

document.querySelectorAll("section.run").forEach(load);
