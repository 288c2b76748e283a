// Graft's dashboard: a client of the /v1 API, with the key the user gives (session storage).
// Every value from the API goes into the page as text (h() below), never as markup.
"use strict";

const KEY = "graft.key";
const view = () => document.getElementById("view");
let leaving = []; // stops streams and timers of the view being left

// ---- DOM and HTTP helpers -----------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(`${problem.code || status}: ${problem.detail || problem.title || ""}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signOut("The key was refused (401). Give another one.");
    throw new ApiError(401, await response.json().catch(() => ({})));
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  return response.status === 204 ? null : response.json();
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : String(parseFloat(value.toFixed(digits)));
  return String(value);
}

function when(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) : "–";
}

function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error instanceof Error ? error.message : String(error));
}

async function guarded(target, work) {
  try {
    await work();
  } catch (error) {
    target.append(errorBox(error));
  }
}

// ---- sign in --------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  for (const stop of leaving) stop();
  leaving = [];
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  view().replaceChildren();
}

async function signIn(event) {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/v1/models?limit=1");
  } catch (error) {
    if (error.status !== 401) signOut(error.message);
    return;
  }
  document.getElementById("key").value = "";
  route();
}

// ---- routing ------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/jobs\/([^/]+)$/, (root, id) => jobView(root, decodeURIComponent(id))],
  [/^#\/jobs$/, (root) => jobsView(root)],
  [/^#\/models\/([^/]+)$/, (root, name) => modelView(root, decodeURIComponent(name))],
  [/^#\/models$/, (root) => modelsView(root)],
  [/^#\/datasets\/([^/]+)$/, (root, id) => datasetView(root, decodeURIComponent(id))],
  [/^#\/datasets$/, (root) => datasetsView(root)],
  [/^#\/start$/, (root) => startView(root)],
];

function route() {
  for (const stop of leaving) stop();
  leaving = [];
  if (!sessionStorage.getItem(KEY)) return signOut();
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  const hash = location.hash || "#/jobs";
  const section = hash.split("/")[1];
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.nav === section);
  // Each visit renders into a container of its own: a slower render of a view already left
  // (two hash changes in a row) fills a container that is no longer on the page.
  const root = h("div");
  view().replaceChildren(root);
  for (const [pattern, render] of ROUTES) {
    const match = hash.match(pattern);
    if (match) return guarded(root, () => render(root, ...match.slice(1)));
  }
  location.hash = "#/jobs";
}

function every(root, ms, work) {
  let stopped = false;
  const tick = async () => {
    if (stopped || !root.isConnected) return;
    try {
      await work();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  let timer = setTimeout(tick, ms);
  leaving.push(() => {
    stopped = true;
    clearTimeout(timer);
  });
}

// ---- jobs -----------------------------------------------------------------------------------

function progressText(job) {
  const p = job.progress || {};
  if (p.rows_total !== null && p.rows_total !== undefined) return `${fmt(p.rows_done || 0)} / ${fmt(p.rows_total)} rows`;
  return `epoch ${p.epoch || 0} / ${p.epochs || 0}`;
}

function progressShare(job) {
  const p = job.progress || {};
  if (job.status === "succeeded") return 1;
  if (p.rows_total) return (p.rows_done || 0) / p.rows_total;
  return p.epochs ? (p.epoch || 0) / p.epochs : 0;
}

function resultCell(job) {
  if (job.result) return h("a", { href: `#/models/${encodeURIComponent(job.result.model_name)}` }, `${job.result.model_name} v${job.result.version}`);
  if (job.result_dataset_id) return h("a", { href: `#/datasets/${job.result_dataset_id}` }, job.result_dataset_id);
  if (job.error) return h("span", { class: "error" }, job.error.code);
  return "";
}

async function jobsView(root) {
  const table = h("table", { id: "jobs-table" });
  root.append(h("h1", {}, "Jobs"), table);
  const draw = async () => {
    const page = await api("GET", "/v1/jobs?limit=50");
    table.replaceChildren(
      h("tr", {}, ["Job", "Kind", "Status", "Progress", "Result", "Created"].map((t) => h("th", {}, t))),
      ...page.data.map((job) =>
        h("tr", { class: "link", "data-job": job.id, onclick: () => (location.hash = `#/jobs/${job.id}`) },
          h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
          h("td", {}, job.kind),
          h("td", { class: `status-${job.status}` }, job.status),
          h("td", {}, progressText(job)),
          h("td", {}, resultCell(job)),
          h("td", {}, when(job.created_at)))),
    );
    if (!page.data.length) table.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs yet: start one from the Start page.")));
  };
  await draw();
  every(root, 2000, draw);
}

// Reads an SSE stream with fetch (EventSource cannot send the Authorization header), resuming
// after a dropped connection from the last event seen.
function followEvents(root, jobId, afterSeq, onEvent) {
  const controller = new AbortController();
  let lastSeq = afterSeq;
  let stopped = false;
  leaving.push(() => {
    stopped = true;
    controller.abort();
  });
  const run = async () => {
    while (!stopped && root.isConnected) {
      try {
        const response = await fetch(`/v1/jobs/${jobId}/events`, {
          headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, Accept: "text/event-stream", "Last-Event-ID": String(lastSeq) },
          signal: controller.signal,
        });
        if (!response.ok) throw new Error(`events: ${response.status}`);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
            if (!data) continue;
            const event = JSON.parse(data);
            if (event.seq <= lastSeq) continue;
            lastSeq = event.seq;
            onEvent(event);
            if (event.type === "status" && ["succeeded", "failed", "cancelled"].includes(event.data && event.data.status)) return;
          }
        }
        return; // the server ends the stream after the final status
      } catch (error) {
        if (stopped) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  };
  run();
}

function lineChart(series, { width = 520, height = 220, yLabel = "" } = {}) {
  const points = series.flatMap((one) => one.points);
  if (!points.length) return h("p", { class: "muted" }, "No per-epoch metrics (yet): closed-form fits and jobs that count rows have none.");
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": yLabel });
  const pad = { l: 48, r: 10, t: 10, b: 28 };
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  svg.append(
    s("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, class: "edge" }),
    s("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, class: "edge" }),
    s("text", { x: 2, y: pad.t + 8 }, fmt(y1, 3)),
    s("text", { x: 2, y: height - pad.b }, fmt(y0, 3)),
    s("text", { x: pad.l, y: height - 8 }, fmt(x0)),
    s("text", { x: width - pad.r - 30, y: height - 8 }, fmt(x1)),
  );
  for (const one of series) {
    if (!one.points.length) continue;
    const d = one.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", { d, fill: "none", "stroke-width": 2, class: one.cls, "data-series": one.name }));
  }
  return svg;
}

function scoreChart(rows) {
  // Cross-validated scores with one-standard-deviation error bars, best first.
  const width = 560;
  const rowHeight = 22;
  const height = rows.length * rowHeight + 24;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "candidate scores" });
  const values = rows.flatMap((r) => [r.mean - (r.std || 0), r.mean + (r.std || 0)]);
  let [lo, hi] = [Math.min(...values), Math.max(...values)];
  if (lo === hi) [lo, hi] = [lo - 0.01, hi + 0.01];
  const left = 190;
  const X = (v) => left + ((v - lo) / (hi - lo)) * (width - left - 60);
  rows.forEach((r, i) => {
    const y = 14 + i * rowHeight;
    svg.append(
      s("text", { x: 4, y: y + 4 }, r.label + (r.chosen ? "  ✓" : "")),
      s("line", { x1: X(r.mean - (r.std || 0)), x2: X(r.mean + (r.std || 0)), y1: y, y2: y, class: "edge", "stroke-width": 2 }),
      s("circle", { cx: X(r.mean), cy: y, r: r.chosen ? 5 : 3.5, class: r.chosen ? "train" : "val", fill: r.chosen ? "#1f6feb" : "#e07b00", "data-candidate": r.label }),
      s("text", { x: width - 55, y: y + 4 }, fmt(r.mean, 3)),
    );
  });
  return svg;
}

function barChart(entries, label) {
  const width = 560;
  const rowHeight = 20;
  const height = entries.length * rowHeight + 10;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  const top = Math.max(0.01, ...entries.map(([, v]) => Math.abs(v)));
  const mid = 330;
  entries.forEach(([name, value], i) => {
    const y = 4 + i * rowHeight;
    const w = (Math.abs(value) / top) * 160;
    svg.append(
      s("text", { x: 4, y: y + 12 }, name.length > 36 ? name.slice(0, 35) + "…" : name),
      s("rect", { x: value >= 0 ? mid : mid - w, y, width: Math.max(1, w), height: rowHeight - 6, fill: Math.abs(value) > 0.5 ? "#c62828" : "#1f6feb" }),
      s("text", { x: mid + 170, y: y + 12 }, fmt(value, 2)),
    );
  });
  return svg;
}

function transferReport(metrics) {
  const report = metrics && metrics.transfer_report;
  if (!report) return null;
  const card = h("div", { class: "card", id: "transfer-report" }, h("h2", {}, "Transfer report"));
  const selection = metrics.selection;
  const rows = selection
    ? selection.candidates.map((c) => ({ label: c.candidate, mean: c.mean, std: c.std, chosen: c.candidate === selection.choice }))
    : [report.score && { label: `${report.strategy}/${report.target_normalization}`, ...report.score, chosen: true },
       report.baseline && report.baseline.mean !== undefined && { label: `${report.baseline.candidate} (baseline)`, mean: report.baseline.mean, std: report.baseline.std }].filter(Boolean);
  rows.sort((a, b) => b.mean - a.mean);
  card.append(
    h("p", {}, `Chosen: ${report.strategy} (${report.target_normalization} scaling); ${report.metric || "score"} `,
      report.score ? `${fmt(report.score.mean, 3)} ± ${fmt(report.score.std, 3)}` : "–",
      report.transfer_gain !== null && report.transfer_gain !== undefined ? `; gain over the target-only baseline ${fmt(report.transfer_gain, 3)}` : ""),
    report.negative_transfer ? h("p", { class: "error" }, "Negative transfer: the source made this worse than the baseline.") : "",
    report.decided_by ? h("p", { id: "decided-by" }, h("strong", {}, "Why: "), report.decided_by) : "",
  );
  if (rows.length) card.append(h("h3", {}, "Cross-validated scores (mean ± std)"), scoreChart(rows));
  const shift = report.domain_shift;
  if (shift && shift.standardised_mean_difference) {
    const entries = Object.entries(shift.standardised_mean_difference).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 20);
    card.append(
      h("h3", {}, "Domain shift: standardised mean difference, target vs source"),
      h("p", { class: "muted" }, `classifier AUC ${fmt(shift.classifier_auc, 3)} (0.5: no detectable shift); mean |SMD| ${fmt(shift.mean_abs_smd, 3)}`),
      barChart(entries, "domain shift"),
    );
  }
  return card;
}

async function jobView(root, jobId) {
  let job = await api("GET", `/v1/jobs/${jobId}`);
  const status = h("span", { id: "job-status", class: `status-${job.status}` }, job.status);
  const fill = h("div");
  const progress = h("span", { id: "job-progress" });
  const eta = h("span", { class: "muted" });
  const cancel = h("button", { id: "cancel", type: "button", onclick: async () => {
    await guarded(root, async () => { job = await api("POST", `/v1/jobs/${jobId}/cancel`); redraw(); });
  } }, "Cancel");
  const result = h("span", { id: "job-result" });
  const chart = h("div", { id: "loss-chart" });
  const log = h("pre", { id: "job-log" });
  const extra = h("div");
  const curves = { train: [], val: [], metric: [] };
  let metricName = "";
  const redraw = () => {
    status.textContent = job.status;
    status.className = `status-${job.status}`;
    progress.textContent = progressText(job);
    fill.style.width = `${Math.round(progressShare(job) * 100)}%`;
    const p = job.progress || {};
    eta.textContent = p.eta_seconds !== null && p.eta_seconds !== undefined && job.status === "running" ? ` · ETA ${Math.round(p.eta_seconds)} s` : "";
    cancel.hidden = !["queued", "running"].includes(job.status);
    result.replaceChildren(resultCell(job));
    if (job.error) result.append(" ", h("span", { class: "error" }, job.error.message));
  };
  const drawCurves = () => {
    chart.replaceChildren(
      h("div", { class: "legend" }, h("span", {}, "— train loss"), h("span", {}, "— validation loss"), metricName ? h("span", {}, `— ${metricName} (right scale)`) : ""),
      lineChart([{ name: "train_loss", cls: "train", points: curves.train }, { name: "val_loss", cls: "val", points: curves.val }], { yLabel: "loss" }),
      curves.metric.length ? lineChart([{ name: metricName, cls: "metric", points: curves.metric }], { height: 140, yLabel: metricName }) : "",
    );
  };
  const onEvent = (event) => {
    const d = event.data || {};
    if (event.type === "metrics" && d.epoch !== undefined && d.train_loss !== undefined) {
      if (d.epoch === 1) { curves.train = []; curves.val = []; curves.metric = []; } // a new fit (auto's final one)
      curves.train.push([d.epoch, d.train_loss]);
      if (typeof d.val_loss === "number") curves.val.push([d.epoch, d.val_loss]);
      for (const name of ["val_accuracy", "val_r2"]) if (typeof d[name] === "number") { metricName = name; curves.metric.push([d.epoch, d[name]]); }
      job.progress = { ...job.progress, epoch: d.epoch, epochs: d.epochs };
    } else if (event.type === "metrics" && d.rows_done !== undefined) {
      job.progress = { ...job.progress, rows_done: d.rows_done, rows_total: d.rows_total };
    } else {
      log.append(`[${event.type}] ${event.message}\n`);
    }
    if (event.type === "status" && d.status) job.status = d.status;
    drawCurves();
    redraw();
    if (event.type === "status" && ["succeeded", "failed", "cancelled"].includes(d.status)) finished();
  };
  // Once per visit, however the end is seen (the stream, or the history of a finished job).
  let finishing = null;
  const finished = () => (finishing ||= showOutcome());
  const showOutcome = async () => {
    job = await api("GET", `/v1/jobs/${jobId}`);
    redraw();
    extra.replaceChildren();
    if (job.result) {
      const version = await api("GET", `/v1/models/${encodeURIComponent(job.result.model_name)}/versions/${job.result.version}`);
      const report = transferReport(version.metrics);
      if (report) extra.append(report);
    }
    if (job.kind === "evaluation" && job.metrics) extra.append(evaluationCard(job.metrics));
  };
  root.append(
    h("h1", {}, `Job ${jobId}`),
    h("div", { class: "card" },
      h("p", {}, h("strong", {}, job.kind), " · ", status, " · ", progress, eta, " ", cancel),
      h("div", { class: "bar" }, fill),
      h("p", {}, "Result: ", result)),
    h("div", { class: "card" }, h("h2", {}, "Loss and metrics per epoch"), chart),
    extra,
    h("div", { class: "card" }, h("h2", {}, "Events"), log),
    h("details", {}, h("summary", {}, "Request"), h("pre", {}, JSON.stringify(job.request, null, 2))),
  );
  redraw();
  drawCurves();
  // The history first (pages of events), then the live stream from where it ends.
  let after = 0;
  for (;;) {
    const page = await api("GET", `/v1/jobs/${jobId}/events?limit=200&after=${after}`);
    for (const event of page.data) {
      after = event.seq;
      onEvent(event);
    }
    if (!page.has_more) break;
  }
  if (["queued", "running"].includes(job.status)) {
    followEvents(root, jobId, after, onEvent);
    every(root, 3000, async () => { if (["queued", "running"].includes(job.status)) { job = { ...job, ...(await api("GET", `/v1/jobs/${jobId}`)) }; redraw(); } });
  } else {
    await finished();
  }
}

function evaluationCard(metrics) {
  const card = h("div", { class: "card", id: "evaluation" }, h("h2", {}, `Scores on ${metrics.dataset.name}`));
  const rows = metrics.evaluations.map((e) => [`${e.model.name} v${e.model.version}`, e.metrics]);
  const keys = rows.length && rows[0][1].task === "regression" ? ["r2", "rmse", "mae"] : ["accuracy", "f1_macro", "log_loss", "brier"];
  card.append(h("table", {}, h("tr", {}, h("th", {}, "version"), keys.map((k) => h("th", {}, k))),
    rows.map(([name, m]) => h("tr", {}, h("td", {}, name), keys.map((k) => h("td", {}, fmt(m[k], 3)))))));
  return card;
}

// ---- models -------------------------------------------------------------------------------

async function modelsView(root) {
  const page = await api("GET", "/v1/models?limit=100");
  root.append(h("h1", {}, "Models"), h("table", { id: "models-table" },
    h("tr", {}, ["Model", "Latest", "Aliases", "Created"].map((t) => h("th", {}, t))),
    page.data.map((m) => h("tr", { class: "link", onclick: () => (location.hash = `#/models/${encodeURIComponent(m.name)}`) },
      h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name)),
      h("td", {}, fmt(m.latest_version)),
      h("td", {}, Object.entries(m.aliases).map(([a, v]) => `${a} → v${v}`).join(", ")),
      h("td", {}, when(m.created_at))))));
  if (!page.data.length) root.append(h("p", { class: "muted" }, "No models yet."));
}

function lineageGraph(version, aliases) {
  // dataset → source version → … → this version → alias, oldest on the left.
  const chain = [...version.lineage].reverse();
  const nodes = [];
  for (const entry of chain) {
    for (const d of entry.datasets) nodes.push({ kind: "dataset", label: d.name || d.id, sub: `sha256 ${(d.sha256 || "").slice(0, 12)}…`, column: nodes.length });
    nodes.push({ kind: "version", label: `${entry.name} v${entry.version}`, sub: entry.strategy ? `${entry.kind} · ${entry.strategy}` : entry.kind });
  }
  for (const alias of aliases) nodes.push({ kind: "alias", label: `@${alias}`, sub: "alias" });
  const boxW = 170;
  const gap = 30;
  const width = nodes.length * (boxW + gap);
  const height = 70;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "lineage", role: "img", "aria-label": "lineage" });
  nodes.forEach((n, i) => {
    const x = i * (boxW + gap);
    svg.append(
      s("rect", { x, y: 8, width: boxW, height: 50, rx: 6, class: "node", "data-kind": n.kind }),
      s("text", { x: x + 8, y: 28 }, n.label.length > 26 ? n.label.slice(0, 25) + "…" : n.label),
      s("text", { x: x + 8, y: 46 }, n.sub),
    );
    if (i) svg.append(s("line", { x1: x - gap, y1: 33, x2: x, y2: 33, class: "edge", "marker-end": "" }));
  });
  return svg;
}

