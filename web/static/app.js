// The page's behaviour: search, ask (streamed), citations, document view, upload, delete, status.
// Every piece of document text goes into the page through textContent or text nodes, never innerHTML,
// so a document holding markup or <script> is shown as text and never runs.
"use strict";

const $ = (id) => document.getElementById(id);
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const authRequired = document.querySelector("main").dataset.authRequired === "true";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}

// --- talking to the API -----------------------------------------------------------------------

// The API token, when the server asks for one: every request beyond loopback needs it, writes always.
function authHeaders(headers = {}) {
  const token = $("api-token").value || sessionStorage.getItem("rag-api-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  return headers;
}

function writeHeaders() {
  return authHeaders({ "X-CSRF-Token": csrfToken });
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: authHeaders({ Accept: "application/json" }) });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// --- status -----------------------------------------------------------------------------------

async function refreshStatus() {
  try {
    const s = await getJSON("/api/stats");
    $("stat-documents").textContent = s.documents;
    $("stat-passages").textContent = s.passages;
    $("stat-backend").textContent = s.backend;
    $("stat-encoder").textContent = s.encoder;
    $("stat-reader").textContent = readerLabel(s.reader);
    $("stat-generator").textContent = s.generator.message;
    $("stat-generator").dataset.state = s.generator.state;
    $("documents-count").textContent = s.documents;
    $("status-message").textContent = s.message || "";
    $("status-message").hidden = !s.message;
  } catch (e) {
    $("status-message").textContent = "Status unavailable: " + e.message;
    $("status-message").hidden = false;
  }
}

// "span, tuned: NAME" / "span, shipped: NAME"; what the stats say about the reader that answers.
function readerLabel(reader) {
  if (!reader) return "";
  return reader.source === "missing" ? reader.message : `span, ${reader.source}: ${reader.name}`;
}

// --- progress and errors ----------------------------------------------------------------------

function busy(message) {
  $("progress-text").textContent = message;
  $("progress").hidden = false;
  $("search-button").disabled = true;
  $("ask-button").disabled = true;
}

function idle() {
  $("progress").hidden = true;
  $("search-button").disabled = false;
  $("ask-button").disabled = false;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// --- rendering passages -----------------------------------------------------------------------

const WORD = /[\p{L}\p{N}_]+/gu;

// The stem rule of rag/search/snippets.py: a word matches a term when it starts with the term's stem.
function stem(term) {
  return term.length <= 4 ? term : term.slice(0, Math.max(4, term.length - 3));
}

// Append text to parent, wrapping the words that match one of the terms in <mark>.
function appendMarked(parent, text, terms) {
  if (!terms || !terms.length) { parent.append(text); return; }
  const stems = terms.map(stem);
  let last = 0;
  for (const match of text.matchAll(WORD)) {
    const word = match[0].toLowerCase();
    if (stems.some((s) => word.startsWith(s))) {
      parent.append(text.slice(last, match.index), el("mark", { text: match[0] }));
      last = match.index + match[0].length;
    }
  }
  parent.append(text.slice(last));
}

// Where to find a passage again: "p. 3", "pp. 3–4", "§ Heading" (the rule of rag/ingest/locations.py).
function locationLabel(item) {
  const parts = [];
  if (item.page != null) {
    parts.push(item.last_page != null && item.last_page !== item.page ? `pp. ${item.page}–${item.last_page}` : `p. ${item.page}`);
  }
  if (item.heading) parts.push(`§ ${item.heading}`);
  return parts.join(" · ");
}

function documentHref(documentId, passageId, page) {
  const params = new URLSearchParams({ passage: passageId });
  if (page != null) params.set("page", page);
  return `/documents/${documentId}?${params.toString()}#highlight`;
}

function renderHits(hits, title, citedIds) {
  const list = $("results");
  list.replaceChildren();
  $("results-title").textContent = title;
  for (const [i, hit] of hits.entries()) {
    const doc = hit.document;
    const open = el("a", { class: "hit-title", href: documentHref(doc.id, hit.passage_id, hit.page),
                           text: doc.title || doc.path, "data-document": doc.id, "data-passage": hit.passage_id });
    open.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;  // new tab: the server page
      event.preventDefault();
      openDocument(doc.id, hit.passage_id, hit.page);
    });
    const where = locationLabel(hit);
    const head = el("div", { class: "hit-head" },
      el("span", { class: "hit-n", text: `[${i + 1}]` }), open,
      ...(where ? [el("span", { class: "hit-where", text: where })] : []),
      el("span", { class: "hit-path", text: doc.path }),
      el("span", { class: "hit-score", text: `score ${Number(hit.score).toFixed(4)}` }));
    const text = el("p", { class: "hit-text" });
    appendMarked(text, hit.text, hit.matched_terms);
    const terms = el("div", { class: "terms" });
    if (hit.matched_terms && hit.matched_terms.length) {
      terms.append("matched: ");
      for (const t of hit.matched_terms) terms.append(el("span", { class: "term", text: t }));
    } else {
      terms.append(el("span", { class: "meta", text: "no query term in this passage (found by meaning)" }));
    }
    const item = el("li", { class: "hit", id: `passage-${hit.passage_id}`, "data-passage": hit.passage_id }, head, text, terms);
    if (citedIds && citedIds.has(hit.passage_id)) item.classList.add("cited");
    list.append(item);
  }
  if (!hits.length) list.append(el("li", { class: "meta", text: "No passage matched." }));
  $("results-box").hidden = false;
}

