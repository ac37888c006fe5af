// The agent console. Plain ES module; talks to the server only through
// sc-client.js (WebSocket protocol v1) and POST /api/v1/login when present.
import { SupportChatClient, jwtClaims } from "./sc-client.js";
import { dropZone, el, pinnedScroll, renderMessages, uploader } from "./sc-ui.js";
import { LANG, dir, formatDateTime, formatDuration, setText, t, translatePage } from "./sc-i18n.js";

const $ = (id) => document.getElementById(id);
let resumeUploads = null; // set once the composer is wired (attachments kept across a reload)
const TOKEN_KEY = "sc-console:token";
const SOUND_KEY = "sc-console:sound";
const REFRESH_KEY = "sc-console:refresh";
const VIA_KEY = "sc-console:via"; // how I signed in last: "password" or "token"

/** A new access token from POST /api/v1/refresh (password sign-in), or
 * null when there is no refresh token or the server refuses it; throws when
 * the server cannot be asked (unreachable, 5xx): try again later. */
async function refreshAccess() {
  const refresh = localStorage.getItem(REFRESH_KEY);
  if (!refresh) return null;
  const r = await fetch("/api/v1/refresh", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ refresh_token: refresh }) });
  if (r.status >= 500) throw new Error(`refresh: HTTP ${r.status}`);
  const body = await r.json().catch(() => ({}));
  if (!r.ok || !body.access_token) {
    localStorage.removeItem(REFRESH_KEY);
    return null;
  }
  if (body.refresh_token) localStorage.setItem(REFRESH_KEY, body.refresh_token);
  localStorage.setItem(TOKEN_KEY, body.access_token);
  return body.access_token;
}

/** A token for the next connect: the current one, or a fresh one when it
 * expires within a minute and there is a refresh token. */
async function currentToken(token) {
  const c = jwtClaims(token);
  if (c && c.exp * 1000 > Date.now() + 60000) return token;
  return (await refreshAccess()) || token;
}

/** The server refused the token and no refresh token could renew it: stop,
 * and show the sign-in form with the reason. */
function signInAgain(reason) {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(REFRESH_KEY);
  if (client) client.close();
  client = null;
  selected = null;
  showLogin("", reason === "expired" ? "auth.expired" : reason === "account_disabled" ? "auth.disabled" : "auth.refused");
  $("token-login").open = localStorage.getItem(VIA_KEY) !== "password";
}

let client = null;
let selected = null;

// Customer profiles (GET /api/v1/customers/{id}/profile), masked by the
// server for agents; fetched when a conversation is shown (at most every
// PROFILE_TTL ms) and at once when a `profile` frame says one changed.
const PROFILE_TTL = 30000;
const profiles = new Map(); // customer id -> {at, profile: object | null}
// Canned replies (GET /api/v1/canned: my team's and my own), listed again
// at every hello and whenever a `canned` frame says one changed.
let canned = [];
let queueTimer = null;
let blink = null;
let unseenCount = 0;
const baseTitle = () => t("console.title") + " · supportchat";

function validToken(t) {
  const c = t && jwtClaims(t);
  return c && (c.role === "agent" || c.role === "admin") && c.exp * 1000 > Date.now() ? c : null;
}

function showLogin(message, notice) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  const box = $("login-notice");
  box.hidden = !notice;
  if (notice) setText(box, notice);
  else box.textContent = "";
  $("login-user").focus();
}