function predictForm(name, version) {
  const inputs = version.signature.inputs;
  const example = {};
  for (const c of inputs) example[c.name] = c.dtype === "string" || c.dtype === "category" ? "" : 0;
  const text = h("textarea", { id: "predict-records", "aria-label": "records" }, JSON.stringify([example], null, 1));
  const out = h("pre", { id: "predict-result" });
  const form = h("form", { id: "predict-form", onsubmit: async (event) => {
    event.preventDefault();
    out.textContent = "…";
    try {
      const records = JSON.parse(text.value);
      const answer = await api("POST", `/v1/models/${encodeURIComponent(name)}/predict?version=${version.version}`, { records });
      out.textContent = JSON.stringify(answer, null, 1);
    } catch (error) {
      out.textContent = error.message;
    }
  } }, h("label", {}, `Records (JSON list of objects keyed by ${inputs.map((c) => c.name).join(", ")})`, text), h("button", { type: "submit" }, "Predict"));
  return h("div", { class: "card" }, h("h2", {}, `Predict with v${version.version}`), form, out);
}

async function modelView(root, name) {
  const model = await api("GET", `/v1/models/${encodeURIComponent(name)}`);
  const versions = (await api("GET", `/v1/models/${encodeURIComponent(name)}/versions?limit=100`)).data;
  root.append(h("h1", {}, `Model ${name}`));
  if (model.description) root.append(h("p", {}, model.description));
  const versionTable = h("table", { id: "versions-table" },
    h("tr", {}, ["Version", "Kind", "Strategy", "Validation", "Aliases", "Created", ""].map((t) => h("th", {}, t))),
    versions.map((v) => {
      const validation = v.metrics.validation || {};
      const score = validation.accuracy !== undefined ? `accuracy ${fmt(validation.accuracy, 3)}` : validation.r2 !== undefined ? `R² ${fmt(validation.r2, 3)}` : "–";
      return h("tr", {}, h("td", {}, `v${v.version}`), h("td", {}, v.kind), h("td", {}, v.strategy || "–"), h("td", {}, score),
        h("td", {}, v.aliases.join(", ")), h("td", {}, when(v.created_at)),
        h("td", {}, h("button", { type: "button", "data-show": v.version, onclick: () => showVersion(v) }, "Details")));
    }));
  const aliasCard = h("div", { class: "card", id: "aliases" });
  const compareCard = h("div", { class: "card", id: "compare" });
  const detail = h("div", { id: "version-detail" });
  root.append(versionTable, aliasCard, compareCard, detail);
  if (versions.length) await drawCompare(compareCard, name, versions);

  const drawAliases = async () => {
    const fresh = await api("GET", `/v1/models/${encodeURIComponent(name)}`);
    const aliasName = h("input", { id: "alias-name", value: "production", "aria-label": "alias", required: true, pattern: "[A-Za-z][A-Za-z0-9_-]{0,63}" });
    const target = h("select", { id: "alias-version", "aria-label": "version" }, versions.map((v) => h("option", { value: v.version }, `v${v.version}`)));
    const message = h("span", { id: "alias-message", role: "status" });
    aliasCard.replaceChildren(
      h("h2", {}, "Aliases"),
      h("table", {}, h("tr", {}, ["Alias", "Version", ""].map((t) => h("th", {}, t))),
        Object.entries(fresh.aliases).map(([alias, version]) => h("tr", { "data-alias": alias }, h("td", {}, alias), h("td", { class: "alias-target" }, `v${version}`),
          h("td", {}, h("button", { type: "button", "data-rollback": alias, onclick: async () => {
            try {
              const moved = await api("POST", `/v1/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}/rollback`);
              await drawAliases();
              aliasCard.querySelector("#alias-message").textContent = `${alias} rolled back to v${moved.version}`;
            } catch (error) { message.textContent = error.message; }
          } }, "Roll back"))))),
      h("form", { class: "inline", id: "alias-form", onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("PUT", `/v1/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(aliasName.value)}`, { version: Number(target.value) });
          const set = aliasName.value;
          await drawAliases();
          aliasCard.querySelector("#alias-message").textContent = `${set} → v${target.value}`;
        } catch (error) { message.textContent = error.message; }
      } }, h("label", {}, "Alias", aliasName), h("label", {}, "Version", target), h("button", { type: "submit" }, "Set or move")),
      message,
    );
  };
  const showVersion = async (summary) => {
    const version = await api("GET", `/v1/models/${encodeURIComponent(name)}/versions/${summary.version}`);
    detail.replaceChildren(
      h("h2", {}, `Version ${version.version}`),
      h("div", { class: "card" }, h("h3", {}, "Lineage"), lineageGraph(version, version.aliases)),
      transferReport(version.metrics) || "",
      predictForm(name, version),
      h("details", {}, h("summary", {}, "Metrics"), h("pre", {}, JSON.stringify(version.metrics, null, 1))),
    );
  };
  await drawAliases();
  if (versions.length) await showVersion(versions[0]);
}

