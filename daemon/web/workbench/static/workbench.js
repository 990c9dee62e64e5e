// The workbench page: review tiles, label them, fine-tune, roll back. Plain JS, no framework.
// Every change goes through the REST API (/v1/...) with the session cookie standing in for the
// bearer token; errors show the API's own {error, reason}. Nothing typed is thrown away on an
// error: a refused save keeps the tile and its labels, an expired session asks to sign in
// again and then repeats what was refused.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  csrf: null, ctx: null, tiles: [], images: [], added: [], sel: -1, target: null,
  pending: new Set(), undo: [], retry: null, job: null, events: null, cols: 1,
};

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}

function say(id, text, kind) {
  const node = $(id);
  node.textContent = text || "";
  node.className = "msg" + (kind ? " " + kind : "");
}

class ApiError extends Error {
  constructor(status, body) {
    super(`${body.error || status}: ${body.reason || "request failed"}`);
    this.status = status;
    this.code = body.error;
  }
}

// One call to the API. A 401 keeps `again` so it runs once the engineer has signed in again.
async function api(method, path, body, again) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && S.csrf) headers["X-Spoke-CSRF"] = S.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({ error: String(resp.status), reason: resp.statusText }));
  if (resp.status === 401 && path !== "/workbench/session") {
    S.retry = again || null;
    showSignIn(`${data.error}: ${data.reason}`);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// -- signing in ---------------------------------------------------------------------------

function showSignIn(message) {
  $("signin").hidden = false;
  say("signin-msg", message || "", message ? "bad" : "");
  $("token").focus();
}

async function signIn(token) {
  try {
    const who = await api("POST", "/workbench/session", { token });
    S.csrf = who.csrf;
    $("signin").hidden = true;
    $("token").value = "";
    await started(who);
    const retry = S.retry;
    S.retry = null;
    if (retry) await retry();
  } catch (err) {
    say("signin-msg", err.message, "bad");
  }
}

async function started(who) {
  $("who").textContent = `signed in as ${who.client}`;
  $("signout").hidden = false;
  if (!$("app").hidden) return;
  S.ctx = await api("GET", "/workbench/api/context");
  $("app").hidden = false;
  setupLabels();
  setupTrain();
  await Promise.all([loadReview(), loadCounts(), loadJobs(), loadModels()]);
}

// -- review -------------------------------------------------------------------------------

function filters() {
  const q = new URLSearchParams();
  for (const [key, id] of [["mission", "f-mission"], ["label", "f-label"], ["band", "f-band"],
    ["order", "f-order"]]) if ($(id).value) q.set(key, $(id).value);
  if ($("f-unreviewed").checked) q.set("unreviewed", "1");
  return q.toString();
}

async function loadReview() {
  const data = await api("GET", "/workbench/api/review?" + filters(), undefined, loadReview);
  S.tiles = data.tiles;
  S.images = data.images;
  S.added = data.added;
  const missions = $("f-mission");
  const chosen = missions.value;
  missions.replaceChildren(el("option", { value: "", text: "all" }),
    ...data.missions.map((m) => el("option", { value: m.mission, text: `${m.mission} (${m.images})` })));
  missions.value = chosen;
  $("grid-info").textContent = `${data.matching} of ${data.total} tiles match` +
    (data.matching > data.tiles.length ? `; showing the first ${data.tiles.length}` : "");
  renderGrid();
  renderImages();
  select(S.tiles.length ? 0 : -1);
}

function imageOf(id) {
  return S.images.find((i) => i.id === id);
}

// A tile cut from the image's preview by CSS (one preview per image, not one file per tile).
function tileView(imageId, box, side) {
  const image = imageOf(imageId);
  const view = el("div", { class: "tileimg" });
  if (!image) return view;
  const scale = side / Math.max(box[2] - box[0], box[3] - box[1]);
  view.style.width = `${Math.round((box[2] - box[0]) * scale)}px`;
  view.style.height = `${Math.round((box[3] - box[1]) * scale)}px`;
  view.style.backgroundImage = `url("/workbench/api/images/${imageId}/preview.jpg")`;
  view.style.backgroundSize = `${image.width * scale}px ${image.height * scale}px`;
  view.style.backgroundPosition = `${-box[0] * scale}px ${-box[1] * scale}px`;
  return view;
}

function tileCaption(tile) {
  if (tile.reviewed) return "✓ " + tile.reviewed.map(nice).join(", ");
  const top = Object.entries(tile.probs).filter(([k]) => k !== "background")
    .sort((a, b) => b[1] - a[1])[0];
  const said = tile.labels.length ? tile.labels.map(nice).join(", ") : "no defect";
  return top ? `${said} · ${nice(top[0])} ${top[1].toFixed(2)}` : said;
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren(...S.tiles.map((tile, i) => el("button", {
    type: "button", class: "tile" + (tile.uncertain ? " uncertain" : "") + (tile.reviewed ? " reviewed" : ""),
    role: "option", "data-key": tile.key, "data-index": String(i), onclick: () => select(i),
  }, tileView(tile.image_id, tile.box, 96), el("span", { class: "cap", text: tileCaption(tile) }))));
  S.cols = Math.max(1, Math.round(grid.clientWidth / 112));
}

function renderTile(i) {
  const node = $("grid").querySelector(`[data-index="${i}"]`);
  const tile = S.tiles[i];
  if (!node || !tile) return;
  node.classList.toggle("reviewed", !!tile.reviewed);
  node.querySelector(".cap").textContent = tileCaption(tile);
}

function select(i) {
  S.sel = i;
  for (const node of $("grid").querySelectorAll(".tile.on")) node.classList.remove("on");
  const tile = S.tiles[i];
  if (!tile) {
    setTarget(null);
    return;
  }
  const node = $("grid").querySelector(`[data-index="${i}"]`);
  node.classList.add("on");
  node.scrollIntoView({ block: "nearest" });
  setTarget({ kind: "tile", image_id: tile.image_id, box: tile.box, tile });
}

function setTarget(target) {
  S.target = target;
  const view = $("target-view");
  if (!target) {
    $("target-title").textContent = "Pick a tile";
    view.replaceChildren();
    $("scores").replaceChildren();
    S.pending = new Set();
    renderLabels();
    return;
  }
  const tile = target.tile;
  $("target-title").textContent = tile ? (tile.reviewed ? "Reviewed tile" : "Tile to review")
    : "New box";
  view.replaceChildren(tileView(target.image_id, target.box, 160));
  $("scores").replaceChildren(...(tile ? Object.entries(tile.probs)
    .filter(([k]) => k !== "background").sort((a, b) => b[1] - a[1])
    .map(([k, p]) => el("span", { class: "score" + (p >= (S.ctx.thresholds[k] ?? 0.5) ? " hit" : ""),
      text: `${nice(k)} ${p.toFixed(2)}` })) : []));
  const start = tile ? (tile.reviewed || (tile.labels.length ? tile.labels : ["background"])) : [];
  S.pending = new Set(start);
  renderLabels();
}

const nice = (label) => (label === "background" ? "no defect" : label.replace(/_/g, " "));

function setupLabels() {
  const pick = $("f-label");
  pick.replaceChildren(el("option", { value: "", text: "any" }),
    ...S.ctx.labels.map((l) => el("option", { value: l, text: nice(l) })));
  $("label-buttons").replaceChildren(
    ...S.ctx.labels.map((label, i) => el("button", {
      type: "button", class: "lab", "data-label": label, onclick: () => toggle(label),
    }, el("kbd", { text: String(i + 1) }), " " + nice(label))),
    el("button", { type: "button", class: "lab none", "data-label": "background",
      onclick: () => toggle("background") }, el("kbd", { text: "0" }), " No defect"));
}

function renderLabels() {
  for (const node of $("label-buttons").querySelectorAll(".lab")) {
    node.classList.toggle("on", S.pending.has(node.dataset.label));
    node.disabled = !S.target;
  }
}

function toggle(label) {
  if (!S.target) return;
  if (label === "background") S.pending = new Set(["background"]);
  else {
    S.pending.delete("background");
    if (S.pending.has(label)) S.pending.delete(label); else S.pending.add(label);
  }
  renderLabels();
}

// Enter moves on at once (labeling 30 tiles should not wait on 30 round trips); a refused
// save comes back to its tile with the labels it had, so nothing typed is lost.
function save() {
  const target = S.target;
  if (!target) return Promise.resolve();
  let labels = [...S.pending];
  const other = $("other-label").value.trim().toLowerCase();
  if (other) labels = [...labels.filter((l) => l !== "background"), other];
  if (!labels.length) labels.push("background");
  const request = { target, pending: new Set(S.pending), body: {
    image_id: target.image_id, box: target.box.map(Number), labels, new_label: $("new-label").checked } };
  if (target.tile) select(Math.min(S.sel + 1, S.tiles.length - 1));
  return submit(request);
}

async function submit(request) {
  const { target, body } = request;
  try {
    const got = await api("POST", "/v1/samples", body, () => submit(request));
    const before = target.tile ? target.tile.reviewed : null;
    S.undo.push({ sample: got.sample, created: got.created, before, target });
    applySample(target, got.sample.labels, got.sample.id);
    if (body.labels.length && $("other-label").value.trim().toLowerCase() === body.labels.at(-1)) {
      $("other-label").value = "";
      $("new-label").checked = false;
    }
    say("msg", `saved: ${got.sample.labels.map(nice).join(", ")}` +
      (got.new_labels.length ? ` (new label ${got.new_labels.join(", ")})` : ""), "ok");
    if (!target.tile) drawnSaved(target, got.sample);
    await loadCounts();
  } catch (err) {
    if (target.tile) select(S.tiles.indexOf(target.tile));
    else setTarget(target);
    S.pending = request.pending;
    renderLabels();
    if (err.status !== 401) say("msg", err.message, "bad");
  }
}

function applySample(target, labels, sampleId) {
  if (!target.tile) return;
  target.tile.reviewed = labels;
  target.tile.sample_id = sampleId;
  renderTile(S.tiles.indexOf(target.tile));
}

async function undo() {
  const last = S.undo.pop();
  if (!last) {
    say("msg", "nothing to undo");
    return;
  }
  try {
    if (last.created) {
      await api("DELETE", `/v1/samples/${last.sample.id}`);
      applySample(last.target, null, null);
      S.added = S.added.filter((a) => a.sample_id !== last.sample.id);
    } else {
      await api("POST", "/v1/samples", { image_id: last.target.image_id,
        box: last.target.box, labels: last.before || last.sample.labels });
      applySample(last.target, last.before, last.sample.id);
    }
    say("msg", "undone", "ok");
    renderBoxes();
    await loadCounts();
  } catch (err) {
    S.undo.push(last);
    say("msg", err.message, "bad");
  }
}

// -- counts -------------------------------------------------------------------------------

async function loadCounts() {
  const data = await api("GET", "/v1/samples", undefined, loadCounts);
  const ctx = S.ctx;
  const share = ctx.held_out_fraction;
  const kids = [el("strong", { text: `${data.count} sample${data.count === 1 ? "" : "s"}` })];
  if (share) kids.push(el("span", { text: `held out for the gate: about ${Math.round(share * 100)}%` +
    ` (${Math.round(data.count * share)})` }));
  const warn = [];
  for (const label of [...ctx.labels, "background", ...data.new_labels]) {
    const n = data.label_counts[label] || 0;
    kids.push(el("span", { class: "count" + (n > 0 && n < ctx.min_per_label ? " warn" : ""),
      "data-label": label, text: `${nice(label)} ${n}` }));
    if (n > 0 && n < ctx.min_per_label) warn.push(nice(label));
  }
  if (data.count < ctx.min_samples) {
    kids.push(el("span", { class: "warn", text: `at least ${ctx.min_samples} samples are needed to fine-tune` }));
  }
  if (warn.length) {
    kids.push(el("span", { class: "warn", text: `too few to evaluate (need ${ctx.min_per_label}): ${warn.join(", ")}` }));
  }
  $("counts").replaceChildren(...kids);
}

// -- images and drawing boxes -------------------------------------------------------------

function renderImages() {
  $("images").replaceChildren(...S.images.map((image) => el("button", {
    type: "button", class: "imgbtn", "data-image": image.id, onclick: () => openImage(image.id),
  }, el("img", { src: `/workbench/api/images/${image.id}/heat.jpg`, alt: "", loading: "lazy" }),
  el("span", { class: "cap", text: `${image.mission || "-"} · ${(image.labels || []).map(nice).join(", ") || "nothing found"}` }))));
}

function openImage(id) {
  const image = imageOf(id);
  if (!image) return;
  S.viewing = image;
  $("viewer").hidden = false;
  $("viewer-title").textContent = `${image.mission || "image"} · ${image.width}×${image.height}`;
  $("stage-img").src = `/v1/images/${id}/overlay.png`;
  $("drawn").hidden = true;
  renderBoxes();
  $("viewer").scrollIntoView({ block: "start" });
}

function renderBoxes() {
  const image = S.viewing;
  if (!image) return;
  const boxes = S.added.filter((a) => a.image_id === image.id);
  $("stage-boxes").replaceChildren(...boxes.map((a) => {
    const box = el("div", { class: "added", title: a.labels.map(nice).join(", ") });
    place(box, a.box, image);
    return box;
  }));
}

function place(node, box, image) {
  node.style.left = `${(100 * box[0]) / image.width}%`;
  node.style.top = `${(100 * box[1]) / image.height}%`;
  node.style.width = `${(100 * (box[2] - box[0])) / image.width}%`;
  node.style.height = `${(100 * (box[3] - box[1])) / image.height}%`;
}

function setupDrawing() {
  const stage = $("stage");
  let start = null;
  const at = (ev) => {
    const r = $("stage-img").getBoundingClientRect();
    const image = S.viewing;
    const x = Math.min(Math.max(ev.clientX - r.left, 0), r.width);
    const y = Math.min(Math.max(ev.clientY - r.top, 0), r.height);
    return [Math.round((x * image.width) / r.width), Math.round((y * image.height) / r.height)];
  };
  const boxOf = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  stage.addEventListener("pointerdown", (ev) => {
    if (!S.viewing) return;
    ev.preventDefault();
    stage.setPointerCapture(ev.pointerId);
    start = at(ev);
  });
  stage.addEventListener("pointermove", (ev) => {
    if (!start) return;
    showDrawn(boxOf(start, at(ev)));
  });
  stage.addEventListener("pointerup", (ev) => {
    if (!start) return;
    const box = boxOf(start, at(ev));
    start = null;
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) return;
    drawTarget(box);
  });
  for (const id of ["bx0", "by0", "bx1", "by1"]) {
    $(id).addEventListener("change", () => {
      if (!S.viewing) return;
      drawTarget(["bx0", "by0", "bx1", "by1"].map((k) => Number($(k).value)));
    });
  }
}