async function passwordLogin(e) {
  e.preventDefault();
  const username = $("login-user").value.trim();
  const password = $("login-password").value;
  if (!username || !password) {
    $("login-error").textContent = t("console.needLogin");
    return;
  }
  try {
    const r = await fetch("/api/v1/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ login: username, password }) });
    const body = await r.json().catch(() => ({}));
    if (r.status === 404 && !body.token) {
      $("login-error").textContent = t("console.noPassword");
      $("token-login").open = true;
      return;
    }
    const token = body.access_token || body.token;
    if (!r.ok || !token) {
      $("login-error").textContent = (body.error && body.error.message) || t("console.signInFailed", { status: r.status });
      return;
    }
    if (body.refresh_token) localStorage.setItem(REFRESH_KEY, body.refresh_token);
    else localStorage.removeItem(REFRESH_KEY);
    useToken(token, true);
  } catch (err) {
    $("login-error").textContent = t("console.unreachable");
  }
}

function useToken(token, fromPassword = false) {
  token = token.trim();
  if (!validToken(token)) {
    $("login-error").textContent = t("console.badToken");
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  localStorage.setItem(VIA_KEY, fromPassword ? "password" : "token");
  if (!fromPassword) localStorage.removeItem(REFRESH_KEY);
  $("login-password").value = "";
  $("login-token").value = "";
  startApp(token);
}

/** The claims of an agent or admin token, expired or not. */
function agentClaims(t) {
  const c = t && jwtClaims(t);
  return c && (c.role === "agent" || c.role === "admin") ? c : null;
}

function startApp(token) {
  const claims = agentClaims(token);
  $("login-notice").hidden = true;
  $("login").hidden = true;
  $("app").hidden = false;
  $("me").textContent = claims.name || claims.sub;
  $("sound").checked = localStorage.getItem(SOUND_KEY) === "1";
  client = new SupportChatClient({ token, getToken: currentToken, renewToken: refreshAccess, storageKey: "sc-console" });
  window.scConsole = client; // for debugging and tests
  client.addEventListener("status", (e) => {
    const s = e.detail.state;
    $("conn").dataset.state = s;
    $("conn").removeAttribute("lang");
    if (s === "unauthorized") setText($("conn"), "auth.state");
    else $("conn").textContent = t(s === "open" ? "console.conn.open" : s === "offline" ? "conn.offline" : "conn.connecting");
    renderSide();
  });
  client.addEventListener("authfailed", (e) => signInAgain(e.detail.reason));
  let resumed = false;
  client.addEventListener("hello", (e) => {
    if (!resumed && resumeUploads) {
      resumed = true;
      resumeUploads(); // files a reload interrupted
    }
    const h = e.detail.hello;
    loadCanned();
    const st = (h.agent && h.agent.status) || h.status;
    $("status-wrap").hidden = !h.agent; // the workflow (agent status) is on
    if (st) showStatus(st);
    refreshQueue();
    renderSide();
    if (!selected && client.conversations.size) select(sortedMine()[0].id);
  });
  client.addEventListener("queue", (e) => {
    renderSide();
    // a conversation entered the queue: its first message and language come from REST
    const it = e.detail.item;
    if (it && it.state === "queued" && !(client.queue.get(it.conversation) || {}).preview) {
      clearTimeout(queueTimer);
      queueTimer = setTimeout(refreshQueue, 300);
    }
  });
  client.addEventListener("change", (e) => {
    const c = e.detail.conversation;
    renderSide();
    if (c.id === selected) renderConv();
  });
  client.addEventListener("incoming", (e) => notify(e.detail.conversation, e.detail.message));
  client.addEventListener("servererror", (e) => {
    if (!e.detail.ref) $("conv-error").textContent = e.detail.message || e.detail.code;
  });
  client.addEventListener("agentstatus", (e) => {
    const a = e.detail.agent;
    if (a && a.status) showStatus(a.status);
  });
  client.addEventListener("frame", renderSide);
  client.addEventListener("profile", (e) => loadProfile(e.detail.customer_id, true));
  client.addEventListener("canned", loadCanned);
  client.addEventListener("mention", (e) => {
    const n = e.detail.note;
    const c = client.conversations.get(n.conversation);
    $("mention-note").textContent = t("console.mentioned", { name: (n.author && (n.author.name || n.author.id)) || t("console.colleague"),
      who: c ? customerLabel(c.info.customer_id, c.id) : t("console.otherConversation") });
    notify({ id: n.conversation }, n);
  });
  client.connect();
}

/** The queue from REST (GET /api/v1/inbox?state=queued): a slow
 * reconciliation beside the live `inbox` frames, which keep the queue current
 * (in Redis mode they travel by pub/sub, which can lose one). */
async function refreshQueue() {
  if (!client || client.state !== "open" || !client.hello || !client.hello.agent) return;
  try {
    const r = await fetch("/api/v1/inbox?state=queued&limit=200", { headers: { authorization: "Bearer " + client._token } });
    if (!r.ok) return;
    const body = await r.json();
    const items = Array.isArray(body) ? body : body.items || body.conversations || [];
    client.setQueue(items.map((it) => ({ id: it.conversation || it.id, customer_id: it.customer_id, queued_at: it.queued_at, created_at: it.queued_at, team: it.team, preview: it.preview, lang: it.lang })));
  } catch (e) {
    /* keep the pushed queue */
  }
}

/** "中文", "Arabic"...: a language code's name in the console's language. */
function languageName(code) {
  if (!code) return "";
  try {
    return new Intl.DisplayNames([LANG], { type: "language" }).of(code) || code;
  } catch (e) {
    return code;
  }
}

function sortedMine() {
  return [...client.conversations.values()].sort((a, b) => b.lastActivity - a.lastActivity);
}

function lastText(c) {
  const l = c.list();
  for (let i = l.length - 1; i >= 0; i--) if (l[i].kind === "text") return l[i].body;
  return c.list().length ? l[l.length - 1].body : "";
}

function renderSide() {
  if (!client) return;
  const q = [...client.queue.values()].sort((a, b) => (a.created_at || 0) - (b.created_at || 0));
  $("queue-count").textContent = String(q.length);
  const queue = $("queue");
  queue.replaceChildren(...q.map((info) => {
    const wait = formatDuration(Date.now() / 1000 - (info.queued_at || info.created_at || Date.now() / 1000));
    const who = customerLabel(info.customer_id, info.id);
    const accept = el("button", { type: "button", class: "accept", "aria-label": t("console.acceptWho", { name: who }), text: t("console.accept"), onclick: (ev) => {
      ev.stopPropagation();
      acceptConv(info.id);
    } });
    const lang = languageName(info.lang);
    return el("li", { "data-id": info.id, class: "queue-item" },
      el("div", { class: "grow" }, el("div", { class: "title", text: who }, lang ? el("span", { class: "lang", text: lang }) : null),
        info.preview ? el("div", { class: "sub preview", dir: "auto", text: info.preview }) : null,
        el("div", { class: "sub" }, el("span", { class: "wait", "data-created": info.queued_at || info.created_at, text: t("console.waiting", { time: wait }) }),
          info.last_seq ? " · " + t("console.count", { n: info.last_seq }) : "")),
      accept);
  }));
  if (!q.length) queue.append(el("li", { class: "sub", text: t("console.nobody") }));
  const mine = $("mine");
  const items = sortedMine();
  mine.replaceChildren(...items.map((c) => {
    const li = el("li", {
      role: "option", tabindex: "0", "data-id": c.id, class: "mine-item", "aria-selected": String(c.id === selected),
      onclick: () => select(c.id),
      onkeydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          select(c.id);
        } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
          ev.preventDefault();
          const sib = ev.key === "ArrowDown" ? li.nextElementSibling : li.previousElementSibling;
          if (sib) sib.focus();
        }
      },
    }, el("div", { class: "grow" },
      el("div", { class: "title", text: ["closed", "left", "transferred"].includes(c.info.status) ? t("console.closedMark", { name: customerLabel(c.info.customer_id, c.id) }) : customerLabel(c.info.customer_id, c.id) }),
      el("div", { class: "sub", dir: "auto", text: lastText(c) })));
    if (c.unread) li.append(el("span", { class: "unread", "aria-label": t("console.unread", { n: c.unread }), text: String(c.unread) }));
    return li;
  }));
  // in a listbox every item is an option (axe aria-required-children), the placeholder a disabled one
  if (!items.length) mine.append(el("li", { class: "sub", role: "option", "aria-disabled": "true", "aria-selected": "false", text: t("console.none") }));
}

