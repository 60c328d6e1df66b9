// The dashboard: sign-in, runs, sites, the selected run's charts and tables, live updates.
import { ApiError, all, api, catchUp, follow, lastEventId, token } from "./api.js";
import { LineChart, PALETTE, participationGrid } from "./charts.js";

const $ = (id) => document.getElementById(id);
const DETAIL_ROUNDS = 60; // the participation grid and refused uploads cover this many rounds
const EVENTS_SHOWN = 80;
const ACTIVE = new Set(["queued", "running"]);
const OPERATORS = new Set(["operator", "admin"]);
const enc = encodeURIComponent;

const charts = {
  accuracy: new LineChart($("chart-accuracy"), "accuracy"),
  loss: new LineChart($("chart-loss"), "loss"),
  staleness: new LineChart($("chart-staleness"), "staleness (versions)"),
  consensus: new LineChart($("chart-consensus"), "distance"),
  privacy: new LineChart($("chart-privacy"), "ε"),
};

const state = {
  role: null,
  selected: new URLSearchParams(location.hash.slice(1)).get("run"),
  run: null,
  details: new Map(), // round -> detail of its latest attempt, of the selected run
  stopping: new Set(), // runs this tab asked to stop that have not ended yet
  feed: null,
};

// ---- formatting ----

function when(seconds) {
  return seconds == null ? "" : new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
}

function elapsed(from, to) {
  if (from == null) return "";
  const s = Math.max(0, Math.round((to ?? Date.now() / 1000) - from));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function cell(text, attributes = {}) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  for (const [key, value] of Object.entries(attributes)) td.setAttribute(key, value);
  return td;
}

function statusCell(status) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = "status";
  span.dataset.status = status;
  span.textContent = status;
  td.append(span);
  return td;
}

function fill(tableId, rows, emptyId) {
  $(tableId).tBodies[0].replaceChildren(...rows);
  $(tableId).hidden = rows.length === 0;
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

// ---- refreshing: events and timers ask, one refresh of each part runs at a time ----

const wanted = new Set();
let timer = null;
let busy = false;

function refresh(...parts) {
  parts.forEach((p) => wanted.add(p));
  if (!timer && !busy) timer = setTimeout(flush, 150);
}

async function flush() {
  timer = null;
  const parts = new Set(wanted);
  wanted.clear();
  busy = true;
  try {
    await Promise.all([
      parts.has("runs") && loadRuns(),
      parts.has("sites") && loadSites(),
      parts.has("run") && loadRun(),
    ]);
    problem("");
  } catch (error) {
    failed(error);
  } finally {
    busy = false;
    if (wanted.size && state.role) timer = setTimeout(flush, 150);
  }
}

function problem(text) {
  $("problem").textContent = text;
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut("The server no longer accepts this token.");
  } else {
    problem(`Could not refresh: ${error.message || error}`);
  }
}

// ---- runs and sites ----

async function loadRuns() {
  const runs = await api("/api/v1/runs");
  if (state.selected && !runs.some((r) => r.id === state.selected)) state.selected = null;
  if (!state.selected && runs.length) {
    const running = runs.find((r) => r.status === "running");
    select((running ?? runs[runs.length - 1]).id);
  }
  fill("runs", runs.map(runRow).reverse(), "runs-empty"); // newest first
}

function runRow(run) {
  const tr = document.createElement("tr");
  tr.dataset.runId = run.id;
  tr.classList.toggle("selected", run.id === state.selected);
  const name = cell(run.name, { title: run.id });
  const planned = run.config?.rounds ?? "?";
  tr.append(name, statusCell(run.status), cell(`${run.rounds_completed}/${planned}`), cell(run.config?.mode ?? ""));
  tr.addEventListener("click", () => select(run.id));
  return tr;
}

