// supportchat client library: wire protocol v1 (docs/protocol.md) for browsers.
// Plain ES module, no dependencies, no build step. Used by the customer widget
// and the agent console; usable by integrators too:
//
//   import { SupportChatClient } from "https://chat.example/sc-client.js";
//   const client = new SupportChatClient({ server: "https://chat.example", token });
//   client.addEventListener("change", (e) => render(e.detail.conversation));
//   client.connect();
//
// What it guarantees on screen: every message is shown once, in seq order.
// Confirmed messages are keyed by seq; pending ones by client_msg_id and kept
// in a localStorage outbox that survives reloads, resent (same client_msg_id)
// after every reconnect until acknowledged, and dropped the moment the stored
// copy arrives (by ack, live delivery or sync), so a message can never show
// twice. A live message whose seq skips ahead triggers a sync from the last
// contiguous seq; every reconnect syncs each conversation from there too.
//
// Authentication failures end the reconnecting: a token that is expired (by
// its exp), refused at the handshake (a browser only sees close 1006, so the
// client then asks GET /api/v1/me, which answers 401 for a bad token), or an
// account disabled while connected (error frame account_disabled, close
// 1008). The client first asks opts.renewToken for a new token, once; without
// one it goes to state "unauthorized" and emits "authfailed" {reason,
// message}: the page asks the user to sign in again, then calls setToken()
// and connect(). A server that is away keeps being retried with backoff.

export const PROTOCOL = "supportchat.v1";

const now = () => Date.now();

/** A random RFC 4122 v4 id (crypto.randomUUID needs a secure context). */
export function uuid() {
  if (globalThis.crypto && crypto.randomUUID && globalThis.isSecureContext) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The claims of a JWT (unverified: only to read exp/sub/role for the UI). */
/**
 * Whether a message's sender is this user: the same id in the same
 * namespace (a customer and an agent may share an id; they are two people).
 */
export function isOwn(sender, me) {
  return !!(sender && me && sender.id === me.id && (sender.role === "customer") === (me.role === "customer"));
}

export function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(part + "===".slice((part.length + 3) % 4)))));
  } catch (e) {
    return null;
  }
}

/** Full-jitter exponential backoff: random in [0, min(max, base * 2^attempt)], at least `floor`. */
export function backoffDelay(attempt, base = 500, max = 15000, floor = 250) {
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 16));
  return Math.max(floor, Math.round(Math.random() * cap));
}

class Conversation {
  constructor(id) {
    this.id = id;
    this.info = { id };
    this.messages = new Map(); // seq -> message object
    this.low = null; // lowest seq of the loaded window (contiguous from here)
    this.contig = 0; // highest seq processed with nothing missing between low and it
    this.lastSeq = 0; // highest seq the server has reported
    this.readSeq = 0; // my read position
    this.unread = 0;
    this.readBy = {}; // user_id -> seq (other participants)
    this.names = {}; // user_id -> display name, learnt from the lifecycle events
    this.joinedSeq = 0; // staff: the seq of the event that gave me this conversation
    this.typing = {}; // user_id -> expiry ms
    this.syncing = false;
    this.hasOlder = false;
    this.loaded = false;
    this.lastActivity = 0;
  }

  /** Messages in seq order. */
  list() {
    return [...this.messages.values()].sort((a, b) => a.seq - b.seq);
  }
}

