// The classifier page: pick or drop an image, POST it to /predict, draw the answer.
// Server text is only ever set with textContent (no HTML injection), and nothing loads from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrl: null, request: 0, rule: null };
const FINE_GRID = 8; // a heat map on a coarser grid than 8 x 8 cells gets a warning

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function capital(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function score(x) {
  return Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2);
}

async function loadModelInfo() {
  try {
    const response = await fetch("/health");
    const info = await response.json();
    const m = info.model;
    $("model-info").textContent =
      `Model ${m.name}, version ${m.version} (${m.arch}); classes: ${info.classes.join(", ")}`;
    $("synthetic-note").hidden = !info.synthetic_data;
    state.rule = info.rule; // how the threshold was chosen, for the answer's details
  } catch (err) {
    $("model-info").textContent = "The service did not answer /health.";
  }
}

function setState(name, message) {
  $("result").dataset.state = name;
  $("status").textContent = message || "";
}

function showError(message) {
  // A full reset: no broken preview and no heat-map controls left from an earlier image.
  $("preview").removeAttribute("src");
  $("preview").hidden = true;
  clearHeatmap();
  $("answer").hidden = true;
  $("error").hidden = false;
  $("error").textContent = message;
  setState("error", "");
}

function renderBars(probabilities, answered, positiveClass) {
  const list = $("bars");
  list.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const item = document.createElement("li");
    item.dataset.class = name;
    if (name === answered) item.classList.add("top");
    if (name === positiveClass) item.classList.add("malignant");
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = percent(p);
    fill.style.display = "block";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    item.append(label, track, value);
    list.append(item);
  }
}

// The answer in words: the class with its probability, the referral flag and what it rests on.
function referText(d, answered) {
  const p = `p(${d.positive_class}) = ${percent(d.positive_probability)}`;
  if (!d.refer) {
    return d.threshold === null
      ? `Refer: no. ${capital(d.positive_class)} is not the most likely class (${p}).`
      : `Refer: no. ${p}, below the referral threshold of ${percent(d.threshold)}.`;
  }
  if (answered === d.positive_class) {
    return `Refer: yes. ${capital(d.positive_class)} suspected: it is the most likely class (${p}).`;
  }
  return `Refer: yes. ${capital(d.positive_class)} suspected: ${p}, at or above the referral threshold ` +
    `of ${percent(d.threshold)}, although ${answered} is more likely.`;
}

function meaningText(d) {
  const calibration = d.temperature
    ? `The probabilities are calibrated: the model's outputs temperature-scaled (T = ${d.temperature.toFixed(2)}) on validation images.`
    : "The probabilities are the model's own outputs: temperature scaling did not make them more reliable on validation, so none is applied.";
  const operating = d.threshold === null
    ? "There is no referral threshold: a scan is referred when malignant is the most likely class."
    : `The referral threshold is an operating point chosen on validation for sensitivity: ` +
      `every scan with p(${d.positive_class}) at or above ${percent(d.threshold)} is referred, ` +
      "so some benign scans are referred to keep missed cancers rare. A referral asks for a " +
      "radiologist's review; it is not a diagnosis.";
  return `${calibration} ${operating}`;
}

function renderDetails(d) {
  $("rule-text").textContent = `Rule: ${d.rule}.`;
  const r = state.rule;
  const origin = [];
  if (r && r.method) {
    origin.push(`Threshold: ${r.method}` + (r.chosen_on ? `; chosen on the ${r.chosen_on}.` : "."));
  }
  if (r && r.ood_method) origin.push(`Out of scope: ${r.ood_method}.`);
  $("rule-origin").textContent = origin.join(" ");
}

