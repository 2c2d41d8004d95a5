// Palyra web console: login, live chat and A2UI surfaces over /console/v1/stream.
// Plain DOM (no innerHTML with data), so nothing a publisher sends can inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  csrf: null,
  ws: null,
  cursor: null,          // last resume point: {boot, seq}
  inSnapshot: false,
  backoff: 500,
  sessions: new Map(),   // session id -> Map(message id -> message)
  current: "main",
  pending: new Map(),    // client_msg_id -> {session_id, text}
  surfaces: new Map(),   // surface -> {version, document, owner}
  drafts: new Map(),     // "surface/component/field" -> value typed by the person
  events: [],
  reconnectTimer: null,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function status(text) { $("status").textContent = text || ""; }

function setConn(kind, text) {
  $("conn").className = "conn " + kind;
  $("conn-state").textContent = text;
}

// ---- login -------------------------------------------------------------------------------

async function checkSession() {
  const r = await fetch("/console/v1/auth/session", { credentials: "same-origin" });
  if (r.ok) {
    state.csrf = (await r.json()).csrf_token;
    showApp();
  } else {
    showLogin();
  }
}

function showLogin() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  clearTimeout(state.reconnectTimer);
  setConn("offline", "offline");
  $("app-view").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("token").focus();
}

function showApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  connect();
  refreshDevices();
  refreshRuns();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-error").textContent = "";
  const r = await fetch("/console/v1/auth/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ admin_token: $("token").value.trim() }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    $("login-error").textContent = body.error || ("login failed: " + r.status);
    return;
  }
  $("token").value = "";
  state.csrf = body.csrf_token;
  showApp();
});

$("logout").addEventListener("click", async () => {
  await fetch("/console/v1/auth/logout", {
    method: "POST",
    credentials: "same-origin",
    headers: { "x-palyra-csrf-token": state.csrf || "" },
  });
  state.csrf = null;
  state.cursor = null;
  showLogin();
});

// ---- stream ------------------------------------------------------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  setConn("connecting", "connecting");
  const ws = new WebSocket(`${scheme}://${location.host}/console/v1/stream`, "palyra.console.v1");
  state.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "hello", resume: state.cursor }));
  };
  ws.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    handle(msg);
  };
  ws.onclose = async (e) => {
    if (state.ws !== ws) return;
    state.ws = null;
    setConn("offline", e.code === 4001 ? "catching up" : "reconnecting");
    // An expired session cannot reconnect: back to the login form.
    const r = await fetch("/console/v1/auth/session", { credentials: "same-origin" }).catch(() => null);
    if (r && r.status === 401) { showLogin(); return; }
    const wait = state.backoff * (0.75 + Math.random() / 2);
    state.backoff = Math.min(state.backoff * 2, 10000);
    state.reconnectTimer = setTimeout(connect, wait);
  };
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(msg));
    return true;
  }
  return false;
}

function resync() {
  // Out of step (should not happen): start over from a fresh snapshot.
  state.cursor = null;
  if (state.ws) state.ws.close();
}

