// The pixdex serve page: search by an uploaded image, "more like this" on any result, and
// recommendations from ticked results. Every name from the server goes in with textContent,
// never as markup, so a file called <img onerror=...>.png is shown, not run.
"use strict";

const $ = (id) => document.getElementById(id);
const liked = new Set();

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isFinite(value) && value > 0 ? value : 12;
}

async function call(url, options) {
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || response.status + " " + response.statusText);
  }
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function figureFor(match) {
  const fig = el("figure", "result");
  fig.dataset.id = String(match.id);
  const img = el("img");
  img.src = "/thumbs/" + encodeURIComponent(match.id);
  img.alt = match.label === null ? "item " + match.id : String(match.label);
  img.title = "more like this";
  img.addEventListener("click", () => moreLikeThis(match.id));
  fig.appendChild(img);
  const cap = el("figcaption");
  const line = el("div");
  line.appendChild(el("span", "rank", "#" + match.rank + " "));
  line.appendChild(el("span", "score", Number(match.score).toFixed(4)));
  cap.appendChild(line);
  if (match.label !== null && match.label !== undefined) cap.appendChild(el("div", "label", match.label));
  cap.appendChild(el("div", "path", match.path));
  const tick = el("label");
  const box = el("input");
  box.type = "checkbox";
  box.className = "like";
  box.checked = liked.has(match.id);
  box.addEventListener("change", () => {
    if (box.checked) liked.add(match.id); else liked.delete(match.id);
    updateLiked();
  });
  tick.appendChild(box);
  tick.appendChild(document.createTextNode(" like"));
  cap.appendChild(tick);
  const more = el("button", "more", "more like this");
  more.type = "button";
  more.addEventListener("click", () => moreLikeThis(match.id));
  cap.appendChild(more);
  fig.appendChild(cap);
  return fig;
}

function updateLiked() {
  $("liked").textContent = String(liked.size);
  $("recommend").disabled = liked.size === 0;
}

function showResults(title, queryNode, rows) {
  const results = $("results");
  results.replaceChildren();
  $("query").hidden = false;
  $("query-title").textContent = title;
  $("query-body").replaceChildren();
  if (queryNode) $("query-body").appendChild(queryNode);
  let count = 0;
  for (const row of rows) {
    for (const match of row.matches) {
      results.appendChild(figureFor(match));
      count += 1;
    }
  }
  setStatus(count + " result(s)");
}

async function searchFiles(files) {
  if (!files || files.length === 0) return;
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  form.append("k", String(k()));
  setStatus("searching...");
  try {
    const rows = await call("/api/search", { method: "POST", body: form });
    const fig = el("figure", "query-item");
    const img = el("img");
    img.src = URL.createObjectURL(files[0]);
    img.alt = "query";
    fig.appendChild(img);
    fig.appendChild(el("figcaption", "path", files[0].name));
    showResults("Query: " + files[0].name, fig, rows);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function moreLikeThis(id) {
  setStatus("more like item " + id + "...");
  try {
    const rows = await call("/api/items/" + encodeURIComponent(id) + "/similar?k=" + k());
    const fig = el("figure", "query-item");
    const img = el("img");
    img.src = "/thumbs/" + encodeURIComponent(id);
    img.alt = "item " + id;
    fig.appendChild(img);
    fig.appendChild(el("figcaption", "path", "item " + id));
    showResults("More like item " + id, fig, rows);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function recommend() {
  const positive = Array.from(liked);
  setStatus("recommending from " + positive.length + " item(s)...");
  try {
    const rows = await call("/api/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ positive: positive, k: k() }),
    });
    showResults("Recommended from items " + positive.join(", "), null, rows);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function loadInfo() {
  try {
    const info = await call("/api/info");
    const parts = [info.path, info.kind];
    if (info.count !== null) parts.push(info.count + " items", info.dim + " dims", info.metric, info.index);
    if (info.recall_at_10 !== null) parts.push("recall@10 " + Number(info.recall_at_10).toFixed(3));
    parts.push("model " + info.model.backbone + " / " + info.model.loss);
    $("summary").textContent = parts.join(" · ");
    $("k").max = String(info.max_k);
    $("k").value = String(Math.min(12, info.max_k));
    if (info.kind !== "index") setStatus("a run folder is served: only /api/predict and /api/info answer");
  } catch (e) {
    $("summary").textContent = "";
    setStatus(e.message, true);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => searchFiles(ev.target.files));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    searchFiles(ev.dataTransfer.files);
  });
  $("recommend").addEventListener("click", recommend);
  $("clear").addEventListener("click", () => {
    liked.clear();
    for (const box of document.querySelectorAll("input.like")) box.checked = false;
    updateLiked();
  });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", wire);