async function drawCompare(card, name, versions) {
  // Evaluations side by side: each version (and each fine-tune's base) on every dataset any
  // of them was scored on, with a form to score one on another dataset.
  const numbers = versions.slice(0, 20).map((v) => v.version).join(",");
  const compared = await api("GET", `/v1/models/${encodeURIComponent(name)}/compare?versions=${numbers}&include_base=true`);
  const datasets = (await api("GET", "/v1/datasets?limit=100")).data.filter((d) => d.format !== "npz");
  const which = h("select", { id: "evaluate-version", "aria-label": "version to evaluate" }, versions.map((v) => h("option", { value: v.version }, `v${v.version}`)));
  const on = h("select", { id: "evaluate-dataset", "aria-label": "labelled dataset" }, datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.id})`)));
  const withBase = h("input", { id: "evaluate-base", type: "checkbox", checked: true });
  const message = h("span", { role: "status" });
  const form = h("form", { class: "inline", id: "evaluate-form", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const job = await api("POST", "/v1/jobs/evaluation", { models: [{ name, version: Number(which.value) }], dataset_id: on.value, include_base: withBase.checked });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) { message.textContent = error.message; }
  } }, h("label", {}, "Version", which), h("label", {}, "Labelled dataset", on), h("label", {}, "Its base too", withBase), h("button", { type: "submit" }, "Evaluate"), message);
  card.replaceChildren(h("h2", {}, "Scores side by side"), form);
  if (!compared.datasets.length) {
    card.append(h("p", { class: "muted" }, "No evaluations yet: score a version (and its base) on a labelled dataset above."));
    return;
  }
  const roles = Object.fromEntries(compared.versions.map((v) => [`${v.name} v${v.version}`, v.role]));
  for (const group of compared.datasets) {
    const best = group.best ? `${group.best.name} v${group.best.version}` : null;
    card.append(
      h("h3", {}, `${group.dataset.name} · labels ${group.target_column}`),
      h("p", { class: "muted" }, `${group.dataset.id} · sha256 ${group.dataset.sha256.slice(0, 16)}…`),
      h("table", { class: "compare-table", "data-dataset": group.dataset.id },
        h("tr", {}, h("th", {}, "version"), compared.headline_metrics.map((m) => h("th", {}, m)), h("th", {}, "rows")),
        group.scores.map((score) => {
          const label = `${score.name} v${score.version}`;
          return h("tr", { "data-version": label },
            h("td", {}, label, roles[label] === "base" ? " (base)" : "", label === best ? " ★" : ""),
            compared.headline_metrics.map((m) => h("td", {}, fmt(score.metrics[m], 3))),
            h("td", {}, fmt(score.metrics.rows)));
        })),
    );
  }
}

// ---- datasets -----------------------------------------------------------------------------

async function datasetsView(root) {
  const page = await api("GET", "/v1/datasets?limit=100");
  root.append(h("h1", {}, "Datasets"), h("table", { id: "datasets-table" },
    h("tr", {}, ["Dataset", "Name", "Format", "Rows", "Columns", "Created"].map((t) => h("th", {}, t))),
    page.data.map((d) => h("tr", { class: "link", onclick: () => (location.hash = `#/datasets/${d.id}`) },
      h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.id)), h("td", {}, d.name), h("td", {}, d.format),
      h("td", {}, fmt(d.rows)), h("td", {}, d.columns.length), h("td", {}, when(d.created_at))))));
}