function handle(msg) {
  switch (msg.type) {
    case "welcome":
      state.backoff = 500;
      setConn("live", "live");
      status("");
      if (!msg.resumed) {
        state.inSnapshot = true;
        state.sessions.clear();
        state.surfaces.clear();
      }
      // Unconfirmed messages are resent: the server drops duplicates by client_msg_id.
      for (const [id, p] of state.pending) {
        send({ type: "chat.send", session_id: p.session_id, client_msg_id: id, text: p.text });
      }
      break;
    case "snapshot.required":
      state.sessions.clear();
      state.surfaces.clear();
      break;
    case "snapshot.done":
      state.inSnapshot = false;
      renderAll();
      break;
    case "chat.message": {
      const session = sessionMap(msg.session_id);
      session.set(msg.message_id, { ...msg });
      if (msg.client_msg_id) state.pending.delete(msg.client_msg_id);
      if (!state.inSnapshot) { renderSessions(); renderMessages(); }
      break;
    }
    case "chat.delta": {
      const m = sessionMap(msg.session_id).get(msg.message_id);
      if (m) { m.text += msg.text; if (!state.inSnapshot) renderMessages(); }
      break;
    }
    case "chat.done": {
      const m = sessionMap(msg.session_id).get(msg.message_id);
      if (m) { m.streaming = false; if (!state.inSnapshot) renderMessages(); }
      break;
    }
    case "a2ui.snapshot": {
      const have = state.surfaces.get(msg.surface);
      if (!have || msg.version >= have.version) {
        state.surfaces.set(msg.surface, { version: msg.version, document: msg.document, owner: msg.owner });
        if (!state.inSnapshot) renderSurface(msg.surface);
      }
      break;
    }
    case "a2ui.patch": {
      const have = state.surfaces.get(msg.surface);
      if (have && msg.version <= have.version) break; // already covered by a snapshot
      if (!have || msg.base_version !== have.version) { resync(); return; }
      try {
        have.document = applyOps(have.document, msg.ops);
        have.version = msg.version;
      } catch (err) {
        resync();
        return;
      }
      renderSurface(msg.surface);
      break;
    }
    case "a2ui.action":
      break;
    case "node.event":
      state.events.unshift(msg);
      state.events.length = Math.min(state.events.length, 50);
      renderEvents();
      break;
    case "error":
      status(`${msg.code}: ${msg.message}`);
      break;
    case "pong":
    case "ack":
      break;
  }
  if (msg.cursor && !state.inSnapshot && msg.type !== "welcome") state.cursor = msg.cursor;
  if (msg.type === "snapshot.done") state.cursor = msg.cursor;
  if (msg.type === "welcome" && msg.resumed) state.cursor = msg.cursor;
}

function sessionMap(id) {
  if (!state.sessions.has(id)) state.sessions.set(id, new Map());
  return state.sessions.get(id);
}

// ---- JSON pointer patches (RFC 6901 paths; add / replace / remove) -----------------------

function parsePointer(path) {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error("bad pointer");
  return path.slice(1).split("/").map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function applyOps(doc, ops) {
  let root = structuredClone(doc);
  for (const op of ops) {
    const tokens = parsePointer(op.path);
    if (tokens.length === 0) {
      if (op.op === "remove") throw new Error("cannot remove the root");
      root = structuredClone(op.value);
      continue;
    }
    let parent = root;
    for (const t of tokens.slice(0, -1)) {
      parent = Array.isArray(parent) ? parent[Number(t)] : parent[t];
      if (parent === undefined || parent === null || typeof parent !== "object") throw new Error("no parent");
    }
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : Number(last);
      if (op.op === "add") parent.splice(i, 0, structuredClone(op.value));
      else if (op.op === "replace") parent[i] = structuredClone(op.value);
      else parent.splice(i, 1);
    } else if (op.op === "remove") {
      delete parent[last];
    } else {
      parent[last] = structuredClone(op.value);
    }
  }
  return root;
}

// ---- rendering ---------------------------------------------------------------------------

function renderAll() {
  renderSessions();
  renderMessages();
  $("surfaces").replaceChildren();
  for (const name of state.surfaces.keys()) renderSurface(name);
  renderEvents();
}

function renderSessions() {
  const ids = new Set(state.sessions.keys());
  ids.add(state.current);
  const list = $("session-list");
  list.replaceChildren(...[...ids].sort().map((id) =>
    el("li", { class: id === state.current ? "active" : "", text: id, "data-session": id,
               onclick: () => { state.current = id; renderSessions(); renderMessages(); } })));
  $("chat-title").textContent = state.current;
}

