// manualbp playground: draws what the server computes. No number shown here is computed in the
// page: every Z, δ, W, δW, loss and formula comes from the server (manualbp's engine, in Python).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const pg = { session: null, state: null, point: 0, selected: null, playing: false, stepTimes: [], requests: 0, answered: 0 };
window.playground = pg; // for the tests: the session id and the measured step times

// ---------------------------------------------------------------------------------------------
// Talking to the server
// ---------------------------------------------------------------------------------------------

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.classList.toggle("shown", Boolean(text));
}

class Stale extends Error {} // an answer overtaken by a later request's: the later one is what the page shows

async function api(path, body) {
  const sent = ++pg.requests; // the server answers requests in parallel: an earlier one may answer last
  const response = await fetch("/api/" + path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `the server answered ${response.status}` }; }
  if (sent < pg.answered) throw new Stale(path);
  pg.answered = sent;
  if (!response.ok || data.error) {
    showMessage(data.error || `the server answered ${response.status}`);
    throw new Error(data.error);
  }
  showMessage("");
  return data;
}

function numberOrText(text) {
  const trimmed = String(text).trim();
  const value = Number(trimmed);
  return trimmed !== "" && Number.isFinite(value) ? value : trimmed; // the server says what is wrong
}

function readConfig() {
  const hiddenText = $("hidden").value.trim();
  return {
    dataset: $("dataset").value,
    function: $("function").value,
    points: Number($("points").value),
    noise: Number($("noise").value),
    hidden: hiddenText === "" ? [] : hiddenText.split(/[ ,]+/).filter((s) => s).map(numberOrText),
    activation: $("activation").value,
    loss: $("loss").value,
    lr: numberOrText($("lr").value),
    batch: numberOrText($("batch").value),
    seed: numberOrText($("seed").value),
  };
}

function request() {
  return { session: pg.session, point: pg.point, selected: pg.selected };
}

async function configure() {
  stopPlaying();
  $("function-row").style.display = $("dataset").value === "function" ? "block" : "none";
  $("points").disabled = $("noise").disabled = $("dataset").value === "xor"; // the slide's four exact points
  try {
    pg.point = 0;
    pg.selected = null;
    const state = await api("config", { session: pg.session, config: readConfig() });
    render(state);
  } catch (e) { /* the message is shown */ }
}

async function step(count = 1, animate = true) {
  const start = performance.now();
  const state = await api("step", { ...request(), steps: count });
  render(state);
  const elapsed = performance.now() - start;
  if (count === 1) {
    pg.stepTimes.push(elapsed);
    $("step-time").textContent = elapsed.toFixed(1) + " ms";
  }
  if (animate) flowAnimation();
  return state;
}

