// slimsched web view: plain JavaScript over the node's JSON API, no build step, no dependency.
// Everything shown comes from GET requests of the API; every button is one API call, so the
// page can see and do exactly what the API lets this caller see and do.
"use strict";

const REFRESH_MS = 2000;
const NEXT_TIMES = 3;
const MAX_SCHEDULES_WITH_NEXT = 50;
const DOTNET_EPOCH_TICKS = 621355968000000000n;

const view = { job: null, ticks: null, log: null, logAbort: null, busy: false };

// -- helpers -------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const why = data && data.Error ? `${data.Error}: ${data.Message}` : `HTTP ${resp.status}`;
    const err = new Error(why);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

// Run timestamps: milliseconds since the epoch, or .NET ticks (SlimFaas's unit); -1 when none.
function when(value) {
  if (typeof value !== "number" || value < 0) return "-";
  const ms = value > 1e15 ? Number((BigInt(value) - DOTNET_EPOCH_TICKS) / 10000n) : value;
  return isoShort(new Date(ms).toISOString());
}

function isoShort(iso) {
  return iso ? iso.replace(".000Z", "Z").replace("T", " ") : "-";
}

// A later fire time: only its time of day when it falls on the same (UTC) day as ``first``.
function sameDay(iso, first) {
  const text = isoShort(iso);
  return first && iso.slice(0, 10) === first.slice(0, 10) ? text.slice(11) : text;
}

