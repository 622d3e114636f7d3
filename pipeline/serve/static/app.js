// latent's search page: talks to the HTTP API of the same server (docs/http-api.md). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const input = $("query");
const fileInput = $("file");
const kSelect = $("k");
const statusLine = $("status");
const results = $("results");
const chip = $("query-chip");
const chipImage = $("query-chip-image");
const chipLabel = $("query-chip-label");
const drop = $("drop");
const authForm = $("auth");
const tokenInput = $("token");

// The access token, when the server wants one (health.auth_required): asked once per tab, kept in
// sessionStorage (gone when the tab closes), sent as an Authorization header, never put in a URL.
// Thumbnails are fetched with it too and shown from blob: URLs.
const TOKEN_KEY = "latent-token";
let authRequired = false;
let thumbnailUrls = [];  // blob: URLs of the thumbnails shown, revoked at the next render

let pending = null;      // the query of the search box when it is not text: {image} or {id}
let sequence = 0;        // answers to older requests are dropped
let textQueries = true;  // false when the server answers vector and id queries only

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    const body = await response.json().catch(() => null);
    askForToken(token ? "That token was refused." : "");
    throw new Unauthorized(errorText(body, 401));
  }
  return response;
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("auth-error").textContent = message;
  authForm.hidden = false;
  tokenInput.focus();
  setStatus("An access token is needed.", true);
}

authForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenInput.value = "";
  authForm.hidden = true;
  start();
});

// an <img> cannot send a header: with a token, fetch the thumbnail and show it from a blob: URL
async function showThumbnail(img, url, onMissing) {
  if (!authRequired) {
    img.src = url;
    return;
  }
  try {
    const response = await api(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blobUrl = URL.createObjectURL(await response.blob());
    thumbnailUrls.push(blobUrl);
    img.src = blobUrl;
  } catch (err) {
    if (onMissing) onMissing();
  }
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function errorText(body, status) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return detail || `HTTP ${status}`;
}

function showChip(imageUrl, label) {
  chipImage.hidden = !imageUrl;
  if (imageUrl && imageUrl.startsWith("data:")) chipImage.src = imageUrl;
  else if (imageUrl) showThumbnail(chipImage, imageUrl, () => { chipImage.hidden = true; });
  chipLabel.textContent = label;
  chip.hidden = false;
  input.value = "";
  input.placeholder = "";
}

function clearChip() {
  pending = null;
  chip.hidden = true;
  chipImage.removeAttribute("src");
  input.placeholder = textQueries ? "Search by text, or drop an image here" : "Text and image queries are off on this server";
}

async function search(query, description) {
  const mine = ++sequence;
  const k = Number(kSelect.value);
  setStatus("Searching…");
  form.classList.add("busy");
  let response, body;
  try {
    const where = whereInput.value.trim();
    response = await api("search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...query, k, ...(where ? { where } : {}) }),
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    if (mine === sequence && !(err instanceof Unauthorized)) setStatus(`Cannot reach the server: ${err}`, true);
    return;
  } finally {
    if (mine === sequence) form.classList.remove("busy");
  }
  if (mine !== sequence) return;
  if (!response.ok) {
    setStatus(errorText(body, response.status), true);
    return;
  }
  render(body.hits);
  const n = body.hits.length;
  const plan = body.plan ? ` · filter: ${body.plan.matched.toLocaleString()} of ${body.plan.rows.toLocaleString()} items match (${body.plan.kind} search)` : "";
  setStatus(`${n} result${n === 1 ? "" : "s"} ${description}${plan} · ${body.took_ms.toFixed(1)} ms`);
}

function caption(hit) {
  const text = hit.metadata && hit.metadata.text;
  return text && text.trim() ? text : hit.id;
}

function render(hits) {
  results.replaceChildren();
  thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
  thumbnailUrls = [];
  for (const hit of hits) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.id = hit.id;

    const button = document.createElement("button");
    button.type = "button";
    button.title = `Search for items like ${hit.id}`;
    button.addEventListener("click", () => searchById(hit));

    const frame = document.createElement("div");
    frame.className = "thumb";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = caption(hit);
    const missing = () => {
      frame.classList.add("missing");
      img.remove();
    };
    img.addEventListener("error", missing);
    showThumbnail(img, hit.thumbnail, missing);
    frame.append(img);

    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "score";
    frame.append(score);

    const text = document.createElement("p");
    text.className = "caption";
    text.textContent = caption(hit);
    const id = document.createElement("p");
    id.className = "id";
    id.textContent = hit.id;

    button.append(frame, text, id);
    li.append(button);
    results.append(li);
  }
}

function searchById(hit) {
  pending = { id: hit.id };
  showChip(hit.thumbnail, `Like: ${caption(hit)}`);
  history.replaceState(null, "", pageUrl({ id: hit.id }));
  window.scrollTo({ top: 0, behavior: "smooth" });
  search(pending, `like “${caption(hit)}”`);
}

function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    pending = { image: reader.result };  // a data: URL; the server accepts it as it is
    showChip(reader.result, file.name || "pasted image");
    history.replaceState(null, "", pageUrl({}));
    search(pending, `like ${file.name || "the image"}`);
  };
  reader.onerror = () => setStatus("Cannot read that file.", true);
  reader.readAsDataURL(file);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (text) {
    clearChip();
    input.value = text;
    history.replaceState(null, "", pageUrl({ q: text }));
    search({ text }, `for “${text}”`);
  } else if (pending) {
    search(pending, "");
  } else {
    setStatus("Type a query, or drop an image.", true);
  }
});

