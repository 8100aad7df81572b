// The drawing page: strokes on a canvas -> /api/predict -> bars, label, what the model saw, its
// layers and the training digits nearest to the drawing; all from one request per update.
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
let inputKind = "mouse"; // how the drawing on the pad was made: mouse, touch, pen or upload
let lastUpload = null; // the uploaded file the answer is about, if it was one
let background = null; // a test digit loaded from a run page (?run=NAME&test=INDEX), drawn under the strokes
let backgroundPixels = null; // its exact 28x28 pixels: sent as they are while nothing is drawn over them
let pointerTime = null; // when the pointer move that the request in flight answers happened
let sentAt = 0; // when that request was sent, and its answer read: the parts of the live loop
let receivedAt = 0;
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
  if (background) {
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(background, 0, 0, pad.width, pad.height);
  }
  ctx.strokeStyle = "#000";
  strokes.forEach(drawStroke);
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [position(event)];
  strokes.push(current);
  inputKind = ["mouse", "touch", "pen"].includes(event.pointerType) ? event.pointerType : "mouse";
  lastUpload = null;
  redraw();
});

pad.addEventListener("pointermove", (event) => {
  if (!current) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) current.push(position(e));
  redraw();
  if (performance.now() - lastSent > LIVE_MS) {
    if (!inFlight) pointerTime = event.timeStamp;
    predict();
  }
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
  background = backgroundPixels = lastUpload = null;
  redraw();
  showEmpty();
});

document.getElementById("undo").addEventListener("click", () => {
  strokes.pop();
  redraw();
  if (strokes.length || background) predict(); else showEmpty();
});

document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("run", runSelect.value);
  lastUpload = file;
  inputKind = "upload";
  form.append("fields", wantedFields().join(","));
  event.target.value = "";
  await send(fetch("api/predict", { method: "POST", body: form }));
});

document.getElementById("show-saliency").addEventListener("change", () => lastResult && showSeen(lastResult));
runSelect.addEventListener("change", () => {
  showRunInfo();
  showStoreStats();
  if (strokes.length || background) predict();
});

function wantedFields() {
  const run = runs.find((r) => r.name === runSelect.value);
  return ["saliency", "layers", ...(run && run.neighbours ? ["neighbours"] : [])];
}

async function predict() {
  if (!strokes.length && !background) return showEmpty();
  if (inFlight) { pending = true; return; } // one request at a time; the latest drawing goes next
  lastSent = performance.now();
  const input = strokes.length || !backgroundPixels ? { image: pad.toDataURL("image/png") } : { pixels: backgroundPixels, normalise: false };
  const body = JSON.stringify({ ...input, run: runSelect.value, fields: wantedFields() });
  sentAt = performance.now();
  await send(fetch("api/predict", { method: "POST", headers: { "Content-Type": "application/json" }, body }));
}