function showDrawn(box) {
  const drawn = $("drawn");
  drawn.hidden = false;
  place(drawn, box, S.viewing);
}

function drawTarget(box) {
  showDrawn(box);
  ["bx0", "by0", "bx1", "by1"].forEach((k, i) => { $(k).value = box[i]; });
  setTarget({ kind: "box", image_id: S.viewing.id, box, tile: null });
  say("msg", "new box: pick its labels and save");
}

function drawnSaved(target, sample) {
  S.added.push({ image_id: target.image_id, box: target.box, labels: sample.labels, sample_id: sample.id });
  $("drawn").hidden = true;
  renderBoxes();
}

// -- training -----------------------------------------------------------------------------

function setupTrain() {
  const ctx = S.ctx;
  $("t-method").replaceChildren(...ctx.methods.map((m) => el("option", { value: m, text: m })));
  $("t-method").value = ctx.default_method;
  $("t-budget").value = ctx.default_budget_s ? `${ctx.default_budget_s}s` : "";
}

async function startJob() {
  const body = { method: $("t-method").value };
  if ($("t-budget").value.trim()) body.budget = $("t-budget").value.trim();
  if ($("t-epochs").value) body.epochs = Number($("t-epochs").value);
  try {
    const job = await api("POST", "/v1/finetune", body, startJob);
    say("t-msg", `job ${job.id} ${job.status}: ${job.progress.method} on ${job.progress.train} samples, ` +
      `${job.progress.held_out} held out`, "ok");
    follow(job);
  } catch (err) {
    say("t-msg", err.message, "bad");
  }
}

