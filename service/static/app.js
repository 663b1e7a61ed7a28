// The demo page: plain JavaScript over the public API (/v1/models, /score, /generate, /trajectory, /interpolate,
// /latent-map, /complete).
"use strict";

const DEBOUNCE_MS = 250; // ask once the pen has rested this long: live, without a request per stroke point
const FLOW_STEPS = 41; // frames of the flow animation (t0 to t1), enough for smooth motion
const STRIP_STEPS = 11; // columns of the trajectory strip
const FRAME_MS = 70;
const INK_WIDTH = 18; // at the canvas' 280 px: MNIST-like stroke width once fitted into 20x20
const COMPLETE_INK_WIDTH = 26; // the completion pad is read as it is, 280 px to 28: 2.6 pixels, as MNIST's strokes
const SIDE = 28; // pixels along each side of the images the models read
const COMPLETIONS = 8;
const MAP_RANGE = 2.8; // the latent map shows -2.8 to 2.8 standard deviations of the test encodings on each axis
// Label colours of the latent map, as train/pictures.py draws them
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf"];

const $ = (id) => document.getElementById(id);
const png = (base64) => `data:image/png;base64,${base64}`;
const state = { models: [], model: null, maps: {} };

/** An API error with the service's code and message, shown to the user as is. */
class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    Object.assign(this, { status, code, retryAfter });
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? "http_error", error.message ?? response.statusText,
      response.headers.get("retry-after"));
  }
  return body;
}

function describeError(error) {
  if (!(error instanceof ApiError)) return `Could not reach the service: ${error.message}`;
  const busy = error.status === 503 ? "The service is busy or still loading. " : "";
  const retry = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
  return `${busy}${error.message} (HTTP ${error.status}, ${error.code}).${retry}`;
}

function report(element, error) {
  if (error?.name === "AbortError") return; // superseded by a newer request: nothing went wrong
  element.textContent = describeError(error);
  element.hidden = false;
}

const clearError = (element) => { element.hidden = true; element.textContent = ""; };

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of [].concat(value)) if (item !== null && item !== undefined && item !== "") search.append(key, item);
  }
  return search.toString();
}

// ---- models and labels ----------------------------------------------------------------------------------------

const current = () => state.models.find((m) => m.name === state.model);
const labelName = (i) => current()?.class_names?.[i] ?? String(i);

function fillLabelSelects() {
  const model = current();
  for (const select of document.querySelectorAll(".label-select")) {
    const previous = select.value;
    select.replaceChildren();
    if (select.dataset.none || !model.prior_uses_labels) {
      select.append(new Option(model.prior_uses_labels ? select.dataset.none : "none (unconditional model)", ""));
    }
    for (let i = 0; model.prior_uses_labels && i < 10; i++) {
      select.append(new Option(labelName(i) === String(i) ? labelName(i) : `${i}: ${labelName(i)}`, String(i)));
    }
    select.disabled = !model.prior_uses_labels;
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }
  if (model.prior_uses_labels && $("interp-label").value === "") $("interp-label").value = "0";
}

function selectModel(name) {
  state.model = name;
  const model = current();
  const kind = model.prior_uses_labels ? "label-conditioned" : "unconditional";
  $("model-note").textContent = `${model.dataset ?? "unknown data"}, ${kind}, latent dimension ${model.latent_dim}.`;
  fillLabelSelects();
  $("probs-note").hidden = model.prior_uses_labels;
  $("probs").hidden = !model.prior_uses_labels;
  $("grid").replaceChildren();
  fillLegends();
  resetFlow();
  if (!$("flow").hidden) loadFlow();
  showDrawingOnMap(null);
  if (pad.inked) scoring.schedule(0);
  if (completePad.inked) completing.schedule(0);
  if (!$("interpolate").hidden) loadInterpolation();
}

