// medclf viewer: sends each chosen file to /api/predict on its own (so one bad file spoils nothing else)
// and shows the answer. Text from the server is only ever set with textContent, never parsed as HTML.
"use strict";

const state = { model: null, maxBytes: Infinity };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(p) { return (p * 100).toFixed(1) + "%"; }

function addFacts(dl, pairs) {
  dl.replaceChildren();
  for (const [key, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(el("dt", "", key), el("dd", "", String(value)));
  }
}

async function loadModel() {
  try {
    const res = await fetch("/api/model");
    if (!res.ok) throw new Error("HTTP " + res.status);
    const m = await res.json();
    state.model = m;
    state.maxBytes = m.max_upload_mb * 1024 * 1024;
    $("model-name").textContent = m.model_name;
    $("health-dot").className = "dot ok";
    $("upload-limit").textContent = String(m.max_upload_mb);
    addFacts($("model-facts"), [
      ["Run", m.name],
      ["Architecture", m.kind === "ensemble" ? `ensemble of ${m.members}` : m.model_name],
      ["Classes", m.labels.join(", ")],
      ["Positive class", m.positive_label],
      ["Input size", `${m.input_size} × ${m.input_size} px`],
      ["Threshold", m.threshold.toFixed(3)],
      ["Heatmap", m.heatmap_method],
      ["OOD check", m.ood ? "on" : "not fitted"],
    ]);
    renderTraining(m.training_data, m.labels);
    renderModelWarnings($("model-warning"), m);
  } catch (err) {
    $("model-name").textContent = "server unreachable";
    $("health-dot").className = "dot down";
  }
}

// A fallback threshold, or validation figures too thin to mean much: said once, beside the model's facts.
function renderModelWarnings(box, m) {
  const warnings = m.warnings || [];
  if (!warnings.length) return;
  box.textContent = "⚠ " + warnings.join(" · ");
  box.title = m.threshold_reason || "";
  box.hidden = false;
}

function renderTraining(summary, labels) {
  const box = $("training-data");
  if (!summary || !summary.split_counts) return;
  const table = el("table", "counts");
  const head = el("tr");
  head.append(el("th", "", "split"));
  for (const name of labels) head.append(el("th", "", name));
  head.append(el("th", "", "total"));
  table.append(head);
  for (const split of ["train", "val", "test"]) {
    const counts = summary.split_counts[split];
    if (!counts) continue;
    const row = el("tr");
    row.append(el("td", "", split));
    let total = 0;
    for (const name of labels) {
      const n = counts[name] || 0;
      total += n;
      row.append(el("td", "", n.toLocaleString()));
    }
    row.append(el("td", "", total.toLocaleString()));
    table.append(row);
  }
  const note = el("p", "muted", `${summary.n.toLocaleString()} images` +
    (summary.source ? ` · source: ${summary.source}` : "") + (summary.size ? ` · ${summary.size} px cache` : ""));
  note.style.marginTop = "8px";
  box.replaceChildren(table, note);
}

function placeholder(file) {
  $("empty-state")?.remove();
  const card = el("article", "result loading");
  card.append(el("div", "spinner"), el("span", "", `Analysing ${file.name}…`));
  $("results").prepend(card);
  return card;
}

function showError(card, name, message) {
  card.className = "result failed";
  // the server's reasons already start with the file's name: show it once
  const reason = message.startsWith(name + ": ") ? message.slice(name.length + 2) : message;
  card.replaceChildren(el("strong", "", name + ": "), el("span", "error-text", reason));
}

function showResult(card, r) {
  const node = $("result-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".radiograph").src = "data:image/png;base64," + r.image;
  if (r.heatmap) node.querySelector(".heatmap").src = "data:image/png;base64," + r.heatmap;
  node.querySelector(".file-name").textContent = r.filename;
  node.querySelector(".file-name").title = r.filename;
  node.querySelector(".file-type").textContent = r.type;
  const decision = node.querySelector(".decision");
  decision.textContent = r.label;
  decision.classList.add(r.positive ? "positive" : "negative");
  const value = node.querySelector(".prob-value");
  value.textContent = pct(r.probability);
  value.dataset.value = String(r.probability);
  node.querySelector(".prob-caption").textContent = `probability of ${r.positive_label}`;
  const fill = node.querySelector(".bar-fill");
  fill.style.width = pct(r.probability);
  if (r.positive) fill.classList.add("positive");
  node.querySelector(".bar-marker").style.left = `calc(${pct(r.threshold)} - 1px)`;
  node.querySelector(".bar").setAttribute("aria-label", `probability ${pct(r.probability)}, threshold ${r.threshold}`);
  const fallback = state.model && state.model.threshold_source === "default" ? " (default: not fitted to data)" : "";
  node.querySelector(".threshold-text").textContent = `operating threshold ${r.threshold.toFixed(3)}${fallback}`;
  renderOod(node.querySelector(".ood"), r);
  renderRefer(node.querySelector(".ood"), r);
  const meta = [["Model", r.model]];
  if (r.dicom) meta.push(["Modality", r.dicom.modality], ["View", r.dicom.view], ["Photometric", r.dicom.photometric]);
  let heat = `none (${r.heatmap_reason})`;
  if (r.heatmap) heat = `${r.heatmap_method} for ${r.positive_label}` + (r.heatmap_flat ? " (flat: no region stands out)" : "");
  meta.push(["Heatmap", heat]);
  addFacts(node.querySelector(".meta"), meta);
  card.replaceWith(node);
}

function renderOod(box, r) {
  if (r.ood && r.ood.flag) {
    box.className = "ood warn";
    box.textContent = `⚠ Unlike the training data (OOD score ${r.ood.score.toPrecision(4)}). ` +
      "The prediction may not be reliable for this image.";
  } else if (r.ood) {
    box.className = "ood ok";
    box.textContent = `Resembles the training data (OOD score ${r.ood.score.toPrecision(4)}).`;
  } else {
    box.className = "ood na";
    box.textContent = "Out-of-distribution check not available for this model.";
    box.title = r.ood_reason || "";
  }
}

// the conformal refer band (issue 21): a set of plausible classes that is not exactly one means "refer"
function renderRefer(box, r) {
  if (!r.refer) return;
  const cover = `${Math.round((1 - r.refer.alpha) * 100)}%`;
  const line = el("div", r.refer.flag ? "refer warn" : "refer ok",
    r.refer.flag ? `⚠ ${r.refer.text}: plausible at ${cover} coverage: ${r.refer.set || "no class"}`
                 : `${r.refer.text} at ${cover} coverage (${r.refer.set}).`);
  box.after(line);
}

async function analyse(file) {
  const card = placeholder(file);
  if (file.size > state.maxBytes) {
    showError(card, file.name, `larger than the server's limit of ${state.model.max_upload_mb} MiB`);
    return;
  }
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const res = await fetch("/api/predict", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (!res.ok) {
      showError(card, file.name, typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
      return;
    }
    showResult(card, body.results[0]);
  } catch (err) {
    showError(card, file.name, "the request failed (" + err.message + ")");
  }
}

async function analyseAll(files) {
  for (const file of files) await analyse(file);  // one at a time: the server runs the model serially anyway
}

function setupInputs() {
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => { analyseAll([...input.files]); input.value = ""; });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => analyseAll([...e.dataTransfer.files]));
  // a file dropped beside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("heat-toggle").addEventListener("change", (e) => $("results").classList.toggle("no-heat", !e.target.checked));
  $("heat-opacity").addEventListener("input", (e) =>
    document.documentElement.style.setProperty("--heat-opacity", String(e.target.value / 100)));
  $("clear-results").addEventListener("click", () => {
    const empty = el("p", "empty", "No image analysed yet. Results appear here, newest first.");
    empty.id = "empty-state";
    $("results").replaceChildren(empty);
  });
}

setupInputs();
loadModel();