async function loadJobs() {
  const data = await api("GET", "/v1/finetune", undefined, loadJobs);
  const job = data.items[0];
  if (job) follow(job);
}

// Live progress over the API's server-sent events; the "end" event carries the final job.
function follow(job) {
  S.job = job;
  showJob(job);
  if (["done", "failed", "cancelled"].includes(job.status)) return;
  if (S.events) S.events.close();
  const events = new EventSource(`/v1/finetune/${job.id}/events`);
  S.events = events;
  events.addEventListener("progress", (ev) => showJob(JSON.parse(ev.data)));
  events.addEventListener("end", (ev) => {
    events.close();
    S.events = null;
    const end = JSON.parse(ev.data);
    showJob(end);
    say("t-msg", `job ${end.id} ${end.status}`, end.status === "done" ? "ok" : "bad");
    loadModels();
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) say("t-msg", "lost the progress stream; reopen the Train tab", "bad");
  };
}

function showJob(job) {
  const progress = job.progress || {};
  const done = ["done", "failed", "cancelled"].includes(job.status);
  $("t-progress").hidden = false;
  let ratio = done ? 1 : 0;
  if (!done && progress.step && progress.steps) ratio = progress.step / progress.steps;
  else if (!done && progress.elapsed_s && progress.budget_s) ratio = progress.elapsed_s / progress.budget_s;
  $("t-bar").style.width = `${Math.round(Math.min(1, ratio) * 100)}%`;
  $("t-phase").textContent = `job ${job.id || S.job.id}: ${job.status}` +
    (progress.phase && !done ? ` · ${progress.phase}` : "") +
    (progress.step ? ` · step ${progress.step}${progress.steps ? "/" + progress.steps : ""}` : "") +
    (progress.loss !== undefined ? ` · loss ${Number(progress.loss).toFixed(3)}` : "");
  $("t-result").replaceChildren(...(done ? jobOutcome(job) : []));
}