function highlightPassage(passageId) {
  for (const node of document.querySelectorAll(".hit.highlighted")) node.classList.remove("highlighted");
  const target = $(`passage-${passageId}`);
  if (!target) return;
  target.classList.add("highlighted");
  target.scrollIntoView({ behavior: "smooth", block: "center" });
}

// The answer text with every [n] that names a cited passage turned into a link to it.
function renderAnswerText(text, citations) {
  const byN = new Map(citations.map((c) => [c.n, c]));
  const box = $("answer-text");
  box.replaceChildren();
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    const citation = byN.get(Number(match[1]));
    if (!citation) continue;
    box.append(text.slice(last, match.index));
    const link = el("a", { class: "citation", href: `#passage-${citation.passage_id}`, text: match[0],
                           title: citation.document.title || citation.document.path,
                           "data-passage": citation.passage_id });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      highlightPassage(citation.passage_id);
    });
    box.append(link);
    const where = locationLabel(citation);
    if (where) box.append(el("span", { class: "citation-where", text: ` (${where})` }));
    last = match.index + match[0].length;
  }
  box.append(text.slice(last));
}

// The cited sentence that holds the answer, with the answer marked, so it reads in context.
function renderSentence(sentence) {
  const box = $("answer-sentence");
  box.replaceChildren();
  box.hidden = !sentence;
  if (!sentence) return;
  const text = sentence.text;
  box.append(`[${sentence.n}] `, text.slice(0, sentence.answer_start),
             el("mark", { text: text.slice(sentence.answer_start, sentence.answer_end) }),
             text.slice(sentence.answer_end));
}