function renderMessages() {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const items = [];
  for (const m of sessionMap(state.current).values()) {
    items.push(el("li", { class: `${m.role}${m.streaming ? " streaming" : ""}`, "data-message": m.message_id },
      el("span", { class: "author", text: m.author }), m.text));
  }
  for (const [id, p] of state.pending) {
    if (p.session_id === state.current) {
      items.push(el("li", { class: "user pending", "data-client": id }, el("span", { class: "author", text: "sending" }), p.text));
    }
  }
  box.replaceChildren(...items);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderEvents() {
  $("events").replaceChildren(...state.events.map((e) =>
    el("li", { text: `#${e.node_seq} ${e.name} ${JSON.stringify(e.payload).slice(0, 200)}` })));
}

function renderSurface(name) {
  const s = state.surfaces.get(name);
  let card = document.querySelector(`.surface[data-surface="${CSS.escape(name)}"]`);
  if (!s) { if (card) card.remove(); return; }
  if (!card) {
    card = el("div", { class: "surface card", "data-surface": name });
    $("surfaces").append(card);
  }
  card.setAttribute("data-version", s.version);
  const parts = [el("h3", { text: `${name} · v${s.version} · ${s.owner}` })];
  for (const c of (s.document.components || []).slice(0, 1024)) {
    const node = renderComponent(name, c);
    if (node) parts.push(node);
  }
  card.replaceChildren(...parts);
}

const str = (v, max = 512) => (typeof v === "string" ? v : v === undefined || v === null ? "" : String(v)).slice(0, max);

function renderComponent(surface, c) {
  const p = c.props || {};
  const wrap = (...kids) => el("div", { class: `a2ui ${c.type}`, "data-component": c.id }, ...kids);
  switch (c.type) {
    case "text": {
      const node = wrap(str(p.value));
      if (["muted", "success", "critical"].includes(p.tone)) node.classList.add(p.tone);
      return node;
    }
    case "markdown":
      return wrap(...renderMarkdown(str(p.value, 12000)));
    case "list": {
      const items = (Array.isArray(p.items) ? p.items : []).slice(0, 256);
      return wrap(el(p.ordered ? "ol" : "ul", {}, ...items.map((i) => el("li", { text: str(i) }))));
    }
    case "table": {
      const cols = (Array.isArray(p.columns) ? p.columns : []).slice(0, 16);
      const rows = (Array.isArray(p.rows) ? p.rows : []).slice(0, 256);
      return wrap(el("table", {},
        el("thead", {}, el("tr", {}, ...cols.map((h) => el("th", { text: str(h) })))),
        el("tbody", {}, ...rows.map((r) => el("tr", {}, ...(Array.isArray(r) ? r : []).slice(0, 16).map((v) => el("td", { text: str(v) })))))));
    }
    case "form":
      return wrap(renderForm(surface, c.id, p));
    case "chart":
      return wrap(el("div", { class: "chart-title", text: str(p.title) }), renderChart((Array.isArray(p.series) ? p.series : []).slice(0, 64)));
    case "buttons":
      return wrap(...(Array.isArray(p.buttons) ? p.buttons : []).slice(0, 8).map((b) =>
        el("button", { type: "button", class: b.tone === "critical" ? "danger" : "", "data-action": str(b.action, 64),
                       text: str(b.label || b.action, 64),
                       onclick: () => { if (!send({ type: "a2ui.action", surface, component: c.id, action: str(b.action, 64), value: {} })) status("not connected; try again"); } })));
    default:
      return null;
  }
}

function renderForm(surface, component, p) {
  const fields = (Array.isArray(p.fields) ? p.fields : []).slice(0, 32);
  const inputs = [];
  const key = (f) => `${surface}/${component}/${f.id}`;
  const form = el("form", {
    onsubmit: (e) => {
      e.preventDefault();
      const value = {};
      for (const [f, input] of inputs) {
        value[f.id] = f.type === "checkbox" ? input.checked : f.type === "number" ? Number(input.value) : input.value;
      }
      if (send({ type: "a2ui.action", surface, component, action: "submit", value })) {
        for (const [f] of inputs) state.drafts.delete(key(f));
        status("");
      } else {
        status("not connected; try again");
      }
    },
  });
  if (p.title) form.append(el("strong", { text: str(p.title) }));
  for (const f of fields) {
    const id = `f-${surface}-${component}-${str(f.id, 64)}`;
    const draft = state.drafts.get(key(f));
    let input;
    if (f.type === "select") {
      input = el("select", { id, name: f.id, required: !!f.required },
        ...(Array.isArray(f.options) ? f.options : []).slice(0, 64).map((o) => el("option", { value: str(o.value), text: str(o.label) })));
      input.value = draft ?? str(f.defaultValue);
    } else if (f.type === "checkbox") {
      input = el("input", { id, name: f.id, type: "checkbox" });
      input.checked = draft ?? !!f.defaultValue;
    } else {
      const type = ["text", "email", "number"].includes(f.type) ? f.type : "text";
      input = el("input", { id, name: f.id, type, placeholder: str(f.placeholder), required: !!f.required,
                            min: f.min, max: f.max, step: f.step });
      input.value = draft ?? str(f.defaultValue);
    }
    input.addEventListener("input", () => state.drafts.set(key(f), f.type === "checkbox" ? input.checked : input.value));
    inputs.push([f, input]);
    const label = el("label", { for: id, text: str(f.label || f.id) });
    form.append(f.type === "checkbox" ? el("div", { class: "check" }, input, label) : el("div", {}, label, input));
    if (f.hint) form.append(el("div", { class: "hint", text: str(f.hint) }));
  }
  form.append(el("button", { type: "submit", text: str(p.submitLabel || "Submit", 64) }));
  return form;
}

function renderChart(series) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 320, bar = 18, gap = 6, labelWidth = 90;
  const max = Math.max(1, ...series.map((s) => Math.abs(Number(s.value) || 0)));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", Math.max(bar, series.length * (bar + gap)));
  svg.setAttribute("role", "img");
  series.forEach((s, i) => {
    const y = i * (bar + gap);
    const value = Number(s.value) || 0;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 0);
    label.setAttribute("y", y + bar - 5);
    label.textContent = str(s.label, 24);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", labelWidth);
    rect.setAttribute("y", y);
    rect.setAttribute("height", bar);
    rect.setAttribute("width", Math.max(1, (Math.abs(value) / max) * (width - labelWidth - 50)));
    const num = document.createElementNS(ns, "text");
    num.setAttribute("x", labelWidth + Math.max(1, (Math.abs(value) / max) * (width - labelWidth - 50)) + 4);
    num.setAttribute("y", y + bar - 5);
    num.textContent = String(value);
    svg.append(label, rect, num);
  });
  return svg;
}

