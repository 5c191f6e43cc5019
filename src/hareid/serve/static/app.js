// hareid search page: plain JavaScript against the JSON API of `hareid serve` (no CDN, no build).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, offset: 0, facets: null, galleryOffset: 0, queryAttn: null, current: null };
const GALLERY_PAGE = 48;

function fmtTime(t) {
  if (t === null || t === undefined) return "–";
  if (t > 1e8) return new Date(t * 1000).toLocaleString();
  return Number.isInteger(t) ? String(t) : t.toFixed(2);
}

function message(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(url, options = {}) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const detail = body && body.detail;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail || r.statusText);
    throw new Error(`${r.status}: ${text}`);
  }
  return body;
}

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// ----------------------------------------------------------------------------- facets and filters
async function loadFacets() {
  const f = await api("/gallery/facets");
  state.facets = f;
  $("status").textContent = `${f.count} gallery images · ${f.cameras.length} cameras`;
  const box = $("cameras");
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const c of f.cameras) {
    const input = el("input", { type: "checkbox", checked: true, value: c });
    box.append(el("label", {}, [input, " " + (c === "" ? "(none)" : c)]));
  }
  $("trange").textContent = f.time_min === null ? "no times in this gallery"
    : `gallery times: ${fmtTime(f.time_min)} … ${fmtTime(f.time_max)}`;
  $("tmin").placeholder = f.time_min === null ? "" : f.time_min;
  $("tmax").placeholder = f.time_max === null ? "" : f.time_max;
}

function addFilters(form) {
  const boxes = [...$("cameras").querySelectorAll("input")];
  const on = boxes.filter((b) => b.checked).map((b) => b.value);
  if (on.length < boxes.length) for (const c of on) form.append("camera", c);
  if ($("tmin").value !== "") form.append("time_min", $("tmin").value);
  if ($("tmax").value !== "") form.append("time_max", $("tmax").value);
  return on.length > 0 || boxes.length === 0;  // no camera selected: nothing to search
}

// ----------------------------------------------------------------------------- search
function setQuery(query, imageUrl) {
  state.query = query;
  state.offset = 0;
  state.queryAttn = null;
  $("query").hidden = false;
  $("query-img").src = imageUrl;
  $("query-attn").removeAttribute("src");
  if (query.kind === "gallery") {
    state.queryAttn = `/gallery/${query.id}/attention.png`;
    $("query-attn").src = state.queryAttn;
  }
  search();
}

async function search() {
  if (!state.query) return;
  const k = Number($("k").value);
  const form = new FormData();
  if (state.query.kind === "image") form.append("image", state.query.file);
  else form.append("gallery_id", state.query.id);
  form.append("k", k);
  form.append("offset", state.offset);
  if (state.query.kind === "image" && !state.queryAttn) form.append("attention", "true");
  if (!addFilters(form)) {
    $("results").replaceChildren();
    message("select at least one camera", true);
    document.body.dataset.renders = Number(document.body.dataset.renders) + 1;
    return;
  }
  document.body.dataset.state = "loading";
  message("searching…");
  try {
    const res = await api("/search", { method: "POST", body: form });
    if (res.query_attention) {
      state.queryAttn = res.query_attention;
      $("query-attn").src = res.query_attention;
    }
    render(res);
    message(res.results.length ? `${res.results.length} matches (page ${state.offset / k + 1}, ${res.took_ms.toFixed(0)} ms)`
      : "no match with these filters");
  } catch (e) {
    message(e.message, true);
    $("results").replaceChildren();
  } finally {
    document.body.dataset.state = "idle";
    document.body.dataset.renders = Number(document.body.dataset.renders) + 1;
  }
}

function card(m, kind) {
  const photo = el("img", { className: "photo", src: m.image_url, alt: m.name, loading: "lazy" });
  const children = [photo];
  if (kind === "match") {
    children.push(el("img", { className: "attn", src: m.attention_url, alt: "attention", loading: "lazy" }));
    children.push(el("div", { className: "meta" }, [
      el("span", { className: "rank" }, [`#${m.rank}`]), ` d=${m.distance.toFixed(3)}`,
      el("br"), `cam ${m.camera || "–"} · t ${fmtTime(m.time)}`]));
  }
  const c = el("figure", { className: "card " + kind, title: m.name,
    dataset: { id: m.id, camera: m.camera, time: m.time === null ? "" : m.time, rank: m.rank || "", distance: m.distance ?? "" } }, children);
  c.addEventListener("click", () => kind === "match" ? openDetail(m) : setQuery({ kind: "gallery", id: m.id }, m.image_url));
  return c;
}

