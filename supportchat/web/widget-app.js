// The customer widget (loaded by widget.js). Everything lives in a shadow
// root so the host page's CSS cannot break it, and vice versa.
import { SupportChatClient, jwtClaims } from "./sc-client.js";
import { dropZone, el, personName, pinnedScroll, quickReplies, renderMessages, serverLang, uploader } from "./sc-ui.js";
import { LANG, dir, formatWhen, setLanguage, setText, t } from "./sc-i18n.js";

const CSS = `
:host { all: initial; }
[hidden] { display: none !important; }
* { box-sizing: border-box; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.launcher { position: fixed; bottom: 20px; right: 20px; width: 60px; height: 60px; border-radius: 50%; border: 0;
  background: #1f6feb; color: #fff; cursor: pointer; box-shadow: 0 4px 14px rgba(0,0,0,.25); z-index: 2147483000; }
.launcher.left { left: 20px; right: auto; }
.launcher svg { width: 28px; height: 28px; }
.launcher:focus-visible, button:focus-visible, textarea:focus-visible { outline: 3px solid #ffb000; outline-offset: 2px; }
.badge { position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px; border-radius: 11px; background: #d1242f;
  color: #fff; font-size: 12px; font-weight: 700; line-height: 22px; padding: 0 6px; }
.badge[hidden] { display: none; }
.panel { position: fixed; bottom: 92px; right: 20px; width: 370px; height: min(600px, calc(100vh - 120px)); display: flex;
  flex-direction: column; background: #fff; color: #1f2328; border-radius: 14px; box-shadow: 0 10px 40px rgba(0,0,0,.25);
  overflow: hidden; z-index: 2147483000; font-size: 14px; }
.panel.left { left: 20px; right: auto; }
.panel[hidden] { display: none; }
.head { background: #1f6feb; color: #fff; padding: 12px 14px; display: flex; align-items: center; gap: 8px; }
.head h2 { font-size: 16px; margin: 0; flex: 1; }
.conn { font-size: 12px; }
.conn::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #ffb000; margin-inline-end: 5px; }
.conn[data-state=open]::before { background: #3fb950; }
.conn[data-state=offline]::before { background: #f85149; }
.x { background: transparent; border: 0; color: #fff; font-size: 22px; cursor: pointer; line-height: 1; padding: 2px 6px; border-radius: 6px; }
.scroll { flex: 1; overflow-y: auto; padding: 12px; background: #f6f8fa; }
.intro { color: #57606a; text-align: center; margin: 6px 0 12px; }
ol { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: 8px; }
.sc-msg { max-width: 82%; padding: 8px 10px; border-radius: 12px; background: #fff; border: 1px solid #d0d7de; align-self: flex-start; }
.sc-own { align-self: flex-end; background: #ddf4ff; border-color: #b6e3ff; }
.sc-role-bot { background: #fff8c5; border-color: #eedc82; }
.sc-pending { border-style: dashed; } /* not opacity: the text keeps its contrast */
.sc-meta { font-size: 11px; color: #57606a; display: flex; gap: 6px; margin-bottom: 2px; }
.sc-body { white-space: pre-wrap; word-wrap: break-word; }
.sc-status { font-size: 11px; color: #57606a; text-align: end; margin-top: 2px; }
.intro-quick { margin: 0 0 10px; }
.expect { margin: 0 0 12px; padding: 8px 10px; border-radius: 8px; background: #fff8c5; color: #1f2328; font-size: 13px; text-align: center; }
.sc-body a { color: #0550ae; }
.counter { font-size: 11px; color: #57606a; padding: 0 12px 6px; text-align: end; background: #fff; }
.rating textarea { width: 100%; height: 48px; }
.sc-status-failed { color: #d1242f; }
.sc-status-seen { color: #116329; }
.sc-link { background: none; border: 0; color: #0969da; cursor: pointer; text-decoration: underline; font-size: 11px; }
.sc-event { align-self: center; font-size: 12px; color: #57606a; text-align: center; }
.sc-event[data-event="created"] { display: none; } /* the customer started it: nothing to tell */
.sc-quick { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; justify-content: center; }
.sc-chip { border: 1px solid #1f6feb; color: #1f6feb; background: #fff; border-radius: 14px; padding: 5px 10px; cursor: pointer; font-size: 13px; }
.sc-chip:hover { background: #ddf4ff; }
.typing, .queue { font-size: 12px; color: #57606a; padding: 0 14px; min-height: 18px; background: #f6f8fa; }
.rating { padding: 10px 14px; border-top: 1px solid #d0d7de; text-align: center; }
.rating[hidden] { display: none; }
.stars { display: flex; justify-content: center; gap: 4px; margin: 6px 0; }
.stars button { font-size: 24px; background: none; border: 0; cursor: pointer; color: #8c959f; }
.stars button[aria-checked=true], .stars button.lit { color: #d4a72c; }
form { display: flex; gap: 6px; padding: 10px; border-top: 1px solid #d0d7de; background: #fff; }
textarea { flex: 1; resize: none; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px; font-size: 14px; height: 40px; max-height: 120px; }
.attach { background: none; border: 1px solid #d0d7de; border-radius: 8px; padding: 0 8px; cursor: pointer; color: #57606a; display: flex; align-items: center; }
.sc-upload { font-size: 12px; color: #57606a; padding: 4px 14px; margin: 0; background: #f6f8fa; display: flex; gap: 8px; align-items: center; }
.sc-upload[hidden] { display: none; }
.sc-progress { flex: 1; height: 6px; }
.sc-progress[hidden] { display: none; }
.panel.sc-dropping { outline: 3px dashed #1f6feb; outline-offset: -6px; }
.sc-lightbox { border: 0; padding: 0; max-width: 96vw; max-height: 96vh; background: #fff; border-radius: 8px; }
.sc-lightbox::backdrop { background: rgba(0, 0, 0, 0.75); }
.sc-lightbox img { display: block; max-width: 96vw; max-height: calc(96vh - 44px); }
.sc-lightbox-bar { display: flex; justify-content: space-between; align-items: center; gap: 12px; padding: 8px 10px; font-size: 13px; }
.sc-files { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.sc-thumb { max-width: 200px; max-height: 200px; border-radius: 6px; display: block; }
.sc-file { display: inline-flex; gap: 8px; padding: 6px 10px; border: 1px solid #d0d7de; border-radius: 8px; background: #fff; color: #0969da; font-size: 13px; }
.sc-file-size { color: #57606a; }
.send { background: #1f6feb; color: #fff; border: 0; border-radius: 8px; padding: 0 14px; cursor: pointer; font-weight: 600; }
.restart { margin: 8px auto; display: block; }
.email { margin: 0; padding: 8px 14px; border-top: 1px solid #d0d7de; font-size: 13px; }
.email p { margin: 0 0 6px; }
.email .row { display: flex; gap: 6px; }
.email input[type=email] { flex: 1; min-width: 0; padding: 6px 8px; border: 1px solid #8c959f; border-radius: 6px; font-size: 13px; }
.email label.check { display: block; margin-top: 6px; }
.email .email-status { margin: 6px 0 0; }
.auth { margin: 10px; padding: 10px 12px; border: 1px solid #d4a72c; border-left-width: 4px; border-radius: 8px; background: #fff8c5; color: #1f2328; }
.auth[hidden] { display: none; }
.auth p { margin: 0 0 8px; }
.conn[data-state=unauthorized]::before { background: #f85149; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
@media (max-width: 480px) {
  .panel, .panel.left { inset: 0; width: 100vw; height: 100%; border-radius: 0; }
  .launcher { bottom: 14px; right: 14px; }
}
`;