// A small, safe Markdown subset: headings, lists, paragraphs, **bold**, *em*, `code`.
function renderMarkdown(text) {
  const blocks = [];
  let list = null;
  for (const line of text.split("\n")) {
    const heading = /^(#{1,3})\s+(.*)$/.exec(line);
    const item = /^\s*[-*]\s+(.*)$/.exec(line);
    if (item) {
      if (!list) { list = el("ul"); blocks.push(list); }
      list.append(el("li", {}, ...inline(item[1])));
      continue;
    }
    list = null;
    if (heading) blocks.push(el("h" + (heading[1].length + 2), {}, ...inline(heading[2])));
    else if (line.trim()) blocks.push(el("p", {}, ...inline(line)));
  }
  return blocks;
}

function inline(text) {
  const out = [];
  const re = /(\*\*[^*]+\*\*|\*[^*]+\*|`[^`]+`)/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const t = m[0];
    if (t.startsWith("**")) out.push(el("strong", { text: t.slice(2, -2) }));
    else if (t.startsWith("`")) out.push(el("code", { text: t.slice(1, -1) }));
    else out.push(el("em", { text: t.slice(1, -1) }));
    last = m.index + t.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

// ---- chat input --------------------------------------------------------------------------

function randomId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return "c" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("chat-input").value;
  if (!text.trim()) return;
  const id = randomId();
  state.pending.set(id, { session_id: state.current, text });
  send({ type: "chat.send", session_id: state.current, client_msg_id: id, text });
  $("chat-input").value = "";
  renderMessages();
});

$("new-session").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-session-name").value.trim();
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(name)) { status("session names: 1-64 of A-Z a-z 0-9 . _ : -"); return; }
  state.current = name;
  $("new-session-name").value = "";
  renderSessions();
  renderMessages();
});

// Keepalive from our side too: a dead path shows up within a minute even without traffic.
setInterval(() => send({ type: "ping" }), 25000);

checkSession().catch(() => showLogin());