async function datasetView(root, id) {
  const dataset = await api("GET", `/v1/datasets/${id}`);
  root.append(
    h("h1", {}, dataset.name),
    h("p", { class: "muted" }, `${dataset.id} · ${dataset.format} · ${fmt(dataset.rows)} rows · ${fmt(dataset.size_bytes)} bytes · sha256 ${dataset.sha256}`),
  );
  if (dataset.format === "npz") {
    root.append(h("table", {}, dataset.columns.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.dtype)))));
    return;
  }
  const preview = await api("GET", `/v1/datasets/${id}/preview?rows=20`);
  root.append(
    h("h2", {}, "First rows"),
    h("table", { id: "preview-table" }, h("tr", {}, preview.columns.map((c) => h("th", {}, c))),
      preview.rows.map((row) => h("tr", {}, row.map((v) => h("td", {}, fmt(v, 3)))))),
    h("h2", {}, `Columns (over the first ${fmt(preview.summary_rows)} rows)`),
    h("table", { id: "summary-table" }, h("tr", {}, ["Column", "Type", "Missing", "Min", "Mean", "Max", "Most common"].map((t) => h("th", {}, t))),
      preview.summary.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.dtype), h("td", {}, fmt(c.missing)),
        h("td", {}, fmt(c.min, 3)), h("td", {}, fmt(c.mean, 3)), h("td", {}, fmt(c.max, 3)),
        h("td", {}, (c.top || []).map((t) => `${t.value} (${t.count})`).join(", "))))),
  );
}