export class SupportChatClient extends EventTarget {
  /**
   * @param {object} opts
   *   server: base URL ("https://chat.example"); default: the page's origin
   *   token: JWT, or getToken: async () => JWT (called on every connect)
   *   wsPath: "/ws"; storage: a Storage (localStorage); storageKey: outbox key prefix
   *   initialWindow: how many recent messages to load per conversation (50)
   *   backoff: {base, max} in ms; ackTimeout: ms before an unacked message is resent on the same connection
   *   renewToken: async (refusedToken, reason) => a new JWT, or null when there is none (then
   *     "authfailed"); throw when the renewal could not be tried (offline): the client retries later
   *   authCheck: the path asked whether a token is good after a failed connect ("/api/v1/me"; false: never)
   */
  constructor(opts = {}) {
    super();
    this.server = (opts.server || globalThis.location.origin).replace(/\/+$/, "");
    this.lang = opts.lang || ""; // sent with "start"
    this.wsPath = opts.wsPath || "/ws";
    this._token = opts.token || null;
    this._getToken = opts.getToken || null;
    this._renewToken = opts.renewToken || null;
    this.authCheck = opts.authCheck === undefined ? "/api/v1/me" : opts.authCheck;
    this.authFailure = null; // {reason, message} once the server refused the token
    this._renewed = false; // a renewed token was tried since the last hello
    this.storage = opts.storage === undefined ? safeStorage() : opts.storage;
    this.storageKey = opts.storageKey || "sc";
    this.initialWindow = opts.initialWindow || 50;
    this.backoff = Object.assign({ base: 500, max: 15000 }, opts.backoff || {});
    this.ackTimeout = opts.ackTimeout || 10000;
    this.pongTimeout = opts.pongTimeout || 10000;
    this.user = null;
    this.heartbeat = 30;
    this.conversations = new Map();
    this.queue = new Map(); // agents: conversations nobody has joined
    this.state = "idle"; // idle | connecting | open | offline | unauthorized | closed
    this.ws = null;
    this._ref = 0;
    this._pending = new Map(); // ref -> {resolve, reject, frame}
    this._attempt = 0;
    this._gen = 0;
    this._timers = {};
    this._stopped = true;
    this._outbox = []; // [{conversation, client_msg_id, body, created, extra, state, error}]
    this._lastTyping = {};
    this._helloSeen = false;
    this.serverFeatures = new Set();
    this._online = () => this.state !== "open" && !this._stopped && this._reconnectNow();
    // the browser knows the network is gone: say so now, not after a missed heartbeat
    this._offline = () => {
      if (!this.ws || this._stopped) return;
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(4000, "network offline");
      } catch (e) {}
      this._onClosed(1006, "network offline", this._helloSeen);
    };
    this._visible = () => {
      if (document.visibilityState === "visible" && this.state === "offline" && !this._stopped) this._reconnectNow();
    };
  }

  // ---------------------------------------------------------------- tokens
  setToken(token) {
    this._token = token;
  }

  async _token_() {
    if (this._getToken) this._token = await this._getToken(this._token);
    return this._token;
  }

  get identity() {
    const c = this._token ? jwtClaims(this._token) : null;
    return c ? `${c.role}:${c.sub}` : "anon";
  }

  // ---------------------------------------------------------------- outbox
  _outboxKey() {
    return `${this.storageKey}:outbox:${this.server}:${this.identity}`;
  }

  _loadOutbox() {
    this._outbox = [];
    if (!this.storage) return;
    try {
      const raw = JSON.parse(this.storage.getItem(this._outboxKey()) || "[]");
      for (const m of raw) if (m && m.client_msg_id && (m.body || (m.extra && m.extra.attachments))) this._outbox.push(Object.assign(m, { state: m.state === "failed" ? "failed" : "pending" }));
    } catch (e) {
      this._outbox = [];
    }
  }

  /** The outbox belongs to an identity: once the token is known, load its
   * saved entries and adopt any sent before the token was (same ids, so a
   * message queued twice is still stored once). */
  _adoptOutbox() {
    const before = this._outbox;
    const oldKey = this._outboxKey.call({ storageKey: this.storageKey, server: this.server, identity: this._outboxFor || "anon" });
    this._outboxFor = this.identity;
    this._loadOutbox();
    for (const m of before) if (!this._outbox.some((o) => o.client_msg_id === m.client_msg_id)) this._outbox.push(m);
    if (this.storage && oldKey !== this._outboxKey()) {
      try { this.storage.removeItem(oldKey); } catch (e) {}
    }
    this._saveOutbox();
  }

  _saveOutbox() {
    if (!this.storage) return;
    try {
      const keep = this._outbox.map(({ conversation, client_msg_id, body, created, extra, state, error }) => ({ conversation, client_msg_id, body, created, extra, state, error }));
      if (keep.length) this.storage.setItem(this._outboxKey(), JSON.stringify(keep));
      else this.storage.removeItem(this._outboxKey());
    } catch (e) {
      /* storage full or disabled: the outbox still lives in memory */
    }
  }

  /** Pending (unacknowledged) messages of a conversation, oldest first. */
  pending(convId) {
    return this._outbox.filter((m) => m.conversation === convId);
  }

  // ------------------------------------------------------------ connection
  connect() {
    this._stopped = false;
    this.authFailure = null;
    this._authPending = null;
    if (this._outboxFor === undefined) {
      this._outboxFor = this.identity;
      this._loadOutbox();
    }
    globalThis.addEventListener?.("online", this._online);
    globalThis.addEventListener?.("offline", this._offline);
    globalThis.document?.addEventListener?.("visibilitychange", this._visible);
    this._open();
  }

  close() {
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._online);
    globalThis.removeEventListener?.("offline", this._offline);
    globalThis.document?.removeEventListener?.("visibilitychange", this._visible);
    this._clearTimers();
    if (this.ws) this.ws.close(1000);
    this._setState("closed");
  }

  _setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    this._emit("status", Object.assign({ state }, detail));
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) {
      clearTimeout(this._timers[k]);
      clearInterval(this._timers[k]);
    }
    this._timers = {};
  }

  _reconnectNow() {
    this._attempt = 0;
    clearTimeout(this._timers.reconnect);
    if (this.ws && this.ws.readyState <= 1) {
      // a socket that may be dead: probe it
      this._ping();
      return;
    }
    this._open();
  }

  async _open() {
    if (this._stopped) return;
    const gen = ++this._gen; // a later _open (connect(), online) supersedes this one's awaits
    clearTimeout(this._timers.reconnect);
    this._setState("connecting");
    let token;
    try {
      token = await this._token_();
    } catch (e) {
      this._emit("autherror", { error: e });
      return this._scheduleReconnect();
    }
    if (this._stopped || gen !== this._gen) return;
    if (!token) return this._authFailed("no_token", "no token", token);
    if (this._outboxFor !== this.identity) this._adoptOutbox();
    const claims = jwtClaims(token);
    if (claims && claims.exp && claims.exp * 1000 < now()) return this._authFailed("expired", "token has expired", token);
    this._usedToken = token;
    const url = this.server.replace(/^http/, "ws") + this.wsPath;
    let ws;
    try {
      ws = new WebSocket(url, [PROTOCOL, "bearer." + token]);
    } catch (e) {
      return this._scheduleReconnect();
    }
    this.ws = ws;
    this._helloSeen = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this._lastRx = now();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this._lastRx = now();
      this._onText(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._onClosed(ev.code, ev.reason, this._helloSeen);
    };
    ws.onerror = () => {};
  }

  _onClosed(code, reason, hadHello) {
    clearInterval(this._timers.heartbeat);
    clearTimeout(this._timers.pong);
    for (const [, p] of this._pending) p.reject(Object.assign(new Error("connection lost"), { code: "disconnected" }));
    this._pending.clear();
    for (const c of this.conversations.values()) (c.syncing = false), (c._readSent = null);
    if (this._stopped) return;
    this._setState("offline", { code, reason });
    const refused = this._authPending || (code === 1008 && /unauthori[sz]ed|account/i.test(reason || "")
      ? { reason: /account/i.test(reason) ? "account_disabled" : "unauthorized", message: reason } : null);
    this._authPending = null;
    if (refused) return this._authFailed(refused.reason, refused.message, this._usedToken);
    if ([1007, 1008, 1009].includes(code)) this._emit("protocolerror", { code, reason });
    if (!hadHello && code === 1006) {
      this._emit("connectfailed", { attempt: this._attempt });
      return this._checkToken(this._usedToken);
    }
    this._scheduleReconnect();
  }

  /** A connect failed before hello: was the token refused (GET /api/v1/me
   * answers 401), or is the server away (anything else: retry)? */
  async _checkToken(token) {
    const gen = this._gen;
    let verdict = null;
    if (this.authCheck && token && globalThis.fetch) {
      try {
        const r = await fetch(this.server + this.authCheck, { headers: { authorization: "Bearer " + token }, cache: "no-store" });
        if (r.status === 401) {
          const body = await r.json().catch(() => ({}));
          const err = body.error || {};
          verdict = { reason: err.reason || "unauthorized", message: err.message || "the server refused the token" };
        }
      } catch (e) {
        /* unreachable: transient */
      }
    }
    if (this._stopped || gen !== this._gen) return;
    if (verdict) return this._authFailed(verdict.reason, verdict.message, token);
    this._scheduleReconnect();
  }

  /** The token was refused: try one renewed token, else stop and tell the page. */
  async _authFailed(reason, message, token) {
    if (this._stopped) return;
    clearTimeout(this._timers.reconnect);
    if (this._renewToken && !this._renewed) {
      const gen = this._gen;
      let fresh;
      try {
        fresh = await this._renewToken(token, reason);
      } catch (e) {
        return this._scheduleReconnect(); // the renewal itself could not be tried (offline): later
      }
      if (this._stopped || gen !== this._gen) return;
      if (fresh && fresh !== token) {
        this._renewed = true;
        this._token = fresh;
        return this._open();
      }
    }
    this._renewed = false;
    this.authFailure = { reason, message };
    this._stopped = true;
    this._clearTimers();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000); } catch (e) {}
    }
    this._setState("unauthorized", { reason, message });
    this._emit("authfailed", { reason, message });
  }

  _scheduleReconnect() {
    if (this._stopped) return;
    const delay = backoffDelay(this._attempt++, this.backoff.base, this.backoff.max);
    this._emit("reconnecting", { delay, attempt: this._attempt });
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._open(), delay);
  }

  _sendRaw(frame) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    try {
      this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  }

  /** Send a frame with a ref; resolves with the reply (rejects on error frames). */
  request(frame, timeout = 15000) {
    const ref = `r${++this._ref}`;
    return new Promise((resolve, reject) => {
      if (!this._sendRaw(Object.assign({}, frame, { ref }))) {
        reject(Object.assign(new Error("not connected"), { code: "disconnected" }));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(Object.assign(new Error("no reply"), { code: "timeout" }));
      }, timeout);
      this._pending.set(ref, {
        frame,
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
    });
  }

  /** Wait until connected and greeted. */
  ready() {
    if (this.state === "open") return Promise.resolve();
    return new Promise((resolve) => {
      const on = (e) => {
        if (e.detail.state === "open") {
          this.removeEventListener("status", on);
          resolve();
        }
      };
      this.addEventListener("status", on);
    });
  }

  _ping() {
    const sentAt = now();
    if (!this._sendRaw({ type: "ping", ref: `hb${++this._ref}` })) return;
    clearTimeout(this._timers.pong);
    this._timers.pong = setTimeout(() => {
      // nothing at all received since the ping: the connection is dead
      if (this._lastRx < sentAt && this.ws) {
        const ws = this.ws;
        this.ws = null;
        try {
          ws.close(4000, "heartbeat timeout");
        } catch (e) {}
        this._onClosed(1006, "heartbeat timeout", this._helloSeen);
      }
    }, this.pongTimeout);
  }

  // -------------------------------------------------------------- inbound
  _onText(data) {
    if (data === "pong") return;
    let f;
    try {
      f = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!f || typeof f !== "object") return;
    const handler = this["_on_" + f.type];
    let handled = false;
    if (f.ref !== undefined && this._pending.has(f.ref)) {
      const p = this._pending.get(f.ref);
      this._pending.delete(f.ref);
      if (f.type === "error") p.reject(Object.assign(new Error(f.message || f.code), { code: f.code, frame: f }));
      else p.resolve(f);
      handled = f.type === "pong";
    }
    if (!handled && handler) handler.call(this, f);
    else if (!handler) this._emit("frame", f); // frames this library does not know yet
  }

  _conv(id) {
    let c = this.conversations.get(id);
    if (!c) {
      c = new Conversation(id);
      this.conversations.set(id, c);
    }
    return c;
  }

  _changed(conv, why) {
    this._emit("change", { conversation: conv, why });
  }

  _on_hello(f) {
    const firstHello = !this.user;
    this.user = f.user;
    this.heartbeat = f.heartbeat || 30;
    this.hello = f;
    this._helloSeen = true;
    this._attempt = 0;
    this._renewed = false;
    for (const k of Object.keys(f)) this.serverFeatures.add("hello." + k);
    clearInterval(this._timers.heartbeat);
    this._timers.heartbeat = setInterval(() => this._ping(), this.heartbeat * 1000);
    if (Array.isArray(f.queue)) {
      this.queue.clear();
      for (const q of f.queue) this.queue.set(q.id, q);
      this._emit("queue", { queue: [...this.queue.values()] });
    }
    const listed = new Set();
    for (const s of f.conversations || []) {
      listed.add(s.id);
      const c = this._conv(s.id);
      Object.assign(c.info, s);
      c.lastSeq = Math.max(c.lastSeq, s.last_seq || 0);
      c.readSeq = s.last_read_seq ?? c.readSeq;
      c.unread = s.unread ?? c.unread;
      c.lastActivity = Math.max(c.lastActivity, (s.last_ts || s.created_at || 0) * 1000);
      this.queue.delete(s.id);
    }
    for (const c of this.conversations.values()) {
      if (!listed.has(c.id) && c.info.status === "open") {
        // no longer open for me (closed, transferred away): keep it on screen, marked
        c.info.status = c.info.status === "open" ? "left" : c.info.status;
        this._changed(c, "status");
      }
    }
    for (const w of f.waiting || []) {
      // a customer's queued conversation (workflow): its position in the queue
      const c = this._conv(w.conversation);
      c.queuePosition = w.position ?? null;
    }
    if (f.agent) this.agentStatus = f.agent.status;
    this._setState("open");
    this._emit("hello", { hello: f, first: firstHello });
    for (const c of this.conversations.values()) {
      if (listed.has(c.id)) this.syncConversation(c.id);
    }
    this._flushOutbox();
  }

  _on_conversation(f) {
    const info = f.conversation;
    if (!info) return;
    const mine = this.conversations.has(info.id) || f.assigned || (this.user && info.customer_id === this.user.id && this.user.role === "customer");
    if (mine) {
      const c = this._conv(info.id);
      Object.assign(c.info, info);
      c.lastSeq = Math.max(c.lastSeq, info.last_seq || 0);
      c.lastActivity = Math.max(c.lastActivity, (info.last_ts || info.created_at || 0) * 1000);
      if (f.assigned || (info.status && info.status !== "open" && info.status !== "queued")) {
        this.queue.delete(info.id);
        this._emit("queue", { queue: [...this.queue.values()] });
      }
      this._changed(c, "conversation");
      if (c.lastSeq > c.contig) this.syncConversation(c.id);
    } else if (this.user && this.user.role !== "customer") {
      if (this.hello && this.hello.agent) return; // the workflow's inbox frames keep the queue
      if (info.status === "open" || info.status === "queued" || !info.status) this.queue.set(info.id, info);
      else this.queue.delete(info.id);
      this._emit("queue", { queue: [...this.queue.values()], added: info });
    }
  }

  _storeMessage(c, m) {
    if (typeof m.seq !== "number") return false;
    const fresh = !c.messages.has(m.seq);
    c.messages.set(m.seq, m);
    // a conversation known only from its messages (a transfer sends no conversation frame)
    if (!c.info.customer_id && m.sender && m.sender.role === "customer") c.info.customer_id = m.sender.id;
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    c.lastActivity = Math.max(c.lastActivity, (m.ts || 0) * 1000);
    if (c.low === null || m.seq < c.low) {
      if (c.low === null) {
        c.low = m.seq;
        c.contig = m.seq - 1;
      } else c.low = m.seq;
    }
    while (c.messages.has(c.contig + 1)) c.contig++;
    // the stored copy of one of my pending messages: drop the pending one
    if (m.client_msg_id && isOwn(m.sender, this.user)) {
      const i = this._outbox.findIndex((o) => o.client_msg_id === m.client_msg_id);
      if (i >= 0) {
        this._outbox.splice(i, 1);
        this._saveOutbox();
      }
    }
    if (m.kind === "event" && m.event) this._applyEvent(c, m);
    return fresh;
  }

  _applyEvent(c, m) {
    const name = m.event.name;
    const e = m.event;
    for (const u of [e.user, e.to, e.by, e.from]) if (u && u.id && u.name) c.names[u.id] = u.name;
    if (m.sender && m.sender.id && m.sender.name) c.names[m.sender.id] = m.sender.name;
    const mine = this.user && this.user.role !== "customer" && [e.user, e.to].some((u) => u && u.id === this.user.id);
    if (mine && ["assigned", "joined", "transferred"].includes(name)) c.joinedSeq = Math.max(c.joinedSeq, m.seq);
    if (name === "closed") c.info.status = "closed";
    if (name === "reopened") c.info.status = "open";
    if (name === "joined" || name === "assigned" || name === "closed") c.queuePosition = null;
    if (name === "transferred" || name === "left" || name === "closed" || name === "joined") this._changed(c, "event");
  }

  _on_message(f) {
    const c = this._conv(f.conversation);
    if (!c.loaded && c.low === null) {
      // first sight of this conversation: load its recent window first
      c.lastSeq = Math.max(c.lastSeq, f.seq);
      this.syncConversation(c.id);
      return;
    }
    const gap = f.seq > c.contig + 1 && f.seq > (c.low ?? 1);
    const fresh = this._storeMessage(c, f);
    if (fresh && f.kind === "text" && f.sender && this.user && !isOwn(f.sender, this.user) && f.seq > c.readSeq) {
      c.unread++;
      delete c.typing[f.sender.id];
      this._emit("incoming", { conversation: c, message: f });
    }
    this._changed(c, "message");
    if (gap) this.syncConversation(c.id);
  }

  _on_ack(f) {
    const c = this._conv(f.conversation);
    const i = this._outbox.findIndex((o) => o.client_msg_id === f.client_msg_id);
    const o = i >= 0 ? this._outbox[i] : null;
    if (o) {
      this._outbox.splice(i, 1);
      this._saveOutbox();
    }
    if (!c.messages.has(f.seq) && this.user) {
      this._storeMessage(c, {
        type: "message", conversation: f.conversation, msg_id: f.msg_id, seq: f.seq, client_msg_id: f.client_msg_id,
        sender: { id: this.user.id, role: this.user.role, name: this.user.name }, kind: "text",
        body: o ? o.body : "", ts: f.ts, ...(o && o.extra ? o.extra : {}),
        _acked: true,
      });
      if (!o) this.syncConversation(c.id); // body unknown (another tab's copy): fetch it
      else if (o.extra && o.extra.attachments) this._refetch(c, f.seq); // links only the server mints
    }
    c.readSeq = Math.max(c.readSeq, f.seq);
    c.unread = 0;
    this._changed(c, "ack");
  }

  /** Read one stored message again (a sent message's attachments, with their links). */
  async _refetch(c, seq) {
    try {
      const h = await this.request({ type: "sync", conversation: c.id, after_seq: seq - 1, limit: 1 });
      for (const m of h.messages || []) if (m.seq === seq) c.messages.set(seq, m);
      this._changed(c, "sync");
    } catch (e) {
      /* shown without links until the next sync */
    }
  }

  _on_history() {}

  _on_typing(f) {
    const c = this.conversations.get(f.conversation);
    if (!c) return;
    c.typing[f.user_id] = now() + 5000;
    this._changed(c, "typing");
    clearTimeout(this._timers["typing" + c.id]);
    this._timers["typing" + c.id] = setTimeout(() => this._changed(c, "typing"), 5100);
  }

  _on_read(f) {
    const c = this.conversations.get(f.conversation);
    if (!c) return;
    if (this.user && f.user_id === this.user.id) {
      c.readSeq = f.seq;
      if (typeof f.unread === "number") c.unread = f.unread;
      else c.unread = c.list().filter((m) => m.seq > f.seq && m.kind === "text" && !isOwn(m.sender, this.user)).length;
    } else {
      c.readBy[f.user_id] = f.seq;
    }
    this._changed(c, "read");
  }

  _on_pong() {}

  // Workflow frames (issue 5): queue position, close, transfer, agent status.
  _on_queue(f) {
    const c = this._conv(f.conversation);
    c.queuePosition = f.position ?? null;
    this._changed(c, "queue");
  }

  _on_closed(f) {
    const c = this.conversations.get(f.conversation);
    if (!c) return;
    c.info.status = "closed";
    c.queuePosition = null;
    this._changed(c, "status");
  }

  _on_transferred(f) {
    const c = this.conversations.get(f.conversation);
    if (!c) return;
    if (f.item && f.item.agent_id && this.user && f.item.agent_id === this.user.id) return;
    c.info.status = "transferred";
    this._changed(c, "status");
  }

  /** Agents (workflow): a conversation of my team changed its place in the
   * workflow; the queue shows exactly the queued ones, whoever took them. */
  _on_inbox(f) {
    const it = f.item;
    if (!it || !it.conversation) return;
    if (it.state === "queued") {
      this.queue.set(it.conversation, Object.assign({}, this.queue.get(it.conversation) || {}, {
        id: it.conversation, customer_id: it.customer_id, status: "queued", team: it.team,
        queued_at: it.queued_at, created_at: it.queued_at,
      }));
    } else {
      this.queue.delete(it.conversation);
    }
    this._emit("queue", { queue: [...this.queue.values()], item: it });
  }

  /** Agents: a customer's profile changed (REST); fetch it again. */
  _on_profile(f) {
    this._emit("profile", { customer_id: f.customer_id });
  }

  /** Agents: a canned reply I can use changed (REST); list them again. */
  _on_canned(f) {
    this._emit("canned", f);
  }

  _on_agent_status(f) {
    this.agentStatus = f.agent && f.agent.status;
    this._emit("agentstatus", f);
  }

  /** Staff: an internal note (never in the message log, never sent to
   * customers), live or from sync; kept once per id, in conversation order. */
  _on_note(f) {
    const mine = this.conversations.has(f.conversation);
    const mentioned = this.user && (f.mentions || []).includes(this.user.id) && !(f.author && this.user.id === f.author.id);
    if (mine) this._addNote(this._conv(f.conversation), f);
    if (mentioned) this._emit("mention", { note: f, joined: mine });
  }

  _addNote(c, f) {
    const key = f.id || `${f.ts}:${f.author && f.author.id}`;
    if ((c.notes || []).some((n) => n.key === key)) return;
    c.notes = (c.notes || []).concat([Object.assign({ key }, f)]).sort((a, b) => (a.after_seq || 0) - (b.after_seq || 0) || a.ts - b.ts);
    if (f.author && f.author.id && f.author.name) c.names[f.author.id] = f.author.name;
    this._changed(c, "note");
  }

  /** Staff: write an internal note (@id mentions notify those agents). */
  note(conversation, body) {
    return this.request({ type: "note", conversation, body });
  }

  /** Agents: reconcile the queue with a fresh list (REST inbox): after a
   * reconnect, or a gap in the live inbox frames (Redis pub/sub is lossy). */
  setQueue(items) {
    const fresh = new Map();
    for (const it of items) fresh.set(it.id, Object.assign({}, this.queue.get(it.id) || {}, it));
    for (const id of fresh.keys()) if (this.conversations.has(id) && this.conversations.get(id).info.status === "open") fresh.delete(id);
    this.queue = fresh;
    this._emit("queue", { queue: [...this.queue.values()] });
  }

  _on_rated(f) {
    const c = this.conversations.get(f.conversation);
    if (!c) return;
    c.rating = f.rating;
    this._changed(c, "rated");
  }

  _on_error(f) {
    // the server closes with 1008 next: that close is an authentication failure
    if (f.code === "account_disabled" && f.ref === undefined) this._authPending = { reason: "account_disabled", message: f.message };
    this._emit("servererror", f);
  }

  // -------------------------------------------------------------- syncing
  /** Fill this conversation from the last contiguous seq (or load its recent window). */
  async syncConversation(id) {
    const c = this._conv(id);
    if (c.syncing || this.state !== "open") return;
    c.syncing = true;
    try {
      if (c.low === null) {
        const after = Math.max(0, c.lastSeq - this.initialWindow);
        c.low = after + 1;
        c.contig = after;
        c.hasOlder = after > 0;
      }
      let more = true;
      while (more && this.state === "open") {
        const h = await this.request({ type: "sync", conversation: id, after_seq: c.contig, limit: 200 });
        for (const m of h.messages || []) this._storeMessage(c, m);
        for (const n of h.notes || []) this._addNote(c, n);
        Object.assign(c.names, h.names || {}); // the agents' display names of these messages
        for (const r of h.read || []) {
          // the others' read positions, once caught up (Seen marks survive a reload)
          if (!this.user || r.user_id !== this.user.id) c.readBy[r.user_id] = Math.max(c.readBy[r.user_id] || 0, r.seq);
        }
        if ((h.messages || []).length === 0) more = false;
        else more = !!h.has_more || c.contig < c.lastSeq;
        // messages missing in the middle (should not happen): avoid spinning
        if (h.messages && h.messages.length && c.contig < h.messages[h.messages.length - 1].seq && !h.has_more) more = false;
      }
      c.loaded = true;
      this._recountUnread(c);
      this._changed(c, "sync");
    } catch (e) {
      if (e.code === "not_found") {
        c.info.status = c.info.status === "open" ? "left" : c.info.status;
        this._changed(c, "status");
      }
    } finally {
      c.syncing = false;
    }
  }

  /** Unread: the others' text messages after my read position; for staff,
   * only those after the conversation came to me (not the bot's whole talk). */
  _recountUnread(c) {
    if (!this.user) return;
    const from = Math.max(c.readSeq, c.joinedSeq);
    if (c.low !== null && c.low <= from + 1) {
      c.unread = c.list().filter((m) => m.seq > from && m.kind === "text" && m.sender && !isOwn(m.sender, this.user)).length;
    }
  }

  /** Load an older page (history paging); resolves to the number of messages added. */
  async loadOlder(id, pageSize = 50) {
    const c = this._conv(id);
    if (!c.low || c.low <= 1) {
      c.hasOlder = false;
      return 0;
    }
    const after = Math.max(0, c.low - 1 - pageSize);
    const h = await this.request({ type: "sync", conversation: id, after_seq: after, limit: c.low - 1 - after });
    let n = 0;
    for (const m of h.messages || []) if (m.seq < c.low && !c.messages.has(m.seq)) (c.messages.set(m.seq, m), n++);
    c.low = after + 1;
    c.hasOlder = after > 0;
    this._changed(c, "older");
    return n;
  }

  // -------------------------------------------------------------- actions
  /** Customers: open (or get) my conversation (``lang``: the visitor's
   * language, shown to the agents with the queued conversation). */
  async start() {
    await this.ready();
    const frame = { type: "start" };
    if (this.lang) frame.lang = this.lang;
    const r = await this.request(frame);
    const c = this._conv(r.conversation.id);
    Object.assign(c.info, r.conversation);
    c.lastSeq = Math.max(c.lastSeq, r.conversation.last_seq || 0);
    this._changed(c, "conversation");
    this.syncConversation(c.id);
    return c;
  }

  /** Agents: join a conversation from the queue. */
  async accept(id) {
    const r = await this.request({ type: "accept", conversation: id });
    this.queue.delete(id);
    this._emit("queue", { queue: [...this.queue.values()] });
    const c = this._conv(id);
    Object.assign(c.info, r.conversation);
    c.lastSeq = Math.max(c.lastSeq, r.conversation.last_seq || 0);
    c.lastActivity = now();
    this._changed(c, "conversation");
    await this.syncConversation(id);
    return c;
  }

  /**
   * Send a message optimistically. `conversation` may be "new" (customers):
   * the conversation is started first. Returns the pending entry.
   */
  send(conversation, body, extra = null) {
    const entry = { conversation, client_msg_id: uuid(), body, created: now(), extra, state: "pending" };
    this._lastTyping[conversation] = 0; // a message ends the typing spell: the next keystroke signals at once
    this._outbox.push(entry);
    this._saveOutbox();
    if (conversation !== "new") this._changed(this._conv(conversation), "pending");
    else this._emit("pendingnew", { entry });
    if (conversation === "new") this._flushOutbox();
    else this._flushOne(entry);
    return entry;
  }

  /**
   * Upload a file (a File or Blob) for a later send(conversation, body,
   * {attachments: [id]}): POST /api/v1/attachments as multipart/form-data.
   * Resolves with the server's answer (id, name, content_type, size, url,
   * thumbnail_url...); rejects with an Error carrying `code` (too_large,
   * unsupported_type, infected, ...) and `status`.
   */
  async upload(file, conversation = null, onProgress = null) {
    const token = await this._token_();
    const form = new FormData();
    form.append("file", file, file.name || "file");
    if (conversation && conversation !== "new") form.append("conversation", conversation);
    const url = this.server + "/api/v1/attachments";
    // XMLHttpRequest, because fetch cannot report upload progress.
    const { status, data } = await new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("authorization", "Bearer " + token);
      if (onProgress) xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
      xhr.onload = () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText || "{}");
        } catch (e) {
          /* not JSON: a proxy's page */
        }
        resolve({ status: xhr.status, data: body });
      };
      xhr.onerror = () => reject(Object.assign(new Error("network error"), { code: "unavailable", status: 0 }));
      xhr.send(form);
    });
    if (status !== 201) {
      const err = (data && data.error) || {};
      throw Object.assign(new Error(err.message || "upload refused"), { code: err.code || "unavailable", status });
    }
    return data;
  }

  /** Drop a failed pending message. */
  discard(client_msg_id) {
    const i = this._outbox.findIndex((o) => o.client_msg_id === client_msg_id);
    if (i < 0) return;
    const [o] = this._outbox.splice(i, 1);
    this._saveOutbox();
    if (o.conversation !== "new") this._changed(this._conv(o.conversation), "pending");
  }

  /** Retry a failed pending message (same client_msg_id). */
  retry(client_msg_id) {
    const o = this._outbox.find((x) => x.client_msg_id === client_msg_id);
    if (!o) return;
    o.state = "pending";
    o.error = null;
    this._saveOutbox();
    this._flushOne(o);
  }

  async _flushOutbox() {
    if (this.state !== "open") return;
    if (this._outbox.some((o) => o.conversation === "new") && this.user && this.user.role === "customer") {
      if (this._starting) return; // the running start flushes when done
      try {
        this._starting = true;
        const c = await this.start();
        for (const o of this._outbox) if (o.conversation === "new") o.conversation = c.id;
        this._saveOutbox();
        this._changed(c, "pending");
      } catch (e) {
        return;
      } finally {
        this._starting = false;
      }
    }
    for (const o of [...this._outbox]) if (o.state === "pending") this._flushOne(o);
  }

  async _flushOne(o) {
    if (this.state !== "open" || o.conversation === "new" || o.inflight === this.ws) return;
    const ws = this.ws;
    o.inflight = ws;
    try {
      const frame = Object.assign({}, o.extra || {}, { type: "message", conversation: o.conversation, client_msg_id: o.client_msg_id, body: o.body });
      await this.request(frame, this.ackTimeout);
      // _on_ack already recorded it
    } catch (e) {
      if (!this._outbox.includes(o)) return;
      o.inflight = null;
      if (["not_found", "bad_request", "too_large", "forbidden"].includes(e.code)) {
        o.state = "failed";
        o.error = e.message;
        this._saveOutbox();
        this._changed(this._conv(o.conversation), "pending");
      } else if (this.ws === ws && this.state === "open") {
        // unavailable, rate_limited or no ack in time: the same frame again, later
        const wait = e.code === "rate_limited" ? 1000 : backoffDelay(1, 500, 4000);
        setTimeout(() => this._flushOne(o), wait);
      }
      // disconnected: resent after the next hello
    }
  }

  /** Tell others I am typing (throttled to one frame per 3 s). */
  typing(conversation) {
    const t = now();
    if ((this._lastTyping[conversation] || 0) > t - 3000) return;
    this._lastTyping[conversation] = t;
    this._sendRaw({ type: "typing", conversation });
  }

  /** Who is typing in a conversation right now (user ids). */
  typers(conversation) {
    const c = this.conversations.get(conversation);
    if (!c) return [];
    const t = now();
    return Object.entries(c.typing).filter(([, exp]) => exp > t).map(([u]) => u);
  }

  /** Mark everything up to the latest loaded message as read. */
  markRead(conversation) {
    const c = this.conversations.get(conversation);
    if (!c || this.state !== "open") return;
    const seq = c.contig;
    if ((seq <= c.readSeq && c.unread === 0) || seq === c._readSent) return;
    c._readSent = seq;
    c.readSeq = Math.max(c.readSeq, seq);
    c.unread = 0;
    this._changed(c, "read");
    this.request({ type: "read", conversation, seq }).catch(() => {});
  }

  /** Send any frame the server supports (workflow frames: transfer, close, rate...). */
  call(type, fields = {}) {
    return this.request(Object.assign({}, fields, { type }));
  }
}

function safeStorage() {
  try {
    const s = globalThis.localStorage;
    s.setItem("sc:probe", "1");
    s.removeItem("sc:probe");
    return s;
  } catch (e) {
    return null;
  }
}

/** Render helper: a message's display name. */
export function senderLabel(m, me) {
  if (!m.sender) return "";
  if (isOwn(m.sender, me)) return "You";
  return m.sender.name || (m.sender.role === "bot" ? "Assistant" : m.sender.role === "agent" ? "Agent" : m.sender.role === "customer" ? "Customer" : m.sender.id);
}

/** Seconds -> "3 min", "1 h 5 min". */
export function formatDuration(sec) {
  sec = Math.max(0, Math.floor(sec));
  if (sec < 60) return `${sec} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function formatTime(ts) {
  if (!ts) return "";
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