// ---- devices: pairing requests and paired devices, through the admin API ----------------

async function admin(method, path, body) {
  const headers = { "x-palyra-csrf-token": state.csrf || "" };
  if (body) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, credentials: "same-origin", headers,
                                body: body ? JSON.stringify(body) : undefined });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(json.error || ("HTTP " + r.status)), { status: r.status });
  return json;
}

async function refreshDevices() {
  if ($("app-view").hidden || !state.csrf) return;
  try {
    const [requests, devices] = await Promise.all([
      admin("GET", "/admin/v1/pairing/requests"), admin("GET", "/admin/v1/devices")]);
    renderDevices(requests.requests || [], devices.devices || []);
  } catch (e) {
    // 404: this daemon does not enroll devices.
    if (e.status === 404) $("devices-card").hidden = true;
  }
}

function act(method, path, body) {
  admin(method, path, body).then(() => { status(""); refreshDevices(); }, (e) => status(e.message));
}

function renderDevices(requests, devices) {
  $("devices-card").hidden = false;
  const waiting = requests.filter((r) => r.state === "pending_approval");
  const reqs = waiting.map((r) => {
    const id = encodeURIComponent(r.request_id);
    return el("li", { "data-request": r.request_id },
      el("span", { class: "mono", text: `${r.device_id} (${r.client_kind})` }),
      el("span", { class: "hint", text: `key sha256 ${r.identity_fingerprint.slice(0, 16)}…` +
                                        (r.replaces_device ? " · replaces a paired device" : "") }),
      el("button", { text: r.replaces_device ? "Approve and replace" : "Approve",
                     onclick: () => act("POST", `/admin/v1/pairing/requests/${id}/approve`,
                                        { replace: !!r.replaces_device }) }),
      el("button", { class: "danger", text: "Reject",
                     onclick: () => act("POST", `/admin/v1/pairing/requests/${id}/reject`,
                                        { reason: "rejected in the console" }) }));
  });
  $("pairing-requests").replaceChildren(...(reqs.length ? reqs
    : [el("li", { class: "hint", text: "none waiting (palyra pairing code mints a code)" })]));
  const devs = devices.map((d) => {
    const active = (d.certificates || []).filter((c) => c.state === "active");
    const expires = Math.max(0, ...active.map((c) => c.expires_at_unix_ms));
    const days = expires ? Math.round((expires - Date.now()) / 86400000) : null;
    return el("li", { "data-device": d.device_id },
      el("span", { class: "mono", text: d.device_id }),
      el("span", { class: "hint", text: `${d.state} · ${d.presence}` +
                                        (days !== null ? ` · certificate ${days} d left` : "") }),
      d.state === "paired" ? el("button", { class: "danger", text: "Revoke",
        onclick: () => { if (confirm(`Revoke ${d.device_id}? Its connections close at once.`)) {
          act("POST", `/admin/v1/devices/${encodeURIComponent(d.device_id)}/revoke`,
              { reason: "revoked in the console" }); } } }) : null);
  });
  $("device-list").replaceChildren(...(devs.length ? devs
    : [el("li", { class: "hint", text: "no paired devices" })]));
}

setInterval(refreshDevices, 3000);

// ---- runs: agent runs and their tapes, through the admin API ------------------------------

state.selectedRun = null;

async function refreshRuns() {
  if ($("app-view").hidden || !state.csrf) return;
  let list;
  try {
    list = await admin("GET", "/admin/v1/runs");
  } catch (e) {
    if (e.status === 404) $("runs-card").hidden = true;
    return;
  }
  $("runs-card").hidden = false;
  const runs = list.runs || [];
  const items = runs.slice(0, 50).map((r) => el("li", {
      class: r.run_id === state.selectedRun ? "active" : "", "data-run": r.run_id, "data-state": r.state,
      onclick: () => { state.selectedRun = r.run_id; refreshRuns(); } },
    el("span", { class: `run-state ${r.state}`, text: r.state }),
    el("span", { class: "mono", text: r.run_id.slice(-8) }),
    el("span", { class: "hint", text: `${r.origin} · ${r.principal} · ${r.events} events` }),
    el("span", { class: "prompt", text: str(r.prompt, 80) }),
    r.state === "in_progress" || r.state === "accepted"
      ? el("button", { class: "danger", text: "Abort", onclick: (e) => { e.stopPropagation();
          admin("POST", `/admin/v1/runs/${encodeURIComponent(r.run_id)}/abort`).then(refreshRuns, (err) => status(err.message)); } })
      : null));
  $("run-list").replaceChildren(...(items.length ? items : [el("li", { class: "hint", text:
    list.provider_configured ? "no runs yet: a chat message starts one"
                             : "no model provider configured ([model] base_url): chat goes to agents only" })]));
  if (state.selectedRun) await showTape(state.selectedRun);
}

