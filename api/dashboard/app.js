// The dashboard: reads the same API as every client, with a key, and redraws every few seconds.
// Charts are Apache ECharts (vendor/, served with the page): exact values on hover, legends that toggle
// series, the heatmap. Nothing is loaded from outside the service.
// After each panel draws, its element carries data-state="ok", data-points (rows drawn) and data-sum (of
// its main series), so tests and people can check a panel against the API's answer to the same query.
"use strict";

const REFRESH_MS = 5000;
const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
// /api/analytics/time/ counts its weekdays from Sunday (0), as the platform's SDK does.
const DAY_NAMES = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const HOURS = [...Array(24).keys()].map((h) => String(h).padStart(2, "0"));
const COLORS = { accent: "#3763d8", line: "#d4483b", students: "#e08a1e", returning: "#8aa4ea", positive: "#2e9d62", neutral: "#a3a9b8", negative: "#d4483b" };
const state = { org: "", key: "", mentor: "", trace: "", timer: null, round: 0, busy: false, charts: {}, mentors: new Map(), listed: "" };

function params() {
  const out = new URLSearchParams(location.hash.slice(1));
  return {
    org: out.get("org") || localStorage.getItem("aia.org") || "",
    key: out.get("key") || localStorage.getItem("aia.key") || "",
    mentor: out.get("mentor") || "",
  };
}

// Days are the org's local days: the API answers in the org's time zone, and says what day it is there.
function isoDay(d) { return d.toISOString().slice(0, 10); }
function daysBefore(today, n) { const d = new Date(`${today}T00:00:00Z`); d.setUTCDate(d.getUTCDate() - n); return isoDay(d); }