async function playLoop() {
  while (pg.playing) {
    try {
      const state = await step(1, false);
      if (state.diverged) { stopPlaying(); showMessage("the loss is no longer finite: lower the learning rate and press Reset"); }
    } catch (e) { if (!(e instanceof Stale)) stopPlaying(); }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

function stopPlaying() {
  pg.playing = false;
  $("play").textContent = "Play";
}

async function refresh() {
  try { render(await api("state", request())); } catch (e) { /* shown */ }
}

// ---------------------------------------------------------------------------------------------
// Drawing the state
// ---------------------------------------------------------------------------------------------

const fmt = (x) => (x === null || x === undefined ? "NaN" : Number(x).toPrecision(4));
const precise = (x) => (x === null || x === undefined ? "NaN" : Number(x).toPrecision(10));
const row = (values, f = fmt) => (Array.isArray(values) ? "[" + values.map(f).join(", ") + "]" : f(values));
const mode = () => ($("mode-backward").checked ? "backward" : "forward");

function render(state) {
  pg.state = state;
  $("steps").textContent = state.steps;
  $("loss-value").textContent = fmt(state.loss);
  $("plateau").textContent = state.plateau || ""; // XOR stuck where the gradients are tiny: named, not hidden
  drawSurface(state);
  drawLosses(state);
  drawGraph(state);
  drawNeurons(state);
  drawDetails(state);
}

function classColour(value, alpha) { // value in [0, 1]: orange (class 0) to blue (class 1)
  const v = Math.min(1, Math.max(0, value === null ? 0.5 : value));
  const r = Math.round(245 * (1 - v) + 30 * v), g = Math.round(124 * (1 - v) + 136 * v), b = Math.round(0 * (1 - v) + 229 * v);
  return `rgba(${r},${g},${b},${alpha})`;
}

function lighter(value) { // the class colour mixed with white: the background of the decision boundary
  const v = Math.min(1, Math.max(0, value === null ? 0.5 : value));
  const mix = (c0, c1) => Math.round(0.55 * 255 + 0.45 * (c0 * (1 - v) + c1 * v));
  return `rgb(${mix(245, 30)},${mix(124, 136)},${mix(0, 229)})`;
}

function drawSurface(state) {
  const canvas = $("surface"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  let toX, toY;
  if (state.boundary) {
    const { low, high, size, values } = state.boundary;
    const cell = W / size;
    for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) {
      ctx.fillStyle = lighter(values[i][j]);
      ctx.fillRect(Math.floor(j * cell), Math.floor(H - (i + 1) * cell), Math.ceil(cell) + 1, Math.ceil(cell) + 1);
    }
    const span = high - low;
    toX = (x) => ((x - low) / span) * W;
    toY = (y) => H - ((y - low) / span) * H;
  } else {
    const ys = state.labels.concat(state.curve.y.filter((y) => y !== null));
    const lo = Math.min(...ys) - 0.1, hi = Math.max(...ys) + 0.1;
    toX = (x) => ((x + 1.1) / 2.2) * W;
    toY = (y) => H - ((y - lo) / (hi - lo)) * H;
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 2; ctx.beginPath();
    state.curve.x.forEach((x, k) => { const y = state.curve.y[k]; if (y !== null) ctx[k ? "lineTo" : "moveTo"](toX(x), toY(y)); });
    ctx.stroke();
  }
  pg.pointPixels = state.points.map((p, k) => [toX(p[0]), toY(state.boundary ? p[1] : state.labels[k])]);
  pg.pointPixels.forEach(([x, y], k) => {
    const radius = state.points.length <= 20 ? 7 : 3.5; // the XOR slide's four points: large
    ctx.beginPath(); ctx.arc(x, y, k === state.point ? radius + 2.5 : radius, 0, 2 * Math.PI);
    ctx.fillStyle = state.classify ? classColour(state.labels[k], 1) : "#f57c00";
    ctx.fill(); ctx.lineWidth = k === state.point ? 2.5 : 1; ctx.strokeStyle = k === state.point ? "#000" : "#fff"; ctx.stroke();
  });
}

function drawLosses(state) {
  const canvas = $("losses"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  const all = state.trainLosses.concat(state.testLosses).filter((v) => v !== null && v > 0);
  if (!all.length) return;
  const lo = Math.log(Math.min(...all)), hi = Math.log(Math.max(...all)) + 1e-9;
  const n = Math.max(2, state.trainLosses.length);
  [[state.testLosses, "#90a4ae"], [state.trainLosses, "#263238"]].forEach(([values, colour]) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.beginPath();
    values.forEach((v, k) => {
      if (v === null || v <= 0) return;
      const x = 4 + (k / (n - 1)) * (W - 8), y = H - 6 - ((Math.log(v) - lo) / (hi - lo || 1)) * (H - 24); // below the title
      ctx[k ? "lineTo" : "moveTo"](x, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText(`loss ${fmt(state.loss)} (${state.lossName}), log scale`, 6, 12);
}

function svgElement(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  Object.entries(attributes).forEach(([key, value]) => element.setAttribute(key, value));
  if (parent) parent.appendChild(element);
  return element;
}

function selectItem(name) {
  pg.selected = name;
  refresh();
}

function drawGraph(state) {
  const svg = $("graph");
  svg.innerHTML = "";
  svg.classList.toggle("backward", mode() === "backward");
  const items = state.nodes.concat([{ name: "Loss", kind: "loss", forward: state.lossNode.forward, backward: "δL = 1" }]);
  const box = 104, gap = 116, width = items.length * gap + 20, y = 120;
  svg.setAttribute("viewBox", `0 0 ${width} 190`);
  // shrunk to fit the panel down to 75 % (the text stays readable); a deeper net's graph is wider, the panel scrolls
  const panel = svg.parentElement.clientWidth - 2, shown = Math.max(panel, GRAPH_MIN_SCALE * width);
  svg.style.width = shown + "px";
  svg.style.height = Math.min(190, (190 * shown) / width) + "px";
  const defs = svgElement("defs", {}, svg);
  const marker = svgElement("marker", { id: "head", markerWidth: 8, markerHeight: 8, refX: 7, refY: 4, orient: "auto" }, defs);
  svgElement("path", { d: "M0,0 L8,4 L0,8 z", fill: mode() === "backward" ? "#d84315" : "#546e7a" }, marker);
  const backward = mode() === "backward";
  pg.graphNodes = {};
  items.forEach((item, k) => {
    const x = 10 + k * gap;
    if (k > 0) {
      const [from, to] = backward ? [x + 2, x - gap + box] : [x - gap + box, x - 2];
      svgElement("line", { class: "arrow", x1: from, y1: y, x2: to, y2: y, "marker-end": "url(#head)" }, svg);
    }
    if (item.parameter) { // W above Z = XW, b above Z = Z + b, as on the slide
      const p = svgElement("g", { class: "node param" + (pg.selected === item.parameter ? " selected" : ""), "data-name": item.parameter }, svg);
      svgElement("rect", { x: x + box / 2 - 28, y: 14, width: 56, height: 30 }, p);
      svgElement("text", { x: x + box / 2, y: 34 }, p).textContent = (backward ? "δ" : "") + item.parameter;
      p.addEventListener("click", () => selectItem(item.parameter));
      pg.graphNodes[item.parameter] = p;
      svgElement("line", { class: "arrow", x1: x + box / 2, y1: backward ? y - 30 : 46, x2: x + box / 2, y2: backward ? 48 : y - 32, "marker-end": "url(#head)" }, svg);
    }
    const g = svgElement("g", { class: "node" + (item.kind === "loss" ? " loss" : "") + (pg.selected === item.name ? " selected" : ""), "data-name": item.name }, svg);
    svgElement("rect", { x: x, y: y - 30, width: box, height: 64 }, g);
    const name = (backward ? "δ" : "") + item.name;
    svgElement("text", { x: x + box / 2, y: y - 14 }, g).textContent = name;
    const formula = backward ? item.backward : item.forward;
    formulaLines(formula, name).forEach((line, i) => {
      const text = svgElement("text", { class: "small", x: x + box / 2, y: y + 1 + 12 * i }, g);
      text.textContent = line;
      if (text.getComputedTextLength() > box - 6) { // squeezed into the box rather than cut off
        text.setAttribute("textLength", box - 6);
        text.setAttribute("lengthAdjust", "spacingAndGlyphs");
      }
    });
    svgElement("title", {}, g).textContent = formula;
    g.addEventListener("click", () => selectItem(item.name));
    pg.graphNodes[item.name] = g;
  });
}

const GRAPH_MIN_SCALE = 0.75; // with 11.5 px formulas: at least 8.6 px on screen

function formulaLines(formula, name, width = 20) { // the formula after "name = ", on up to 3 lines of ~width characters
  const text = formula.startsWith(name + " = ") ? formula.slice(name.length + 3) : formula;
  const lines = [];
  text.split(" ").forEach((word) => {
    const last = lines.length - 1;
    if (last >= 0 && (lines[last] + " " + word).length <= width) lines[last] += " " + word;
    else lines.push(word);
  });
  return lines.length <= 3 ? lines : lines.slice(0, 2).concat([lines.slice(2).join(" ")]);
}

function drawNeurons(state) { // the same net, neuron by neuron: each edge a weight (forward) or δW (backward)
  const svg = $("neurons");
  svg.innerHTML = "";
  const backward = mode() === "backward";
  const columns = [];
  state.nodes.forEach((node, k) => {
    const next = state.nodes[k + 1];
    if (node.kind === "input" || (node.kind === "bias" && !(next && next.kind === "activation")) || node.kind === "activation") columns.push(node);
  });
  const widths = columns.map((c) => c.value.length), tallest = Math.max(...widths);
  const header = 26, W = 120 * columns.length, H = header + Math.max(170, tallest * 22 + 12);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.style.width = Math.max(svg.parentElement.clientWidth - 2, W) + "px"; // full size: a wide net scrolls
  svg.style.height = H + "px";
  const position = (c, i) => [60 + c * 120, header + (H - header) / 2 + (i - (widths[c] - 1) / 2) * 22];
  const weights = state.parameters.filter((p) => p.name.startsWith("W"));
  weights.forEach((parameter, layer) => {
    const matrix = backward ? parameter.delta : parameter.value; // (in, out)
    const biggest = Math.max(1e-12, ...matrix.flat().map((v) => Math.abs(v || 0)));
    matrix.forEach((r, i) => r.forEach((v, j) => {
      const [x1, y1] = position(layer, i), [x2, y2] = position(layer + 1, j);
      const strength = Math.abs(v || 0) / biggest;
      const line = svgElement("line", { class: "edge", x1, y1, x2, y2, stroke: (v || 0) >= 0 ? "#1e88e5" : "#f57c00",
        "stroke-width": 0.4 + 4 * strength, "stroke-opacity": 0.25 + 0.75 * strength }, svg);
      svgElement("title", {}, line).textContent = `${backward ? "δ" : ""}${parameter.name}[${i},${j}] = ${fmt(v)}`;
      line.addEventListener("click", () => selectItem(parameter.name));
    }));
  });
  columns.forEach((node, c) => {
    const values = backward ? node.delta || [] : node.value;
    const biggest = Math.max(1e-12, ...values.map((v) => Math.abs(v || 0)));
    values.forEach((v, i) => {
      const [x, y] = position(c, i);
      const circle = svgElement("circle", { cx: x, cy: y, r: 8, stroke: "#263238", "stroke-width": pg.selected === node.name ? 2.5 : 1,
        fill: (v || 0) >= 0 ? `rgba(30,136,229,${Math.abs(v || 0) / biggest})` : `rgba(245,124,0,${Math.abs(v) / biggest})`, cursor: "pointer" }, svg);
      svgElement("title", {}, circle).textContent = `${backward ? "δ" : ""}${node.name}[${i}] = ${fmt(v)} (point ${state.point})`;
      circle.addEventListener("click", () => selectItem(node.name));
    });
    svgElement("text", { class: "column", x: 60 + c * 120, y: 16, "text-anchor": "middle", "font-size": 13 }, svg).textContent = (backward ? "δ" : "") + node.name;
  });
}

function drawDetails(state) {
  const d = state.details;
  const box = $("details");
  box.dataset.name = d ? d.name : "";
  if (!d) {
    $("details-title").textContent = `Click a node of the graph (point ${state.point} is selected; click a point to change it)`;
    ["details-forward", "details-backward", "details-value", "details-delta"].forEach((id) => { $(id).textContent = ""; });
    return;
  }
  $("details-title").textContent = `${d.name} at training point ${state.point}`;
  $("details-forward").textContent = "forward: " + d.forward;
  $("details-backward").textContent = "backward: " + d.backward;
  $("details-value").textContent = Array.isArray(d.value) && Array.isArray(d.value[0]) ? d.value.map((r) => row(r, precise)).join(" ") : row(d.value, precise);
  $("details-delta").textContent = Array.isArray(d.delta) && Array.isArray(d.delta[0]) ? d.delta.map((r) => row(r, precise)).join(" ") : row(d.delta, precise);
}

function flowAnimation() { // the pass the mode shows, node by node: X → … → Loss, or δ back from Loss
  const names = (pg.state.nodes.map((n) => n.name)).concat(["Loss"]);
  const order = mode() === "backward" ? names.slice().reverse() : names;
  order.forEach((name, k) => setTimeout(() => {
    const g = pg.graphNodes && pg.graphNodes[name];
    if (!g) return;
    g.classList.add("flash");
    setTimeout(() => g.classList.remove("flash"), 220);
  }, k * 90));
}

// ---------------------------------------------------------------------------------------------
// Draw a digit
// ---------------------------------------------------------------------------------------------

const pad = $("pad"), padContext = pad.getContext("2d");
function clearPad() {
  padContext.fillStyle = "#fff"; padContext.fillRect(0, 0, pad.width, pad.height);
}
let drawing = null;
pad.addEventListener("pointerdown", (e) => { drawing = [e.offsetX, e.offsetY]; pad.setPointerCapture(e.pointerId); });
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  padContext.strokeStyle = "#000"; padContext.lineWidth = 18; padContext.lineCap = "round";
  padContext.beginPath(); padContext.moveTo(...drawing); padContext.lineTo(e.offsetX, e.offsetY); padContext.stroke();
  drawing = [e.offsetX, e.offsetY];
});
pad.addEventListener("pointerup", () => { drawing = null; predictDigit(); });

function drawField(canvas, field, colour) {
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(28, 28);
  field.flat().forEach((v, k) => { const [r, g, b] = colour(v); image.data.set([r, g, b, 255], 4 * k); });
  const scratch = document.createElement("canvas"); scratch.width = 28; scratch.height = 28;
  scratch.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false; ctx.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

async function predictDigit() {
  const label = $("label").value;
  let result;
  try {
    result = await api("digit", { image: pad.toDataURL("image/png"), label: label === "" ? null : Number(label) });
  } catch (e) { return; }
  pg.digit = result;
  $("digit-prediction").textContent = `${result.predicted} (${(100 * result.probabilities[result.predicted]).toFixed(1)} %)`;
  $("probabilities").innerHTML = "";
  result.probabilities.forEach((p, digit) => {
    const bar = document.createElement("div");
    bar.className = "bar" + (digit === result.predicted ? " top" : "");
    bar.innerHTML = `<b>${digit}</b><span class="fill" style="width:${(200 * p).toFixed(1)}px"></span><small>${(100 * p).toFixed(1)} %</small>`;
    $("probabilities").appendChild(bar);
  });
  drawField($("input28"), result.input, (v) => { const g = Math.round(255 * v); return [g, g, g]; });
  const biggest = Math.max(1e-12, ...result.pixelDelta.flat().map(Math.abs));
  drawField($("heat"), result.pixelDelta, (v) => {
    const s = Math.min(1, Math.abs(v) / biggest);
    return v >= 0 ? [255, Math.round(255 * (1 - s)), Math.round(255 * (1 - s))] : [Math.round(255 * (1 - s)), Math.round(255 * (1 - s)), 255];
  });
  $("digit-layers").innerHTML = `<li>loss for label ${result.label}: ${fmt(result.loss)}</li>` +
    result.layers.map((l) => `<li>‖δ${l.name}‖ = ${fmt(l.deltaNorm)}</li>`).join("");
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  $("page-graph").classList.toggle("hidden", tab.dataset.tab !== "graph");
  $("page-digit").classList.toggle("hidden", tab.dataset.tab !== "digit");
  if (tab.dataset.tab === "graph") stopPlaying();
}));
$("dataset").addEventListener("change", () => { // a learning rate that suits the set (the field stays editable)
  $("lr").value = $("dataset").value === "function" ? "0.5" : "5";
});
["dataset", "function", "points", "noise", "hidden", "activation", "loss", "lr", "batch", "seed"].forEach((id) =>
  $(id).addEventListener("change", configure));
["points", "noise"].forEach((id) => $(id).addEventListener("input", () => { $(id + "-out").textContent = $(id).value; }));
$("step").addEventListener("click", () => { stopPlaying(); step().catch(() => {}); });
$("play").addEventListener("click", () => {
  if (pg.playing) { stopPlaying(); return; }
  pg.playing = true; $("play").textContent = "Pause"; playLoop();
});
$("reset").addEventListener("click", async () => { stopPlaying(); try { render(await api("reset", request())); } catch (e) { /* shown */ } });
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => { render(pg.state); flowAnimation(); }));
$("surface").addEventListener("click", (e) => {
  if (!pg.pointPixels) return;
  const rect = $("surface").getBoundingClientRect();
  const x = (e.clientX - rect.left) * ($("surface").width / rect.width), y = (e.clientY - rect.top) * ($("surface").height / rect.height);
  let best = -1, bestDistance = 12;
  pg.pointPixels.forEach(([px, py], k) => { const d = Math.hypot(px - x, py - y); if (d < bestDistance) { best = k; bestDistance = d; } });
  if (best >= 0) { pg.point = best; refresh(); }
});
$("clear").addEventListener("click", clearPad);
$("predict").addEventListener("click", predictDigit);
$("label").addEventListener("change", predictDigit);

async function start() {
  clearPad();
  $("function-row").style.display = "none";
  $("points").disabled = $("noise").disabled = true; // XOR first: the slide's four exact points
  try {
    const info = await api("digit/info");
    const name = info.ready ? info.checkpoint.split(/[\\/]/).pop() : "";
    $("digit-info").textContent = info.ready ? `checkpoint ${name}: ${info.layers.join(" → ")}` : info.message;
    $("digit-info").title = info.ready ? info.checkpoint : "";
  } catch (e) { /* shown */ }
  try {
    const state = await api("session", { config: readConfig() });
    pg.session = state.session;
    document.body.dataset.session = state.session;
    render(state);
    document.body.dataset.ready = "1";
  } catch (e) { /* shown */ }
}
start();
