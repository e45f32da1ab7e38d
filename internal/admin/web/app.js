// Moat dashboard. Talks only to the admin API of the origin it was loaded
// from, either with a token kept in sessionStorage and sent as a bearer
// header, or, over HTTPS, with the admin client certificate the browser
// presents (URI SAN urn:moat:admin:viewer|operator). Every change is sent
// as fetch from this origin, with a JSON body for POST, which the API
// requires of certificate-authenticated changes (CSRF). Data is always
// inserted as text, never as HTML.
"use strict";

const KEY = "moat-admin-token";
const $ = (id) => document.getElementById(id);
let timer = null;
let samples = []; // overview samples for the charts
let postureSamples = []; // posture samples: authentication failures and detections
const SAMPLES = 90;
let byCert = false; // logged in by the browser's client certificate

function token() { return sessionStorage.getItem(KEY) || ""; }

async function api(method, path, body) {
  // With a token, the request carries no ambient credential at all; with
  // a certificate, the browser presents it to this origin only.
  const opts = byCert && !token()
    ? { method, headers: {}, cache: "no-store", credentials: "same-origin" }
    : { method, headers: { "Authorization": "Bearer " + token() }, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401) {
    logout(byCert && !token() ? "The client certificate was refused (" + ((data && data.error) || "unauthorized") + ")."
      : "The token was refused (unknown or revoked).");
    throw new Error("unauthorized");
  }
  if (!r.ok) {
    throw new Error((data && data.error) || ("HTTP " + r.status));
  }
  return data;
}

function status(msg, isError) {
  const s = $("status");
  s.textContent = msg || "";
  s.className = isError ? "error" : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(id, rows, render) {
  const body = $(id);
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    body.appendChild(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none");
    td.colSpan = body.parentElement.querySelectorAll("th").length;
    body.appendChild(tr);
  }
}

function when(t) {
  if (!t || t.startsWith("0001-")) return "";
  return new Date(t).toISOString().replace(".000Z", "Z");
}

function soon(t) {
  return t && (new Date(t) - Date.now()) < 30 * 24 * 3600 * 1000 ? "soon" : "";
}

function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", onclick);
  return b;
}

// Pages

