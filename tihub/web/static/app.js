// tihub's page behaviour: copy buttons, revealing NSFW pictures, fetch with a progress poll.
"use strict";

document.addEventListener("click", (ev) => {
  const t = ev.target;
  if (!(t instanceof HTMLElement)) return;
  if (t.matches("button.copy")) {
    const text = t.dataset.copy || "";
    const done = () => { t.textContent = "copied"; setTimeout(() => { t.textContent = "copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
    else { const a = document.createElement("textarea"); a.value = text; document.body.appendChild(a); a.select(); document.execCommand("copy"); a.remove(); done(); }
  } else if (t.matches("button.reveal")) {
    const box = t.closest(".card, figure");
    const pic = box && box.querySelector(".nsfw") || box;
    if (pic) pic.classList.add("revealed");
    t.remove();
  } else if (t.matches("button.fetch")) {
    startFetch(t);
  } else if (t.matches("button.sync")) {
    startJob(t, "/api/sync", {sources: (t.dataset.sources || "").split(",").filter(Boolean)});
  } else if (t.matches("button.train")) {
    const form = document.getElementById("train");
    if (!form.reportValidity()) return;
    const f = new FormData(form);
    startJob(t, "/api/train", {name: f.get("name"), images: f.get("images"), model: f.get("model"), steps: Number(f.get("steps")),
      vectors: Number(f.get("vectors")), size: f.get("size") || "auto", overwrite: f.get("overwrite") === "on",
      preview_every: Number(f.get("preview_every") || 0)});
  } else if (t.matches("button.export")) {
    const box = t.closest(".act"), to = box.querySelector("input[name=to]").value.trim();
    if (!to) { box.querySelector(".job-status").textContent = "Give the app's install folder first (inside the workspace or an --app-folder)."; return; }
    startJob(t, "/api/export", {name: t.dataset.target, app: box.querySelector("select[name=app]").value, to});
  } else if (t.matches("button.grid, button.verify")) {
    const model = document.getElementById("try-model").value.trim();
    const status = t.closest(".act").querySelector(".job-status");
    if (!model) { status.textContent = "Give a model first (a folder or file inside the workspace or a --models folder)."; return; }
    startJob(t, t.matches(".grid") ? "/api/grid" : "/api/verify", {name: t.dataset.target, model,
      steps: Number(document.getElementById("try-steps").value || 20), size: document.getElementById("try-size").value.trim()});
  } else if (t.matches("button.remove")) {
    removeFile(t);
  }
});

// A job keeps running when its page is closed: reopening the page picks up its progress.
document.addEventListener("DOMContentLoaded", async () => {
  for (const box of document.querySelectorAll(".act[data-job-id]")) {  // a job's own page
    poll(box.dataset.jobId, box.querySelector("progress"), box.querySelector(".job-status"), null);
  }
  // every job button says its kind (data-kind) and, but for training, its target (data-target)
  const buttons = [...document.querySelectorAll("button[data-kind]")];
  if (!buttons.length) return;
  let jobs = [];
  try { jobs = await (await fetch("/api/jobs?active=true")).json(); } catch (e) { return; }
  for (const button of buttons) {
    const kind = button.dataset.kind, target = button.dataset.target === undefined ? null : button.dataset.target;
    const job = jobs.find((j) => j.kind === kind && (target === null || j.target === target) && (j.state === "running" || j.state === "queued"));
    if (!job) continue;
    const box = button.closest(".act");
    box.querySelector("progress").hidden = false;
    button.disabled = true;
    poll(job.id, box.querySelector("progress"), box.querySelector(".job-status"), button);
  }
});

function startFetch(button) {
  startJob(button, "/api/fetch", {target: button.dataset.target, force: button.textContent.includes("again")});
}

async function startJob(button, url, body) {
  const box = button.closest(".act");
  const bar = box.querySelector("progress");
  const status = box.querySelector(".job-status");
  button.disabled = true;
  bar.hidden = false;
  bar.max = 1; bar.value = 0;
  status.textContent = "starting";
  delete status.dataset.state;
  const previews = document.getElementById("previews");
  if (previews && url === "/api/train") previews.replaceChildren();
  let job;
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    job = await r.json();
    if (!r.ok) throw new Error(job.error || r.statusText);
  } catch (e) { status.textContent = "failed: " + e.message; status.dataset.state = "failed"; bar.hidden = true; button.disabled = false; return; }
  poll(job.id, bar, status, button);
}

// One job's progress, polled until it ends; `box` is its .act section (bar, status line).
async function poll(id, bar, status, button) {
  const box = status.closest(".act");
  let job;
  try { job = await (await fetch("/api/jobs/" + encodeURIComponent(id))).json(); }
  catch (e) { status.textContent = "lost the server: " + e.message; if (button) button.disabled = false; return; }
  if (job.total) { bar.max = job.total; bar.value = job.done; }
  if (job.points && job.points.length) drawLoss(job.points);
  if (job.previews && job.kind === "train") showPreviews(job);
  if (box) {
    box.dataset.job = job.id;
    const link = box.querySelector("a.job-link");
    if (link) { link.href = "/jobs/" + encodeURIComponent(job.id); link.hidden = false; }
  }
  if (job.state === "done" || job.state === "failed") {
    showEnd(job, bar, status);
    if (button) button.disabled = false;
    return;
  }
  status.textContent = job.message + (job.total ? ` ${Math.round(100 * job.done / job.total)}%` : "");
  setTimeout(() => poll(id, bar, status, button), 250);
}

function code(text, className) {
  return Object.assign(document.createElement("code"), {className: className || "", textContent: text || ""});
}

// A finished job: its result in the status line, by kind.
function showEnd(job, bar, status) {
  status.innerHTML = "";
  if (job.state === "failed") {
    bar.hidden = true;  // an empty bar beside a failure says nothing
    status.textContent = "failed: " + (job.error || "unknown error");
    status.dataset.state = "failed";
    if (job.kind === "verify") refreshSection("verifications");  // a failed verification is recorded too
    return;
  }
  bar.max = 1; bar.value = 1;
  const r = job.result || {};
  if (job.kind === "train") {
    status.append("trained: ", code(r.path, "fetched-path"),
      r.final_loss != null ? ` final loss ${r.final_loss.toFixed(4)} in ${r.seconds} s` : "");
  } else if (r.reports) {  // a sync: one summary per source
    status.textContent = r.reports.map((x) => x.summary).join("; ");
  } else if (job.kind === "export") {
    status.append(r.status === "exists" ? "already there: " : "exported: ", code(r.path, "exported-path"),
      r.triggers && r.triggers.length ? " prompt: " : "", r.triggers && r.triggers.length ? code(r.triggers[0], "prompt") : "");
  } else if (job.kind === "grid") {
    status.append("grid: ", code(r.path, "grid-path"));
    const out = status.closest(".act").querySelector(".job-picture");
    if (out && job.previews.length) {
      out.innerHTML = "";
      out.append(Object.assign(document.createElement("img"), {src: `/jobs/${job.id}/previews/0`, alt: "preview grid", className: "grid"}));
    }
  } else if (job.kind === "verify") {
    status.append("verified: ", Object.assign(document.createElement("strong"), {className: "verdict", textContent: r.result || "done"}),
      r.model ? " on " + r.model : "");
    refreshSection("verifications");
  } else {
    status.append((r.status === "exists" ? "already here: " : "fetched: "), code(r.path, "fetched-path"),
      r.sha256 ? " sha256 " + r.sha256.slice(0, 12) : "");
  }
  status.dataset.state = "done";
}

// One section of this page as the server renders it now (a new verification record).
async function refreshSection(id) {
  const here = document.getElementById(id);
  if (!here) return;
  try {
    const html = await (await fetch(location.pathname)).text();
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
    if (fresh) here.replaceWith(fresh);
  } catch (e) { /* the record shows on the next visit */ }
}

// A training job's preview pictures, as they are made.
function showPreviews(job) {
  const box = document.getElementById("previews");
  if (!box) return;
  for (let i = box.children.length; i < job.previews.length; i++) {
    const fig = document.createElement("figure");
    const step = (job.previews[i].match(/-(\d+)\.preview\.png$/) || [])[1];
    fig.append(Object.assign(document.createElement("img"), {src: `/jobs/${job.id}/previews/${i}`, alt: `preview ${i + 1}`}),
      Object.assign(document.createElement("figcaption"), {textContent: step ? `step ${step}` : `preview ${i + 1}`}));
    box.append(fig);
  }
}

async function removeFile(button) {
  const name = button.dataset.name;
  if (!window.confirm(`Delete ${name} from embeddings/?`)) return;
  button.disabled = true;
  const r = await fetch("/api/remove", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name})});
  const out = await r.json();
  if (!r.ok) { button.disabled = false; button.insertAdjacentText("afterend", " " + (out.error || r.statusText)); return; }
  button.closest("tr").remove();
  const count = document.getElementById("file-count");  // the heading counts what is left
  if (count) count.textContent = document.querySelectorAll("#local button.remove").length;
}