async function send(request) {
  inFlight = true;
  try {
    const response = await request;
    const result = await response.json();
    receivedAt = performance.now();
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
  li.innerHTML = `<span class="class">${digit}</span><span class="bar"><span class="fill"></span></span><span class="pct">0%</span>`;
  bars.appendChild(li);
}

function show(result) {
  lastResult = result;
  const label = document.getElementById("label");
  const confidence = document.getElementById("confidence");
  if (result.empty) return showEmpty(result);
  label.textContent = classNames()[result.label];
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
  document.getElementById("teach").hidden = !canKeep();
  document.getElementById("teach-note").textContent = "";
  document.getElementById("teach").classList.remove("noted");
  document.getElementById("unkeep").classList.remove("shown");
  // The layers and neighbours after the frame that shows the answer: the bars come first.
  const insight = () => { showLayers(result); showNeighbours(result); };
  requestAnimationFrame(() => setTimeout(insight));
  if (pointerTime !== null) {
    // The live loop a person feels: from the pointer move to the frame that shows its answer.
    const start = pointerTime;
    pointerTime = null;
    const [sent, received] = [sentAt, receivedAt];
    requestAnimationFrame(() => {
      const end = performance.now();
      performance.measure("pointer-to-bars", { start, end });
      performance.measure("encode", { start, end: sent }); // the canvas to a PNG, the request body
      performance.measure("request", { start: sent, end: received }); // the server, and the answer parsed
      performance.measure("render", { start: received, end }); // bars, layers and neighbours on screen
    });
  }
  document.getElementById("timing").textContent = `model: ${result.model_ms.toFixed(1)} ms (${result.run}, step ${result.step})`;
}

function showEmpty(result) {
  const label = document.getElementById("label");
  label.textContent = "–";
  label.classList.remove("unsure");
  delete label.dataset.label;
  document.getElementById("confidence").textContent = "draw a digit";
  document.getElementById("teach").hidden = true;
  for (const li of bars.children) {
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "0%";
    li.classList.remove("top");
  }
  seenCtx.clearRect(0, 0, seen.width, seen.height);
  layersBox.replaceChildren();
  neighboursList.replaceChildren();
  document.getElementById("detail").hidden = true;
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
function currentRun() {
  return runs.find((r) => r.name === runSelect.value);
}

// What the selected run predicts: the class names of its dataset, beside the bars and in the header.
function classNames() {
  const run = currentRun();
  return run ? run.class_names : [...Array(10).keys()].map(String);
}

function showRunInfo() {
  const run = currentRun();
  const accuracy = run && run.test_accuracy != null ? `, test accuracy ${(100 * run.test_accuracy).toFixed(2)}%` : "";
  document.getElementById("run-info").textContent = run ? `${run.model} (${run.dataset}), step ${run.step}${accuracy}` : "";
  const names = classNames();
  names.forEach((name, i) => { bars.children[i].querySelector(".class").textContent = name; });
  bars.classList.toggle("named", names.some((name) => name.length > 2));
  document.getElementById("run-page").href = run ? `runs/${encodeURIComponent(run.name)}` : "#";
  document.getElementById("neighbours-note").textContent = run && !run.neighbours ? `not shown: ${run.neighbours_problem}` : "";
}

async function loadRuns() {
  const info = await (await fetch("api/model")).json();
  runs = info.runs;
  if (runs.some((r) => r.neighbours_pending)) setTimeout(refreshRuns, 2000);
  for (const run of runs) {
    const option = document.createElement("option");
    option.value = option.textContent = run.name;
    option.selected = run.name === info.default;
    runSelect.appendChild(option);
  }
  const wanted = new URLSearchParams(location.search).get("run");
  if (wanted && runs.some((r) => r.name === wanted)) runSelect.value = wanted;
  showRunInfo();
}

// While a run's training set is still being embedded, ask again until its neighbours can be shown.
async function refreshRuns() {
  runs = (await (await fetch("api/model")).json()).runs;
  showRunInfo();
  if (runs.some((r) => r.neighbours_pending)) setTimeout(refreshRuns, 2000);
}

// A test digit from a run page: its exact pixels go to the model, its picture under the strokes.
async function loadTestDigit() {
  const index = new URLSearchParams(location.search).get("test");
  if (index === null) return;
  const response = await fetch(`api/digits/test/${encodeURIComponent(index)}?run=${encodeURIComponent(runSelect.value)}`);
  const digit = await response.json();
  if (!response.ok) return showError(digit.error);
  backgroundPixels = digit.pixels;
  const image = new ImageData(28, 28);
  digit.pixels.forEach((v, i) => { image.data.set([255 - v, 255 - v, 255 - v, 255], 4 * i); });
  background = document.createElement("canvas");
  background.width = background.height = 28;
  background.getContext("2d").putImageData(image, 0, 0);
  document.getElementById("run-info").textContent += ` — test digit #${digit.index}, labelled ${digit.label}`;
  redraw();
  predict();
}

redraw();
loadRuns().then(() => { showStoreStats(); return loadTestDigit(); });

// ---- Every layer: feature maps as tiles of one canvas per layer, dense units as bars ----

const layersBox = document.getElementById("layers");
const neighboursList = document.getElementById("neighbours");
const TILE_COLUMNS = 16;

function decode(base64) {
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

// Where tile c of a layer of HxW maps sits on its canvas (1 px between tiles).
function tileOrigin(c, h, w) {
  return [(c % TILE_COLUMNS) * (w + 1), Math.floor(c / TILE_COLUMNS) * (h + 1)];
}

function layerRow(layer) {
  let row = layersBox.querySelector(`[data-layer="${CSS.escape(layer.name)}"]`);
  if (row) return row;
  row = document.createElement("div");
  row.className = "layer";
  row.dataset.layer = layer.name;
  const caption = document.createElement("p");
  caption.className = "layer-caption";
  row.appendChild(caption);
  if (layer.kind === "maps") {
    const [h, w, c] = layer.shape;
    const canvas = document.createElement("canvas");
    canvas.className = "maps";
    const columns = Math.min(c, TILE_COLUMNS);
    canvas.width = columns * (w + 1) - 1;
    canvas.height = Math.ceil(c / TILE_COLUMNS) * (h + 1) - 1;
    canvas.style.width = `${Math.min(canvas.width * 3, 16 * 30)}px`; // CSSOM: allowed by the CSP
    canvas.tabIndex = 0;
    canvas.setAttribute("aria-label", `${layer.name}: ${c} feature maps`);
    const pick = (event) => {
      const box = canvas.getBoundingClientRect();
      const x = Math.floor((event.clientX - box.left) * canvas.width / box.width / (w + 1));
      const y = Math.floor((event.clientY - box.top) * canvas.height / box.height / (h + 1));
      const channel = y * TILE_COLUMNS + x;
      if (x < columns && channel < c) showDetail(layer.name, channel);
    };
    canvas.addEventListener("mousemove", pick);
    canvas.addEventListener("click", pick);
    canvas.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(layer.name, 0); });
    row.appendChild(canvas);
  } else {
    const list = document.createElement("ol");
    list.className = "units";
    row.appendChild(list);
  }
  layersBox.appendChild(row);
  return row;
}

function showLayers(result) {
  if (!result.layers) return;
  const names = new Set(result.layers.map((l) => l.name));
  for (const row of [...layersBox.children]) if (!names.has(row.dataset.layer)) row.remove(); // another run's
  for (const layer of result.layers) {
    const row = layerRow(layer);
    const levels = decode(layer.levels);
    const range = `${layer.low.toFixed(2)} … ${layer.high.toFixed(2)}`;
    if (layer.kind === "maps") {
      const [h, w, c] = layer.shape;
      row.querySelector(".layer-caption").textContent = `${layer.name}: ${c} maps of ${h}×${w} (black ${range} white)`;
      const canvas = row.querySelector("canvas");
      const image = new ImageData(canvas.width, canvas.height);
      for (let ch = 0; ch < c; ch++) {
        const [x0, y0] = tileOrigin(ch, h, w);
        for (let y = 0; y < h; y++) {
          for (let x = 0; x < w; x++) {
            const v = levels[(y * w + x) * c + ch];
            image.data.set([v, v, v, 255], 4 * ((y0 + y) * canvas.width + x0 + x));
          }
        }
      }
      canvas.getContext("2d").putImageData(image, 0, 0);
    } else {
      showUnits(row, layer, levels, range);
    }
  }
  if (detailShown) showDetail(...detailShown);
}

const STRONGEST = 12; // units of a dense layer shown, the most active first

function showUnits(row, layer, levels, range) {
  const value = (i) => layer.low + (levels[i] / 255) * (layer.high - layer.low);
  const order = [...levels.keys()].sort((a, b) => levels[b] - levels[a]).slice(0, STRONGEST);
  row.querySelector(".layer-caption").textContent = `${layer.name}: the ${STRONGEST} strongest of ${layer.shape[0]} units (${range})`;
  const list = row.querySelector(".units");
  list.replaceChildren(...order.map((i) => {
    const li = document.createElement("li");
    li.dataset.unit = i;
    li.dataset.value = value(i).toFixed(4);
    const name = document.createElement("span");
    name.textContent = `#${i}`;
    const bar = document.createElement("span");
    bar.className = "unit-bar";
    bar.style.width = `${(100 * levels[i]) / 255}%`;
    const track = document.createElement("span");
    track.className = "unit-track";
    track.appendChild(bar);
    const text = document.createElement("span");
    text.textContent = value(i).toFixed(2);
    li.append(name, track, text);
    return li;
  }));
}

// ---- A feature map large, beside the kernel that made it ----

const kernels = new Map(); // "run/layer" -> the kernel as the API sends it
let detailShown = null;

async function showDetail(name, channel) {
  if (!lastResult || !lastResult.layers) return;
  const index = lastResult.layers.findIndex((l) => l.name === name);
  const layer = lastResult.layers[index];
  detailShown = [name, channel];
  const figure = document.getElementById("detail");
  figure.hidden = false;
  const [h, w, c] = layer.shape;
  document.getElementById("detail-title").textContent = `${name}, map ${channel} of ${c}`;
  const levels = decode(layer.levels);
  const map = new ImageData(w, h);
  for (let i = 0; i < h * w; i++) { const v = levels[i * c + channel]; map.data.set([v, v, v, 255], 4 * i); }
  drawScaled(document.getElementById("detail-map"), map);
  const note = document.getElementById("detail-kernel-note");
  const info = runs.find((r) => r.name === lastResult.run).layers[index];
  const kernelCanvas = document.getElementById("detail-kernel");
  if (!info.has_kernel) {
    kernelCanvas.getContext("2d").clearRect(0, 0, kernelCanvas.width, kernelCanvas.height);
    const before = index > 0 ? lastResult.layers[index - 1].name : "the input";
    note.textContent = `no kernel: map ${channel} of ${before}, pooled`;
    return;
  }
  const key = `${lastResult.run}/${name}`;
  if (!kernels.has(key)) {
    const response = await fetch(`api/runs/${encodeURIComponent(lastResult.run)}/layers/${encodeURIComponent(name)}/kernel`);
    kernels.set(key, await response.json());
  }
  drawKernel(kernelCanvas, kernels.get(key), channel);
  note.textContent = `its kernel: ${kernels.get(key).shape.slice(0, 3).join("×")} weights (red +, blue −)`;
}

function drawScaled(canvas, image) {
  const tmp = document.createElement("canvas");
  tmp.width = image.width;
  tmp.height = image.height;
  tmp.getContext("2d").putImageData(image, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

// The kernel of one output channel: one kh x kw tile per input channel, weights in red and blue.
function drawKernel(canvas, kernel, out) {
  const [kh, kw, cin, cout] = kernel.shape;
  const levels = decode(kernel.levels);
  const columns = Math.ceil(Math.sqrt(cin));
  const rows = Math.ceil(cin / columns);
  const image = new ImageData(columns * (kw + 1) - 1, rows * (kh + 1) - 1);
  const extent = Math.max(Math.abs(kernel.low), Math.abs(kernel.high)) || 1;
  for (let ci = 0; ci < cin; ci++) {
    const x0 = (ci % columns) * (kw + 1);
    const y0 = Math.floor(ci / columns) * (kh + 1);
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const level = levels[((i * kw + j) * cin + ci) * cout + out];
        const v = (kernel.low + (level / 255) * (kernel.high - kernel.low)) / extent;
        const p = 4 * ((y0 + i) * image.width + x0 + j);
        image.data.set(v >= 0 ? [255, 255 * (1 - v), 255 * (1 - v), 255] : [255 * (1 + v), 255 * (1 + v), 255, 255], p);
      }
    }
  }
  drawScaled(canvas, image);
}

// ---- The nearest training digits ----

function showNeighbours(result) {
  if (!result.neighbours) return neighboursList.replaceChildren();
  neighboursList.replaceChildren(...result.neighbours.map((n) => {
    const li = document.createElement("li");
    li.dataset.label = n.label;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    const image = new ImageData(28, 28);
    decode(n.pixels).forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `training digit #${n.index}, a ${n.label}`);
    canvas.title = `#${n.index}, distance ${n.distance.toFixed(2)}`;
    const label = document.createElement("span");
    label.textContent = n.label;
    li.append(canvas, label);
    return li;
  }));
}