$("query-chip-clear").addEventListener("click", () => {
  clearChip();
  input.focus();
});
input.addEventListener("keydown", (event) => {
  if (event.key === "Backspace" && !input.value && pending) clearChip();
});
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) searchByImage(fileInput.files[0]);
  fileInput.value = "";
});
kSelect.addEventListener("change", () => {
  if (pending || input.value.trim()) form.requestSubmit();
});

// drag and drop anywhere on the page, and paste from the clipboard
let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
  dragDepth += 1;
  drop.hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) drop.hidden = true;
});
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  drop.hidden = true;
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) searchByImage(file);
});
window.addEventListener("paste", (event) => {
  const file = Array.from(event.clipboardData ? event.clipboardData.files : []).find((f) => f.type.startsWith("image/"));
  if (file) searchByImage(file);
});

// The filter box: a where= predicate (docs/search.md#filters) sent with every search; the names of the
// index's metadata columns (GET columns) are suggested as they are typed. A bad predicate's 400 is shown.
const whereInput = $("where");
const suggest = $("where-suggest");
let columns = [];  // [{name, kind}]
let suggestions = [];
let active = -1;
const PLAIN_NAME = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

function pageUrl(params) {
  const where = whereInput.value.trim();
  const query = new URLSearchParams({ ...params, ...(where ? { where } : {}) }).toString();
  return query ? `?${query}` : "./";
}

async function loadColumns() {
  try {
    const response = await api("columns");
    if (response.ok) columns = (await response.json()).columns;
  } catch (err) {
    columns = [];  // no suggestions; the filter still works
  }
}

// the name being typed at the caret: where a column name can go (not inside a quoted string, not a value)
function wordAtCaret() {
  const caret = whereInput.selectionStart ?? whereInput.value.length;
  const before = whereInput.value.slice(0, caret);
  if ((before.match(/'/g) || []).length % 2 || (before.match(/"/g) || []).length % 2) return null;
  const typed = /[A-Za-z_][A-Za-z0-9_.]*$/.exec(before);
  const start = typed ? typed.index : caret;
  const head = before.slice(0, start).trimEnd();
  if (head && !/(^|[\s(])(and|or|not)$/i.test(head) && !head.endsWith("(") && !head.endsWith(",")) return null;
  return { start, end: caret, text: typed ? typed[0] : "" };
}

function showSuggestions() {
  const word = wordAtCaret();
  const lower = word ? word.text.toLowerCase() : "";
  suggestions = word ? columns.filter((c) => c.name.toLowerCase().startsWith(lower) && c.name !== word.text).slice(0, 12) : [];
  active = suggestions.length ? 0 : -1;
  suggest.replaceChildren(
    ...suggestions.map((column, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.dataset.name = column.name;
      li.className = i === active ? "active" : "";
      const name = document.createElement("span");
      name.textContent = column.name;
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = column.kind;
      li.append(name, kind);
      li.addEventListener("mousedown", (event) => {
        event.preventDefault();  // keep the focus in the box
        accept(column.name);
      });
      return li;
    }),
  );
  suggest.hidden = !suggestions.length;
}

function accept(name) {
  const word = wordAtCaret() || { start: whereInput.selectionStart, end: whereInput.selectionStart };
  const text = PLAIN_NAME.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
  const value = whereInput.value;
  whereInput.value = `${value.slice(0, word.start)}${text} ${value.slice(word.end).trimStart()}`;
  const caret = word.start + text.length + 1;
  whereInput.setSelectionRange(caret, caret);
  suggest.hidden = true;
  suggestions = [];
}

whereInput.addEventListener("input", showSuggestions);
whereInput.addEventListener("focus", showSuggestions);
whereInput.addEventListener("blur", () => { suggest.hidden = true; });
whereInput.addEventListener("keydown", (event) => {
  const open = !suggest.hidden && suggestions.length;
  if (open && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    active = (active + (event.key === "ArrowDown" ? 1 : suggestions.length - 1)) % suggestions.length;
    [...suggest.children].forEach((li, i) => li.classList.toggle("active", i === active));
  } else if (open && (event.key === "Tab" || event.key === "Enter") && active >= 0) {
    event.preventDefault();
    accept(suggestions[active].name);
  } else if (event.key === "Escape") {
    suggest.hidden = true;
  } else if (event.key === "Enter") {
    event.preventDefault();
    suggest.hidden = true;
    form.requestSubmit();
  }
});

async function start() {
  try {
    const response = await fetch("healthz");  // public: it says whether a token is needed
    const health = await response.json();
    authRequired = Boolean(health.auth_required);
    if (authRequired && !sessionStorage.getItem(TOKEN_KEY)) {
      askForToken("");
      return;
    }
    if (authRequired) await api("openapi.json");  // a wrong token shows the form again now, not at the first search
    textQueries = health.queries.includes("text");
    const model = health.model ? ` · ${health.model}` : "";
    $("index-info").textContent = `${health.ntotal.toLocaleString()} items${model}`;
    if (!textQueries) {
      input.disabled = true;
      input.title = health.text_queries_unavailable || "";
      clearChip();
    }
  } catch (err) {
    if (err instanceof Unauthorized) return;  // the token form is shown; submitting it calls start() again
    setStatus(`Cannot reach the server: ${err}`, true);
  }
  const params = new URLSearchParams(location.search);
  if (params.get("where")) whereInput.value = params.get("where");  // e.g. a map selection (map page)
  loadColumns();
  if (params.get("q") && textQueries) {
    input.value = params.get("q");
    form.requestSubmit();
  } else if (params.get("id")) {
    const id = params.get("id");
    pending = { id };
    showChip(`thumbnails?id=${encodeURIComponent(id)}`, `Like: ${id}`);  // the query form carries every id
    search(pending, `like ${id}`);
  } else {
    setStatus(textQueries ? "Type what you are looking for, or drop an image." : "This index answers vector and id queries only.");
  }
}

start();