function select(id) {
  if (id === state.selected && state.run) return;
  state.selected = id;
  state.run = null;
  state.details.clear();
  history.replaceState(null, "", `#run=${enc(id)}`);
  for (const tr of $("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.runId === id);
  refresh("run");
}

async function loadSites() {
  const [sites, health] = await Promise.all([api("/api/v1/sites"), api("/api/v1/health")]);
  $("server-version").textContent = `server ${health.version} · ${health.connected_sites} site(s) connected`;
  fill("sites", sites.map((site) => {
    const tr = document.createElement("tr");
    tr.dataset.site = site.name;
    const stateName = site.revoked ? "revoked" : site.connected ? "connected" : "disconnected";
    tr.append(cell(site.name), statusCell(stateName), cell(when(site.registered_at)));
    return tr;
  }), "sites-empty");
}

// ---- the selected run ----

/** The latest attempt of each round, in round order. */
function latestAttempts(rounds) {
  const latest = new Map();
  for (const r of rounds) latest.set(r.round, r);
  return [...latest.values()];
}

async function loadRun() {
  const id = state.selected;
  if (!id) return;
  const [run, rounds, privacy] = await Promise.all([
    api(`/api/v1/runs/${enc(id)}`),
    all(`/api/v1/runs/${enc(id)}/rounds`),
    // A run whose stored configuration no longer validates has no ledger; the rest still shows.
    api(`/api/v1/runs/${enc(id)}/privacy`).catch(() => null),
  ]);
  const latest = latestAttempts(rounds);
  await loadDetails(id, latest.slice(-DETAIL_ROUNDS));
  if (id !== state.selected) return; // another run was picked meanwhile
  state.run = run;
  renderRun(run, rounds, latest, privacy);
}

/** Round details (participants, refused uploads); a finished attempt's detail never changes. */
async function loadDetails(id, rounds) {
  const stale = rounds.filter((r) => {
    const known = state.details.get(r.round);
    return !known || known.attempt !== r.attempt || known.status === "running";
  });
  for (let i = 0; i < stale.length; i += 6) {
    const batch = stale.slice(i, i + 6);
    const details = await Promise.all(batch.map((r) => api(`/api/v1/runs/${enc(id)}/rounds/${r.round}`)));
    if (id !== state.selected) return;
    details.forEach((d) => state.details.set(d.round, d));
  }
}

function renderRun(run, rounds, latest, privacy) {
  $("run-none").hidden = true;
  $("run-detail").hidden = false;
  const config = run.config ?? {};
  $("run-name").textContent = run.name;
  const parts = [
    run.id,
    `${config.mode ?? "?"} · ${config.strategy ?? "?"}`,
    `${run.rounds_completed}/${config.rounds ?? "?"} rounds`,
    run.started_at ? `started ${when(run.started_at)}` : `submitted ${when(run.created_at)}`,
    run.started_at ? `elapsed ${elapsed(run.started_at, run.finished_at)}` : "",
    config.secagg?.enabled ? "SecAgg" : "",
    config.central_dp?.enabled ? "central DP" : "",
  ];
  $("run-summary").textContent = parts.filter(Boolean).join(" · ");
  $("run-error").textContent = run.error ?? "";
  $("run-status").textContent = run.status;
  $("run-status").dataset.status = run.status;
  if (!ACTIVE.has(run.status)) state.stopping.delete(run.id);
  renderStop();

  const done = latest.filter((r) => r.status === "completed");
  const x = done.map((r) => r.round);
  const metric = (phase, name) => done.map((r) => r.metrics?.[phase]?.[name] ?? null);
  const some = (series) => series.filter((s) => s.values.some((v) => v != null));
  const baselines = (run.baselines ?? []).filter((b) => b.status === "completed");
  // A baseline has the same colour on every chart, apart from the federated lines' colours.
  const baselineLines = (keys) => baselines.flatMap((b, i) => {
    const value = keys.map((k) => b.metrics[k]).find((v) => v != null);
    const label = `baseline ${b.engine ?? ""} ${b.id.replace(/^baseline-/, "").slice(0, 6)}`;
    const color = PALETTE[(3 + i) % PALETTE.length];
    return value == null ? [] : [{ label, values: x.map(() => value), dashed: true, color }];
  });

  charts.accuracy.update(x, [
    { label: "federated", values: metric("evaluate", "accuracy") },
    ...baselineLines(["eval_accuracy", "accuracy"]),
  ]);
  charts.loss.update(x, [
    { label: "federated (evaluate)", values: metric("evaluate", "loss") },
    ...some([{ label: "training (fit)", values: metric("fit", "loss") }]),
    ...baselineLines(["eval_loss", "loss"]),
  ]);
  show("panel-staleness", config.mode === "async", () => charts.staleness.update(x, [
    { label: "mean", values: metric("fit", "staleness_mean") },
    { label: "max", values: metric("fit", "staleness_max") },
  ]));
  show("panel-consensus", config.mode === "gossip", () => charts.consensus.update(x, [
    { label: "to neighbours", values: metric("gossip", "consensus_distance") },
    ...some([{ label: "over a topology cycle", values: metric("gossip", "consensus_distance_cycle") }]),
  ]));
  const dpSites = (privacy?.sites ?? []).filter((s) => s.dp);
  show("panel-privacy", dpSites.length > 0 || privacy?.central, () => renderPrivacy(dpSites, privacy.central));
  renderParticipation(latest.slice(-DETAIL_ROUNDS).map((r) => state.details.get(r.round)).filter(Boolean), latest.length);
  show("panel-secagg", !!config.secagg?.enabled, () => renderSecAgg(rounds));
}

function show(panelId, visible, render) {
  $(panelId).hidden = !visible;
  if (visible) render();
}

function renderStop() {
  const run = state.run;
  const button = $("stop");
  const active = run && ACTIVE.has(run.status);
  const may = OPERATORS.has(state.role);
  const asked = active && state.stopping.has(run.id);
  button.hidden = !active;
  button.disabled = !may || asked;
  button.title = may ? "Stop this run before its next round" : "A viewer token cannot stop runs";
  $("stop-note").textContent = !active ? "" : asked
    ? "stop requested: the run ends before its next round"
    : may ? "" : "read-only: sign in with an operator token to stop";
}

function renderPrivacy(sites, central) {
  // ε is what each site has spent so far, as of its latest attempt of each round.
  const rounds = new Set(central?.rounds.map((r) => r.round) ?? []);
  const spent = sites.map((site) => {
    const byRound = new Map();
    for (const r of site.rounds) if (r.epsilon != null) byRound.set(r.round, r.epsilon);
    byRound.forEach((_, round) => rounds.add(round));
    return byRound;
  });
  const x = [...rounds].sort((a, b) => a - b);
  const series = [];
  const budgets = new Set(sites.map((site) => site.budget).filter((b) => b != null));
  sites.forEach((site, i) => {
    const color = PALETTE[i % PALETTE.length];
    series.push({ label: `${site.site} ε`, values: x.map((r) => spent[i].get(r) ?? null), color });
    if (site.budget != null && budgets.size > 1) {
      series.push({ label: `${site.site} budget`, values: x.map(() => site.budget), dashed: true, color });
    }
  });
  if (budgets.size === 1) { // one line for a budget every site shares
    const [budget] = budgets;
    series.push({ label: "budget (each site)", values: x.map(() => budget), dashed: true, color: "#1d2330" });
  }
  if (central) {
    const byRound = new Map(central.rounds.map((r) => [r.round, r.epsilon]));
    series.push({ label: `central ε (${central.mode})`, values: x.map((r) => byRound.get(r) ?? null), color: "#1d2330" });
  }
  charts.privacy.update(x, series);
}

function renderParticipation(details, total) {
  const rounds = details.map((d) => d.round);
  const cells = new Map();
  const sites = new Set();
  for (const d of details) {
    for (const p of d.participants) {
      if (p.kind !== "fit") continue;
      sites.add(p.site);
      cells.set(`${p.site}\n${d.round}`, p);
    }
  }
  $("participation-note").textContent = total > rounds.length ? `(last ${rounds.length} of ${total} rounds)` : "";
  $("panel-participation").classList.toggle("wide", rounds.length > 24); // else it fits a column
  if (!rounds.length) {
    $("participation").replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "No rounds yet." }));
  } else {
    participationGrid($("participation"), rounds, [...sites].sort(), (site, round) => cells.get(`${site}\n${round}`));
  }
  const refused = details.flatMap((d) => d.rejected_uploads.map((u) => ({ round: d.round, ...u }))).reverse();
  fill("refused", refused.slice(0, 100).map((u) => {
    const tr = document.createElement("tr");
    tr.append(cell(String(u.round)), cell(u.site), cell(u.code), cell(u.message));
    return tr;
  }), "refused-empty");
}