const pages = {
  async overview() {
    const o = await api("GET", "/api/v1/overview");
    $("ov-connections").textContent = o.connections;
    $("ov-sessions").textContent = o.sessions;
    $("ov-subscriptions").textContent = o.subscriptions;
    $("ov-retained").textContent = o.retained;
    $("ov-dropped").textContent = o.dropped;
    $("ov-refused").textContent = o.connect_refused;
    const last = samples[samples.length - 1];
    samples.push(o);
    if (samples.length > SAMPLES) samples.shift();
    if (last) {
      const dt = Math.max((new Date(o.time) - new Date(last.time)) / 1000, 0.001);
      $("ov-rate-in").textContent = ((o.messages_received - last.messages_received) / dt).toFixed(1);
      $("ov-rate-out").textContent = ((o.messages_sent - last.messages_sent) / dt).toFixed(1);
    }
    drawRates($("chart"), samples, [["messages_received", "--in"], ["messages_sent", "--out"]]);
  },
  async listeners() {
    const d = await api("GET", "/api/v1/listeners");
    fill("listeners-body", d.listeners, (tr, l) => {
      cell(tr, l.name); cell(tr, l.address); cell(tr, l.transport);
      cell(tr, l.tls ? l.client_auth : "no TLS", l.tls ? "" : "bad");
      cell(tr, l.min_version); cell(tr, (l.groups || []).join(", "));
      cell(tr, l.allow_anonymous ? "allowed" : "refused", l.allow_anonymous ? "bad" : "ok");
      cell(tr, l.active_connections);
    });
  },
  async clients() {
    const q = $("client-search").value.trim();
    const d = await api("GET", "/api/v1/clients" + (q ? "?q=" + encodeURIComponent(q) : ""));
    fill("clients-body", d.clients, (tr, c) => {
      tr.dataset.clientId = c.client_id;
      const cert = c.certificate || {};
      cell(tr, c.client_id); cell(tr, c.identity || (c.anonymous ? "(anonymous)" : ""));
      cell(tr, c.listener); cell(tr, c.remote_address); cell(tr, c.protocol_version);
      cell(tr, c.tls_version ? c.tls_version + " " + (c.tls_group || "") : "none", c.tls_version ? "" : "bad");
      cell(tr, cert.subject); cell(tr, cert.serial); cell(tr, when(cert.not_after), soon(cert.not_after));
      cell(tr, when(c.connected_since));
      const td = document.createElement("td");
      td.appendChild(button("Kick", "danger kick", async () => {
        try {
          await api("POST", "/api/v1/clients/" + encodeURIComponent(c.client_id) + "/kick", { reason: "disconnected from the dashboard" });
          status("Client " + c.client_id + " disconnected.");
          await refresh();
        } catch (e) { status(e.message, true); }
      }));
      tr.appendChild(td);
    });
  },
  async subscriptions() {
    const [s, ss] = await Promise.all([api("GET", "/api/v1/subscriptions"), api("GET", "/api/v1/sessions")]);
    fill("subscriptions-body", s.subscriptions, (tr, x) => { cell(tr, x.client_id); cell(tr, x.filter); cell(tr, x.share_group); cell(tr, x.qos); });
    fill("sessions-body", ss.sessions, (tr, x) => {
      cell(tr, x.client_id); cell(tr, x.online ? "yes" : "no"); cell(tr, x.expiry_seconds < 0 ? "never" : x.expiry_seconds);
      cell(tr, x.inflight); cell(tr, x.queued); cell(tr, x.subscriptions);
    });
  },
  async retained() {
    const f = $("retained-filter").value || "#";
    const d = await api("GET", "/api/v1/retained?filter=" + encodeURIComponent(f));
    fill("retained-body", d.retained, (tr, m) => {
      cell(tr, m.topic); cell(tr, m.qos); cell(tr, m.size); cell(tr, m.preview); cell(tr, m.from);
      const td = document.createElement("td");
      td.appendChild(button("Delete", "danger", async () => {
        try {
          await api("DELETE", "/api/v1/retained?topic=" + encodeURIComponent(m.topic));
          status("Retained message on " + m.topic + " deleted.");
          await refresh();
        } catch (e) { status(e.message, true); }
      }));
      tr.appendChild(td);
    });
  },
  async bans() {
    const d = await api("GET", "/api/v1/bans");
    fill("bans-body", d.bans, (tr, b) => {
      tr.dataset.banId = b.id;
      cell(tr, b.id); cell(tr, b.kind); cell(tr, b.value); cell(tr, b.source); cell(tr, b.reason);
      cell(tr, b.expires ? when(b.expires) : "never");
      const td = document.createElement("td");
      td.appendChild(button("Remove", "danger remove-ban", async () => {
        try {
          await api("DELETE", "/api/v1/bans/" + encodeURIComponent(b.id));
          status("Ban " + b.id + " removed.");
          await refresh();
        } catch (e) { status(e.message, true); }
      }));
      tr.appendChild(td);
    });
  },
  async certificates() {
    const render = (tr, c) => { cell(tr, c.serial); cell(tr, c.profile); cell(tr, c.subject); cell(tr, when(c.not_after), soon(c.not_after)); cell(tr, c.status); };
    try {
      const [e, a] = await Promise.all([api("GET", "/api/v1/certificates?expiring=720h"), api("GET", "/api/v1/certificates")]);
      fill("certificates-body", e.certificates, render);
      fill("allcerts-body", a.certificates, render);
    } catch (err) {
      fill("certificates-body", [], render);
      fill("allcerts-body", [], render);
      status(err.message, true);
    }
  },
  async audit() {
    let d;
    try { d = await api("GET", "/api/v1/audit?n=200"); } catch (e) { $("audit-chain").textContent = e.message; $("audit-chain").className = "bad"; return; }
    const c = $("audit-chain");
    c.textContent = d.chain.ok ? "intact (" + d.chain.entries + " entries)" : "NOT VERIFIED: " + (d.chain.problem || "");
    c.className = d.chain.ok ? "ok" : "bad";
    fill("audit-body", d.entries.slice().reverse(), (tr, e) => {
      const rest = Object.assign({}, e);
      for (const k of ["seq", "time", "type", "prev", "hash"]) delete rest[k];
      cell(tr, e.seq); cell(tr, e.time); cell(tr, e.type); cell(tr, JSON.stringify(rest));
    });
  },
  async posture() {
    const p = await api("GET", "/api/v1/posture");
    postureSamples.push({ time: new Date().toISOString(), auth_failures: Math.max(p.auth_failures, 0), detections: Math.max(p.detections, 0) });
    if (postureSamples.length > SAMPLES) postureSamples.shift();
    $("po-profile").textContent = p.profile || "none";
    $("po-fips").textContent = (p.fips_mode || (p.fips ? "on" : "off")) + (p.fips && p.fips_module ? " (module " + p.fips_module + ")" : "");
    $("po-pq").textContent = p.tls_clients ? p.post_quantum_percent.toFixed(0) + " % of " + p.tls_clients : "no TLS clients";
    $("po-pqhs").textContent = p.tls_handshakes ? p.post_quantum_handshakes_percent.toFixed(0) + " % of " + p.tls_handshakes : "no handshakes yet";
    $("po-servercert").textContent = when(p.server_cert_not_after) || "n/a";
    $("po-authfail").textContent = p.auth_failures < 0 ? "n/a" : p.auth_failures;
    $("po-detections").textContent = p.detections < 0 ? "off" : p.detections;
    fill("po-detectors", Object.entries(p.detections_by_detector || {}).sort(), (tr, d) => { cell(tr, d[0]); cell(tr, d[1]); });
    fill("po-ocsp", p.ocsp || [], (tr, o) => {
      cell(tr, o.listener);
      cell(tr, o.mode, o.mode === "off" ? "" : "ok");
      cell(tr, Object.entries(o.responses || {}).map(([k, v]) => k + " " + v).join(", "), (o.responses && o.responses.revoked) ? "bad" : "");
    });
    const staples = [];
    for (const o of p.ocsp || []) for (const s of o.staples || []) staples.push([o.listener, s]);
    fill("po-staples", staples, (tr, [l, s]) => {
      cell(tr, l); cell(tr, s.certificate);
      cell(tr, s.good ? "good" : "none", s.good ? "ok" : "bad");
      cell(tr, when(s.next_update), s.next_update && (new Date(s.next_update) - Date.now()) < 3600 * 1000 ? "soon" : "");
    });
    const rows = [];
    for (const [k, v] of Object.entries(p.tls_versions)) rows.push(["version " + k, v]);
    for (const [k, v] of Object.entries(p.tls_groups)) rows.push(["group " + k, v]);
    rows.push(["plain (no TLS)", p.plain_clients]);
    fill("po-tls", rows, (tr, r) => { cell(tr, r[0]); cell(tr, r[1]); });
    fill("po-crls", p.crls || [], (tr, c) => { cell(tr, c.file); cell(tr, when(c.this_update)); cell(tr, when(c.next_update), soon(c.next_update)); });
    fill("po-near", p.clients_near_expiry, (tr, c) => { cell(tr, c.client_id); cell(tr, c.certificate.subject); cell(tr, when(c.certificate.not_after), "soon"); });
    const notes = $("po-notes");
    notes.replaceChildren();
    for (const n of p.notes || []) { const li = document.createElement("li"); li.textContent = n; notes.appendChild(li); }
    drawRates($("authchart"), postureSamples, [["auth_failures", "--in"], ["detections", "--out"]]);
  },
  async cluster() {
    let c;
    try {
      c = await api("GET", "/api/v1/cluster");
    } catch (e) {
      const off = e.message.includes("not in a cluster");
      $("cl-off").hidden = !off;
      $("cl-on").hidden = off;
      if (!off) throw e;
      return;
    }
    $("cl-off").hidden = true;
    $("cl-on").hidden = false;
    $("cl-name").textContent = c.cluster;
    $("cl-node").textContent = c.node;
    $("cl-up").textContent = c.nodes_up + " of " + c.nodes_expected;
    $("cl-health").textContent = c.healthy ? "healthy" : "degraded";
    $("cl-health").className = "value " + (c.healthy ? "ok" : "bad");
    $("cl-leader").textContent = c.meta_leader || (c.external ? "external NATS" : "none");
    $("cl-fwd").textContent = c.forwarded + " / " + c.received;
    const probs = $("cl-problems");
    probs.replaceChildren();
    for (const p of c.problems || []) { const li = document.createElement("li"); li.className = "bad"; li.textContent = p; probs.appendChild(li); }
    fill("cl-nodes", c.nodes || [], (tr, n) => {
      tr.dataset.node = n.node;
      cell(tr, n.node + (n.self ? " (this node)" : ""));
      cell(tr, n.state, n.state === "up" ? "ok" : "bad");
      const up = n.state === "up";
      cell(tr, up ? n.connections : ""); cell(tr, up ? n.sessions : "");
      cell(tr, up ? n.forwarded : ""); cell(tr, up ? n.received : "");
      cell(tr, n.route || (n.self ? "" : "no route")); cell(tr, n.rtt);
      const skew = n.clock_offset_ms;
      cell(tr, skew === undefined ? "" : (skew >= 0 ? "+" : "") + skew + " ms", skew !== undefined && Math.abs(skew) > 1000 ? "bad" : "");
      cell(tr, n.self ? "" : when(n.last_seen) || "never"); cell(tr, n.version);
    });
    fill("cl-streams", c.streams || [], (tr, s) => {
      tr.dataset.stream = s.name;
      cell(tr, s.name); cell(tr, s.replicas); cell(tr, s.leader || "none", s.leader ? "" : "bad"); cell(tr, s.messages);
      const state = (s.peers || []).map((p) => p.node + ": " + (p.leader ? "leader" : p.offline ? "offline" : p.current ? "current" : "lagging " + (p.lag || 0)));
      const bad = !s.leader || (s.peers || []).some((p) => p.offline || !p.current);
      cell(tr, state.join(", "), bad ? "bad" : "ok");
    });
  },
};