function renderAnswer(answer) {
  $("answer-text").classList.remove("streaming");
  renderAnswerText(answer.answer, answer.citations);
  renderSentence(answer.sentence);
  const timings = Object.entries(answer.timings || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`).join(", ");
  const cited = answer.citations.length ? `${answer.citations.length} citation(s)` : "no citation";
  $("answer-meta").textContent = timings ? `${cited} · ${timings}` : cited;
  const hyde = answer.hyde || [];
  $("hyde-list").replaceChildren(...hyde.map((h) => el("li", { text: h })));
  $("hyde-box").hidden = !hyde.length;
  $("answer").hidden = false;
  renderHits(answer.passages, "Passages given to the reader", new Set(answer.citations.map((c) => c.passage_id)));
}

// --- search and ask ---------------------------------------------------------------------------

function options() {
  return {
    q: $("q").value.trim(),
    k: $("k").value,
    mode: $("mode").value,
    hyde: $("hyde").checked,
    reader: $("reader").value,
    where: $("where").value.trim(),
  };
}

function remember(action, o) {
  const params = new URLSearchParams({ q: o.q, action, mode: o.mode, k: o.k });
  history.replaceState(null, "", "?" + params.toString());
}

async function runSearch() {
  const o = options();
  if (!o.q) { showError("Type a query first."); return; }
  showError("");
  remember("search", o);
  busy("Searching…");
  try {
    const params = new URLSearchParams({ q: o.q, k: o.k, mode: o.mode });
    if (o.where) params.set("where", o.where);
    const result = await getJSON("/api/search?" + params.toString());
    $("answer").hidden = true;
    renderHits(result.results, `Passages for “${result.query}” (${result.mode})`);
  } catch (e) {
    showError(e.message);
  } finally {
    idle();
  }
}

// Server-sent events over a fetch stream (EventSource cannot POST): "status", "token", "answer", "error".
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { name, data: JSON.parse(data) };
    }
  }
}

async function runAsk() {
  const o = options();
  if (!o.q) { showError("Type a question first."); return; }
  showError("");
  remember("ask", o);
  busy("Asking…");
  $("answer").hidden = false;
  $("answer-text").replaceChildren();
  $("answer-text").classList.add("streaming");
  $("answer-meta").textContent = "";
  $("answer-sentence").hidden = true;
  $("hyde-box").hidden = true;
  $("results-box").hidden = true;
  let finished = false;
  try {
    const body = { question: o.q, k: Number(o.k), mode: o.mode, hyde: o.hyde, reader: o.reader };
    if (o.where) body.where = o.where;
    const response = await fetch("/api/ask", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const event of readEvents(response)) {
      if (event.name === "status") {
        $("progress-text").textContent = event.data.message;
        refreshStatus();
      } else if (event.name === "token") {
        $("progress-text").textContent = "Writing the answer…";
        $("answer-text").append(event.data.text);
      } else if (event.name === "answer") {
        renderAnswer(event.data);
        finished = true;
      } else if (event.name === "error") {
        throw new Error(event.data.error);
      }
    }
    if (!finished) throw new Error("the answer stream ended early; try again");
  } catch (e) {
    $("answer-text").classList.remove("streaming");
    if (!$("answer-text").textContent) $("answer").hidden = true;
    showError(e.message);
  } finally {
    idle();
    refreshStatus();
  }
}

// --- the document view ------------------------------------------------------------------------

// The document text into `pre`, a marker where each PDF page starts, the passage (if any) in one
// <mark> (the markers it spans go inside it); the order of web/pages.py's document_pieces.
function fillDocument(pre, text, pageStarts, passage) {
  const events = pageStarts.map((start, i) => [Math.min(start, text.length), 1, "page", i + 1]);
  if (passage) events.push([passage.start, 2, "open"], [passage.end, 0, "close"]);
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let at = 0, into = pre, mark = null;
  for (const [offset, , kind, page] of events) {
    if (offset > at) { into.append(text.slice(at, offset)); at = offset; }
    if (kind === "page") {
      into.append(el("span", { class: "page-marker", id: `doc-page-${page}`, "data-page": page, role: "note",
                               "aria-label": `page ${page}` }));
    } else if (kind === "open") {
      mark = el("mark", { class: "passage-highlight", id: "doc-highlight" });
      pre.append(mark);
      into = mark;
    } else {
      into = pre;
    }
  }
  pre.append(text.slice(at));
  return mark;
}

async function openDocument(documentId, passageId, page) {
  try {
    const doc = await getJSON(`/api/documents/${documentId}`);
    const passage = doc.passages.find((p) => p.id === passageId);
    const pages = doc.page_starts || [];
    $("doc-title").textContent = doc.document.title || doc.document.path;
    const where = passage ? locationLabel(passage) : "";
    $("doc-path").textContent = `${doc.document.path} · ${doc.passages.length} passages` +
      (pages.length ? ` · ${pages.length} pages` : "") + (where ? ` · passage at ${where}` : "");
    const pre = $("doc-text");
    pre.replaceChildren();
    const mark = fillDocument(pre, doc.text, pages, passage);
    $("document-view").hidden = false;
    $("document-view").scrollIntoView({ block: "start" });
    const pageMarker = page != null ? $(`doc-page-${page}`) : null;
    if (mark) mark.scrollIntoView({ block: "center" });
    else if (pageMarker) pageMarker.scrollIntoView({ block: "start" });
  } catch (e) {
    showError(e.message);
  }
}

// --- upload and delete ------------------------------------------------------------------------

function upload(form) {
  const files = $("upload-files").files;
  if (!files.length) return;
  const token = $("api-token").value;
  if (token) sessionStorage.setItem("rag-api-token", token);
  const data = new FormData();
  for (const file of files) data.append("file", file);
  data.append("collection", $("upload-collection").value || "default");
  const bar = $("upload-progress");
  const results = $("upload-results");
  results.replaceChildren(el("li", { class: "meta", text: `Uploading ${files.length} file(s)…` }));
  bar.hidden = false;
  bar.value = 0;
  $("upload-button").disabled = true;

  const xhr = new XMLHttpRequest();  // fetch cannot report upload progress
  xhr.open("POST", form.action);
  for (const [name, value] of Object.entries(writeHeaders())) xhr.setRequestHeader(name, value);
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) bar.value = Math.round((100 * event.loaded) / event.total);
  });
  xhr.upload.addEventListener("load", () => {
    bar.removeAttribute("value");  // indeterminate while the server ingests
    results.replaceChildren(el("li", { class: "meta", text: "Ingesting (reading, chunking, encoding)…" }));
  });
  xhr.addEventListener("loadend", () => {
    $("upload-button").disabled = false;
    bar.hidden = true;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    results.replaceChildren();
    if (body && body.files) {
      for (const f of body.files) {
        const line = `${f.file}: ${f.status}` + (f.reason ? ` — ${f.reason}` : "") +
                     (f.passages !== undefined && f.status !== "failed" ? ` (${f.passages} passages)` : "");
        results.append(el("li", { class: f.status, text: line }));
      }
    }
    if (xhr.status >= 400 || xhr.status === 0) {
      const message = (body && body.error) || (xhr.status ? `upload failed (${xhr.status})` : "upload failed: the server did not answer");
      results.append(el("li", { class: "failed", text: message }));
    }
    form.reset();
    refreshStatus();
    loadDocuments();
  });
  xhr.send(data);
}

async function deleteDocument(doc, item) {
  if (!confirm(`Delete “${doc.title || doc.path}” from the library?`)) return;
  const response = await fetch(`/api/documents/${doc.id}`, { method: "DELETE", headers: writeHeaders() });
  if (!response.ok) { showError(await errorMessage(response)); return; }
  item.remove();
  refreshStatus();
}

async function loadDocuments() {
  try {
    const result = await getJSON("/api/documents?limit=200");
    const list = $("documents");
    list.replaceChildren();
    for (const doc of result.documents) {
      const remove = el("button", { type: "button", class: "delete", text: "Delete", "data-document": doc.id });
      const item = el("li", { "data-document": doc.id },
        el("a", { href: `/documents/${doc.id}`, text: doc.title || doc.path }),
        el("span", { class: "meta", text: ` ${doc.path} · ${doc.collection}` }), remove);
      remove.addEventListener("click", () => deleteDocument(doc, item));
      list.append(item);
    }
    if (result.total > result.documents.length) {
      list.append(el("li", { class: "meta", text: `… and ${result.total - result.documents.length} more` }));
    }
  } catch (e) {
    showError(e.message);
  }
}

// --- wiring -----------------------------------------------------------------------------------

$("query-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const action = event.submitter ? event.submitter.value : "search";
  if (action === "ask") runAsk(); else runSearch();
});
$("doc-close").addEventListener("click", () => { $("document-view").hidden = true; });
$("upload-form").addEventListener("submit", (event) => { event.preventDefault(); upload(event.target); });
if (authRequired) $("api-token").value = sessionStorage.getItem("rag-api-token") || "";

loadDocuments();
const start = new URLSearchParams(location.search);
if (start.get("mode")) $("mode").value = start.get("mode");
if (start.get("k")) $("k").value = start.get("k");
if (start.get("q")) {
  if (start.get("action") === "ask") runAsk(); else runSearch();
}
