// The classifier page: pick or drop an image, POST it to /predict, draw the answer.
// Server text is only ever set with textContent (no HTML injection), and nothing loads from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrl: null, request: 0 };

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

async function loadModelInfo() {
  try {
    const response = await fetch("/health");
    const info = await response.json();
    const m = info.model;
    $("model-info").textContent =
      `Model ${m.name}, version ${m.version} (${m.arch}); classes: ${info.classes.join(", ")}`;
    $("synthetic-note").hidden = !info.synthetic_data;
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

async function renderResult(result, request) {
  $("error").hidden = true;
  $("answer").hidden = false;
  // Two outputs of one rule: the class (the most probable class of the probabilities the bars
  // show; the threshold never changes it) and the referral flag (malignancy suspected:
  // p(malignant) >= threshold, or the class is malignant).
  $("predicted-class").textContent = result.class;
  const d = result.decision;
  const refer = d.refer ? "yes" : "no";
  // Out of scope: no class and no flag, only the refusal and the score that caused it.
  $("decision").textContent = d.out_of_scope
    ? `${d.reason} (OOD score ${d.ood_score.toFixed(3)} > ${d.ood_threshold.toFixed(3)}). Rule: ${d.rule}.`
    : `Refer (${d.positive_class} suspected): ${refer}. Rule: ${d.rule}.`;
  renderBars(result.probabilities, result.class, d.positive_class);
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
    $("heat-controls").hidden = false;
  } else {
    clearHeatmap();
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