function render(res) {
  $("results").replaceChildren(...res.results.map((m) => card(m, "match")));
  const k = res.k;
  $("pager").hidden = false;
  $("prev").disabled = res.offset === 0;
  $("next").disabled = !res.has_more;
  $("page-info").textContent = `page ${res.offset / k + 1}`;
}

// ----------------------------------------------------------------------------- detail dialog
function openDetail(m) {
  state.current = m;
  $("detail-title").textContent = `#${m.rank} · ${m.name}`;
  $("detail-query").src = state.queryAttn || "";
  $("detail-match").src = m.attention_url;
  $("detail-caption").textContent = `match #${m.rank} (distance ${m.distance.toFixed(3)})`;
  const meta = { id: m.id, camera: m.camera || "–", time: fmtTime(m.time), source: m.source,
    identity: m.pid >= 0 ? m.pid : "–", score: m.score.toFixed(4), path: m.path };
  $("detail-meta").replaceChildren(...Object.entries(meta).flatMap(([k, v]) => [el("dt", {}, [k]), el("dd", {}, [String(v)])]));
  $("detail").showModal();
}

// ----------------------------------------------------------------------------- gallery browser
async function loadGallery() {
  const page = await api(`/gallery?offset=${state.galleryOffset}&limit=${GALLERY_PAGE}`);
  $("gallery").replaceChildren(...page.items.map((it) => card(it, "thumb")));
  $("gallery-info").textContent = page.count ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.count}` : "empty";
  $("gprev").disabled = page.offset === 0;
  $("gnext").disabled = page.offset + page.items.length >= page.count;
}

// ----------------------------------------------------------------------------- wiring
function pickFile(file) {
  if (!file) return;
  setQuery({ kind: "image", file }, URL.createObjectURL(file));
}

function wire() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pickFile(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => pickFile(e.target.files[0]));
  $("apply").addEventListener("click", () => { state.offset = 0; search(); });
  $("reset").addEventListener("click", () => {
    $("cameras").querySelectorAll("input").forEach((b) => { b.checked = true; });
    $("tmin").value = ""; $("tmax").value = "";
    state.offset = 0; search();
  });
  $("k").addEventListener("change", () => { state.offset = 0; search(); });
  $("show-attn").addEventListener("change", (e) => document.body.classList.toggle("hide-attn", !e.target.checked));
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - Number($("k").value)); search(); });
  $("next").addEventListener("click", () => { state.offset += Number($("k").value); search(); });
  $("gprev").addEventListener("click", () => { state.galleryOffset = Math.max(0, state.galleryOffset - GALLERY_PAGE); loadGallery(); });
  $("gnext").addEventListener("click", () => { state.galleryOffset += GALLERY_PAGE; loadGallery(); });
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail-search").addEventListener("click", () => {
    const m = state.current;
    $("detail").close();
    setQuery({ kind: "gallery", id: m.id }, m.image_url);
  });
  $("detail-delete").addEventListener("click", async () => {
    const m = state.current;
    try {
      await api(`/gallery/${m.id}`, { method: "DELETE" });
      $("detail").close();
      message(`deleted gallery item ${m.id}`);
      await Promise.all([loadFacets(), loadGallery()]);
      search();
    } catch (e) { message(e.message, true); }
  });
  $("add-button").addEventListener("click", async () => {
    const files = $("add-files").files;
    if (!files.length) { message("pick images to add first", true); return; }
    const form = new FormData();
    for (const f of files) form.append("images", f);
    if ($("add-camera").value) form.append("camera", $("add-camera").value);
    if ($("add-time").value) form.append("time", $("add-time").value);
    try {
      const res = await api("/gallery", { method: "POST", body: form });
      message(`added ${res.ids.length} image(s): ids ${res.ids.join(", ")}`);
      await Promise.all([loadFacets(), loadGallery()]);
    } catch (e) { message(e.message, true); }
  });
}

window.addEventListener("DOMContentLoaded", async () => {
  wire();
  try {
    await Promise.all([loadFacets(), loadGallery()]);
    message("drop a query image, or click a gallery image");
  } catch (e) {
    message(e.message, true);
  }
  document.body.dataset.state = "idle";
});