async function acceptConv(id) {
  $("conv-error").textContent = "";
  try {
    await client.accept(id);
    select(id);
  } catch (e) {
    $("conv-error").textContent = t("console.acceptFailed", { error: e.message || e.code });
    if (e.code === "not_found") {
      client.queue.delete(id);
      renderSide();
    }
  }
}

function select(id) {
  selected = id;
  $("conv-error").textContent = "";
  $("transfer-box").hidden = true;
  renderSide();
  renderConv();
  const box = $("scroll");
  box.scrollTop = box.scrollHeight;
  $("composer-input").focus();
}

function renderConv() {
  const c = selected && client.conversations.get(selected);
  $("empty").hidden = !!c;
  $("conv").hidden = !c;
  if (!c) return;
  $("conv-title").textContent = customerLabel(c.info.customer_id, c.id);
  if (c.info.customer_id) c.names[c.info.customer_id] = customerLabel(c.info.customer_id, c.id); // on their messages
  const status = c.info.status || "open";
  $("conv-status").textContent = t("conv." + status);
  $("conv-status").dataset.status = status;
  const closed = ["closed", "left", "transferred"].includes(status);
  $("close-btn").disabled = closed;
  $("transfer-btn").disabled = closed;
  $("composer").hidden = closed;
  $("older").hidden = !c.hasOlder;
  pinnedScroll($("scroll"), () => renderMessages($("messages"), c, {
    me: client.user,
    server: client.server,
    pending: client.pending(c.id),
    notes: c.notes || [],
    onRetry: (cid) => client.retry(cid),
    onDiscard: (cid) => client.discard(cid),
  }));
  const typers = client.typers(c.id);
  $("typing").textContent = typers.length ? t("console.typing") : "";
  renderProfile(c);
  if (document.visibilityState === "visible" && document.hasFocus()) {
    client.markRead(c.id);
    if (unseen.has(c.id)) seen();
  }
}