function renderSecAgg(rounds) {
  const stages = [];
  const rows = [];
  for (const r of rounds) {
    for (const s of r.secagg?.stages ?? []) if (!stages.includes(s.stage)) stages.push(s.stage);
  }
  for (const r of rounds) {
    const report = r.secagg;
    if (!report || !report.stages.some((s) => s.dropped.length)) continue;
    const tr = document.createElement("tr");
    tr.append(cell(r.attempt > 1 ? `${r.round} (attempt ${r.attempt})` : String(r.round)));
    for (const name of stages) {
      const stage = report.stages.find((s) => s.stage === name);
      const dropped = stage?.dropped ?? [];
      tr.append(cell(stage ? `${dropped.length} of ${stage.expected}` : "", {
        title: dropped.map((d) => `${d.site}: ${d.reason}`).join("\n"),
      }));
    }
    tr.append(cell(report.reason ?? (report.recovered ? "recovered" : "")));
    rows.push(tr);
  }
  const head = document.createElement("tr");
  for (const text of ["round", ...stages, "outcome"]) {
    const th = document.createElement("th");
    th.textContent = text;
    head.append(th);
  }
  $("secagg").tHead.replaceChildren(head);
  fill("secagg", rows.reverse(), "secagg-empty");
}

// ---- events ----

