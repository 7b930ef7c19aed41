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
      vectors: Number(f.get("vectors")), size: f.get("size") || "auto", overwrite: f.get("overwrite") === "on"});
  } else if (t.matches("button.remove")) {
    removeFile(t);
  }
});

// A job keeps running when its page is closed: reopening the page picks up its progress.
document.addEventListener("DOMContentLoaded", async () => {
  const buttons = [...document.querySelectorAll("button.fetch, button.sync, button.train")];
  if (!buttons.length) return;
  let jobs = [];
  try { jobs = await (await fetch("/api/jobs")).json(); } catch (e) { return; }
  for (const button of buttons) {
    const [kind, target] = button.matches(".sync") ? ["sync", button.dataset.sources || "all"]
      : button.matches(".train") ? ["train", null] : ["fetch", button.dataset.target];
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
  status.textContent = "starting";
  let job;
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    job = await r.json();
    if (!r.ok) throw new Error(job.error || r.statusText);
  } catch (e) { status.textContent = "failed: " + e.message; button.disabled = false; return; }
  poll(job.id, bar, status, button);
}

async function poll(id, bar, status, button) {
  let job;
  try { job = await (await fetch("/api/jobs/" + encodeURIComponent(id))).json(); }
  catch (e) { status.textContent = "lost the server: " + e.message; button.disabled = false; return; }
  if (job.total) { bar.max = job.total; bar.value = job.done; }
  if (job.points && job.points.length) drawLoss(job.points);
  if (job.state === "done") {
    bar.max = 1; bar.value = 1;
    const r = job.result || {};
    status.innerHTML = "";
    if (job.kind === "train") {
      status.append("trained: ", Object.assign(document.createElement("code"), {className: "fetched-path", textContent: r.path || ""}),
        r.final_loss != null ? ` final loss ${r.final_loss.toFixed(4)} in ${r.seconds} s` : "");
      status.dataset.state = "done";
      button.disabled = false;
      return;
    }
    if (r.reports) {  // a sync: one summary per source
      status.textContent = r.reports.map((x) => x.summary).join("; ");
      status.dataset.state = "done";
      button.disabled = false;
      return;
    }
    status.append((r.status === "exists" ? "already here: " : "fetched: "), Object.assign(document.createElement("code"), {className: "fetched-path", textContent: r.path || ""}),
      r.sha256 ? " sha256 " + r.sha256.slice(0, 12) : "");
    status.dataset.state = "done";
    button.disabled = false;
    return;
  }
  if (job.state === "failed") { status.textContent = "failed: " + (job.error || "unknown error"); status.dataset.state = "failed"; button.disabled = false; return; }
  status.textContent = job.message + (job.total ? ` ${Math.round(100 * job.done / job.total)}%` : "");
  setTimeout(() => poll(id, bar, status, button), 250);
}

async function removeFile(button) {
  const name = button.dataset.name;
  if (!window.confirm(`Delete ${name} from embeddings/?`)) return;
  button.disabled = true;
  const r = await fetch("/api/remove", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name})});
  const out = await r.json();
  if (!r.ok) { button.disabled = false; button.insertAdjacentText("afterend", " " + (out.error || r.statusText)); return; }
  button.closest("tr").remove();
}

// The live loss curve of a training job: [step, loss] points scaled into the SVG.
function drawLoss(points) {
  const line = document.querySelector("svg.loss-plot polyline");
  if (!line) return;
  const steps = points.map((p) => p[0]), losses = points.map((p) => p[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  const y0 = Math.min(...losses), y1 = Math.max(...losses, y0 + 1e-9);
  line.setAttribute("points", points.map(([s, l]) =>
    `${(20 + 570 * (s - x0) / (x1 - x0)).toFixed(1)},${(225 - 200 * (l - y0) / (y1 - y0)).toFixed(1)}`).join(" "));
}

// Training pictures chosen in the form are uploaded into WORKSPACE/pictures/NAME/ one by one.
document.addEventListener("change", async (ev) => {
  const input = ev.target;
  if (!(input instanceof HTMLInputElement) || input.name !== "upload") return;
  const form = input.form, status = document.querySelector(".upload-status");
  const name = form.elements.name.value.trim();
  if (!name) { status.textContent = "Give the embedding a name first; its pictures go to pictures/NAME/."; input.value = ""; return; }
  let done = 0;
  for (const file of input.files) {
    const safe = file.name.replace(/[^A-Za-z0-9_.-]/g, "_").replace(/^[^A-Za-z0-9]+/, "");
    const r = await fetch(`/api/pictures/${encodeURIComponent(name)}/${encodeURIComponent(safe)}`, {method: "PUT", body: file});
    const out = await r.json();
    if (!r.ok) { status.textContent = `${file.name}: ${out.error}`; status.dataset.state = "failed"; return; }
    done += 1;
    form.elements.images.value = out.folder;
    status.textContent = `uploaded ${done} of ${input.files.length} picture(s) to ${out.folder}`;
  }
  status.dataset.state = "done";
});