async function loadProfile(customerId, force = false) {
  const known = profiles.get(customerId);
  if (!customerId || !client || !client.hello || !client.hello.agent) return;
  if (!force && known && (known.loading || Date.now() - known.at < PROFILE_TTL)) return;
  profiles.set(customerId, Object.assign({}, known || { profile: null }, { loading: true, at: Date.now() }));
  let profile = known ? known.profile : null;
  try {
    // ?missing=null: a customer without a profile is 200 null, not a 404 logged by the browser
    const r = await fetch(`/api/v1/customers/${encodeURIComponent(customerId)}/profile?missing=null`, { headers: { authorization: "Bearer " + client._token } });
    if (r.ok) profile = await r.json();
    else if (r.status === 404) profile = null;
  } catch (e) {
    /* keep what we had */
  }
  profiles.set(customerId, { at: Date.now(), profile });
  const c = selected && client.conversations.get(selected);
  if (c && c.info.customer_id === customerId) {
    renderProfile(c);
    $("conv-title").textContent = customerLabel(customerId, c.id);
  }
  const name = profile && profile.name;
  if (name !== (known && known.profile && known.profile.name)) renderSide();
}

/** The customer's name from their profile when there is one, else a
 * friendly visitor label made from the end of the id ("Visitor #3F2A"). */