async function loadModels() {
  try {
    const list = await api("/v1/models");
    if (!list.models.length) throw new ApiError(503, "not_ready", "no model is served yet: reload in a moment", null);
    state.models = list.models;
    const picker = $("model");
    picker.replaceChildren(...list.models.map(modelOption));
    picker.value = list.default ?? list.models[0]?.name;
    selectModel(picker.value);
    clearError($("global-error"));
  } catch (error) {
    report($("global-error"), error);
  }
}

const modelOption = (m) => new Option(m.version > 1 ? `${m.name} (version ${m.version})` : m.name, m.name);

// Operators load and unload models while the page is open (the model repository): the list is fetched again
// whenever the picker is about to be used or the page comes back into view, keeping the choice while it is served.
async function refreshModels() {
  let list;
  try {
    list = await api("/v1/models");
  } catch {
    return; // the next focus tries again
  }
  const shown = (models) => models.map((m) => `${m.name}@${m.version}`).join();
  if (shown(list.models) === shown(state.models)) return; // unchanged: an open dropdown stays as it is
  const picker = $("model");
  const names = list.models.map((m) => m.name);
  const keep = names.includes(picker.value) ? picker.value : (list.default ?? names[0]);
  state.models = list.models;
  picker.replaceChildren(...list.models.map(modelOption));
  if (keep === undefined) return;
  picker.value = keep;
  if (keep !== state.model) selectModel(keep);
}
$("model").addEventListener("focus", refreshModels);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshModels();
});

// ---- tabs -------------------------------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function showTab(tab, focus = false) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  const view = tab.getAttribute("aria-controls");
  history.replaceState(null, "", `#${view}`);
  if (view === "interpolate" && state.model && !$("interp-image").getAttribute("src")) loadInterpolation();
  if (view === "flow" && state.model && !flow.frames.length && !flow.loading) loadFlow();
}

for (const tab of tabs) {
  tab.addEventListener("click", () => showTab(tab));
  tab.addEventListener("keydown", (event) => { // arrow keys move between tabs, as WAI-ARIA's tabs pattern has it
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) showTab(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length], true);
  });
}

// ---- drawing pads and live requests ---------------------------------------------------------------------------

/** A canvas to draw on in white on black with a mouse, pen or finger; `changed` runs as strokes move and end. */
function makePad(canvas, inkWidth, changed) {
  const ink = canvas.getContext("2d");
  const pad = { canvas, inked: false, active: null, last: null };
  pad.clear = () => {
    ink.fillStyle = "#000";
    ink.fillRect(0, 0, canvas.width, canvas.height);
    pad.inked = false;
  };
  const point = (event) => { // CSS pixels to canvas pixels: the canvas is scaled on narrow screens
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  };
  const stroke = (from, to) => {
    ink.strokeStyle = "#fff";
    ink.lineWidth = inkWidth;
    ink.lineCap = ink.lineJoin = "round";
    ink.beginPath();
    ink.moveTo(...from);
    ink.lineTo(...to);
    ink.stroke();
    pad.inked = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    pad.active = event.pointerId;
    pad.last = point(event);
    stroke(pad.last, pad.last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== pad.active) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const next = point(e);
      stroke(pad.last, next);
      pad.last = next;
    }
    changed();
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, (event) => {
      if (event.pointerId !== pad.active) return;
      pad.active = null;
      changed();
    });
  }
  pad.clear();
  return pad;
}

/** `task(signal, ...args)` run now (`run`) or once input has rested (`schedule`); a newer run aborts an older
 * one's request: only the newest drawing's answer matters. */
function live(task) {
  let timer = null;
  let controller = null;
  const run = (...args) => {
    controller?.abort();
    controller = new AbortController();
    return task(controller.signal, ...args);
  };
  return {
    run,
    schedule(delay = DEBOUNCE_MS) { clearTimeout(timer); timer = setTimeout(run, delay); },
    cancel() { clearTimeout(timer); controller?.abort(); },
  };
}

// ---- draw and score ---------------------------------------------------------------------------------------------

const scoring = live(async (signal, upload) => {
  const blob = upload ?? await new Promise((resolve) => pad.canvas.toBlob(resolve));
  await score(blob, upload?.name ?? "drawing.png", signal);
});
const pad = makePad($("pad"), INK_WIDTH, () => scoring.schedule());