async function fetchJson(url) {
  const res = await fetch(url, { headers: { Authorization: `Api-Token ${state.key}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { const err = new Error(body.detail || res.statusText); err.status = res.status; throw err; }
  return body;
}

async function api(path, query) {
  const qs = new URLSearchParams(query || {}).toString();
  return fetchJson(`/api/ai-analytics/orgs/${encodeURIComponent(state.org)}/users/dashboard/${path}/` + (qs ? `?${qs}` : ""));
}

// The newer family names the org by platform_key (the dashboard's key may read several orgs).
async function platformApi(path, query) {
  return fetchJson(`/api/analytics/${path}/?${new URLSearchParams({ platform_key: state.org, ...query })}`);
}

// Names come from events (any characters): escaped wherever a tooltip builds HTML.
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }
const int = (n) => Number(n).toLocaleString("en-US");
// Costs as served (nano-dollars as a float): every digit down to the nano-dollar, at least cents.
function usd(v) {
  const [whole, frac] = Number(v).toFixed(9).split(".");
  return `$${whole}.${frac.replace(/0+$/, "").padEnd(2, "0")}`;
}
// Mentor ids are often UUIDs that differ at the end: a long name keeps both ends (the tooltip has it whole).
const short = (s) => (s.length > 22 ? `${s.slice(0, 9)}…${s.slice(-9)}` : s);
const sum = (xs) => xs.reduce((s, x) => s + x, 0);
const count = (n, what) => `${int(n)} ${what}${n === 1 ? "" : "s"}`;
const pct = (v) => `${Number(v).toFixed(2)}%`;

function chart(id) {
  if (!state.charts[id]) state.charts[id] = echarts.init(document.getElementById(id), null, { renderer: "svg" });
  return state.charts[id];
}

// Options every chart shares: no animation (a redraw every 5 s), tooltips kept inside the chart.
function draw(id, option) {
  chart(id).setOption({ animation: false, textStyle: { fontFamily: "system-ui, sans-serif" }, ...option,
    tooltip: { confine: true, ...option.tooltip } }, true);
}

function drawn(id, points, total, extra) {
  const node = document.getElementById(id);
  Object.assign(node.dataset, { state: "ok", points: String(points), sum: String(total), ...extra });
  node.removeAttribute("data-error");
}

function failed(id, e) {
  const node = document.getElementById(id);
  node.dataset.state = "error";
  node.dataset.error = e.message;
  if (state.charts[id]) draw(id, { title: { text: `could not load: ${e.message}`, left: "center", top: "middle", textStyle: { fontSize: 13, color: COLORS.negative } } });
}

const nothing = (text) => ({ title: { text, left: "center", top: "middle", textStyle: { fontSize: 13, color: "#6b7385", fontWeight: "normal" } } });

function fillTable(id, rows) {
  const table = document.getElementById(id);
  table.querySelector("tbody").replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (table.querySelectorAll("th")[i]?.classList.contains("num")) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
  table.dataset.rows = String(rows.length);
}

// --- panels: each reads its own queries and draws; one failing leaves the others drawn ------------------

// A day without sessions has no average: the line has a gap there, and the tooltip says "no sessions".
async function sessionsPanel(c) {
  const rows = await api("average-messages-per-session", { start_date: daysBefore(c.today, 13), end_date: c.today, ...c.mentor });
  if (c.stale()) return;
  const empty = rows.filter((r) => r.total_sessions === 0).length;
  draw("sessions-chart", {
    legend: { top: 0 },
    grid: { left: 50, right: 60, top: 40, bottom: 30 },
    tooltip: {
      trigger: "axis",
      formatter: (ps) => {
        const r = rows[ps[0].dataIndex];
        if (r.total_sessions === 0) return `<b>${esc(r.time)}</b><br>no sessions (no average)`;
        return `<b>${esc(r.time)}</b><br>sessions: ${int(r.total_sessions)}<br>messages in them: ${int(r.total_messages)}` +
          `<br>average messages per session: ${r.avg_messages_exact.toFixed(4)} (served rounded: ${r.avg_messages})`;
      },
    },
    xAxis: { type: "category", data: rows.map((r) => r.time), axisLabel: { formatter: (d) => d.slice(5) } },
    yAxis: [{ type: "value", name: "sessions", minInterval: 1 }, { type: "value", name: "messages / session", splitLine: { show: false } }],
    series: [
      { name: "sessions", type: "bar", data: rows.map((r) => r.total_sessions), itemStyle: { color: COLORS.accent } },
      { name: "average messages per session", type: "line", yAxisIndex: 1, connectNulls: false, showSymbol: true,
        data: rows.map((r) => (r.total_sessions ? r.avg_messages_exact : null)), itemStyle: { color: COLORS.line } },
    ],
  });
  document.getElementById("sessions-note").textContent = empty
    ? `${empty} of ${rows.length} days without sessions: no average is drawn for them.` : "";
  drawn("sessions-chart", rows.length, sum(rows.map((r) => r.total_sessions)), { empty: String(empty) });
}

async function activityPanel(c) {
  const span = { start_date: daysBefore(c.today, 29), end_date: c.today, aggregation: "daily", ...c.mentor };
  const [convs, users] = await Promise.all([api("conversation", span), api("total-users-by-mentor", span)]);
  if (c.stale()) return;
  const students = new Map(users.map((u) => [u.period, u.user_count]));
  draw("activity-chart", {
    legend: { top: 0 },
    grid: { left: 50, right: 30, top: 40, bottom: 30 },
    tooltip: { trigger: "axis" },
    xAxis: { type: "category", data: convs.map((r) => r.date), axisLabel: { formatter: (d) => d.slice(5) } },
    yAxis: { type: "value", minInterval: 1 },
    series: [
      { name: "conversations started", type: "bar", data: convs.map((r) => r.conversation_count), itemStyle: { color: COLORS.accent } },
      { name: "distinct students", type: "line", showSymbol: true, data: convs.map((r) => students.get(r.date) ?? null), itemStyle: { color: COLORS.students } },
    ],
  });
  drawn("activity-chart", convs.length, sum(convs.map((r) => r.conversation_count)),
    { studentsPoints: String(users.length), studentsSum: String(sum(users.map((u) => u.user_count))) });
}

// An hour's label is the org's local time (`2026-05-04T13:00:00+02:00`, or `...Z` in UTC): its date gives
// the weekday and its hour the column, so the heatmap is in the org's hours.
function weekdayHour(label) {
  const weekday = (new Date(`${label.slice(0, 10)}T00:00:00Z`).getUTCDay() + 6) % 7;
  return [weekday, Number(label.slice(11, 13))];
}

async function heatmapPanel(c) {
  const rows = await api("conversation", { start_date: daysBefore(c.today, 27), end_date: c.today, aggregation: "hourly", ...c.mentor });
  if (c.stale()) return;
  const cells = WEEKDAYS.map(() => HOURS.map(() => 0));
  for (const r of rows) { const [d, h] = weekdayHour(r.date); cells[d][h] += r.conversation_count; }
  const data = cells.flatMap((hours, d) => hours.map((n, h) => [h, d, n]));
  const max = Math.max(1, ...data.map((x) => x[2]));
  draw("heatmap-chart", {
    grid: { left: 50, right: 20, top: 10, bottom: 70 },
    tooltip: { formatter: (p) => `<b>${WEEKDAYS[p.value[1]]} ${HOURS[p.value[0]]}:00–${HOURS[(p.value[0] + 1) % 24]}:00</b><br>` +
      `${int(p.value[2])} conversations started (4 weeks)` },
    xAxis: { type: "category", data: HOURS, splitArea: { show: true } },
    yAxis: { type: "category", data: WEEKDAYS, inverse: true, splitArea: { show: true } },
    visualMap: { min: 0, max, calculable: true, orient: "horizontal", left: "center", bottom: 0, inRange: { color: ["#f2f5fd", COLORS.accent] } },
    series: [{ name: "conversations started", type: "heatmap", data, label: { show: false }, emphasis: { itemStyle: { borderColor: "#1d2433", borderWidth: 1 } } }],
  });
  drawn("heatmap-chart", rows.length, sum(rows.map((r) => r.conversation_count)), { cells: String(data.length) });
}

// The busiest weekday and hour by chat messages (both roles) over the heatmap's 4 weeks, in the org's hours:
// the one cell /api/analytics/time/ answers. Nobody wrote: no busiest hour, rather than "Sunday 00:00".
async function busiestPanel(c) {
  const cell = await platformApi("time", { date_filter: "custom", start_date: daysBefore(c.today, 27), end_date: c.today, ...c.mentorUnique });
  if (c.stale()) return;
  document.getElementById("busiest").textContent = cell.value
    ? `busiest hour: ${DAY_NAMES[cell.day_of_week]} ${HOURS[cell.hour]}:00, ${count(cell.value, "message")}`
    : "no messages in these 4 weeks: no busiest hour";
  drawn("busiest", cell.value ? 1 : 0, cell.value, { day: String(cell.day_of_week), hour: String(cell.hour) });
}

async function sentimentPanel(c) {
  const rows = await api("sentiment-count", { period: "7d" });
  if (c.stale()) return;
  draw("sentiment-chart", {
    legend: { top: 0 },
    grid: { left: 45, right: 15, top: 40, bottom: 30 },
    tooltip: { trigger: "axis" },
    xAxis: { type: "category", data: rows.map((r) => r.date), axisLabel: { formatter: (d) => d.slice(5) } },
    yAxis: { type: "value", minInterval: 1 },
    series: ["positive", "neutral", "negative"].map((s) => ({ name: s, type: "bar", stack: "sentiment", data: rows.map((r) => r[s]), itemStyle: { color: COLORS[s] } })),
  });
  drawn("sentiment-chart", rows.length, sum(rows.map((r) => r.sentiment_count)));
}

// Each label's share of the same 7 days' judgements, as user-sentiment/ answers them (adding up to 100).
async function sentimentSharePanel(c) {
  const shares = await api("user-sentiment", { start_date: daysBefore(c.today, 6), end_date: c.today });
  if (c.stale()) return;
  const labels = ["positive", "neutral", "negative"];
  draw("sentiment-share-chart", shares.total_sentiments ? {
    legend: { orient: "vertical", left: 0, top: "middle" },
    tooltip: { trigger: "item", formatter: (p) => `<b>${p.name}</b><br>${count(p.value, "judgement")} (${pct(p.data.share)})` },
    series: [{ name: "sentiment", type: "pie", radius: ["35%", "70%"], center: ["60%", "50%"],
      label: { formatter: (p) => `${pct(p.data.share)}` },
      data: labels.map((s) => ({ name: s, value: shares.sentiment_counts[s], share: shares.sentiment_distribution[s], itemStyle: { color: COLORS[s] },
        label: { show: shares.sentiment_counts[s] > 0 } })) }],
  } : nothing("no sentiment in these 7 days"));
  drawn("sentiment-share-chart", shares.total_sentiments ? labels.length : 0, shares.total_sentiments,
    Object.fromEntries(labels.map((s) => [s, String(shares.sentiment_distribution[s])])));
}

// Conversations whose newest record holds a rating (a thumbs down too), by the record's day: a count, so a
// day without one is a zero. Their mean rating is a second line on its own axis; a day without a rating
// has no mean (/api/analytics/ratings/ leaves it out): a gap, "no rating" on hover, never a mean of 0.
async function ratingsPanel(c) {
  const span = { start_date: daysBefore(c.today, 13), end_date: c.today };
  const [rows, means] = await Promise.all([api("rating-summary", span), platformApi("ratings", { date_filter: "custom", ...span })]);
  if (c.stale()) return;
  const mean = new Map(means.points.map((p) => [p.date.slice(0, 10), p.value]));
  const line = rows.map((r) => mean.get(r.time) ?? null);
  const gaps = line.filter((v) => v === null).length;
  draw("ratings-chart", {
    legend: { top: 0 },
    grid: { left: 45, right: 60, top: 40, bottom: 30 },
    tooltip: {
      trigger: "axis",
      formatter: (ps) => {
        const i = ps[0].dataIndex, r = rows[i];
        return `<b>${esc(r.time)}</b><br>rated conversations: ${int(r.total_ratings)}<br>` +
          (line[i] === null ? "no rating (no mean)" : `mean rating: ${line[i].toFixed(4)}`);
      },
    },
    xAxis: { type: "category", data: rows.map((r) => r.time), axisLabel: { formatter: (d) => d.slice(5) } },
    yAxis: [{ type: "value", name: "rated", minInterval: 1 }, { type: "value", name: "mean rating", splitLine: { show: false } }],
    series: [
      { name: "rated conversations", type: "bar", data: rows.map((r) => r.total_ratings), itemStyle: { color: COLORS.accent } },
      { name: "mean rating", type: "line", yAxisIndex: 1, connectNulls: false, showSymbol: true, data: line, itemStyle: { color: COLORS.line } },
    ],
  });
  document.getElementById("ratings-note").textContent = gaps
    ? `${gaps} of ${rows.length} days without a rating: no mean is drawn for them.` : "";
  drawn("ratings-chart", rows.length, sum(rows.map((r) => r.total_ratings)),
    { meanPoints: String(line.length - gaps), meanGaps: String(gaps), meanSum: String(sum(line.filter((v) => v !== null))) });
}

// Students who wrote in the last 30 days (to the mentor chosen): new (their first message ever is in these
// days) and returning, with the API's counts and percentages.
async function newUsersPanel(c) {
  const split = await api("user-metrics-pie-chart", { start_date: daysBefore(c.today, 29), end_date: c.today, ...c.mentor });
  if (c.stale()) return;
  const slices = [["new", split.new_users, COLORS.students], ["returning", split.returning_users, COLORS.returning]];
  const total = split.new_users.count + split.returning_users.count;
  draw("new-users-chart", total ? {
    legend: { orient: "vertical", left: 0, top: "middle" },
    tooltip: { trigger: "item", formatter: (p) => `<b>${p.name} students</b><br>${count(p.value, "student")} (${pct(p.data.percentage)})` },
    series: [{ name: "students", type: "pie", radius: ["35%", "70%"], center: ["60%", "50%"],
      label: { formatter: (p) => `${p.name}: ${int(p.value)} (${pct(p.data.percentage)})` },
      data: slices.map(([name, x, color]) => ({ name, value: x.count, percentage: x.percentage, itemStyle: { color }, label: { show: x.count > 0 } })) }],
  } : nothing("no student wrote in these 30 days"));
  drawn("new-users-chart", total ? slices.length : 0, total, {
    new: String(split.new_users.count), returning: String(split.returning_users.count),
    newPercentage: String(split.new_users.percentage), returningPercentage: String(split.returning_users.percentage) });
}

// The 10 topics with most conversations in the last 30 days (to the mentor chosen), most at the top.
async function topicsPanel(c) {
  const rows = await api("most-discussed-topics", { start_date: daysBefore(c.today, 29), end_date: c.today, ...c.mentor });
  if (c.stale()) return;
  const shown = rows.slice(0, 10);
  const bars = [...shown].reverse();
  draw("topics-chart", shown.length ? {
    grid: { left: 24, right: 30, top: 10, bottom: 30, containLabel: true },
    tooltip: {
      trigger: "axis", axisPointer: { type: "shadow" },
      formatter: (ps) => { const t = bars[ps[0].dataIndex]; return `<b>${esc(t.topic_name)}</b><br>${count(t.conversation_count, "conversation")}`; },
    },
    xAxis: { type: "value", minInterval: 1 },
    yAxis: { type: "category", data: bars.map((t) => t.topic_name), axisLabel: { formatter: short } },
    series: [{ name: "conversations", type: "bar", data: bars.map((t) => t.conversation_count), itemStyle: { color: COLORS.accent } }],
  } : nothing("no topics in these 30 days"));
  document.getElementById("topics-note").textContent = rows.length > shown.length ? `the first ${shown.length} of ${count(rows.length, "topic")}` : "";
  drawn("topics-chart", shown.length, sum(shown.map((t) => t.conversation_count)), { topics: String(rows.length), top: shown[0]?.topic_name ?? "" });
}

async function costPanel(c) {
  const days = [...Array(14).keys()].reverse().map((n) => daysBefore(c.today, n));
  const costs = await Promise.all(days.map((d) => api("tenant-cost", { start_date: d, end_date: d })));
  if (c.stale()) return;
  const nanos = sum(costs.map((x) => x.cost_nanos));
  draw("cost-chart", {
    grid: { left: 70, right: 15, top: 15, bottom: 30 },
    tooltip: {
      trigger: "axis",
      formatter: (ps) => {
        const i = ps[0].dataIndex, x = costs[i];
        return `<b>${esc(days[i])}</b><br>cost: ${usd(x.cost_nanos / 1e9)}<br>tokens: ${int(x.input_tokens)} in, ${int(x.output_tokens)} out` +
          `<br>LLM calls: ${int(x.observations)}${x.unpriced_observations ? ` (${int(x.unpriced_observations)} unpriced)` : ""}`;
      },
    },
    xAxis: { type: "category", data: days, axisLabel: { formatter: (d) => d.slice(5) } },
    yAxis: { type: "value", axisLabel: { formatter: (v) => `$${v}` } },
    series: [{ name: "cost", type: "bar", data: costs.map((x) => x.cost_nanos / 1e9), itemStyle: { color: COLORS.accent } }],
  });
  document.getElementById("cost-total").textContent = usd(nanos / 1e9);
  drawn("cost-chart", days.length, nanos);
}

async function costBreakdownPanels(c) {
  const span = { start_date: daysBefore(c.today, 13), end_date: c.today };
  const [byModel, byMentor, byUser] = await Promise.all([api("costs/model", span), api("costs/permentor", span), api("costs/users", span)]);
  if (c.stale()) return;
  for (const m of byMentor.mentor_data) state.mentors.set(m.mentor_unique_id, m.mentor_name);
  c.mentorCosts = byMentor.mentor_data;

  const models = byModel.models;
  document.getElementById("cost-models-note").textContent = models.length ? `costliest: ${byModel.model} (${usd(byModel.total_cost)})` : "";
  draw("cost-models-chart", models.length ? {
    legend: { type: "scroll", orient: "vertical", left: 0, top: "middle" },
    tooltip: { trigger: "item", formatter: (p) => `<b>${esc(p.name)}</b><br>${usd(p.value)} (${p.percent}%)` },
    series: [{ name: "cost by model", type: "pie", radius: ["35%", "70%"], center: ["65%", "50%"], label: { show: false },
      data: models.map((m) => ({ name: m.model, value: m.total_cost })) }],
  } : nothing("no LLM cost in these 14 days"));
  drawn("cost-models-chart", models.length, sum(models.map((m) => m.total_cost)), { top: byModel.model });

  // Most costly at the top; the chart grows with the number of mentors, so every one is named.
  const mentors = [...byMentor.mentor_data].reverse();
  const node = document.getElementById("cost-mentors-chart");
  const height = `${Math.max(240, 60 + 22 * mentors.length)}px`;
  if (node.style.height !== height) { node.style.height = height; chart("cost-mentors-chart").resize(); }
  draw("cost-mentors-chart", mentors.length ? {
    grid: { left: 24, right: 30, top: 10, bottom: 30, containLabel: true },
    tooltip: {
      trigger: "axis", axisPointer: { type: "shadow" },
      formatter: (ps) => { const m = mentors[ps[0].dataIndex]; return `<b>${esc(m.mentor_name)}</b><br>${usd(m.total_cost)} over ${count(m.mentor_sessions.length, "session")}`; },
    },
    xAxis: { type: "value", axisLabel: { formatter: (v) => `$${v}` } },
    yAxis: { type: "category", data: mentors.map((m) => m.mentor_name), axisLabel: { formatter: short } },
    series: [{ name: "cost", type: "bar", data: mentors.map((m) => ({
      value: m.total_cost, itemStyle: { color: m.mentor_unique_id === state.mentor ? COLORS.students : COLORS.accent } })) }],
  } : nothing("no LLM cost in these 14 days"));
  drawn("cost-mentors-chart", mentors.length, sum(mentors.map((m) => m.total_cost)));

  fillTable("cost-users", byUser.map((u, i) => [i + 1, u.username, usd(u.total_cost)]));
}

async function topPanel(c) {
  const top = await api("top-students-by-chat-messages", { start_date: daysBefore(c.today, 29), end_date: c.today, ...c.mentor });
  if (c.stale()) return;
  fillTable("top", top.map((r, i) => [i + 1, r.username, int(r.chat_message_count)]));
}

async function conversationsPanel(c) {
  try {
    const convs = await api("chat-history", { page_size: 10 });
    if (c.stale()) return;
    for (const x of convs.results) state.mentors.set(x.mentor, x.mentor_name || x.mentor);
    fillTable("convs", convs.results.map((x) => [(x.inserted_at || "").replace("T", " ").slice(0, 19), x.student, x.mentor_name || x.mentor,
      int(x.message_count), x.sentiment || "–"]));
  } catch (e) {
    if (e.status !== 403) throw e;
    fillTable("convs", [["needs a platform_admin key", "", "", "", ""]]);
  }
}

// The latest traces; the chosen one's (else the newest's) observations, found by a search for its id.
async function tracesPanel(c) {
  const traces = (await api("traces", { limit: 8 })).results;
  if (c.stale()) return;
  if (!traces.some((t) => t.id === state.trace)) state.trace = traces.length ? traces[0].id : "";
  fillTable("traces", traces.map((t) => [t.timestamp.replace("T", " ").slice(0, 19), t.id, t.user_id || "–", t.session_id || "–"]));
  document.querySelectorAll("#traces tbody tr").forEach((tr, i) => {
    tr.classList.toggle("selected", traces[i].id === state.trace);
    tr.onclick = () => { state.trace = traces[i].id; refresh(); };
  });
  const note = document.getElementById("trace-note");
  if (!state.trace) { note.textContent = "no LLM call in the last 7 days"; fillTable("trace-calls", []); return; }
  const found = await api("observations", { search: state.trace, limit: 100, ordering: "start_time" });
  if (c.stale()) return;
  const calls = found.results.filter((o) => o.trace_id === state.trace);
  const nanos = calls.reduce((n, o) => n + (o.total_cost ? Math.round(Number(o.total_cost) * 1e9) : 0), 0);
  note.textContent = `trace ${state.trace}: ${count(calls.length, "LLM call")}, ${usd(nanos / 1e9)}`;
  note.dataset.trace = state.trace;
  fillTable("trace-calls", calls.map((o) => {
    const usage = JSON.parse(o.usage_details);
    return [o.start_time.replace("T", " ").slice(0, 19), o.type, o.provided_model_name || "–", int(usage.input), int(usage.output),
      o.total_cost === null ? "unpriced" : `$${o.total_cost}`];
  }));
}

const PANELS = [sessionsPanel, activityPanel, heatmapPanel, busiestPanel, ratingsPanel, newUsersPanel, topicsPanel, sentimentPanel,
  sentimentSharePanel, costPanel, costBreakdownPanels, topPanel, tracesPanel, conversationsPanel];
const PANEL_IDS = { sessionsPanel: "sessions-chart", activityPanel: "activity-chart", heatmapPanel: "heatmap-chart", busiestPanel: "busiest",
  ratingsPanel: "ratings-chart", newUsersPanel: "new-users-chart", topicsPanel: "topics-chart", sentimentPanel: "sentiment-chart",
  sentimentSharePanel: "sentiment-share-chart", costPanel: "cost-chart", costBreakdownPanels: "cost-models-chart", topPanel: "top", tracesPanel: "traces", conversationsPanel: "convs" };

// The mentor's view: the selector lists the mentors the cost and chat-history answers name; choosing one
// adds mentor_id (mentor_unique_id in /api/analytics/) to the queries that take it (sessions, conversations,
// students, heatmap and busiest hour, new and returning students, topics, top students).
function showMentors(c) {
  const select = document.getElementById("mentor");
  if (state.mentor && !state.mentors.has(state.mentor)) state.mentors.set(state.mentor, state.mentor);
  const names = [...state.mentors.entries()].sort((a, b) => a[1].localeCompare(b[1]));
  const listed = JSON.stringify(names);
  if (state.listed !== listed) {
    select.replaceChildren(new Option("all mentors", ""), ...names.map(([id, name]) => new Option(name, id)));
    state.listed = listed;
  }
  select.value = state.mentor;
  select.dataset.selected = state.mentor;
  const name = state.mentors.get(state.mentor);
  for (const s of document.querySelectorAll(".scope")) s.textContent = state.mentor ? `mentor ${name}` : "all mentors";
  const cost = (c.mentorCosts || []).find((m) => m.mentor_unique_id === state.mentor);
  document.getElementById("mentor-note").textContent = !state.mentor ? "" : cost
    ? `mentor ${name}: ${usd(cost.total_cost)} of LLM cost over ${count(cost.mentor_sessions.length, "session")} in the last 14 days`
    : `mentor ${name}: no LLM cost in the last 14 days`;
}

async function refresh() {
  const round = ++state.round;
  const err = document.getElementById("error");
  state.busy = true;
  try {
    const fresh = await api("freshness");
    if (round !== state.round) return;
    const c = { today: fresh.today, mentor: state.mentor ? { mentor_id: state.mentor } : {},
      mentorUnique: state.mentor ? { mentor_unique_id: state.mentor } : {}, stale: () => round !== state.round };
    const results = await Promise.allSettled(PANELS.map((panel) => panel(c)));
    if (c.stale()) return;
    const failures = [];
    results.forEach((r, i) => {
      if (r.status === "rejected") { failed(PANEL_IDS[PANELS[i].name], r.reason); failures.push(`${PANELS[i].name}: ${r.reason.message}`); }
    });
    showMentors(c);
    const last = fresh.last_event_at ? new Date(fresh.last_event_at) : null;
    const age = last ? Math.max(0, Math.round((Date.now() - last.getTime()) / 1000)) : null;
    document.getElementById("freshness").textContent = last
      ? `newest event applied: ${last.toISOString().replace("T", " ").slice(0, 19)} UTC (${age}s ago) · days in ${fresh.time_zone} · refreshed ${new Date().toLocaleTimeString()}`
      : `no events applied yet · days in ${fresh.time_zone}`;
    if (failures.length) throw new Error(failures.join("; "));
    document.body.dataset.loaded = "true";
    err.hidden = true;
  } catch (e) {
    err.textContent = `Could not load ${state.org}: ${e.message}`;
    err.hidden = false;
  } finally {
    if (round === state.round) state.busy = false;
  }
}

function start(org, key) {
  state.org = org; state.key = key;
  localStorage.setItem("aia.org", org); localStorage.setItem("aia.key", key);
  clearInterval(state.timer);
  refresh();
  state.timer = setInterval(() => { if (!state.busy) refresh(); }, REFRESH_MS);
}

document.getElementById("connect").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.mentors.clear();
  start(document.getElementById("org").value.trim(), document.getElementById("key").value.trim());
});

document.getElementById("mentor").addEventListener("change", (ev) => {
  state.mentor = ev.target.value;
  const hash = new URLSearchParams(location.hash.slice(1));
  if (state.mentor) hash.set("mentor", state.mentor); else hash.delete("mentor");
  history.replaceState(null, "", `#${hash}`);
  if (state.org && state.key) refresh();
});

window.addEventListener("resize", () => { for (const c of Object.values(state.charts)) c.resize(); });

const initial = params();
document.getElementById("org").value = initial.org;
document.getElementById("key").value = initial.key;
state.mentor = initial.mentor;
if (initial.org && initial.key) start(initial.org, initial.key);