function age(iso) {
  if (!iso) return null;
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

const enc = encodeURIComponent;

// Long ids shortened for reading, whole in the tooltip (and in the data- attributes).
function shortId(id) {
  return id && id.length > 20 ? h("span", { title: id }, `${id.slice(0, 8)}…${id.slice(-8)}`) : id || "-";
}

// -- sections ------------------------------------------------------------------------------------

async function renderCluster() {
  const body = document.getElementById("cluster-body");
  const st = await api("GET", "/status");
  let ready = "ready";
  try { await api("GET", "/ready"); } catch (e) { ready = e.message; }
  document.getElementById("summary").textContent =
    `node ${st.Node} · leader ${st.Leader || "none"} · term ${st.Term}`;
  const match = st.MatchIndex || {};
  const rows = [
    h("tr", { "data-node": st.Node },
      h("td", { class: "mono" }, st.Node, " (this node)"),
      h("td", {}, st.IsLeader ? "leader" : "follower"),
      h("td", {}, st.AppliedIndex), h("td", {}, st.CommitIndex - st.AppliedIndex),
      h("td", { class: ready === "ready" ? "health-ok" : "health-bad" }, ready),
      h("td", {}, st.BackupWrittenAt ? age(st.BackupWrittenAt) : "no backup volume or none written yet")),
    ...st.Peers.map((p) => {
      const up = st.ConnectedPeers.includes(p);
      const known = p in match;
      return h("tr", { "data-node": p },
        h("td", { class: "mono" }, p, p === st.Leader ? " (leader)" : ""),
        h("td", {}, p === st.Leader ? "leader" : "follower"),
        h("td", {}, known ? match[p] : "-"),
        h("td", {}, known ? st.CommitIndex - match[p] : "-"),
        h("td", { class: up ? "health-ok" : "health-bad" }, up ? "connected" : "not connected"),
        h("td", { class: "muted" }, "open /ui on that node"));
    }),
  ];
  body.className = "";
  body.replaceChildren(
    h("p", {}, `Term ${st.Term}, commit index ${st.CommitIndex}, ${st.Schedules} schedules. `,
      st.IsLeader ? "" : h("span", { class: "muted" }, "Replicated indexes of peers are known by the leader.")),
    table(["Node", "Role", "Applied / replicated index", "Behind commit", "Health", "Backup written"], rows, ""),
  );
}

async function schedulesOf(jobs) {
  const lists = await Promise.all(
    jobs.filter((j) => j.Accessible && j.Schedules > 0).map((j) => api("GET", `/job-schedules/${enc(j.Name)}`)),
  );
  const all = lists.flat();
  all.sort((a, b) => (a.NextFireTime || "~").localeCompare(b.NextFireTime || "~"));
  await Promise.all(all.slice(0, MAX_SCHEDULES_WITH_NEXT).map(async (s) => {
    try {
      s.Next = (await api("GET", `/job-schedules/${enc(s.Name)}/${enc(s.Id)}/next?count=${NEXT_TIMES}`)).NextFireTimes;
    } catch { s.Next = null; }
  }));
  return all;
}

function renderSchedules(schedules) {
  const rows = schedules.map((s) => h("tr", { "data-schedule": s.Id, "data-job": s.Name },
    h("td", {}, s.Name),
    h("td", { class: "mono" }, shortId(s.Id)),
    h("td", { class: "mono" }, s.Schedule),
    h("td", {}, s.TimeZone),
    h("td", {}, s.ConcurrencyPolicy),
    h("td", { class: s.Paused ? "paused" : "" , "data-field": "state" }, s.Paused ? "paused" : "active"),
    h("td", {}, isoShort(s.LastFiredTime)),
    h("td", { "data-field": "next" }, isoShort(s.NextFireTime)),
    h("td", { class: "muted", "data-field": "then" }, (s.Next || []).slice(1).map((t) => sameDay(t, s.NextFireTime)).join(", ")),
    h("td", {},
      h("button", { "data-action": s.Paused ? "resume" : "pause", "data-job": s.Name, "data-schedule": s.Id },
        s.Paused ? "Resume" : "Pause"), " ",
      h("button", { "data-action": "trigger-schedule", "data-job": s.Name, "data-schedule": s.Id }, "Trigger now"), " ",
      h("button", { "data-action": "ticks", "data-job": s.Name, "data-schedule": s.Id }, "Ticks"))));
  const body = document.getElementById("schedules-body");
  body.className = "";
  body.replaceChildren(table(
    ["Job", "Id", "Schedule", "Time zone", "Policy", "State", "Last fired", "Next fire", "Then", ""],
    rows, "No schedule yet (POST /job-schedules/{name}).",
  ));
}

function renderJobs(jobs) {
  const rows = jobs.map((j) => h("tr", { "data-job": j.Name },
    h("td", {}, j.Name),
    h("td", {}, j.Visibility),
    ...(j.Accessible
      ? [h("td", {}, j.Queued), h("td", {}, j.Active), h("td", {}, `${j.NumberParallelJob}`), h("td", {}, j.Runs),
        h("td", {}, j.Schedules), h("td", { class: "mono" }, j.Image),
        h("td", {},
          h("button", { "data-action": "trigger-job", "data-job": j.Name }, "Trigger"), " ",
          h("button", { "data-action": "runs", "data-job": j.Name }, "Runs"))]
      : [h("td", { class: "private", colspan: "7" }, "Private: visible and usable only from inside the cluster")])));
  const body = document.getElementById("jobs-body");
  body.className = "";
  body.replaceChildren(table(
    ["Job", "Visibility", "Queued", "Active", "Parallel", "Runs", "Schedules", "Image", ""], rows, "No job.",
  ));
}

async function renderRuns() {
  const section = document.getElementById("runs");
  if (!view.job) { section.hidden = true; return; }
  const runs = await api("GET", `/job/${enc(view.job)}`);
  runs.sort((a, b) => b.InQueueTimestamp - a.InQueueTimestamp);
  section.hidden = false;
  document.getElementById("runs-title").textContent = view.job;
  const rows = runs.map((r) => h("tr", { "data-run": r.Id },
    h("td", { class: "mono" }, shortId(r.Id)),
    h("td", { class: `status status-${r.Status}`, "data-field": "status" }, r.Status),
    h("td", {}, r.PositionInQueue > 0 ? r.PositionInQueue : "-"),
    h("td", {}, when(r.InQueueTimestamp)), h("td", {}, when(r.StartTimestamp)), h("td", {}, when(r.EndTimestamp)),
    h("td", { class: "wrap" }, r.Reason || ""),
    h("td", { class: "mono" }, shortId(r.ScheduleId)),
    h("td", {}, r.Status === "Queued" ? "" :
      h("a", { href: `/job/${enc(view.job)}/${enc(r.Id)}/logs`, "data-action": "logs", "data-job": view.job,
        "data-run": r.Id, "data-active": ["Pending", "Running"].includes(r.Status) ? "1" : "0" },
        ["Pending", "Running"].includes(r.Status) ? "follow log" : "log"))));
  document.getElementById("runs-body").replaceChildren(table(
    ["Run", "Status", "Position", "Queued", "Started", "Ended", "Reason", "Schedule", ""], rows, "No run.",
  ));
}

async function renderTicks() {
  const section = document.getElementById("ticks");
  if (!view.ticks) { section.hidden = true; return; }
  const { job, schedule } = view.ticks;
  const ticks = await api("GET", `/job-schedules/${enc(job)}/${enc(schedule)}/ticks`);
  section.hidden = false;
  document.getElementById("ticks-title").textContent = `${job}/${schedule}`;
  const rows = ticks.slice().reverse().map((t) => h("tr", { "data-tick": t.Tick },
    h("td", {}, isoShort(t.TickTime)),
    h("td", { class: `outcome-${t.Outcome}` }, t.Reason === "manual" ? "fired (manual)" : t.Outcome),
    h("td", { class: "mono" }, shortId(t.RunId)),
    h("td", {}, t.LatenessMs === undefined ? "-" : `${t.LatenessMs} ms`),
    h("td", { class: "wrap" }, t.Reason || "")));
  document.getElementById("ticks-body").replaceChildren(
    table(["Tick", "Outcome", "Run", "Lateness", "Reason"], rows, "No tick handled yet."),
  );
}

// A run's log: read once, or followed as a stream (?follow=true) while the run is active.
async function openLog(job, run, follow) {
  if (view.logAbort) view.logAbort.abort();
  const abort = new AbortController();
  view.log = { job, run };
  view.logAbort = abort;
  document.getElementById("log").hidden = false;
  document.getElementById("log-title").textContent = run;
  const text = document.getElementById("log-text");
  const state = document.getElementById("log-state");
  text.textContent = "";
  state.textContent = follow ? "(following)" : "";
  try {
    const resp = await fetch(`/job/${enc(job)}/${enc(run)}/logs${follow ? "?follow=true" : ""}`, { signal: abort.signal });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      text.textContent = `${err.Error || resp.status}: ${err.Message || ""}`;
      state.textContent = "";
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text.textContent += decoder.decode(value, { stream: true });
      text.scrollTop = text.scrollHeight;
    }
    state.textContent = follow ? "(ended)" : "";
  } catch (e) {
    if (e.name !== "AbortError") state.textContent = `(${e.message})`;
  }
}