function customerLabel(customerId, fallback) {
  const known = profiles.get(customerId);
  if (!known || Date.now() - known.at >= PROFILE_TTL) loadProfile(customerId);
  const name = known && known.profile && known.profile.name;
  if (name) return name;
  const id = String(customerId || fallback || "");
  return t("console.visitor", { tag: "#" + id.replace(/[^A-Za-z0-9]/g, "").slice(-4).toUpperCase() });
}

function renderProfile(c) {
  const dl = $("profile");
  const rows = [[t("console.customerId"), c.info.customer_id, false, "id"], [t("console.conversation"), c.id, false, "conversation"], [t("console.started"), formatDateTime(c.info.created_at), false, "started"]];
  const known = profiles.get(c.info.customer_id);
  const p = known && known.profile;
  if (p) {
    // values arrive masked by the server where this agent may not see them
    const masked = new Set(p.masked || []);
    for (const [k, label] of [["name", "Name"], ["email", "Email"], ["phone", "Phone"]]) if (p[k]) rows.push([t("console." + k), p[k], masked.has(k), label]);
    for (const [k, v] of Object.entries(p.attributes || {})) if (typeof v !== "object") rows.push([k, v, masked.has(k), k]);
  }
  dl.replaceChildren(...rows.flatMap(([k, v, sensitive, field]) => [
    el("dt", { text: k }),
    el("dd", { class: sensitive ? "masked" : null, dir: "auto", "aria-label": sensitive ? t("console.masked", { field: k }) : null, "data-field": field, text: String(v ?? "") }),
  ]));
  loadProfile(c.info.customer_id);
}

// ------------------------------------------------------------ composer
async function loadCanned() {
  if (!client || !client.hello || !client.hello.agent) return; // canned replies are part of the workflow
  try {
    const r = await fetch("/api/v1/canned", { headers: { authorization: "Bearer " + client._token } });
    if (!r.ok) return;
    const body = await r.json();
    canned = (body.canned || []).map((c) => ({ id: c.id, shortcut: c.shortcut, title: c.title || "", text: c.body, scope: c.scope }));
    renderCanned();
  } catch (e) {
    /* keep the list we had */
  }
}

/** Canned replies for what follows the "/": shortcuts starting with it
 * first, then those whose title or text contains it. */
function matches(prefix) {
  const p = prefix.toLowerCase();
  const first = canned.filter((x) => x.shortcut.startsWith(p));
  const more = p ? canned.filter((x) => !x.shortcut.startsWith(p) && (x.title.toLowerCase().includes(p) || x.text.toLowerCase().includes(p))) : [];
  return first.concat(more);
}

let cannedIndex = 0;
function renderCanned() {
  const v = $("composer-input").value;
  const list = $("canned");
  if (!v.startsWith("/") || v.includes("\n")) {
    list.hidden = true;
    $("composer-input").removeAttribute("aria-activedescendant");
    return [];
  }
  const found = matches(v.slice(1));
  cannedIndex = Math.min(cannedIndex, Math.max(0, found.length - 1));
  list.replaceChildren(...found.map((x, i) => el("li", {
    role: "option", id: `canned-${i}`, "aria-selected": String(i === cannedIndex),
    onmousedown: (e) => {
      e.preventDefault();
      insertCanned(x);
    },
  }, el("code", { text: "/" + x.shortcut }), el("span", { dir: "auto", text: x.title || x.text }),
    el("span", { class: "scope", text: t(x.scope === "personal" ? "console.cannedMine" : "console.cannedTeam") }))));
  list.hidden = !found.length;
  if (found.length) $("composer-input").setAttribute("aria-activedescendant", `canned-${cannedIndex}`);
  return found;
}

// Transfer targets: the agents (with availability and load) and the teams.
let targets = new Map(); // option value -> agent or team

