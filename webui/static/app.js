// The drawing page: strokes on a canvas -> /api/predict -> bars, label, and what the model saw.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const runSelect = document.getElementById("run");
const strokes = []; // each stroke: [{x, y}, ...] in canvas pixels
let current = null;
let inFlight = false;
let pending = false;
let lastSent = 0;
let lastResult = null;
const LIVE_MS = 150; // at most one live prediction per this many ms while drawing

// MNIST's strokes are ~2.5 px of a 20 px digit: about an eighth of the digit's height.
ctx.lineWidth = pad.width / 13;
ctx.lineCap = "round";
ctx.lineJoin = "round";

function position(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.width / box.width, y: (event.clientY - box.top) * pad.height / box.height };
}

function drawStroke(points) {
  ctx.beginPath();
  ctx.moveTo(points[0].x, points[0].y);
  if (points.length === 1) ctx.lineTo(points[0].x + 0.1, points[0].y);
  for (let i = 1; i < points.length - 1; i++) {
    const mid = { x: (points[i].x + points[i + 1].x) / 2, y: (points[i].y + points[i + 1].y) / 2 };
    ctx.quadraticCurveTo(points[i].x, points[i].y, mid.x, mid.y); // smooth through the midpoints
  }
  if (points.length > 1) ctx.lineTo(points[points.length - 1].x, points[points.length - 1].y);
  ctx.stroke();
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#000";
  strokes.forEach(drawStroke);
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [position(event)];
  strokes.push(current);
  redraw();
});

pad.addEventListener("pointermove", (event) => {
  if (!current) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) current.push(position(e));
  redraw();
  if (performance.now() - lastSent > LIVE_MS) predict();
});

function endStroke(event) {
  if (!current) return;
  event.preventDefault();
  current = null;
  predict();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  strokes.length = 0;
  redraw();
  showEmpty();
});

document.getElementById("undo").addEventListener("click", () => {
  strokes.pop();
  redraw();
  if (strokes.length) predict(); else showEmpty();
});

document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("run", runSelect.value);
  event.target.value = "";
  await send(fetch("api/predict", { method: "POST", body: form }));
});

document.getElementById("show-saliency").addEventListener("change", () => lastResult && showSeen(lastResult));
runSelect.addEventListener("change", () => { showRunInfo(); if (strokes.length) predict(); });

async function predict() {
  if (!strokes.length) return showEmpty();
  if (inFlight) { pending = true; return; } // one request at a time; the latest drawing goes next
  lastSent = performance.now();
  const body = JSON.stringify({ image: pad.toDataURL("image/png"), run: runSelect.value });
  await send(fetch("api/predict", { method: "POST", headers: { "Content-Type": "application/json" }, body }));
}

async function send(request) {
  inFlight = true;
  try {
    const response = await request;
    const result = await response.json();
    if (!response.ok) showError(result.error || response.statusText);
    else show(result);
  } catch (error) {
    showError(String(error));
  } finally {
    inFlight = false;
    if (pending) { pending = false; predict(); }
  }
}

const bars = document.getElementById("bars");
for (let digit = 0; digit < 10; digit++) {
  const li = document.createElement("li");
  li.innerHTML = `<span>${digit}</span><span class="bar"><span class="fill"></span></span><span class="pct">0%</span>`;
  bars.appendChild(li);
}

function show(result) {
  lastResult = result;
  const label = document.getElementById("label");
  const confidence = document.getElementById("confidence");
  if (result.empty) return showEmpty(result);
  label.textContent = result.label;
  label.classList.toggle("unsure", result.unsure);
  label.dataset.label = result.label;
  confidence.textContent = result.unsure
    ? `unsure (${result.reason}) — ${(100 * result.confidence).toFixed(1)}%`
    : `${(100 * result.confidence).toFixed(1)}% sure`;
  result.probabilities.forEach((p, digit) => {
    const li = bars.children[digit];
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
    li.classList.toggle("top", digit === result.label);
  });
  showSeen(result);
  document.getElementById("timing").textContent = `model: ${result.model_ms.toFixed(1)} ms (${result.run}, step ${result.step})`;
}

function showEmpty(result) {
  const label = document.getElementById("label");
  label.textContent = "–";
  label.classList.remove("unsure");
  delete label.dataset.label;
  document.getElementById("confidence").textContent = "draw a digit";
  for (const li of bars.children) {
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "0%";
    li.classList.remove("top");
  }
  seenCtx.clearRect(0, 0, seen.width, seen.height);
  lastResult = result || null;
}

function showError(message) {
  document.getElementById("confidence").textContent = `error: ${message}`;
}

function showSeen(result) {
  const image = seenCtx.createImageData(28, 28);
  const saliency = document.getElementById("show-saliency").checked ? result.saliency : null;
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = result.input[y][x];
      const s = saliency ? saliency[y][x] : 0;
      const i = 4 * (28 * y + x);
      image.data[i] = Math.max(v, 255 * s); // saliency in red over the white ink
      image.data[i + 1] = v * (1 - s);
      image.data[i + 2] = v * (1 - s);
      image.data[i + 3] = 255;
    }
  }
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = 28;
  tmp.getContext("2d").putImageData(image, 0, 0);
  seenCtx.imageSmoothingEnabled = false;
  seenCtx.drawImage(tmp, 0, 0, seen.width, seen.height);
}

let runs = [];
function showRunInfo() {
  const run = runs.find((r) => r.name === runSelect.value);
  const accuracy = run && run.test_accuracy != null ? `, test accuracy ${(100 * run.test_accuracy).toFixed(2)}%` : "";
  document.getElementById("run-info").textContent = run ? `${run.model}, step ${run.step}${accuracy}` : "";
}

async function loadRuns() {
  const info = await (await fetch("api/model")).json();
  runs = info.runs;
  for (const run of runs) {
    const option = document.createElement("option");
    option.value = option.textContent = run.name;
    option.selected = run.name === info.default;
    runSelect.appendChild(option);
  }
  showRunInfo();
}

redraw();
loadRuns();