$("clear").addEventListener("click", () => {
  pad.clear();
  scoring.cancel();
  showScore(null);
  $("draw-status").textContent = "Draw a digit: it is scored as you draw.";
});

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (file) scoring.run(file);
});

async function score(blob, filename, signal) {
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("model", state.model);
  $("draw-status").textContent = "Scoring...";
  try {
    const body = await api("/score", { method: "POST", body: form, signal });
    clearError($("draw-error"));
    showScore(body.results[0]);
    $("draw-status").textContent = `Scored by ${body.model}.`;
  } catch (error) {
    report($("draw-error"), error);
    if (error.name !== "AbortError") $("draw-status").textContent = "Scoring failed.";
  }
}

const fixed = (value, digits) => (value === null || value === undefined ? "-" : value.toFixed(digits));

function showScore(result) {
  $("score").dataset.scored = result ? "true" : "false";
  for (const [id, key] of [["input-image", "input_png"], ["reconstruction-image", "reconstruction_png"]]) {
    if (result) $(id).src = png(result[key]);
    else $(id).removeAttribute("src");
  }
  $("nats").textContent = fixed(result?.log_likelihood_nats, 2);
  $("bpd").textContent = fixed(result?.bits_per_dim, 4);
  $("percentile").textContent = result?.percentile == null ? "-" : `${result.percentile.toFixed(1)}`;
  const verdict = $("verdict");
  verdict.className = "";
  if (!result || result.in_distribution === null) verdict.textContent = result ? "not calibrated for this model" : "-";
  else if (result.in_distribution) { verdict.textContent = "yes"; verdict.className = "verdict-in"; }
  else { verdict.textContent = `no (${result.ood_reason.replaceAll("_", " ")})`; verdict.className = "verdict-out"; }
  $("predicted").textContent = result?.predicted_label == null ? "-" : labelName(result.predicted_label);
  showProbabilities($("probs"), result?.label_probabilities ?? null);
  showDrawingOnMap(result?.latent_map ?? null);
}