const CLIP = '<svg viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M21 11.5l-8.6 8.6a5 5 0 0 1-7.1-7.1l8.6-8.6a3.3 3.3 0 0 1 4.7 4.7l-8.6 8.6a1.7 1.7 0 0 1-2.4-2.4l7.9-7.9"/></svg>';
const ICON = '<svg viewBox="0 0 24 24" fill="currentColor" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg>';

const MAX_BODY = 4000; // characters: the server's message body limit

const visitorKey = (server) => `sc:visitor:${server}`;

async function visitorToken(server, current) {
  const fresh = (t) => {
    const c = t && jwtClaims(t);
    return c && c.exp * 1000 > Date.now() + 60000;
  };
  if (fresh(current)) return current;
  try {
    const saved = JSON.parse(localStorage.getItem(visitorKey(server)) || "null");
    if (saved && fresh(saved.token)) return saved.token;
  } catch (e) {}
  const token = await newVisitor(server);
  if (!token) throw new Error("visitor token refused");
  return token;
}

/** A new anonymous visitor token (POST /api/v1/visitors), saved; null when
 * the server refuses one (visitors disabled); throws when it cannot be asked
 * now (unreachable, rate-limited, 5xx). */
async function newVisitor(server) {
  const r = await fetch(server + "/api/v1/visitors", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
  if (r.status === 429 || r.status >= 500) throw new Error(`visitor token: HTTP ${r.status}`);
  if (!r.ok) return null;
  const body = await r.json();
  try {
    localStorage.setItem(visitorKey(server), JSON.stringify({ token: body.token, expires_at: body.expires_at }));
  } catch (e) {}
  return body.token;
}

/** The server refused the saved visitor token (its secret changed, say):
 * forget it and start as a new visitor. */
function renewVisitor(server) {
  try {
    localStorage.removeItem(visitorKey(server));
  } catch (e) {}
  return newVisitor(server);
}

export function mount(opts) {
  setLanguage(opts.lang);
  const host = el("div", { id: "supportchat-widget", lang: LANG, dir: dir() });
  document.body.append(host);
  const root = host.attachShadow({ mode: "open" });
  root.append(el("style", { text: CSS }));
  const side = opts.position === "left" ? " left" : "";

  const badge = el("span", { class: "badge", hidden: true, "aria-hidden": "true" });
  const launcher = el("button", { type: "button", class: "launcher" + side, "aria-label": t("widget.open"), "aria-expanded": "false", "aria-controls": "sc-panel" });
  launcher.innerHTML = ICON;
  launcher.append(badge);
  const conn = el("span", { class: "conn", "data-state": "connecting", role: "status", text: t("conn.connecting") });
  const closeBtn = el("button", { type: "button", class: "x", "aria-label": t("widget.close"), text: "×" });
  // a list may not take role=log (axe aria-allowed-role): the log is its wrapper
  const list = el("ol", { class: "messages" });
  // focusable, so a keyboard can scroll it (axe scrollable-region-focusable)
  // The first impression (GET /api/v1/widget-config): the greeting, quick
  // replies and what to expect, shown before any conversation exists.
  const intro = el("p", { class: "intro", dir: "auto", text: opts.greeting || t("widget.greeting") });
  const introQuick = el("div", { class: "sc-quick intro-quick", role: "group", "aria-label": t("msg.suggested"), hidden: true });
  const expectNote = el("p", { class: "expect", role: "status" });
  const scroll = el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": t("widget.log") },
    intro, introQuick, expectNote, el("div", { role: "log", "aria-live": "polite" }, list));
  const typing = el("div", { class: "typing", "aria-live": "polite" });
  const queue = el("div", { class: "queue", role: "status" });
  const stars = el("div", { class: "stars", role: "radiogroup", "aria-label": t("widget.rateGroup") });
  const ratingNote = el("p", { class: "sc-note", text: t("widget.rateAsk") });
  const comment = el("textarea", { class: "comment", dir: "auto", rows: "2", maxlength: "1000", "aria-label": t("widget.comment"), placeholder: t("widget.comment") });
  const rating = el("div", { class: "rating", hidden: true }, ratingNote, stars, comment);
  const input = el("textarea", { class: "input", rows: "1", dir: "auto", "aria-label": t("widget.input"), placeholder: t("widget.placeholder"), maxlength: String(MAX_BODY) });
  const counter = el("div", { class: "counter", "aria-live": "polite", hidden: true });
  const sendBtn = el("button", { type: "submit", class: "send", text: t("widget.send") });
  const fileInput = el("input", { type: "file", accept: "image/*,application/pdf,text/plain", multiple: true, hidden: true });
  const attachBtn = el("button", { type: "button", class: "attach", "aria-label": t("attach.button"), title: t("attach.button") });
  attachBtn.innerHTML = CLIP;
  const uploadNote = el("div", { class: "sc-upload", role: "status" });
  const form = el("form", { "aria-label": t("widget.form") }, attachBtn, fileInput, input, sendBtn);
  const restart = el("button", { type: "button", class: "sc-chip restart", hidden: true, text: t("widget.restart") });
  // The offline form: after hours or with nobody online, the visitor may leave an
  // address (POST /api/v1/email); agent replies, and the transcript if asked, come by email.
  const emailInput = el("input", { type: "email", id: "sc-email", autocomplete: "email", maxlength: "254", required: true, placeholder: t("widget.email.placeholder") });
  const emailTranscript = el("input", { type: "checkbox", id: "sc-email-transcript" });
  const emailStatus = el("p", { class: "email-status", role: "status" });
  const emailSave = el("button", { type: "button", class: "sc-chip", text: t("widget.email.save") });
  // a group, not a second <form>: the message form stays the widget's only form
  const emailOffer = el("p", {});
  const emailCheck = el("label", { class: "check", for: "sc-email-transcript" }, emailTranscript, " ", t("widget.email.transcript"));
  const emailForm = el("div", { class: "email", role: "group", hidden: true, "aria-label": t("widget.email.form") },
    emailOffer,
    el("div", { class: "row" },
      el("label", { for: "sc-email", class: "sr", text: t("widget.email.label") }), emailInput, emailSave),
    emailCheck,
    emailStatus);
  const emailSaved = new Set();
  let emailMode = "replies";
  // The server refused the token and no new one could be had: say so, offer to start again.
  const authText = el("p", {});
  const authBtn = el("button", { type: "button", class: "sc-chip" });
  const authBox = el("div", { class: "auth", role: "alert", hidden: true }, authText, authBtn);
  const title = opts.title || t("widget.title");
  const panel = el("section", { class: "panel" + side, id: "sc-panel", role: "dialog", "aria-label": t("widget.dialog", { title }), hidden: true },
    el("div", { class: "head" }, el("h2", { text: title }), conn, closeBtn), scroll, queue, typing, emailForm, rating, restart, authBox, uploadNote, counter, form);
  root.append(launcher, panel);

  // The visitor's language for the agents: the browser's own tag (e.g. "zh-CN")
  // when it is the language the widget speaks, else the widget's language.
  const navigatorTag = () => {
    const nav = (globalThis.navigator && navigator.language) || "";
    return nav.split("-")[0].toLowerCase() === LANG.split("-")[0].toLowerCase() ? nav : LANG;
  };
  const client = new SupportChatClient({
    server: opts.server,
    lang: navigatorTag(),
    storageKey: "sc-widget",
    getToken: (t) => (opts.token ? Promise.resolve(opts.token) : visitorToken(opts.server, t)),
    // an anonymous visitor whose token is refused becomes a new visitor at once;
    // an integrator's token (data-token) is theirs to renew (SupportChat.setToken)
    renewToken: () => (opts.token ? null : renewVisitor(opts.server)),
  });
  let convId = null;
  let isOpen = false;
  let rated = new Set();

  const current = () => (convId ? client.conversations.get(convId) : null);
  const isClosed = (c) => c && ["closed", "left"].includes(c.info.status);

  function pickConversation() {
    if (convId && client.conversations.has(convId) && !isClosed(client.conversations.get(convId))) return;
    const open = [...client.conversations.values()].filter((c) => !isClosed(c)).sort((a, b) => b.lastActivity - a.lastActivity);
    if (open.length) convId = open[0].id;
  }

  function render() {
    pickConversation();
    const c = current();
    const pending = client._outbox.filter((o) => o.conversation === convId || o.conversation === "new");
    pinnedScroll(scroll, () => renderMessages(list, c, {
      me: client.user,
      server: client.server,
      pending,
      onQuickReply: (v) => send(v),
      onRetry: (id) => client.retry(id),
      onDiscard: (id) => client.discard(id),
    }));
    const unread = [...client.conversations.values()].reduce((n, x) => n + (x.unread || 0), 0);
    badge.hidden = isOpen || unread === 0;
    badge.textContent = unread > 9 ? "9+" : String(unread);
    launcher.setAttribute("aria-label", unread && !isOpen ? t("widget.openUnread", { n: unread }) : t("widget.open"));
    const typers = c ? client.typers(c.id) : [];
    typing.textContent = typers.length ? t("widget.typing", { name: personName({ id: typers[0], role: "agent" }, c) }) : "";
    queue.textContent = c && c.queuePosition && !isClosed(c) ? queueText({ position: c.queuePosition }) : "";
    renderIntro(c, pending);
    const closed = isClosed(c);
    // Nobody can answer now: replies by email (and the transcript if asked).
    // Someone can: only the transcript at close, so live replies are not mailed too.
    emailForm.hidden = !(widgetConfig && widgetConfig.email && c && !closed);
    if (!emailSaved.has(c?.id)) emailMode = expectation() ? "replies" : "transcript";
    setText(emailOffer, emailMode === "replies" ? "widget.email.offer" : "widget.email.offerTranscript");
    emailCheck.hidden = emailMode !== "replies";
    const ratingWasHidden = rating.hidden;
    rating.hidden = !(closed && c && c.info.status === "closed" && (!c.rating || rated.has(c.id)));
    if (ratingWasHidden && !rating.hidden) scroll.scrollTop = scroll.scrollHeight; // the last message stays in view
    stars.hidden = !!c?.rating;
    comment.hidden = !!c?.rating;
    const refused = client.state === "unauthorized";
    authBox.hidden = !refused;
    restart.hidden = !closed || refused;
    form.hidden = closed || refused;
    if (isOpen && c && document.visibilityState === "visible" && document.hasFocus()) client.markRead(c.id);
  }

  function queueText(q) {
    const where = q.position === 1 ? t("widget.queueNext") : t("widget.queuePos", { n: q.position });
    const wait = expectation();
    return wait ? `${where} ${wait}` : where;
  }

  let widgetConfig = null;
  let configAsked = 0;
  /** GET /api/v1/widget-config (public, no conversation created), at most every 30 s. */
  async function loadConfig() {
    if (Date.now() - configAsked < 30000) return;
    configAsked = Date.now();
    try {
      const r = await fetch(opts.server + "/api/v1/widget-config");
      if (r.ok) widgetConfig = await r.json();
    } catch (e) {
      /* the static greeting stays */
    }
    render();
  }

  /** After hours or nobody online: when the visitor can expect an answer. */
  function expectation() {
    const cfg = widgetConfig;
    if (!cfg) return "";
    if (cfg.open_now === false) return t("widget.afterHours", { when: formatWhen(cfg.next_open) });
    if (cfg.agents_online === false) return t("widget.nobodyOnline");
    return "";
  }

  function renderIntro(c, pending) {
    const started = (c && c.messages.size > 0) || pending.length > 0;
    const greeting = widgetConfig && widgetConfig.greeting;
    const text = opts.greeting || (greeting && (greeting[serverLang()] || greeting.en)) || t("widget.greeting");
    if (intro.textContent !== text) intro.textContent = text;
    // once the conversation has the bot's own greeting, the intro would repeat it
    intro.hidden = !!(c && c.list().some((m) => String(m.client_msg_id || "").startsWith("bot:greet:")));
    const qr = !started && widgetConfig ? quickReplies(widgetConfig) : [];
    introQuick.hidden = !qr.length;
    if (introQuick.dataset.sig !== qr.map((q) => q.label).join("|")) {
      introQuick.dataset.sig = qr.map((q) => q.label).join("|");
      introQuick.replaceChildren(...qr.map((q) => el("button", { type: "button", class: "sc-chip", dir: "auto", text: q.label, onclick: () => send(q.value) })));
    }
    const wait = started ? "" : expectation();
    if (expectNote.textContent !== wait) expectNote.textContent = wait;
    expectNote.hidden = !wait;
  }

  function send(text) {
    const body = String(text);
    if (!body.trim()) return;
    pickConversation();
    const c = current();
    client.send(c && !isClosed(c) ? c.id : "new", body);
    render();
  }

  for (let i = 1; i <= 5; i++) {
    const b = el("button", { type: "button", role: "radio", "aria-checked": "false", "aria-label": t("widget.star", { n: i }), text: "★", "data-score": i });
    b.addEventListener("click", () => rate(i));
    b.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const n = Math.min(5, Math.max(1, i + (e.key === "ArrowRight" ? 1 : -1)));
        stars.children[n - 1].focus();
        e.preventDefault();
      }
    });
    stars.append(b);
  }

  async function rate(score) {
    const c = current();
    if (!c) return;
    [...stars.children].forEach((b, j) => b.setAttribute("aria-checked", String(j + 1 === score)));
    try {
      const note = comment.value.trim();
      await client.call("rate", Object.assign({ conversation: c.id, rating: score }, note ? { comment: note } : {}));
      rated.add(c.id);
      c.rating = score;
      ratingNote.textContent = t("widget.rated");
    } catch (e) {
      ratingNote.textContent = t("widget.rateFailed", { error: e.message || e.code });
    }
    render();
  }

  emailInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      saveEmail();
    }
  });
  emailSave.addEventListener("click", () => saveEmail());
  async function saveEmail() {
    const c = current();
    const address = emailInput.value.trim();
    if (!c || !emailInput.checkValidity() || !address) {
      emailStatus.textContent = t("widget.email.invalid");
      return;
    }
    try {
      const r = await fetch(opts.server + "/api/v1/email", {
        method: "POST",
        headers: { authorization: "Bearer " + client._token, "content-type": "application/json" },
        body: JSON.stringify(emailMode === "replies"
          ? { conversation: c.id, email: address, transcript: emailTranscript.checked, replies: true, lang: navigatorTag() }
          : { conversation: c.id, email: address, transcript: true, replies: false, lang: navigatorTag() }),
      });
      if (r.status === 400) emailStatus.textContent = t("widget.email.invalid");
      else if (!r.ok) emailStatus.textContent = t("widget.email.failed");
      else {
        emailSaved.add(c.id);
        emailStatus.textContent = t(emailMode === "replies" ? "widget.email.saved" : "widget.email.savedTranscript", { email: address });
        emailInput.value = "";
        emailInput.disabled = true;
        emailSave.disabled = true;
      }
    } catch (err) {
      emailStatus.textContent = t("widget.email.failed");
    }
    render();
  }

  function setOpen(v) {
    isOpen = v;
    panel.hidden = !v;
    launcher.setAttribute("aria-expanded", String(v));
    if (v) {
      if (client.state === "idle") client.connect();
      loadConfig();
      input.focus();
      scroll.scrollTop = scroll.scrollHeight;
    } else launcher.focus();
    render();
  }

  launcher.addEventListener("click", () => setOpen(!isOpen));
  closeBtn.addEventListener("click", () => setOpen(false));
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") setOpen(false);
    if (e.key === "Tab") keepFocusInside(e);
  });

  /** Tab from the last control goes to the first, Shift+Tab from the first to the last. */
  function keepFocusInside(e) {
    const focusable = [...panel.querySelectorAll("button, textarea, a[href], [tabindex='0']")]
      .filter((n) => !n.disabled && n.offsetParent !== null && !n.closest("[hidden]"));
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    const active = root.activeElement;
    if (e.shiftKey && (active === first || !panel.contains(active))) {
      last.focus();
      e.preventDefault();
    } else if (!e.shiftKey && (active === last || !panel.contains(active))) {
      first.focus();
      e.preventDefault();
    }
  }
  restart.addEventListener("click", () => {
    convId = null;
    client.conversations.forEach((c) => isClosed(c) && client.conversations.delete(c.id));
    render();
    input.focus();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send(input.value);
    input.value = "";
    input.focus();
  });
  // Attachments: the button's file picker, images pasted into the text box,
  // files dropped on the panel; progress, errors and retry in uploadNote.
  const attach = uploader(() => client, uploadNote, (up) => {
    pickConversation();
    const c = current();
    client.send(c && !isClosed(c) ? c.id : "new", "", { attachments: [up.id] });
    render();
  }, () => null, "sc-widget-uploads");
  let resumed = false;
  client.addEventListener("hello", () => {
    if (!resumed) {
      resumed = true;
      attach.resume(); // files a reload interrupted
    }
  });
  dropZone(panel, attach);
  attachBtn.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const files = [...fileInput.files];
    fileInput.value = "";
    attach(files);
  });
  input.addEventListener("paste", (e) => {
    const files = [...((e.clipboardData && e.clipboardData.files) || [])];
    if (files.length) {
      e.preventDefault();
      attach(files);
    }
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    const n = input.value.length;
    counter.hidden = n < MAX_BODY - 500;
    counter.textContent = t("widget.counter", { n, max: MAX_BODY });
    const c = current();
    if (c && input.value.trim()) client.typing(c.id);
  });

  client.addEventListener("change", render);
  client.addEventListener("hello", render);
  client.addEventListener("pendingnew", render);
  client.addEventListener("status", (e) => {
    const s = e.detail.state;
    conn.dataset.state = s;
    conn.removeAttribute("lang");
    if (s === "unauthorized") setText(conn, "widget.auth.state");
    else conn.textContent = t(s === "open" ? "conn.open" : s === "offline" ? "conn.offline" : "conn.connecting");
    render();
  });
  client.addEventListener("authfailed", (e) => {
    setText(authText, opts.token ? "widget.auth.refused" : "widget.auth.visitor");
    setText(authBtn, opts.token ? "widget.auth.retryToken" : "widget.auth.retry");
    // the embedding page may answer with SupportChat.setToken(newJwt)
    window.dispatchEvent(new CustomEvent("supportchat:authfailed", { detail: { reason: e.detail.reason } }));
    render();
  });
  authBtn.addEventListener("click", () => {
    if (!opts.token) {
      try {
        localStorage.removeItem(visitorKey(opts.server));
      } catch (e) {}
      client.setToken(null);
    }
    client.connect();
    input.focus();
  });
  window.addEventListener("focus", render);
  document.addEventListener("visibilitychange", render);

  // connect at once when the visitor already has a conversation (unread badge), else on first open
  let hasHistory = !!opts.token;
  try {
    hasHistory = hasHistory || !!localStorage.getItem(`sc:visitor:${opts.server}`);
  } catch (e) {}
  if (hasHistory) client.connect();
  if (opts.open) setOpen(true);

  return {
    client,
    open: () => setOpen(true),
    close: () => setOpen(false),
    setToken: (t) => {
      opts.token = t;
      client.setToken(t);
      if (client.state === "unauthorized") client.connect();
    },
  };
}
