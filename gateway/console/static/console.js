// MiniVoice live console. Plain JavaScript, no build step, no dependencies.
//
// The token typed in is kept in this tab's sessionStorage and sent as the Authorization
// header: on the snapshot stream (server-sent events read with fetch, since EventSource
// cannot send headers, so the token never goes into a URL) and on the REST calls the buttons
// make. Everything shown comes from callers (a caller ID is anything a phone sends), so it is
// only ever set as text (textContent), never parsed as HTML.
"use strict";

const state = {
  token: sessionStorage.getItem("minivoice-token") || "",
  abort: null,          // AbortController of the running stream
  wanted: false,        // keep the stream up (reconnect after a drop)
  expanded: new Set(),  // recent calls whose details are open
  recent: [],
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function headers(extra = {}) {
  const h = { ...extra };
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

function setStatus(text, kind = "") {
  const s = $("#status");
  s.textContent = text;
  s.className = "status " + kind;
}

// -- the stream --------------------------------------------------------------------------
async function connect() {
  if (state.abort) state.abort.abort();
  const abort = new AbortController();
  state.abort = abort;
  state.wanted = true;
  setStatus("connecting…");
  try {
    const resp = await fetch("/v1/console/stream", { headers: headers(), signal: abort.signal, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      state.wanted = false;
      setStatus("token refused (" + resp.status + ")", "error");
      return;
    }
    if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
    setStatus("live", "live");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        handleFrame(frame);
      }
      if (buf.length > 8 * 1024 * 1024) throw new Error("event too large");
    }
    throw new Error("stream ended");
  } catch (err) {
    if (abort.signal.aborted) return;
    setStatus("disconnected: " + err.message + " (retrying)", "error");
    if (state.wanted) setTimeout(() => { if (state.abort === abort) connect(); }, 2000);
  }
}

function handleFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (event !== "snapshot" || !data.length) return;
  let snap;
  try { snap = JSON.parse(data.join("\n")); } catch { return; }
  renderRooms(snap.rooms || [], snap.rooms_total);
  renderCalls(snap.calls || [], snap.calls_total);
  if (snap.recent) { state.recent = snap.recent; renderRecent(); }
}

// -- rooms -------------------------------------------------------------------------------
function roomKey(r) { return r.customer_id + "/" + r.room; }

function total(shown, all) {
  if (!all) return "";
  return all > shown ? "(" + shown + " of " + all + " shown)" : "(" + all + ")";
}

function renderRooms(rooms, all) {
  const box = $("#rooms");
  $("#room-count").textContent = total(rooms.length, all ?? rooms.length);
  const seen = new Set();
  for (const r of rooms) {
    const key = roomKey(r);
    seen.add(key);
    let card = box.querySelector(`.room[data-key="${CSS.escape(key)}"]`);
    if (!card) {
      card = el("div", { class: "room", "data-key": key, "data-room": r.room, "data-customer": r.customer_id },
        el("h3", {}, el("span", { class: "name" }, r.room, el("span", { class: "customer" }, r.customer_id)),
          el("button", { class: "end danger", type: "button", title: "End the room for everyone" }, "End room")),
        el("div", { class: "people" }));
      box.append(card);
    }
    renderParticipants(card, r);
  }
  for (const card of box.querySelectorAll(".room")) {
    if (!seen.has(card.dataset.key)) card.remove();
  }
  let empty = box.querySelector(".empty");
  if (!rooms.length && !empty) box.append(el("p", { class: "empty" }, "No rooms."));
  if (rooms.length && empty) empty.remove();
}

function renderParticipants(card, room) {
  const people = card.querySelector(".people");
  const seen = new Set();
  for (const p of room.participants) {
    seen.add(p.call_id);
    let row = people.querySelector(`.participant[data-call-id="${CSS.escape(p.call_id)}"]`);
    if (!row) {
      row = el("div", { class: "participant", "data-call-id": p.call_id },
        el("span", { class: "who" }),
        el("div", { class: "meter", title: "level" }, el("div")),
        el("span", { class: "badges" },
          el("span", { class: "badge talk" }, "talking"), " ",
          el("span", { class: "badge mute" }, "muted"), " ",
          el("span", { class: "badge hold" }, "held")),
        el("span", { class: "actions" },
          el("button", { class: "mute", type: "button" }, "Mute"),
          el("button", { class: "hold", type: "button", title: "Put on hold / take off hold" }, "Hold"),
          el("button", { class: "remove danger", type: "button", title: "Take out of the room" }, "Remove")));
      people.append(row);
    }
    const who = row.querySelector(".who");
    who.textContent = p.from || "(unknown)";
    who.title = p.call_id;
    row.querySelector(".meter > div").style.width = Math.round(100 * Math.min(255, p.level || 0) / 255) + "%";
    row.classList.toggle("talking", !!p.talking);
    row.classList.toggle("muted", !!p.muted);
    row.classList.toggle("held", !!p.hold);
    row.dataset.muted = p.muted ? "true" : "false";
    row.dataset.talking = p.talking ? "true" : "false";
    row.querySelector("button.mute").textContent = p.muted ? "Unmute" : "Mute";
    row.querySelector("button.hold").textContent = p.hold ? "Resume" : "Hold";
    row.dataset.held = p.hold ? "true" : "false";
  }
  for (const row of people.querySelectorAll(".participant")) {
    if (!seen.has(row.dataset.callId)) row.remove();
  }
}

