// hareid search page: plain JavaScript against the JSON API of `hareid serve` (no CDN, no build).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, offset: 0, facets: null, galleryOffset: 0, queryAttn: null, current: null,
  absolute: false, groupSet: false };

// An <svg> parsed by the HTML parser (so it lives in the SVG namespace) and children made in it.
function svgRoot(viewBox) {
  const d = document.createElement("div");
  d.innerHTML = `<svg viewBox="${viewBox}" preserveAspectRatio="none"></svg>`;
  return d.firstChild;
}
function svgChild(svg, tag, attrs = {}) {
  const e = document.createElementNS(svg.namespaceURI, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
const GALLERY_PAGE = 48;

function fmtTime(t) {
  if (t === null || t === undefined) return "–";
  if (t > 1e8) return new Date(t * 1000).toLocaleString();
  return Number.isInteger(t) ? String(t) : t.toFixed(2);
}

// Unix seconds (absolute times) as wall-clock text in the browser's time zone.
function fmtClock(t, withDate = true) {
  const d = new Date(t * 1000);
  return withDate ? d.toLocaleString() : d.toLocaleTimeString();
}

function fmtSpan(a, b) {
  if (a === null || a === undefined) return "no time";
  if (a > 1e8) {
    const sameDay = new Date(a * 1000).toDateString() === new Date(b * 1000).toDateString();
    return a === b ? fmtClock(a) : `${fmtClock(a)} – ${fmtClock(b, !sameDay)}`;
  }
  return a === b ? fmtTime(a) : `${fmtTime(a)} – ${fmtTime(b)}`;
}

// A datetime-local value (browser's time zone) <-> unix seconds.
function toSeconds(value) { return new Date(value).getTime() / 1000; }
function toLocalInput(t) {
  const d = new Date(t * 1000 - new Date(t * 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
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
  // absolute (unix) times: wall-clock inputs; frame indexes or seconds in a sequence: numbers
  state.absolute = f.time_min !== null && f.time_min > 1e8;
  $("tabs").hidden = !state.absolute;
  $("trel").hidden = state.absolute;
  if (state.absolute) {
    $("dtmin").min = $("dtmax").min = toLocalInput(Math.floor(f.time_min));
    $("dtmin").max = $("dtmax").max = toLocalInput(Math.ceil(f.time_max));
  }
  if (!state.groupSet) {  // people (tracklets) in the gallery: one card per person by default
    $("group").checked = (f.tracklets || 0) > 0;
    state.groupSet = true;
  }
}

function addFilters(form) {
  const boxes = [...$("cameras").querySelectorAll("input")];
  const on = boxes.filter((b) => b.checked).map((b) => b.value);
  if (on.length < boxes.length) for (const c of on) form.append("camera", c);
  if (state.absolute) {
    if ($("dtmin").value !== "") form.append("time_min", toSeconds($("dtmin").value));
    if ($("dtmax").value !== "") form.append("time_max", toSeconds($("dtmax").value));
  } else {
    if ($("tmin").value !== "") form.append("time_min", $("tmin").value);
    if ($("tmax").value !== "") form.append("time_max", $("tmax").value);
  }
  if ($("group").checked) form.append("group", "tracklet");
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
    const what = res.groups ? "people" : "matches";
    message(res.results.length ? `${res.results.length} ${what} (page ${state.offset / k + 1}, ${res.took_ms.toFixed(0)} ms)`
      : "no match with these filters");
  } catch (e) {
    message(e.message, true);
    $("results").replaceChildren();
    $("timeline").hidden = true;
  } finally {
    document.body.dataset.state = "idle";
    document.body.dataset.renders = Number(document.body.dataset.renders) + 1;
  }
}

function card(m, kind, g = null) {
  const photo = el("img", { className: "photo", src: m.image_url, alt: m.name, loading: "lazy" });
  const children = [photo];
  if (kind === "match") {
    children.push(el("img", { className: "attn", src: m.attention_url, alt: "attention", loading: "lazy" }));
    const where = `cam ${m.camera || "–"}`;
    children.push(el("div", { className: "meta" }, g && g.tracklet ? [
      el("span", { className: "rank" }, [`#${m.rank}`]), ` d=${m.distance.toFixed(3)}`,
      el("br"), `${where} · `, el("span", { className: "count" }, [`${g.count} crop${g.count === 1 ? "" : "s"}`]),
      el("span", { className: "span" }, [fmtSpan(g.time_min, g.time_max)])] : [
      el("span", { className: "rank" }, [`#${m.rank}`]), ` d=${m.distance.toFixed(3)}`,
      el("br"), `${where} · t ${fmtTime(m.time)}`]));
  }
  const data = { id: m.id, camera: m.camera, time: m.time === null ? "" : m.time, rank: m.rank || "", distance: m.distance ?? "" };
  if (g) Object.assign(data, { tracklet: g.tracklet, count: g.count,
    tmin: g.time_min === null ? "" : g.time_min, tmax: g.time_max === null ? "" : g.time_max });
  const c = el("figure", { className: "card " + kind + (g && g.tracklet ? " group" : ""), title: m.tracklet || m.name, dataset: data }, children);
  c.addEventListener("click", () => kind === "match" ? openDetail(m, g) : setQuery({ kind: "gallery", id: m.id }, m.image_url));
  return c;
}

// One strip per camera: each person's time span on that camera (a bar) and the times of the
// crops that matched (ticks); hover for the person's rank and times, click to find the card.
function renderTimeline(groups) {
  const box = $("timeline");
  const seen = groups.flatMap((g) => g.seen.filter((s) => s.time !== null).map((s) => ({ ...s, g })));
  if (!seen.length) { box.hidden = true; box.replaceChildren(); return; }
  let t0 = Math.min(...seen.map((s) => s.time)), t1 = Math.max(...seen.map((s) => s.time));
  if (t1 - t0 < 1) { t0 -= 0.5; t1 += 0.5; }
  const x = (t) => 4 + 992 * (t - t0) / (t1 - t0);
  const cams = [...new Set(seen.map((s) => s.camera))].sort();
  const lanes = cams.map((cam) => {
    const svg = svgRoot("0 0 1000 22");
    svg.dataset.camera = cam;
    for (const g of groups) {
      const ts = g.seen.filter((s) => s.camera === cam && s.time !== null).map((s) => s.time);
      if (!ts.length) continue;
      const hue = (g.rank * 67) % 360;
      const grp = svgChild(svg, "g");
      grp.dataset.rank = g.rank;
      const title = svgChild(svg, "title");
      title.textContent = `#${g.rank} ${g.tracklet || "image " + g.best_id} · ${cam} · ${fmtSpan(Math.min(...ts), Math.max(...ts))} · ${ts.length} crop(s)`;
      const a = x(Math.min(...ts)), b = x(Math.max(...ts));
      grp.append(title, svgChild(svg, "rect", { x: a - 2, y: 4, width: Math.max(4, b - a + 4), height: 14,
        fill: `hsl(${hue} 70% 50%)`, class: "span" }));
      for (const t of ts) {
        const tick = svgChild(svg, "line", { x1: x(t), x2: x(t), y1: 2, y2: 20, stroke: `hsl(${hue} 70% 35%)`, class: "tick" });
        tick.dataset.time = t;
        grp.append(tick);
      }
      grp.addEventListener("mouseenter", () => grp.classList.add("hl"));
      grp.addEventListener("mouseleave", () => grp.classList.remove("hl"));
      grp.addEventListener("click", () => {
        const c = document.querySelector(`#results .card[data-rank="${g.rank}"]`);
        if (c) { c.scrollIntoView({ block: "center" }); c.classList.add("flash"); setTimeout(() => c.classList.remove("flash"), 1200); }
      });
      svg.append(grp);
    }
    return el("div", { className: "lane" }, [el("span", { title: cam }, [cam || "(none)"]), svg]);
  });
  const fmt = (t) => (t > 1e8 ? fmtClock(t) : fmtTime(t));
  box.replaceChildren(el("h3", {}, ["Where they were seen"]), ...lanes,
    el("div", { className: "axis" }, [el("span", {}, [fmt(t0)]), el("span", {}, [fmt(t1)])]));
  box.hidden = false;
}

function render(res) {
  if (res.groups) {
    $("results").replaceChildren(...res.results.map((m, i) => card(m, "match", res.groups[i])));
    renderTimeline(res.groups);
  } else {
    $("results").replaceChildren(...res.results.map((m) => card(m, "match")));
    $("timeline").hidden = true;
  }
  const k = res.k;
  $("pager").hidden = false;
  $("prev").disabled = res.offset === 0;
  $("next").disabled = !res.has_more;
  $("page-info").textContent = `page ${res.offset / k + 1}`;
}

// ----------------------------------------------------------------------------- detail dialog
function openDetail(m, g = null) {
  state.current = m;
  $("detail-title").textContent = `#${m.rank} · ${m.name}`;
  $("detail-query").src = state.queryAttn || "";
  $("detail-match").src = m.attention_url;
  $("detail-caption").textContent = `match #${m.rank} (distance ${m.distance.toFixed(3)})`;
  const meta = { id: m.id, camera: m.camera || "–", time: m.time !== null && m.time > 1e8 ? fmtClock(m.time) : fmtTime(m.time),
    source: m.source, identity: m.pid >= 0 ? m.pid : "–", score: m.score.toFixed(4), path: m.path };
  if (m.tracklet) Object.assign(meta, { tracklet: m.tracklet, frame: m.frame });
  if (g && g.tracklet) Object.assign(meta, { seen: fmtSpan(g.time_min, g.time_max), "crops matched": g.count });
  $("detail-meta").replaceChildren(...Object.entries(meta).flatMap(([k, v]) => [el("dt", {}, [k]), el("dd", {}, [String(v)])]));
  $("detail-footage-box").hidden = !m.footage_url;
  $("detail-footage-holder").replaceChildren(...(m.footage_url ? [el("img", { id: "detail-footage",
    src: `${m.footage_url}?context=2&step=5&width=360`, alt: "the frame this crop was cut from" })] : []));
  const crops = g && g.tracklet ? g.seen.slice(0, 48) : [];
  $("detail-seen-box").hidden = crops.length === 0;
  $("detail-seen-title").textContent = `Crops of this person that matched (${g ? g.count : 0}, best first)`;
  $("detail-seen").replaceChildren(...crops.map((s) => el("figure", { className: "card thumb", title: `${s.camera} · ${s.time !== null && s.time > 1e8 ? fmtClock(s.time) : fmtTime(s.time)} · frame ${s.frame}`, dataset: { id: s.id } },
    [el("img", { src: `/gallery/${s.id}/image`, alt: `crop ${s.id}`, loading: "lazy" })])));
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
    $("tmin").value = ""; $("tmax").value = ""; $("dtmin").value = ""; $("dtmax").value = "";
    state.offset = 0; search();
  });
  $("k").addEventListener("change", () => { state.offset = 0; search(); });
  $("group").addEventListener("change", () => { state.offset = 0; search(); });
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