async function loadTargets() {
  const get = async (path) => {
    const r = await fetch(path, { headers: { authorization: "Bearer " + client._token } });
    return r.ok ? r.json() : {};
  };
  const select = $("transfer-to");
  try {
    const [agents, teams] = await Promise.all([get("/api/v1/agents"), get("/api/v1/teams")]);
    targets = new Map();
    const people = (agents.agents || []).filter((a) => !a.disabled && a.id !== client.user.id)
      .sort((a, b) => (a.status === "online" ? 0 : 1) - (b.status === "online" ? 0 : 1) || String(a.name).localeCompare(String(b.name)));
    const agentGroup = el("optgroup", { label: t("console.agents") });
    for (const a of people) {
      targets.set("agent:" + a.id, a);
      agentGroup.append(el("option", { value: "agent:" + a.id, text: t("console.targetAgent", {
        name: a.name || a.id, status: t(`console.status.${a.status}`), load: a.load, capacity: a.capacity }) }));
    }
    const teamGroup = el("optgroup", { label: t("console.teams") });
    for (const team of [{ id: "", name: t("console.defaultTeam") }, ...(teams.teams || [])]) {
      targets.set("team:" + team.id, team);
      teamGroup.append(el("option", { value: "team:" + team.id, text: t("console.targetTeam", { name: team.name || team.id }) }));
    }
    select.replaceChildren(agentGroup, teamGroup);
  } catch (e) {
    /* keep the list we had */
  }
  warnTarget();
}

/** Warn when the chosen agent is offline, away or full. */
function warnTarget() {
  const a = targets.get($("transfer-to").value);
  let warn = "";
  if (a && a.status !== undefined) {
    if (a.load >= a.capacity) warn = t("console.targetFull", { name: a.name || a.id });
    else if (a.status === "offline") warn = t("console.targetOffline", { name: a.name || a.id });
    else if (a.status === "away") warn = t("console.targetAway", { name: a.name || a.id });
  }
  $("transfer-warn").textContent = warn;
}

/** The composer writes internal notes while "Internal note" is ticked. */
function noteMode() {
  const on = $("note-mode").checked;
  $("composer").classList.toggle("noting", on);
  $("composer-input").placeholder = t(on ? "console.notePlaceholderMode" : "console.replyPlaceholder");
}