// -- live calls --------------------------------------------------------------------------
function renderCalls(calls, all) {
  const body = $("#calls tbody");
  $("#call-count").textContent = total(calls.length, all ?? calls.length);
  body.replaceChildren(...calls.map((c) => el("tr", { "data-call-id": c.id },
    el("td", { class: "mono", title: c.id }, short(c.id)), el("td", {}, c.from), el("td", {}, c.to),
    el("td", {}, c.direction), el("td", {}, c.status), el("td", {}, c.room || ""), el("td", {}, c.codec || ""),
    el("td", {}, el("button", { class: "hangup danger", type: "button", "data-call-id": c.id }, "Hang up")))));
}

// -- recent calls ------------------------------------------------------------------------
function short(id) { return id && id.length > 14 ? id.slice(0, 14) + "…" : id; }

function fmt(n, digits, unit = "") { return n === null || n === undefined ? "–" : Number(n).toFixed(digits) + unit; }

function renderRecent() {
  const body = $("#recent tbody");
  const rows = [];
  for (const c of state.recent) {
    const q = c.quality || {};
    rows.push(el("tr", { class: "call", "data-call-id": c.id },
      el("td", { class: "mono", title: c.id }, short(c.id)), el("td", {}, c.from), el("td", {}, c.to),
      el("td", {}, c.status), el("td", {}, (c.ended_at || "").replace("T", " ").replace("Z", "")),
      el("td", {}, (c.hangup_cause || "") + (c.hangup_by ? " (" + c.hangup_by + ")" : "")),
      el("td", { class: "mos" }, fmt(q.mos, 2)), el("td", {}, fmt(q.loss_pct, 1, " %")),
      el("td", {}, fmt(q.jitter_ms, 1, " ms"))));
    if (state.expanded.has(c.id)) rows.push(detailRow(c));
  }
  body.replaceChildren(...rows);
}

function detailRow(c) {
  const lines = (c.timeline || []).map((t) => {
    const { at, event, ...rest } = t;
    const extra = Object.keys(rest).length ? " " + JSON.stringify(rest) : "";
    return (at || "").replace("T", " ").replace("Z", "") + "  " + event + extra;
  });
  if (c.timeline_total > (c.timeline || []).length) lines.unshift("… " + (c.timeline_total - c.timeline.length) + " earlier entries");
  const quality = c.quality ? "quality: " + JSON.stringify(c.quality) : "quality: none (no audio)";
  return el("tr", { class: "detail", "data-call-id": c.id },
    el("td", { colSpan: 9 }, el("pre", {}, quality + "\n" + lines.join("\n"))));
}

// -- actions (the REST API) ---------------------------------------------------------------
async function api(method, path, body) {
  const resp = await fetch(path, {
    method, headers: headers(body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!resp.ok) {
    let msg = "HTTP " + resp.status;
    try { msg = (await resp.json()).error.message; } catch { /* keep the status */ }
    setStatus(method + " failed: " + msg, "error");
  }
  return resp;
}

function roomPath(card) {
  const q = "?customer_id=" + encodeURIComponent(card.dataset.customer);
  return ["/v1/conferences/" + encodeURIComponent(card.dataset.room), q];
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token").value = state.token;
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("minivoice-token", state.token);
    connect();
  });
  $("#rooms").addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const card = button.closest(".room");
    const [base, q] = roomPath(card);
    if (button.classList.contains("end")) {
      if (confirm("End room " + card.dataset.room + " for everyone?")) await api("DELETE", base + q);
      return;
    }
    const row = button.closest(".participant");
    const part = base + "/participants/" + encodeURIComponent(row.dataset.callId) + q;
    if (button.classList.contains("mute")) {
      await api("PATCH", part, { muted: row.dataset.muted !== "true" });
    } else if (button.classList.contains("hold")) {
      await api("PATCH", part, { hold: row.dataset.held !== "true" });
    } else if (button.classList.contains("remove")) {
      await api("DELETE", part);
    }
  });
  $("#calls").addEventListener("click", async (e) => {
    const button = e.target.closest("button.hangup");
    if (button) await api("DELETE", "/v1/calls/" + encodeURIComponent(button.dataset.callId));
  });
  $("#recent").addEventListener("click", (e) => {
    const row = e.target.closest("tr.call");
    if (!row) return;
    const id = row.dataset.callId;
    if (state.expanded.has(id)) state.expanded.delete(id); else state.expanded.add(id);
    renderRecent();
  });
  connect();  // with no token saved this works where the API has none, else asks for one
});