function jobOutcome(job) {
  if (job.status !== "done") {
    return [el("p", { class: "msg bad", text: `${job.status}: ${(job.error && job.error.reason) || ""}` })];
  }
  const result = job.result;
  const cmp = result.comparison;
  const rows = Object.keys(cmp.candidate.per_label_f1).map((label) => el("tr", {},
    el("td", { text: nice(label) }),
    el("td", { text: (cmp.current.per_label_f1[label] ?? 0).toFixed(3) }),
    el("td", { text: cmp.candidate.per_label_f1[label].toFixed(3) }),
    el("td", { class: (cmp.per_label_delta[label] || 0) < 0 ? "down" : "up",
      text: (cmp.per_label_delta[label] >= 0 ? "+" : "") + (cmp.per_label_delta[label] || 0).toFixed(3) })));
  const promotion = result.promotion || {};
  return [
    el("h3", { text: "Gate: current vs candidate on the held-out split" }),
    el("table", { class: "table gate" },
      el("tr", {}, el("th", { text: "label" }), el("th", { text: "current F1" }),
        el("th", { text: "candidate F1" }), el("th", { text: "change" })),
      ...rows,
      el("tr", { class: "macro" }, el("td", { text: "macro" }),
        el("td", { text: cmp.current.macro_f1.toFixed(3) }),
        el("td", { text: cmp.candidate.macro_f1.toFixed(3) }),
        el("td", { text: (cmp.macro_f1_delta >= 0 ? "+" : "") + cmp.macro_f1_delta.toFixed(3) }))),
    el("p", { class: "decision " + (cmp.promote ? "ok" : "bad"),
      text: cmp.promote ? "Decision: promote" : "Decision: keep the current model" }),
    el("ul", { class: "reasons" }, ...cmp.reasons.map((r) => el("li", { text: r }))),
    el("p", { class: "hint", id: "t-promotion", text: `promotion: ${promotion.state || "-"}` +
      (promotion.reason ? ` (${promotion.reason})` : "") +
      (promotion.override ? ` · promoted against the gate by ${promotion.override.by}` : "") }),
    !cmp.promote && promotion.state === "not-promoted" && S.ctx.allow_override ?
      el("button", { type: "button", id: "t-override", class: "quiet", onclick: () => promoteAnyway(job) },
        "Promote anyway…") : null,
  ];
}