/** Save what is in the composer as one of my canned replies (POST /api/v1/canned, personal). */
async function saveCanned() {
  const shortcut = $("save-shortcut").value.trim().replace(/^\//, "").toLowerCase();
  const body = $("composer-input").value;
  const note = $("canned-note");
  if (!shortcut || !body.trim()) return;
  try {
    const r = await fetch("/api/v1/canned", {
      method: "POST",
      headers: { authorization: "Bearer " + client._token, "content-type": "application/json" },
      body: JSON.stringify({ scope: "personal", shortcut, body }),
    });
    if (r.status === 201) {
      $("save-box").hidden = true;
      $("save-shortcut").value = "";
      note.textContent = t("console.cannedSaved", { shortcut: "/" + shortcut });
      loadCanned();
      $("composer-input").focus();
    } else {
      note.textContent = t(r.status === 409 ? "console.cannedTaken" : r.status === 400 ? "console.cannedBad" : "console.cannedFailed");
    }
  } catch (e) {
    note.textContent = t("console.cannedFailed");
  }
}

function insertCanned(x) {
  $("composer-input").value = x.text;
  $("canned").hidden = true;
  $("composer-input").focus();
}

function sendReply() {
  const input = $("composer-input");
  const body = input.value;
  if (!body.trim() || !selected) return;
  if ($("note-mode").checked) {
    // an internal note: staff only, never sent to the customer
    client.note(selected, body).then(() => {
      $("note-mode").checked = false;
      noteMode();
    }, (e) => ($("conv-error").textContent = t("console.noteFailed", { error: e.message || e.code })));
  } else client.send(selected, body);
  input.value = "";
  renderConv();
  $("scroll").scrollTop = $("scroll").scrollHeight;
}

// ------------------------------------------------------- notifications
// The title blinks while some conversation has messages I have not seen:
// it stops once I look at each of them (open it in a focused window).
const unseen = new Map(); // conversation id -> messages not seen yet

function notify(conv, message) {
  const visible = document.visibilityState === "visible" && document.hasFocus();
  if (visible && conv.id === selected) return;
  unseen.set(conv.id, (unseen.get(conv.id) || 0) + 1);
  unseenCount = [...unseen.values()].reduce((a, b) => a + b, 0);
  if (!blink) {
    let on = false;
    blink = setInterval(() => {
      on = !on;
      document.title = on ? t("console.newMessage", { n: unseenCount }) : baseTitle();
    }, 1000);
    document.title = t("console.newMessage", { n: unseenCount });
    document.documentElement.dataset.blink = "on"; // for tests: the title is blinking
  }
  if ($("sound").checked) beep();
}

/** The selected conversation is on screen in a focused window: seen. */
function seen() {
  const visible = document.visibilityState === "visible" && document.hasFocus();
  if (!visible || !selected) return;
  unseen.delete(selected);
  unseenCount = [...unseen.values()].reduce((a, b) => a + b, 0);
  if (!unseen.size) stopBlink();
}

function stopBlink() {
  if (blink) clearInterval(blink);
  blink = null;
  delete document.documentElement.dataset.blink;
  unseen.clear();
  unseenCount = 0;
  document.title = baseTitle();
}

let audio = null;
function beep() {
  try {
    audio = audio || new AudioContext();
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.frequency.value = 880;
    g.gain.value = 0.05;
    o.connect(g).connect(audio.destination);
    o.start();
    o.stop(audio.currentTime + 0.15);
  } catch (e) {}
}

/** My availability (not the connection): the select, its dot, and a prompt to go online while offline. */
function showStatus(status) {
  $("agent-status").value = status;
  $("status-dot").dataset.status = status;
  $("go-online").hidden = status !== "offline" || !client || !client.hello || !client.hello.agent;
}

async function setStatus(status) {
  const r = await workflow("status", { status }, "console.doStatus");
  if (r && r.agent) showStatus(r.agent.status);
}

async function workflow(type, fields, what) {
  $("conv-error").textContent = "";
  try {
    return await client.call(type, fields);
  } catch (e) {
    const unsupported = e.code === "bad_request" && /type/i.test(e.message || "");
    $("conv-error").textContent = unsupported ? t("console.unsupported", { what: t(what) }) : t("console.failed", { what: t(what), error: e.message || e.code });
    return null;
  }
}

// ------------------------------------------------------------- wiring
function wire() {
  $("login-form").addEventListener("submit", passwordLogin);
  $("token-submit").addEventListener("click", () => useToken($("login-token").value));
  $("logout").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(REFRESH_KEY);
    if (client) client.close();
    client = null;
    selected = null;
    showLogin();
  });
  $("sound").addEventListener("change", () => localStorage.setItem(SOUND_KEY, $("sound").checked ? "1" : "0"));
  $("agent-status").addEventListener("change", () => setStatus($("agent-status").value));
  $("go-online-btn").addEventListener("click", () => setStatus("online"));
  $("older").addEventListener("click", async () => {
    const box = $("scroll");
    const before = box.scrollHeight;
    await client.loadOlder(selected);
    box.scrollTop += box.scrollHeight - before;
  });
  $("close-btn").addEventListener("click", () => workflow("close", { conversation: selected }, "console.doClose"));
  $("transfer-btn").addEventListener("click", async () => {
    $("transfer-box").hidden = false;
    await loadTargets();
    $("transfer-to").focus();
  });
  $("transfer-to").addEventListener("change", warnTarget);
  $("transfer-cancel").addEventListener("click", () => ($("transfer-box").hidden = true));
  $("transfer-go").addEventListener("click", async () => {
    const to = $("transfer-to").value;
    if (!to) return;
    const note = $("transfer-note").value.trim();
    const target = to.startsWith("team:") ? { to_team: to.slice(5) } : { to_agent: to.slice(6) };
    const r = await workflow("transfer", Object.assign({ conversation: selected }, target, note ? { note } : {}), "console.doTransfer");
    if (r) $("transfer-box").hidden = true;
  });
  $("note-mode").addEventListener("change", noteMode);
  $("save-canned").addEventListener("click", () => {
    $("save-box").hidden = false;
    $("canned-note").textContent = "";
    $("save-shortcut").focus();
  });
  $("save-cancel").addEventListener("click", () => {
    $("save-box").hidden = true;
    $("composer-input").focus();
  });
  $("save-go").addEventListener("click", saveCanned);
  $("save-shortcut").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      saveCanned();
    }
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendReply();
  });
  // Attachments: the file picker, images pasted into the reply box, files
  // dropped on the conversation; progress, errors and retry in #upload-note.
  // Each upload is sent to the conversation that was open when it started.
  let uploadingFor = null;
  const attachFiles = uploader(() => client, $("upload-note"), (up, conv) => {
    client.send(up.conversation || conv || uploadingFor, "", { attachments: [up.id] });
    renderConv();
  }, () => (uploadingFor = selected), "sc-console-uploads");
  resumeUploads = () => attachFiles.resume();
  dropZone($("conv"), (files) => selected && attachFiles(files));
  const attachBtn = $("attach-btn");
  attachBtn.setAttribute("aria-label", t("attach.button"));
  attachBtn.title = t("attach.button");
  attachBtn.addEventListener("click", () => $("attach-input").click());
  $("attach-input").addEventListener("change", () => {
    const files = [...$("attach-input").files];
    $("attach-input").value = "";
    attachFiles(files);
  });
  $("composer-input").addEventListener("paste", (e) => {
    const files = [...((e.clipboardData && e.clipboardData.files) || [])];
    if (files.length) {
      e.preventDefault();
      attachFiles(files);
    }
  });
  const input = $("composer-input");
  input.addEventListener("input", () => {
    cannedIndex = 0;
    renderCanned();
    $("save-canned").hidden = !(client && client.hello && client.hello.agent) || !input.value.trim() || input.value.startsWith("/");
    if (selected && input.value.trim() && !input.value.startsWith("/")) client.typing(selected);
  });
  input.addEventListener("keydown", (e) => {
    const open = !$("canned").hidden;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      const n = matches(input.value.slice(1)).length;
      cannedIndex = (cannedIndex + (e.key === "ArrowDown" ? 1 : n - 1)) % Math.max(1, n);
      renderCanned();
    } else if (open && (e.key === "Enter" || e.key === "Tab")) {
      e.preventDefault();
      const found = matches(input.value.slice(1));
      if (found[cannedIndex]) insertCanned(found[cannedIndex]);
    } else if (open && e.key === "Escape") {
      $("canned").hidden = true;
    } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendReply();
    }
  });
  const looked = () => {
    seen();
    if (client && selected) renderConv();
  };
  window.addEventListener("focus", looked);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && looked());
  setInterval(refreshQueue, 60000);
  setInterval(() => {
    for (const w of document.querySelectorAll("#queue .wait")) {
      const created = Number(w.dataset.created);
      if (created) w.textContent = t("console.waiting", { time: formatDuration(Date.now() / 1000 - created) });
    }
    if (client && selected) {
      const c = client.conversations.get(selected);
      if (c) $("typing").textContent = client.typers(c.id).length ? t("console.typing") : "";
    }
  }, 1000);
}

document.documentElement.lang = LANG;
document.documentElement.dir = dir();
document.title = baseTitle();
translatePage(document.body);
wire();
// A saved token, even expired: the client renews it with the refresh token,
// or asks to sign in again saying why.
const saved = localStorage.getItem(TOKEN_KEY);
if (agentClaims(saved)) startApp(saved);
else showLogin();
