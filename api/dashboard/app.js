// The dashboard: reads the same API as every client, with a key, and redraws every few seconds.
// No library and no asset from the internet: charts are plain SVG.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const state = { org: "", key: "", timer: null };

function params() {
  const out = new URLSearchParams(location.hash.slice(1));
  return { org: out.get("org") || localStorage.getItem("aia.org") || "", key: out.get("key") || localStorage.getItem("aia.key") || "" };
}

// Days are the org's local days: the API answers in the org's time zone, and says what day it is there.
function isoDay(d) { return d.toISOString().slice(0, 10); }
function daysBefore(today, n) { const d = new Date(`${today}T00:00:00Z`); d.setUTCDate(d.getUTCDate() - n); return isoDay(d); }

async function api(path, query) {
  const qs = new URLSearchParams(query || {}).toString();
  const url = `/api/ai-analytics/orgs/${encodeURIComponent(state.org)}/users/dashboard/${path}/` + (qs ? `?${qs}` : "");
  const res = await fetch(url, { headers: { Authorization: `Api-Token ${state.key}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { const err = new Error(body.detail || res.statusText); err.status = res.status; throw err; }
  return body;
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Bars (one value or stacked parts per label) with an optional line on a second scale.
function barChart(svg, labels, series, opts) {
  const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height, pad = { l: 44, r: 40, t: 10, b: 24 };
  svg.replaceChildren();
  const totals = labels.map((_, i) => series.reduce((s, ser) => s + ser.values[i], 0));
  const max = Math.max(1, ...totals);
  const bw = (W - pad.l - pad.r) / Math.max(1, labels.length);
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  for (const t of [0, max / 2, max]) {
    svg.append(el("text", { x: pad.l - 6, y: y(t) + 4, "text-anchor": "end" }, opts.fmt ? opts.fmt(t) : Math.round(t)));
  }
  labels.forEach((label, i) => {
    let base = 0;
    for (const ser of series) {
      const v = ser.values[i];
      if (v > 0) svg.append(el("rect", { x: pad.l + i * bw + 2, y: y(base + v), width: Math.max(1, bw - 4), height: y(base) - y(base + v), class: ser.cls }));
      base += v;
    }
    if (bw >= 40 || i % Math.ceil(40 / bw) === 0) svg.append(el("text", { x: pad.l + i * bw + bw / 2, y: H - 8, "text-anchor": "middle" }, label.slice(5)));
  });
  if (opts.line) {
    const lmax = Math.max(1, ...opts.line);
    const ly = (v) => H - pad.b - (v / lmax) * (H - pad.t - pad.b);
    svg.append(el("polyline", { class: "line", points: opts.line.map((v, i) => `${pad.l + i * bw + bw / 2},${ly(v)}`).join(" ") }));
    svg.append(el("text", { x: W - pad.r + 4, y: ly(lmax) + 4 }, `${lmax.toFixed(1)}`));
  }
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
    return tr;
  }));
}

async function refresh() {
  const err = document.getElementById("error");
  try {
    const fresh = await api("freshness");
    const today = fresh.today;
    const [sessions, sentiment, top] = await Promise.all([
      api("average-messages-per-session", { start_date: daysBefore(today, 13), end_date: today }),
      api("sentiment-count", { period: "7d" }),
      api("top-students-by-chat-messages", { start_date: daysBefore(today, 29), end_date: today }),
    ]);
    barChart(document.getElementById("sessions-chart"), sessions.map((r) => r.time),
      [{ cls: "bar", values: sessions.map((r) => r.total_sessions) }], { line: sessions.map((r) => r.avg_messages_exact) });
    barChart(document.getElementById("sentiment-chart"), sentiment.map((r) => r.date),
      ["positive", "neutral", "negative"].map((s) => ({ cls: s, values: sentiment.map((r) => r[s]) })), {});
    const days = [...Array(14).keys()].reverse().map((n) => daysBefore(today, n));
    const costs = await Promise.all(days.map((d) => api("tenant-cost", { start_date: d, end_date: d })));
    barChart(document.getElementById("cost-chart"), days, [{ cls: "bar", values: costs.map((c) => c.total_cost) }],
      { fmt: (v) => `$${v.toFixed(2)}` });
    const total = costs.reduce((s, c) => s + c.cost_nanos, 0) / 1e9;
    document.getElementById("cost-total").textContent = `$${total.toFixed(4)}`;
    fillTable("top", top.map((r, i) => [i + 1, r.username, r.chat_message_count]));
    const span = { start_date: days[0], end_date: today };
    const [byModel, byMentor, byUser] = await Promise.all([
      api("costs/model", span), api("costs/permentor", span), api("costs/users", span),
    ]);
    const usd = (v) => `$${v.toFixed(4)}`;
    fillTable("cost-models", byModel.models.map((m) => [m.model, usd(m.total_cost)]));
    fillTable("cost-mentors", byMentor.mentor_data.map((m) => [m.mentor_name, m.mentor_sessions.length, usd(m.total_cost)]));
    fillTable("cost-users", byUser.map((u, i) => [i + 1, u.username, usd(u.total_cost)]));
    try {
      const convs = await api("chat-history", { page_size: 10 });
      fillTable("convs", convs.results.map((c) => [(c.inserted_at || "").replace("T", " ").slice(0, 19), c.student, c.mentor_name || c.mentor, c.message_count, c.sentiment || "–"]));
    } catch (e) {
      fillTable("convs", [[e.status === 403 ? "needs a platform_admin key" : e.message, "", "", "", ""]]);
    }
    const last = fresh.last_event_at ? new Date(fresh.last_event_at) : null;
    const age = last ? Math.max(0, Math.round((Date.now() - last.getTime()) / 1000)) : null;
    document.getElementById("freshness").textContent = last
      ? `newest event applied: ${last.toISOString().replace("T", " ").slice(0, 19)} UTC (${age}s ago) · days in ${fresh.time_zone} · refreshed ${new Date().toLocaleTimeString()}`
      : `no events applied yet · days in ${fresh.time_zone}`;
    document.body.dataset.loaded = "true";
    err.hidden = true;
  } catch (e) {
    err.textContent = `Could not load ${state.org}: ${e.message}`;
    err.hidden = false;
  }
}

function start(org, key) {
  state.org = org; state.key = key;
  localStorage.setItem("aia.org", org); localStorage.setItem("aia.key", key);
  clearInterval(state.timer);
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

document.getElementById("connect").addEventListener("submit", (ev) => {
  ev.preventDefault();
  start(document.getElementById("org").value.trim(), document.getElementById("key").value.trim());
});

const initial = params();
document.getElementById("org").value = initial.org;
document.getElementById("key").value = initial.key;
if (initial.org && initial.key) start(initial.org, initial.key);