function showProbabilities(list, probabilities) {
  list.replaceChildren();
  if (!probabilities) return;
  const best = probabilities.indexOf(Math.max(...probabilities));
  probabilities.forEach((p, label) => {
    const item = document.createElement("li");
    item.dataset.label = label;
    item.dataset.probability = p;
    item.classList.toggle("top", label === best);
    const name = document.createElement("span");
    name.textContent = labelName(label);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", p.toFixed(3));
    bar.setAttribute("aria-label", `p(${labelName(label)})`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(p > 0.001 && p < 0.999 ? 1 : 0)} %`;
    item.append(name, bar, value);
    list.append(item);
  });
}

// ---- the latent map ---------------------------------------------------------------------------------------------

/** The current model's map (GET /latent-map), fetched once per model; null for a model without one. */
function latentMap() {
  const model = state.model;
  if (!(model in state.maps)) state.maps[model] = api(`/latent-map?${query({ model })}`).catch(() => null);
  return state.maps[model];
}

function fillLegends() {
  for (const legend of document.querySelectorAll(".legend")) {
    legend.replaceChildren(...PALETTE.map((colour, label) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      item.append(swatch, labelName(label));
      return item;
    }));
  }
}

/** Test digits as points coloured by label; `marks.encoding` a map position with its covariance (drawn as its
 * 2-sd ellipse), `marks.path` map positions of which the first `marks.upto` + 1 are drawn as a line. */
function drawMap(canvas, map, marks = {}) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  const scale = width / (2 * MAP_RANGE);
  const at = ([x, y]) => [width / 2 + x * scale, height / 2 - y * scale];
  g.fillStyle = "#fff";
  g.fillRect(0, 0, width, height);
  canvas.dataset.points = map ? String(map.points.length) : "0";
  delete canvas.dataset.encoding;
  delete canvas.dataset.path;
  if (!map) {
    g.fillStyle = "#5a6273";
    g.fillText("no latent map for this model", 10, height / 2);
    return;
  }
  g.globalAlpha = 0.75;
  for (const point of map.points) {
    g.fillStyle = PALETTE[point.label % PALETTE.length];
    g.beginPath();
    g.arc(...at([point.x, point.y]), 1.8, 0, 2 * Math.PI);
    g.fill();
  }
  g.globalAlpha = 1;
  const ring = (position, radius, fill) => {
    g.beginPath();
    g.arc(...at(position), radius, 0, 2 * Math.PI);
    g.fillStyle = fill;
    g.fill();
    g.lineWidth = 2;
    g.strokeStyle = "#000";
    g.stroke();
  };
  if (marks.encoding) {
    const { x, y, covariance: [[a, b], [, c]] } = marks.encoding;
    const middle = (a + c) / 2;
    const spread = Math.sqrt(((a - c) / 2) ** 2 + b * b);
    const angle = 0.5 * Math.atan2(2 * b, a - c); // of the major axis, in map coordinates (y up)
    g.beginPath();
    g.ellipse(...at([x, y]), 2 * Math.sqrt(middle + spread) * scale, 2 * Math.sqrt(Math.max(middle - spread, 0)) * scale,
      -angle, 0, 2 * Math.PI);
    g.fillStyle = "rgba(0, 0, 0, 0.12)";
    g.fill();
    g.strokeStyle = "#000";
    g.lineWidth = 1.5;
    g.stroke();
    ring([x, y], 3.5, "#fff");
    canvas.dataset.encoding = `${x.toFixed(3)},${y.toFixed(3)}`;
  }
  if (marks.path) {
    const shown = marks.path.slice(0, marks.upto + 1);
    g.beginPath();
    shown.forEach((position, i) => (i ? g.lineTo(...at(position)) : g.moveTo(...at(position))));
    g.strokeStyle = "#000";
    g.lineWidth = 2;
    g.stroke();
    ring(shown[0], 4, "#fff");
    ring(shown[shown.length - 1], 5, "#000");
    canvas.dataset.path = String(shown.length);
  }
}

async function showDrawingOnMap(position) {
  const model = state.model;
  const map = await latentMap();
  if (model === state.model) drawMap($("map-draw"), map, { encoding: position });
}

// ---- complete ---------------------------------------------------------------------------------------------------

const completing = live(complete);
const completePad = makePad($("complete-pad"), COMPLETE_INK_WIDTH, () => completing.schedule());

/** The pad as the models read it: 28 rows of 28 intensities in [0, 1], the canvas shrunk as it is. */
function padPixels(canvas) {
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const g = small.getContext("2d");
  g.imageSmoothingQuality = "high";
  g.drawImage(canvas, 0, 0, SIDE, SIDE);
  const rgba = g.getImageData(0, 0, SIDE, SIDE).data;
  return Array.from({ length: SIDE }, (_, row) =>
    Array.from({ length: SIDE }, (_, column) => rgba[4 * (row * SIDE + column)] / 255));
}

function showHiddenHalf() {
  const hidden = { top: "bottom", bottom: "top", left: "right", right: "left" }[$("complete-mask").value];
  const style = $("complete-hidden").style;
  const vertical = hidden === "top" || hidden === "bottom";
  Object.assign(style, { top: hidden === "bottom" ? "50%" : "0", left: hidden === "right" ? "50%" : "0",
    width: vertical ? "100%" : "50%", height: vertical ? "50%" : "100%" });
}

async function complete(signal) {
  if (!completePad.inked) return;
  const request = { model: state.model, image: padPixels(completePad.canvas), mask: $("complete-mask").value,
    k: COMPLETIONS, seed: 0 };
  $("complete-status").textContent = "Completing...";
  try {
    const body = await api("/complete", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(request), signal });
    clearError($("complete-error"));
    showCompletions(body);
    $("complete-status").textContent = `Completed by ${body.model}.`;
  } catch (error) {
    report($("complete-error"), error);
    if (error.name !== "AbortError") $("complete-status").textContent = "Completion failed.";
  }
}

function showCompletions(body) {
  const cells = (body?.completions ?? []).map((completion, index) => {
    const figure = document.createElement("figure");
    figure.dataset.weight = completion.weight;
    const img = document.createElement("img");
    img.src = png(completion.image);
    img.className = "pixels";
    img.width = img.height = 84;
    const label = completion.label === null ? "" : `, drawn as ${labelName(completion.label)}`;
    img.alt = `Completion ${index + 1}${label}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `${(100 * completion.weight).toFixed(1)} %`;
    figure.append(img, caption);
    return figure;
  });
  $("completions").replaceChildren(...cells);
  $("complete-ess").textContent = body
    ? `Effective sample size ${body.effective_sample_size.toFixed(1)} of ${body.proposals} proposals; ` +
      `these ${body.completions.length} carry ${(100 * body.mass).toFixed(0)} % of the weight.`
    : "";
  showProbabilities($("complete-probs"), body?.label_probabilities ?? null);
}