// ---- Teach it: a person's "Right" or "Wrong: it is D" keeps the drawing in the store ----

// A drawing or an upload can be kept; a test digit loaded from a run page (nothing drawn) not.
function canKeep() {
  // The store keeps labelled digits: runs of other datasets are not taught here.
  const digits = (currentRun() || {}).dataset === "mnist";
  return Boolean(digits && lastResult && !lastResult.empty && (strokes.length || lastUpload));
}

async function keepImage() {
  if (inputKind !== "upload") return pad.toDataURL("image/png");
  const bitmap = await createImageBitmap(lastUpload);
  const scale = Math.min(1, 1024 / Math.max(bitmap.width, bitmap.height)); // the store keeps <= 1024 px a side
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(28, Math.round(bitmap.width * scale));
  canvas.height = Math.max(28, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/png");
}

// The delete tokens of this visitor's own drawings (the server keeps only their hashes): the newest
// few, so "Undo" works after a reload too.
const TOKENS_KEPT = 20;
function ownTokens() {
  try { return JSON.parse(localStorage.getItem("digitjax.deleteTokens")) || {}; } catch { return {}; }
}
function rememberToken(id, token) {
  const tokens = ownTokens();
  tokens[id] = token;
  const ids = Object.keys(tokens).map(Number).sort((a, b) => b - a).slice(0, TOKENS_KEPT);
  localStorage.setItem("digitjax.deleteTokens", JSON.stringify(Object.fromEntries(ids.map((i) => [i, tokens[i]]))));
}

async function keep(label) {
  if (!canKeep()) return;
  const note = document.getElementById("teach-note");
  const body = JSON.stringify({ image: await keepImage(), label, kind: inputKind, run: runSelect.value });
  const response = await fetch("api/drawings", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const stored = await response.json();
  note.textContent = response.ok ? `Kept as a ${stored.label} (#${stored.id}). Thanks!` : `Not kept: ${stored.error}`;
  if (response.ok) {
    document.getElementById("teach").dataset.kept = stored.id;
    rememberToken(stored.id, stored.delete_token);
  }
  document.getElementById("unkeep").classList.toggle("shown", response.ok);
  document.getElementById("teach").classList.add("noted");
  showStoreStats();
}

async function unkeep() {
  const id = document.getElementById("teach").dataset.kept;
  const token = ownTokens()[id];
  if (!id || !token) return;
  const response = await fetch(`api/drawings/${encodeURIComponent(id)}`, {
    method: "DELETE", headers: { Authorization: `Bearer ${token}` },
  });
  const answer = await response.json();
  document.getElementById("teach-note").textContent = response.ok ? `#${id} is not kept.` : `Still kept: ${answer.error}`;
  if (response.ok) {
    const tokens = ownTokens();
    delete tokens[id];
    localStorage.setItem("digitjax.deleteTokens", JSON.stringify(tokens));
    delete document.getElementById("teach").dataset.kept;
    document.getElementById("unkeep").classList.remove("shown");
  }
  showStoreStats();
}
document.getElementById("unkeep").addEventListener("click", unkeep);

document.getElementById("right").addEventListener("click", () => lastResult && keep(lastResult.label));
for (const button of document.querySelectorAll("#teach .digit")) {
  button.addEventListener("click", () => keep(Number(button.dataset.digit)));
}
// Keyboard: a digit key says which digit it is (the answer's digit: right; another: wrong).
document.addEventListener("keydown", (event) => {
  if (event.target.closest("select, input") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[0-9]$/.test(event.key) && !document.getElementById("teach").hidden) keep(Number(event.key));
});

async function showStoreStats() {
  const response = await fetch(`api/drawings/stats?run=${encodeURIComponent(runSelect.value)}`);
  const stats = await response.json();
  if (!response.ok) return;
  const line = document.getElementById("store-stats");
  line.dataset.count = stats.count;
  line.textContent = stats.count
    ? `${stats.count} labelled drawings kept; ${stats.run} gets ${(100 * stats.accuracy).toFixed(1)}% of them right.`
    : "No labelled drawings kept yet.";
}