// drawRates plots the per-second change of the named counters of samples
// (objects with a time and the counters).
function drawRates(canvas, samples, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const rates = series.map(([field]) => {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = Math.max((new Date(samples[i].time) - new Date(samples[i - 1].time)) / 1000, 0.001);
      out.push(Math.max(samples[i][field] - samples[i - 1][field], 0) / dt);
    }
    return out;
  });
  const top = Math.max(1, ...rates.flat());
  ctx.strokeStyle = "#dde2e7";
  ctx.fillStyle = "#5b6570";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (h - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText((top * (4 - i) / 4).toFixed(top < 10 ? 1 : 0), 2, y + 4);
  }
  series.forEach(([, color], si) => {
    const r = rates[si];
    ctx.strokeStyle = css.getPropertyValue(color).trim() || "#000";
    ctx.lineWidth = 2;
    ctx.beginPath();
    r.forEach((v, i) => {
      const x = pad + (w - pad) * (i + SAMPLES - 1 - r.length) / (SAMPLES - 1);
      const y = pad / 2 + (h - pad) * (1 - v / top);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

function current() { return (location.hash || "#overview").slice(1); }

async function refresh() {
  const name = current();
  if (!pages[name]) return;
  try {
    await pages[name]();
    if ($("status").className !== "error") status("Updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.message !== "unauthorized") status(e.message, true);
  }
}

function show() {
  const name = pages[current()] ? current() : "overview";
  for (const s of document.querySelectorAll("section.page")) s.hidden = s.id !== name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  status("");
  refresh();
}

async function login(tok) {
  sessionStorage.setItem(KEY, tok);
  try {
    const me = await api("GET", "/api/v1/whoami");
    $("who").textContent = me.name + " (" + me.role + ")";
  } catch (e) {
    if (e.message !== "unauthorized") status(e.message, true);
    return;
  }
  enter();
}

// loginByCert asks the API who the browser's client certificate is, if
// it presented one; without one (or over plain HTTP) the token form stays.
async function loginByCert() {
  if (location.protocol !== "https:") return false;
  let r;
  try {
    r = await fetch("/api/v1/whoami", { cache: "no-store", credentials: "same-origin" });
  } catch (e) {
    return false;
  }
  if (!r.ok) return false;
  const me = await r.json();
  byCert = true;
  $("who").textContent = me.name + " (" + me.role + ", client certificate)";
  enter();
  return true;
}

function enter() {
  $("login-page").hidden = true;
  $("nav").hidden = false;
  // A certificate cannot be logged out of from a page: the browser holds it.
  $("logout").hidden = byCert && !token();
  show();
  clearInterval(timer);
  timer = setInterval(() => { if (current() === "overview" || current() === "posture" || current() === "cluster") refresh(); }, 2000);
}

function logout(msg) {
  sessionStorage.removeItem(KEY);
  byCert = false;
  clearInterval(timer);
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  for (const s of document.querySelectorAll("section.page")) s.hidden = true;
  $("login-page").hidden = false;
  status(msg || "", !!msg);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    login(t);
  });
  $("logout").addEventListener("click", () => logout());
  $("client-search").addEventListener("input", () => refresh());
  $("retained-form").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
  $("ban-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { kind: $("ban-kind").value, value: $("ban-value").value.trim(), reason: $("ban-reason").value.trim() };
    const dur = $("ban-duration").value.trim();
    if (dur) body.duration = dur;
    try {
      const b = await api("POST", "/api/v1/bans", body);
      status("Ban " + b.id + " added.");
      $("ban-value").value = "";
      await refresh();
    } catch (e) { status(e.message, true); }
  });
  window.addEventListener("hashchange", () => { if (token() || byCert) show(); });
  if (token()) login(token());
  else loginByCert().then((ok) => { if (!ok) logout(); });
});