$("complete-mask").addEventListener("change", () => {
  showHiddenHalf();
  completing.schedule(0);
});
$("complete-clear").addEventListener("click", () => {
  completePad.clear();
  completing.cancel();
  showCompletions(null);
});

// ---- generate ---------------------------------------------------------------------------------------------------

const optionalInt = (id) => ($(id).value === "" ? null : Number($(id).value));

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const request = {
    model: state.model,
    n: Number($("gen-count").value),
    label: optionalInt("gen-label"),
    seed: optionalInt("gen-seed"),
    temperature: Number($("gen-temperature").value),
  };
  const button = event.submitter ?? $("generate-form").querySelector("button");
  button.disabled = true;
  try {
    const body = await api("/generate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    clearError($("generate-error"));
    showGrid(body);
  } catch (error) {
    report($("generate-error"), error);
  } finally {
    button.disabled = false;
  }
});

function showGrid(body) {
  const cells = body.images.map((image, index) => {
    const button = document.createElement("button");
    button.type = "button";
    const label = body.labels ? `, label ${labelName(body.labels[index])}` : "";
    button.setAttribute("aria-label", `Sample ${index + 1}${label}: watch its flow`);
    const img = document.createElement("img");
    img.src = png(image);
    img.alt = "";
    img.width = img.height = 28;
    img.className = "pixels";
    button.append(img);
    button.addEventListener("click", () => {
      // /trajectory with the same seed, count, label and temperature draws the same noise: row `index` is this sample
      flow.source = { seed: body.seed, n: body.n, index, label: body.label, temperature: body.temperature };
      loadFlow();
      showTab($("tab-flow"));
    });
    return button;
  });
  $("grid").replaceChildren(...cells);
}

// ---- watch the flow ---------------------------------------------------------------------------------------------

const flow = { frames: [], times: [], path: null, map: null, timer: null, source: null, loading: 0, requests: 0 };

function resetFlow() {
  stopFlow();
  flow.requests += 1; // drops the answer of a load still under way
  flow.frames = [];
  flow.source = null;
  $("flow-image").removeAttribute("src");
  $("flow-strip").removeAttribute("src");
  $("flow-play").disabled = $("flow-slider").disabled = true;
}

$("flow-form").addEventListener("submit", (event) => {
  event.preventDefault();
  flow.source = null; // the form's own label and seed, one sample
  loadFlow();
});