async function promoteAnyway(job) {
  const cmp = job.result.comparison;
  const text = `The gate said: keep the current model (${cmp.reasons.join("; ")}). ` +
    `Promote ${job.result.version} anyway? It is logged and reported to the hub as a manual override.`;
  if (!(await confirmWith(text))) return;
  try {
    const got = await api("POST", `/v1/finetune/${job.id}/promote`, { override: true });
    showJob(got);
    say("t-msg", `promoted against the gate: ${got.result.promotion.state}`, "ok");
    await loadModels();
  } catch (err) {
    say("t-msg", err.message, "bad");
  }
}

// -- models -------------------------------------------------------------------------------

async function loadModels() {
  let data;
  try {
    data = await api("GET", "/v1/models", undefined, loadModels);
  } catch (err) {
    say("m-msg", err.message, err.status === 404 ? "" : "bad");
    $("m-table").replaceChildren();
    return;
  }
  $("m-table").replaceChildren(
    el("tr", {}, ...["version", "origin", "role", "installed", ""].map((h) => el("th", { text: h }))),
    ...data.entries.map((m) => el("tr", { "data-version": m.version },
      el("td", { text: `${m.name} ${m.version}` }),
      el("td", { text: m.origin || "hub" }),
      el("td", { text: m.role || "-" }),
      el("td", { text: m.installed_at ? new Date(m.installed_at * 1000).toLocaleString() : "" }),
      el("td", {}, m.role.startsWith("active") ? null : el("button", {
        type: "button", class: "quiet rollback", onclick: () => rollBack(m),
      }, "Roll back to this")))));
}

