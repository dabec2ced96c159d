// The prior-art search page: talks to patentclip-search serve's JSON API (evaluation/serve.py).
"use strict";
const $ = (s) => document.querySelector(s);
let files = [];
let searches = 0;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function status(msg, error) {
  $("#status").textContent = msg;
  $("#status").classList.toggle("error", !!error);
}

async function loadInfo() {
  const r = await fetch("/api/info");
  const info = await r.json();
  $("#index-info").textContent = `${info.drawings.toLocaleString()} drawings of ${info.patents.toLocaleString()} ` +
    `patents, granted ${info.first_grant || "?"} – ${info.last_grant || "?"} · model ${info.model} · ${info.faiss}` +
    (info.pending_shards ? ` · ${info.pending_shards} shards not indexed yet` : "");
  for (const c of info.classes) {
    const o = el("option", null, `${c.code} ${c.name}`);
    o.value = c.code;
    $("#class").appendChild(o);
  }
  for (const v of info.views) {
    const o = el("option", null, v);
    o.value = v;
    $("#view").appendChild(o);
  }
  document.body.dataset.ready = "1";
}

function readFile(f) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = () => reject(fr.error);
    fr.readAsDataURL(f);
  });
}

function setFiles(list) {
  files = Array.from(list || []);
  const prev = $("#previews");
  prev.textContent = "";
  for (const f of files) {
    const img = el("img");
    img.alt = f.name;
    img.src = URL.createObjectURL(f);
    prev.appendChild(img);
  }
  $("#drop-text").textContent = files.length ? `${files.length} drawing${files.length > 1 ? "s" : ""}: ` +
    files.map((f) => f.name).join(", ") : "Drop drawings of one design here, or click to choose (several views allowed)";
}

function scoreBar(score) {
  const s = el("div", "score");
  const i = el("i");
  i.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  s.appendChild(i);
  return s;
}

function render(doc) {
  const grid = $("#results");
  grid.textContent = "";
  for (const r of doc.results) {
    const card = el("article", "card");
    card.dataset.patent = r.patent_id;
    card.dataset.granted = r.grant_date || "";
    card.dataset.score = r.score;
    const img = el("img");
    img.alt = `${r.patent_id} ${r.best.view}`;
    img.loading = "eager";
    img.src = r.best.image;
    card.appendChild(img);
    const head = el("div");
    head.appendChild(el("span", "pid", r.patent_id));
    head.appendChild(el("span", "rank", `#${r.rank}`));
    card.appendChild(head);
    card.appendChild(el("div", "meta date", `granted ${r.grant_date || "unknown"}`));
    card.appendChild(el("div", "meta class", `${r.class.code || ""} ${r.class.name || ""}`));
    card.appendChild(el("div", "meta", `score ${r.score.toFixed(4)} · ${r.best.view}`));
    card.appendChild(scoreBar(r.score));
    card.addEventListener("click", () => openPatent(r));
    grid.appendChild(card);
  }
  const s = doc.searched;
  status(`${doc.results.length} patents from ${s.allowed.toLocaleString()} drawings allowed by the filters ` +
         `(${s.drawings.toLocaleString()} indexed) · ${s.exact ? "exact" : "approximate"} · ${s.seconds.toFixed(2)} s`);
}

function openPatent(r) {
  $("#detail-title").textContent = `${r.patent_id} — ${r.title || ""}`;
  $("#detail-meta").textContent = `granted ${r.grant_date || "unknown"} · ${r.class.code || ""} ${r.class.name || ""} · ` +
    `best score ${r.score.toFixed(4)}`;
  const views = $("#detail-views");
  views.textContent = "";
  for (const d of r.drawings || []) {
    const v = el("figure", "view" + (d.allowed === false ? " excluded" : ""));
    const img = el("img");
    img.alt = d.key;
    img.src = d.image;
    v.appendChild(img);
    v.appendChild(el("figcaption", null, `${d.view} · ${d.score !== undefined ? d.score.toFixed(4) : ""}` +
      (d.allowed === false ? " (filtered out)" : "")));
    views.appendChild(v);
  }
  $("#detail").showModal();
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const text = $("#text").value.trim();
  if (!files.length && !text) {
    status("Choose a drawing or type a description first.", true);
    return;
  }
  const body = {
    images: await Promise.all(files.map(readFile)),
    names: files.map((f) => f.name),
    text: files.length ? "" : text,
    before: $("#before").value || null,
    classes: $("#class").value ? [$("#class").value] : [],
    views: $("#view").value ? [$("#view").value] : [],
    top: parseInt($("#top").value, 10) || 24,
  };
  status("searching…");
  try {
    const r = await fetch("/api/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)});
    const doc = await r.json();
    if (!r.ok) {
      status(doc.error || `error ${r.status}`, true);
    } else {
      render(doc);
    }
  } catch (e) {
    status(`search failed: ${e}`, true);
  }
  searches += 1;
  document.body.dataset.searches = String(searches);
}

$("#files").addEventListener("change", (e) => { setFiles(e.target.files); search(); });
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setFiles(e.dataTransfer.files);
  search();
});
$("#query").addEventListener("submit", search);
for (const id of ["#before", "#class", "#view"]) {
  $(id).addEventListener("change", () => { if (files.length || $("#text").value.trim()) search(); });
}
$("#clear").addEventListener("click", () => {
  setFiles([]);
  $("#text").value = "";
  $("#results").textContent = "";
  status("");
});
loadInfo().catch((e) => status(`cannot reach the server: ${e}`, true));