function showEvent(event) {
  const { id, at, kind, ...fields } = event;
  const li = document.createElement("li");
  li.dataset.eventId = id;
  const time = document.createElement("time");
  time.textContent = when(at).slice(11);
  const text = Object.entries(fields).filter(([, v]) => v != null)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  li.append(time, `${kind} ${text}`);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
}

function onEvent(event) {
  showEvent(event);
  const kind = event.kind;
  if (kind.startsWith("run_") || kind.startsWith("round_")) {
    refresh("runs");
    if (event.run_id === state.selected) refresh("run");
  } else if (kind.startsWith("site_") || kind === "join_refused") {
    refresh("sites");
  } else if (kind.startsWith("baseline_")) {
    refresh("run");
  }
}

function liveState(name, detail) {
  const badge = $("live");
  badge.dataset.state = name;
  badge.textContent = { stream: "live", polling: "live (polling)", off: "offline" }[name];
  badge.title = detail ?? (name === "stream" ? "server-sent events" : "GET /api/v1/events every 2 s");
}

// ---- sign-in ----

async function signIn(value) {
  token.set(value);
  let who;
  try {
    who = await api("/api/v1/whoami");
  } catch (error) {
    signOut(error instanceof ApiError && error.status === 401
      ? "The server does not accept this token."
      : `Sign-in failed: ${error.message || error}`);
    return;
  }
  state.role = who.role;
  $("role").textContent = who.role;
  $("role").hidden = false;
  $("sign-out").hidden = false;
  $("sign-in").hidden = true;
  $("main").hidden = false;
  const feed = new AbortController();
  state.feed = feed;
  refresh("runs", "sites", "run");
  try {
    // The latest events for the list, then every new one as it comes.
    const newest = await lastEventId();
    const last = await catchUp(Math.max(0, newest - EVENTS_SHOWN), showEvent);
    follow(last, {
      onEvent,
      onState: liveState,
      onUnauthorized: () => signOut("The server no longer accepts this token."),
      signal: feed.signal,
    });
  } catch (error) {
    failed(error);
  }
}

function signOut(message = "") {
  state.feed?.abort();
  Object.assign(state, { role: null, run: null, feed: null });
  state.details.clear();
  token.clear();
  Object.values(charts).forEach((c) => c.destroy());
  $("events").replaceChildren();
  $("run-detail").hidden = true;
  $("run-none").hidden = false;
  $("main").hidden = true;
  $("role").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  liveState("off", "signed out");
  problem("");
  $("token").focus();
}

$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  signIn(value);
});
$("sign-out").addEventListener("click", () => signOut());
$("stop").addEventListener("click", async () => {
  const run = state.run;
  if (!run || !confirm(`Stop run ${run.name} (${run.id})? It ends before its next round.`)) return;
  try {
    await api(`/api/v1/runs/${enc(run.id)}/stop`, { method: "POST" });
    state.stopping.add(run.id);
    renderStop();
    refresh("runs", "run");
  } catch (error) {
    problem(`Stop failed: ${error.message || error}`);
  }
});
// Participation and site states change without an event (a fit arrives, a heartbeat): while
// the selected run is active, look again now and then.
setInterval(() => {
  if (state.role && state.run && ACTIVE.has(state.run.status)) refresh("run", "sites");
}, 10000);

const saved = token.get();
if (saved) signIn(saved);
else signOut();