function confirmWith(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.showModal();
  return new Promise((resolve) => {
    const done = (answer) => () => {
      dialog.close();
      $("confirm-yes").onclick = null;
      $("confirm-no").onclick = null;
      resolve(answer);
    };
    $("confirm-yes").onclick = done(true);
    $("confirm-no").onclick = done(false);
  });
}

async function rollBack(model) {
  if (!(await confirmWith(`Activate ${model.name} ${model.version} again? It is smoke-tested ` +
    "and then watched by the health gate, like any new model."))) return;
  try {
    const got = await api("POST", "/v1/models/activate", { sha256: model.sha256 });
    say("m-msg", `now serving ${got.model.name} ${got.model.version}`, "ok");
  } catch (err) {
    say("m-msg", err.message, "bad");
  }
  await loadModels();
}

// -- wiring -------------------------------------------------------------------------------

function onKey(ev) {
  if (["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName) || $("app").hidden ||
      $("tab-review").hidden || $("confirm").open || ev.ctrlKey && ev.key !== "z" || ev.metaKey || ev.altKey) return;
  const n = S.ctx.labels.length;
  let handled = true;
  if (ev.key === "0") toggle("background");
  else if (/^[1-9]$/.test(ev.key) && Number(ev.key) <= n) toggle(S.ctx.labels[Number(ev.key) - 1]);
  else if (ev.key === "Enter") save();
  else if (ev.key === "z" || ev.key === "Z") undo();
  else if (ev.key === "ArrowRight") select(Math.min(S.sel + 1, S.tiles.length - 1));
  else if (ev.key === "ArrowLeft") select(Math.max(S.sel - 1, 0));
  else if (ev.key === "ArrowDown") select(Math.min(S.sel + S.cols, S.tiles.length - 1));
  else if (ev.key === "ArrowUp") select(Math.max(S.sel - S.cols, 0));
  else handled = false;
  if (handled) ev.preventDefault();
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("on", tab.dataset.tab === name);
  for (const pane of ["review", "train", "models"]) $(`tab-${pane}`).hidden = pane !== name;
}

async function boot() {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("token").value.trim());
  });
  $("signout").addEventListener("click", async () => {
    await fetch("/workbench/session", { method: "DELETE", credentials: "same-origin" });
    window.location.reload();
  });
  $("filters").addEventListener("change", () => loadReview().catch((err) => say("msg", err.message, "bad")));
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("box-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("train-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    startJob();
  });
  $("save").addEventListener("click", save);
  $("undo").addEventListener("click", undo);
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; S.viewing = null; });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { S.cols = Math.max(1, Math.round($("grid").clientWidth / 112)); });
  setupDrawing();
  // A token in the address's fragment (never sent to the server) signs in at once.
  const fragment = new URLSearchParams(window.location.hash.slice(1)).get("token");
  if (fragment) {
    history.replaceState(null, "", window.location.pathname);
    await signIn(fragment);
    return;
  }
  const who = await (await fetch("/workbench/session", { credentials: "same-origin" })).json();
  if (who.client) {
    S.csrf = who.csrf;
    await started(who);
  } else showSignIn("");
}

document.addEventListener("DOMContentLoaded", () => {
  boot().catch((err) => say("msg", err.message, "bad"));
});