// ---- start: the Iris flow (or any dataset) from the page ---------------------------------

// The strategies a fine-tuning job accepts, as the server's strategy registry declares them
// (the OpenAPI document's enum), auto first; a list kept here would miss new strategies.
let strategyNames = null;
async function strategyChoices() {
  if (strategyNames === null) {
    const response = await fetch("/openapi.json");
    const names = response.ok
      ? (await response.json()).components.schemas.FineTuningCreate.properties.strategy.enum
      : [];
    strategyNames = ["auto", ...names.filter((n) => n !== "auto")];
  }
  return strategyNames;
}

async function startView(root) {
  const datasets = (await api("GET", "/v1/datasets?limit=100")).data;
  const models = (await api("GET", "/v1/models?limit=100")).data;
  const strategies = await strategyChoices();
  const message = h("p", { id: "start-message", role: "status" });
  const say = (text, error) => { message.textContent = text; message.className = error ? "error" : ""; };
  const datasetSelect = (id) => h("select", { id, "aria-label": id }, datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.id})`)));
  const addIris = h("button", { type: "button", id: "add-iris", onclick: async () => {
    try {
      const source = await api("POST", "/v1/datasets/builtin", { name: "iris", start: 0, stop: 100 });
      const target = await api("POST", "/v1/datasets/builtin", { name: "iris", start: 100, stop: 150 });
      await route(); // the forms list the new datasets
      document.getElementById("start-message").textContent = `Added ${source.name} (${source.id}) and ${target.name} (${target.id}).`;
    } catch (error) { say(error.message, true); }
  } }, "Add the Iris datasets (rows 0–99 and 100–149)");

  const sourceDataset = datasetSelect("source-dataset");
  const sourceTarget = h("input", { id: "source-target", value: "target", "aria-label": "target column" });
  const sourceModel = h("input", { id: "source-model", value: "iris-source", "aria-label": "model name" });
  const sourceEpochs = h("input", { id: "source-epochs", type: "number", min: 1, value: 60, "aria-label": "epochs" });
  const trainForm = h("form", { class: "inline", id: "train-form", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const job = await api("POST", "/v1/jobs/source-training", {
        dataset_id: sourceDataset.value, target_column: sourceTarget.value, model_name: sourceModel.value,
        architecture: { hidden_layers: [10, 10] }, hyperparameters: { epochs: Number(sourceEpochs.value), learning_rate: 0.01 },
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) { say(error.message, true); }
  } }, h("label", {}, "Dataset", sourceDataset), h("label", {}, "Target column", sourceTarget), h("label", {}, "Model name", sourceModel),
    h("label", {}, "Epochs", sourceEpochs), h("button", { type: "submit" }, "Train"));

  const base = h("select", { id: "ft-base", "aria-label": "base model" }, models.map((m) => h("option", { value: m.name }, `${m.name} (latest v${m.latest_version})`)));
  const ftDataset = datasetSelect("ft-dataset");
  const ftTarget = h("input", { id: "ft-target", value: "target", "aria-label": "target column" });
  const ftModel = h("input", { id: "ft-model", value: "iris-target", "aria-label": "model name" });
  const strategy = h("select", { id: "ft-strategy", "aria-label": "strategy" }, strategies.map((n) => h("option", { value: n }, n)));
  const ftEpochs = h("input", { id: "ft-epochs", type: "number", min: 1, value: 30, "aria-label": "epochs" });
  const ftForm = h("form", { class: "inline", id: "fine-tune-form", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const job = await api("POST", "/v1/jobs/fine-tuning", {
        base_model: { name: base.value }, dataset_id: ftDataset.value, target_column: ftTarget.value, model_name: ftModel.value,
        strategy: strategy.value, hyperparameters: { epochs: Number(ftEpochs.value), learning_rate: 0.01 },
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) { say(error.message, true); }
  } }, h("label", {}, "Base model", base), h("label", {}, "Target dataset", ftDataset), h("label", {}, "Target column", ftTarget),
    h("label", {}, "New model name", ftModel), h("label", {}, "Strategy", strategy), h("label", {}, "Epochs", ftEpochs), h("button", { type: "submit" }, "Fine-tune"));

  root.append(
    h("h1", {}, "Start"),
    h("div", { class: "card" }, h("h2", {}, "1. Data"), addIris),
    h("div", { class: "card" }, h("h2", {}, "2. Train a source model"), trainForm),
    h("div", { class: "card" }, h("h2", {}, "3. Fine-tune it on the target"), models.length ? ftForm : h("p", { class: "muted" }, "Train a source model first.")),
    message,
  );
}

// ---- boot ---------------------------------------------------------------------------------

document.getElementById("login-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