// The live loss curve of a training job: [step, loss] points scaled into the SVG, with step
// and loss ticks. The plot area: x from L to R, y from T to B (SVG units).
const L = 64, R = 588, T = 14, B = 196;

function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1, raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawLoss(points) {
  const svg = document.querySelector("svg.loss-plot");
  const line = svg && svg.querySelector("polyline");
  if (!line) return;
  const steps = points.map((p) => p[0]), losses = points.map((p) => p[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  let y0 = Math.min(...losses), y1 = Math.max(...losses);
  if (y1 - y0 < 1e-9) { y0 -= 0.5 * (Math.abs(y0) || 1) * 0.1; y1 += 0.5 * (Math.abs(y1) || 1) * 0.1; }
  const sx = (s) => L + (R - L) * (s - x0) / (x1 - x0), sy = (l) => B - (B - T) * (l - y0) / (y1 - y0);
  line.setAttribute("points", points.map(([s, l]) => `${sx(s).toFixed(1)},${sy(l).toFixed(1)}`).join(" "));
  const ticks = svg.querySelector("g.ticks");
  ticks.replaceChildren();
  for (const s of niceTicks(x0, x1, 6).filter((v) => Number.isInteger(v) && v >= x0 && v <= x1)) {
    ticks.append(svgEl("line", {x1: sx(s), x2: sx(s), y1: B, y2: B + 5, stroke: "#9aa1ad"}),
      svgEl("text", {x: sx(s), y: B + 18, "text-anchor": "middle", class: "xtick"}, String(s)));
  }
  const yt = niceTicks(y0, y1, 4).filter((v) => v >= y0 - 1e-12 && v <= y1 + 1e-12);
  const digits = Math.max(0, ...yt.map((v) => (String(v).split(".")[1] || "").length));
  for (const l of yt) {
    ticks.append(svgEl("line", {x1: L, x2: R, y1: sy(l), y2: sy(l), stroke: "#eef0f4"}),
      svgEl("text", {x: L - 6, y: sy(l) + 4, "text-anchor": "end", class: "ytick"}, l.toFixed(Math.min(digits, 6))));
  }
}

// Training pictures chosen in the form are uploaded into WORKSPACE/pictures/NAME/ one by one.
document.addEventListener("change", async (ev) => {
  const input = ev.target;
  if (!(input instanceof HTMLInputElement) || input.name !== "upload") return;
  const form = input.form, status = document.querySelector(".upload-status");
  const name = form.elements.name.value.trim();
  if (!name) { status.textContent = "Give the embedding a name first; its pictures go to pictures/NAME/."; input.value = ""; return; }
  let done = 0;
  const failed = [];  // a refused file does not stop the others; each is told
  delete status.dataset.state;
  for (const file of input.files) {
    const safe = file.name.replace(/[^A-Za-z0-9_.-]/g, "_").replace(/^[^A-Za-z0-9]+/, "");
    let out = {}, ok = false;
    try {
      const r = await fetch(`/api/pictures/${encodeURIComponent(name)}/${encodeURIComponent(safe)}`, {method: "PUT", body: file});
      out = await r.json();
      ok = r.ok;
    } catch (e) { out = {error: "lost the server: " + e.message}; }
    if (!ok) { failed.push(`${file.name}: ${out.error || "refused."}`); continue; }
    done += 1;
    form.elements.images.value = out.folder;
    status.textContent = `uploaded ${done} of ${input.files.length} picture(s) to ${out.folder}`;
  }
  status.textContent = `uploaded ${done} of ${input.files.length} picture(s)` + (done ? ` to ${form.elements.images.value}` : "") +
    (failed.length ? "; " + failed.join(" ") : ".");
  status.dataset.state = failed.length ? "failed" : "done";
});

// The model typed for grids, verification and training is remembered in this browser.
document.addEventListener("DOMContentLoaded", () => {
  for (const input of document.querySelectorAll("#try-model, form#train input[name=model]")) {
    if (!input.value) input.value = localStorage.getItem("tihub-model") || "";
    input.addEventListener("input", () => localStorage.setItem("tihub-model", input.value.trim()));
  }
});