async function loadFlow() {
  stopFlow();
  const request = ++flow.requests; // a newer request (another sample, model or seed) wins over this one
  flow.loading += 1;
  const source = flow.source ?? { seed: optionalInt("flow-seed") ?? 0, n: 1, index: 0, label: optionalInt("flow-label"), temperature: 1 };
  const params = { format: "json", steps: FLOW_STEPS, model: state.model, ...source };
  delete params.index;
  $("flow-source").textContent = flow.source
    ? `Sample ${source.index + 1} of the grid (seed ${source.seed}, ${source.n} samples).`
    : `Seed ${source.seed}${source.label === null ? "" : `, label ${labelName(source.label)}`}.`;
  try {
    const [body, map] = await Promise.all([api(`/trajectory?${query(params)}`), latentMap()]);
    if (request !== flow.requests) return;
    clearError($("flow-error"));
    flow.frames = body.trajectory.map((step) => png(step.images[source.index]));
    flow.times = body.trajectory.map((step) => step.t);
    flow.path = body.trajectory[0].map_points ? body.trajectory.map((step) => step.map_points[source.index]) : null;
    flow.map = map;
    $("flow-strip").src = `/trajectory?${query({ ...params, format: "png", steps: STRIP_STEPS })}`;
    const slider = $("flow-slider");
    slider.max = String(flow.frames.length - 1);
    slider.disabled = $("flow-play").disabled = false;
    showFrame(0);
  } catch (error) {
    if (request === flow.requests) report($("flow-error"), error);
  } finally {
    flow.loading -= 1;
  }
}

function showFrame(index) {
  $("flow-slider").value = String(index);
  $("flow-image").src = flow.frames[index];
  $("flow-image").dataset.frame = index;
  $("flow-time").textContent = `t = ${flow.times[index].toFixed(2)}`;
  $("flow-slider").setAttribute("aria-valuetext", `t = ${flow.times[index].toFixed(2)}`);
  drawMap($("map-flow"), flow.map, flow.path ? { path: flow.path, upto: index } : {});
}

function stopFlow() {
  clearInterval(flow.timer);
  flow.timer = null;
  $("flow-play").textContent = "Play";
  $("flow-play").setAttribute("aria-pressed", "false");
}

$("flow-play").addEventListener("click", () => {
  if (flow.timer) return stopFlow();
  let index = Number($("flow-slider").value);
  if (index >= flow.frames.length - 1) index = -1; // at the end: play from the start again
  $("flow-play").textContent = "Pause";
  $("flow-play").setAttribute("aria-pressed", "true");
  flow.timer = setInterval(() => {
    index += 1;
    showFrame(index);
    if (index >= flow.frames.length - 1) stopFlow();
  }, FRAME_MS);
});

$("flow-slider").addEventListener("input", () => {
  stopFlow();
  showFrame(Number($("flow-slider").value));
});

// ---- interpolate ------------------------------------------------------------------------------------------------

const interp = { busy: false, pending: null };

function interpParams(t) {
  return {
    model: state.model,
    seed_a: optionalInt("interp-seed-a") ?? 0,
    seed_b: optionalInt("interp-seed-b") ?? 1,
    label: optionalInt("interp-label"),
    t,
  };
}

async function loadInterpolation() {
  try {
    const ends = await api(`/interpolate?${query(interpParams([0, 1]))}`);
    clearError($("interp-error"));
    $("interp-a").src = png(ends.images[0]);
    $("interp-b").src = png(ends.images[1]);
  } catch (error) {
    report($("interp-error"), error);
  }
  moveInterpolation();
}

async function moveInterpolation() {
  // One request at a time; a slider moved meanwhile asks again for its newest position once this one is back.
  const t = Number($("interp-slider").value);
  $("interp-t").textContent = `t = ${t.toFixed(2)}`;
  if (interp.busy) { interp.pending = t; return; }
  interp.busy = true;
  try {
    const body = await api(`/interpolate?${query(interpParams(t))}`);
    clearError($("interp-error"));
    $("interp-image").src = png(body.images[0]);
    $("interp-image").dataset.t = body.t[0];
  } catch (error) {
    report($("interp-error"), error);
  } finally {
    interp.busy = false;
  }
  if (interp.pending !== null) {
    interp.pending = null;
    moveInterpolation();
  }
}

$("interp-slider").addEventListener("input", moveInterpolation);
$("interp-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadInterpolation();
});

// ---- start ------------------------------------------------------------------------------------------------------

$("model").addEventListener("change", () => selectModel($("model").value));
showHiddenHalf();
loadModels().then(() => {
  const tab = tabs.find((t) => `#${t.getAttribute("aria-controls")}` === location.hash);
  if (tab) showTab(tab);
});