function renderAnswer(result) {
  const d = result.decision;
  $("answer").dataset.outcome = d.out_of_scope ? "out-of-scope" : d.refer ? "refer" : "no-refer";
  if (d.out_of_scope) {
    // No class, no flag and no class bars: the refusal and why, and what to do.
    $("answer-label").textContent = "Out of scope:";
    $("predicted-class").textContent = "no class given";
    $("class-probability").textContent = "";
    $("refer").textContent =
      "Refer to a radiologist. This image does not look like the breast-ultrasound scans the " +
      `model was made for (out-of-distribution score ${score(d.ood_score)}, above the ` +
      `threshold of ${score(d.ood_threshold)}), so it gives no class and no referral flag.`;
    $("meaning").textContent = "";
    $("bars").replaceChildren();
    $("bars").hidden = true;
  } else {
    $("answer-label").textContent = "Most likely:";
    $("predicted-class").textContent = result.class;
    $("class-probability").textContent = `(p = ${percent(result.probabilities[result.class])})`;
    $("refer").textContent = referText(d, result.class);
    $("meaning").textContent = meaningText(d);
    $("bars").hidden = false;
    renderBars(result.probabilities, result.class, d.positive_class);
  }
  $("meaning").hidden = !$("meaning").textContent;
  renderDetails(d);
}

function heatWarning(grid) {
  if (!grid || Math.min(...grid) >= FINE_GRID) return "";
  const [rows, cols] = grid;
  return `Coarse map: for this model's input size the evidence comes on a ${rows} × ${cols} ` +
    "grid of cells, so it shows roughly where, not the outline of a lesion.";
}

async function renderResult(result, request) {
  $("error").hidden = true;
  $("answer").hidden = false;
  renderAnswer(result);
  const m = result.model;
  $("timing").textContent =
    `Model ${m.name} v${m.version} (${m.arch}) · inference ${result.inference_ms.toFixed(1)} ms` +
    (result.synthetic_data ? " · trained on synthetic demo data" : "");
  const heat = $("heatmap");
  if (result.heatmap) {
    heat.src = result.heatmap;
    // "done" only once the overlay can be painted: a data URL still decodes asynchronously
    try { await heat.decode(); } catch (err) { /* a broken overlay must not hide the answer */ }
    if (request !== state.request) return; // a newer image was chosen while this one decoded
    heat.hidden = !$("show-heatmap").checked; // off by default: the scan comes first
    $("heat-warning").textContent = heatWarning(result.heatmap_grid);
    $("heat-warning").hidden = !$("heat-warning").textContent;
    $("heat-controls").hidden = false;
  } else {
    clearHeatmap(); // none for an image out of scope: there is no class to explain
  }
  setState("done", "");
}

function clearHeatmap() {
  const heat = $("heatmap");
  heat.removeAttribute("src");
  heat.hidden = true;
  $("heat-controls").hidden = true;
}

function setOpacity() {
  $("heatmap").style.opacity = String($("heat-opacity").value / 100);
}

async function classify(file) {
  if (!file) return;
  const request = ++state.request;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  $("view").hidden = false;
  $("preview").src = state.objectUrl;
  $("preview").hidden = false;
  clearHeatmap();
  $("answer").hidden = true;
  $("error").hidden = true;
  setState("busy", `Classifying ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  let response, body;
  try {
    response = await fetch("/predict?heatmap=true", { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    if (request === state.request) showError("The service did not answer: " + err);
    return;
  }
  if (request !== state.request) return; // a newer image was chosen meanwhile
  if (!response.ok) {
    showError(`Refused (${response.status}): ${body.error || response.statusText}`);
    return;
  }
  await renderResult(body, request);
}

function setup() {
  loadModelInfo();
  $("file").addEventListener("change", (e) => classify(e.target.files[0]));
  $("show-heatmap").addEventListener("change", (e) => {
    const heat = $("heatmap");
    heat.hidden = !e.target.checked || !heat.getAttribute("src");
  });
  $("heat-opacity").addEventListener("input", setOpacity);
  setOpacity();
  const drop = $("drop");

  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

document.addEventListener("DOMContentLoaded", setup);