async function showTape(id) {
  let run;
  try {
    run = await admin("GET", `/admin/v1/runs/${encodeURIComponent(id)}`);
  } catch (e) {
    status(e.message);
    return;
  }
  $("run-tape").hidden = false;
  $("run-tape-title").textContent = `Run ${id} · ${run.run.state} · session ${run.run.session_id}`;
  // Consecutive model tokens read as one line of text.
  const lines = [];
  for (const e of run.events || []) {
    const last = lines[lines.length - 1];
    if (e.type === "model_token" && last && last.type === "model_token") { last.text += e.token; last.to = e.seq; continue; }
    if (e.type === "model_token") { lines.push({ type: e.type, seq: e.seq, to: e.seq, text: e.token }); continue; }
    const detail = { ...e };
    for (const k of ["seq", "run_id", "timestamp_unix_ms", "type"]) delete detail[k];
    lines.push({ type: e.type, seq: e.seq, to: e.seq, text: JSON.stringify(detail) });
    // A browser screenshot the run took: shown under its result.
    if (e.type === "tool_result" && e.success) {
      let out = null;
      try { out = JSON.parse(e.output_json || "null"); } catch (_) { out = null; }
      if (out && typeof out.screenshot === "string" && /^[0-9]{1,6}\.png$/.test(out.screenshot)) {
        lines.push({ type: "screenshot", seq: e.seq, to: e.seq, shot: out.screenshot });
      }
    }
  }
  // A run that waits for an operator (an OpenAI API completion calling a gateway tool).
  const pending = run.pending_approval;
  const decide = (verb) => admin("POST", `/admin/v1/runs/${encodeURIComponent(id)}/${verb}`)
    .then(() => showTape(id), (err) => status(err.message));
  $("run-approval").replaceChildren(...(pending && ["accepted", "in_progress"].includes(run.run.state) ? [
    el("span", { text: `Waiting for an approval of ${pending.tool}` }),
    el("button", { type: "button", class: "approve", text: "Approve", onclick: () => decide("approve") }),
    el("button", { type: "button", class: "deny", text: "Deny", onclick: () => decide("deny") }),
  ] : []));
  $("run-events").replaceChildren(...lines.map((l) => el("li", { "data-type": l.type },
    el("span", { class: "mono", text: l.seq === l.to ? `#${l.seq}` : `#${l.seq}-${l.to}` }),
    el("span", { class: "author", text: l.type }),
    l.shot ? screenshot(id, l.shot) : str(l.text, 2000))));
}

// A run's screenshot, fetched with the console's credentials (an <img src> would lack the CSRF
// header) and shown from a blob URL.
const shots = new Map();
function screenshot(runId, name) {
  const img = el("img", { class: "shot", alt: `screenshot ${name} of run ${runId}` });
  const key = `${runId}/${name}`;
  if (shots.has(key)) { img.src = shots.get(key); return img; }
  fetch(`/admin/v1/runs/${encodeURIComponent(runId)}/screenshots/${encodeURIComponent(name)}`,
        { credentials: "same-origin", headers: { "x-palyra-csrf-token": state.csrf || "" } })
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
    .then((blob) => { const url = URL.createObjectURL(blob); shots.set(key, url); img.src = url; },
          (err) => { img.alt = `screenshot ${name}: ${err.message}`; });
  return img;
}

setInterval(refreshRuns, 2000);