// -- actions ---------------------------------------------------------------------------------------

function requestId() {
  return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

const ACTIONS = {
  async pause(d) {
    await api("PATCH", `/job-schedules/${enc(d.job)}/${enc(d.schedule)}`, { Paused: true });
    say(`Schedule ${d.schedule} paused.`);
  },
  async resume(d) {
    await api("PATCH", `/job-schedules/${enc(d.job)}/${enc(d.schedule)}`, { Paused: false });
    say(`Schedule ${d.schedule} resumed.`);
  },
  async "trigger-schedule"(d) {
    const r = await api("POST", `/job-schedules/${enc(d.job)}/${enc(d.schedule)}/trigger`, { RequestId: requestId() });
    view.job = d.job;
    say(`Schedule ${d.schedule} triggered: run ${r.Id} queued.`);
  },
  async "trigger-job"(d) {
    const r = await api("POST", `/job/${enc(d.job)}`, {});
    view.job = d.job;
    say(`Job ${d.job} triggered: run ${r.Id} queued.`);
  },
  async runs(d) { view.job = d.job; },
  async ticks(d) { view.ticks = { job: d.job, schedule: d.schedule }; },
  async logs(d) { openLog(d.job, d.run, d.active === "1"); },
  async "close-ticks"() { view.ticks = null; },
  async "close-log"() {
    if (view.logAbort) view.logAbort.abort();
    view.log = null;
    document.getElementById("log").hidden = true;
  },
};

document.addEventListener("click", async (event) => {
  const el = event.target.closest("[data-action]");
  if (!el) return;
  event.preventDefault();
  try {
    await ACTIONS[el.dataset.action](el.dataset);
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
});

// -- refresh ---------------------------------------------------------------------------------------

async function refresh() {
  if (view.busy) return;
  view.busy = true;
  try {
    const jobs = await api("GET", "/jobs");
    if (!view.job) {
      const first = jobs.find((j) => j.Accessible && j.Runs > 0);
      if (first) view.job = first.Name;
    }
    renderJobs(jobs);
    const results = await Promise.allSettled([
      renderCluster(), schedulesOf(jobs).then(renderSchedules), renderRuns(), renderTicks(),
    ]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) say(failed.reason.message, true);
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    document.getElementById("summary").textContent = `cannot reach this node: ${e.message}`;
  } finally {
    view.busy = false;
  }
}

refresh();
setInterval(() => {
  if (document.getElementById("auto-refresh").checked) refresh();
}, REFRESH_MS);
