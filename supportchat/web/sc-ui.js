// Rendering shared by the widget and the console: a keyed message list that
// is rebuilt from the client's state (confirmed messages by seq, pending ones
// by client_msg_id), so whatever order frames arrive in, each message is on
// screen exactly once.
import { isOwn } from "./sc-client.js";
import { LANG, formatDateTime, formatTime, formatWhen, t, uploadErrorKey } from "./sc-i18n.js";

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** The short language code the server's texts use ("zh" for zh-Hans). */
export const serverLang = () => LANG.split("-")[0];

/** Quick replies carried by a message, in any of the shapes a bot may use;
 * the label and text in the viewer's language when the reply has them
 * (`i18n: {zh: {label, text}}`), so a click keeps the bot in that language. */
export function quickReplies(m) {
  const q = m.quick_replies || m.buttons || (m.event && (m.event.quick_replies || m.event.buttons)) || (m.meta && m.meta.quick_replies);
  if (!Array.isArray(q)) return [];
  return q.map((x) => {
    if (typeof x === "string") return { label: x, value: x };
    const own = (x.i18n && x.i18n[serverLang()]) || {};
    const label = own.label || x.label || x.title || x.text || x.value;
    return { label, value: own.text || x.value || x.payload || x.text || x.label };
  }).filter((x) => x.label);
}

/** A message's text in the viewer's language when it carries several
 * (the bot's greeting: `event.texts` {zh: "..."}), else its body. */
export function bodyText(m) {
  const texts = m.event && m.event.texts;
  return (texts && typeof texts[serverLang()] === "string" && texts[serverLang()]) || m.body;
}

/** A participant's display name: the message's own, else one learnt from the
 * conversation's events, else what they are (agent, assistant...). */
export function personName(sender, conv) {
  if (!sender) return "";
  const known = conv && conv.names && conv.names[sender.id];
  if (sender.name || known) return sender.name || known;
  return t({ bot: "msg.bot", agent: "msg.agent", admin: "msg.agent", customer: "msg.customer", system: "msg.system" }[sender.role] || "msg.agent");
}

/** Who wrote a message, as the viewer should read it. */
export function senderLabel(m, me, conv) {
  if (!m.sender) return "";
  if (isOwn(m.sender, me)) return t("msg.you");
  return personName(m.sender, conv);
}

/** A lifecycle event in the viewer's language, from its name and data (never the server's prose). */
export function eventText(m, conv) {
  const e = m.event || {};
  const who = (u) => (u && (u.name || (conv && conv.names && conv.names[u.id]))) || t("ev.someone");
  switch (e.name) {
    case "created": return t("ev.created");
    case "queued": return e.reason === "agent_disabled" || e.reason === "agent_offline" ? t("ev.requeued", { name: who(e.from) }) : t("ev.queued");
    case "assigned":
    case "joined": return t("ev.joined", { name: who(e.user || m.sender) });
    case "transferred": return e.to ? t("ev.transferredAgent", { name: who(e.to) }) : t("ev.transferredTeam");
    case "closed": return t("ev.closed");
    case "reopened": return t("ev.reopened");
    case "after_hours": return t("ev.afterHours", { when: formatWhen(e.next_open) });
    case "handoff": return e.reason === "after_hours" ? t("ev.handoffAfterHours") : t("ev.handoff");
    case "left": return t("ev.left", { name: who(e.user || m.sender) });
    default: return t("ev.other");
  }
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

/** Text with its http(s) links as anchors (opened in a new tab, no opener, no referrer). */
export function linkify(text) {
  const out = [];
  let last = 0;
  for (const match of String(text || "").matchAll(URL_RE)) {
    let href = match[0].replace(/[.,;:!?)\]}'"]+$/, "");
    let url = null;
    try {
      url = new URL(href);
    } catch (e) {}
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) continue;
    if (match.index > last) out.push(text.slice(last, match.index));
    out.push(el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: href }));
    last = match.index + href.length;
  }
  if (last < String(text || "").length) out.push(String(text).slice(last));
  return out;
}

/**
 * Render the messages of `conv` into the <ol> `list`.
 * opts: { me, onQuickReply(value), onRetry(cid), onDiscard(cid), pending: [...] }
 */
export function renderMessages(list, conv, opts) {
  const me = opts.me;
  const items = [];
  const msgs = conv ? conv.list() : [];
  const othersRead = conv ? Math.max(0, ...Object.values(conv.readBy)) : 0;
  let lastOwnSeen = -1;
  for (const m of msgs) if (isOwn(m.sender, me) && m.kind === "text" && m.seq <= othersRead) lastOwnSeen = m.seq;
  for (const m of msgs) items.push({ key: "s" + m.seq, m, pending: false });
  for (const p of opts.pending || []) items.push({ key: "p" + p.client_msg_id, m: p, pending: true });
  // staff: internal notes, each after the message it was written after
  for (const n of opts.notes || []) {
    const at = items.findIndex((i) => !i.pending && !i.note && i.m.seq > (n.after_seq || 0));
    const item = { key: "n" + n.key, m: n, note: true };
    if (at < 0) items.splice(items.findIndex((i) => i.pending) < 0 ? items.length : items.findIndex((i) => i.pending), 0, item);
    else items.splice(at, 0, item);
  }

  const existing = new Map();
  for (const child of [...list.children]) existing.set(child.dataset.key, child);
  const keep = new Set(items.map((i) => i.key));
  for (const [k, child] of existing) if (!keep.has(k)) child.remove();

  const lastText = [...msgs].reverse().find((m) => m.kind !== "event" || quickReplies(m).length);
  items.forEach((item, index) => {
    const { m, pending } = item;
    if (item.note) {
      let node = existing.get(item.key);
      if (!node) {
        node = buildNote(m, conv);
        node.dataset.key = item.key;
      }
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
      return;
    }
    const own = pending || isOwn(m.sender, me);
    let status = "";
    if (pending) status = m.state === "failed" ? "failed" : "sending";
    else if (own && m.kind === "text") status = m.seq === lastOwnSeen ? "seen" : "sent";
    const qr = !pending && lastText === m ? quickReplies(m) : [];
    const sig = [status, bodyText(m), qr.length, m.kind, m.kind === "event" ? eventText(m, conv) : senderLabel(m, me, conv),
      attachmentsOf(m).map((a) => a.id + (a.url ? "+" : "")).join(",")].join("|");
    let node = existing.get(item.key);
    if (!node || node.dataset.sig !== sig) {
      const fresh = buildMessage(item, own, status, qr, opts, conv);
      fresh.dataset.key = item.key;
      fresh.dataset.sig = sig;
      if (node) node.replaceWith(fresh);
      node = fresh;
    }
    if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
  });
}

function buildMessage(item, own, status, qr, opts, conv) {
  const { m, pending } = item;
  if (!pending && m.kind === "event") {
    const li = el("li", { class: "sc-event", "data-seq": m.seq, "data-event": (m.event && m.event.name) || "" }, el("span", { text: eventText(m, conv) }));
    if (qr.length) li.append(quickReplyBar(qr, opts));
    return li;
  }
  const who = pending ? t("msg.you") : senderLabel(m, opts.me, conv);
  const role = pending ? "me" : m.sender && m.sender.role;
  const li = el("li", {
    class: `sc-msg ${own ? "sc-own" : "sc-other"} sc-role-${role}${pending ? " sc-pending" : ""}`,
    "data-seq": pending ? null : m.seq,
    "data-cid": m.client_msg_id || null,
    "data-status": status || null,
  });
  const time = pending || !m.ts ? null : el("time", { class: "sc-time", datetime: new Date(m.ts * 1000).toISOString(), title: formatDateTime(m.ts), text: formatTime(m.ts) });
  const meta = el("div", { class: "sc-meta" }, el("span", { class: "sc-who", text: who }), time);
  li.append(meta, el("div", { class: "sc-body", dir: "auto" }, ...linkify(bodyText(m))));
  const files = attachmentsOf(m);
  if (files.length) li.append(attachmentList(files, opts.server));
  if (status) {
    const label = t({ sending: "msg.sending", failed: "msg.failed", sent: "msg.sent", seen: "msg.seen" }[status]);
    const st = el("div", { class: `sc-status sc-status-${status}` }, el("span", { text: label }));
    if (status === "failed") {
      if (m.error) st.append(el("span", { class: "sc-err", text: " (" + m.error + ")" }));
      st.append(el("button", { type: "button", class: "sc-link", text: t("msg.retry"), onclick: () => opts.onRetry && opts.onRetry(m.client_msg_id) }));
      st.append(el("button", { type: "button", class: "sc-link", text: t("msg.discard"), onclick: () => opts.onDiscard && opts.onDiscard(m.client_msg_id) }));
    }
    li.append(st);
  }
  if (qr.length) li.append(quickReplyBar(qr, opts));
  return li;
}

/** The attachments of a message that the server has shown (objects with links). */
function attachmentsOf(m) {
  return Array.isArray(m.attachments) ? m.attachments.filter((a) => a && typeof a === "object" && a.id) : [];
}

function sizeText(n) {
  if (n >= 1048576) return (n / 1048576).toFixed(1) + " MB";
  if (n >= 1024) return Math.round(n / 1024) + " KB";
  return n + " B";
}

/** Images as thumbnails that open the full image; other files as cards with a download link. */
export function attachmentList(files, server) {
  const abs = (u) => (u ? new URL(u, server || globalThis.location.href).href : null);
  const box = el("div", { class: "sc-files" });
  for (const a of files) {
    const url = abs(a.url);
    if (a.thumbnail_url) {
      const img = el("img", { src: abs(a.thumbnail_url), alt: a.name, class: "sc-thumb", loading: "lazy" });
      const link = el("a", { href: url, target: "_blank", rel: "noopener", class: "sc-image", title: t("attach.open") + " " + a.name }, img);
      link.addEventListener("click", (e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || !globalThis.HTMLDialogElement) return; // a new tab, as asked
        e.preventDefault();
        lightbox(link, url, a.name);
      });
      box.append(link);
    } else {
      box.append(el("a", { href: url, target: "_blank", rel: "noopener", class: "sc-file", download: a.name },
        el("span", { class: "sc-file-name", text: a.name }), el("span", { class: "sc-file-size", text: sizeText(a.size || 0) })));
    }
  }
  return box;
}

/** The full image over the page (a modal dialog: Escape or the button closes it). */
export function lightbox(from, url, name) {
  const close = el("button", { type: "button", class: "sc-lightbox-close", text: t("attach.close") });
  const dialog = el("dialog", { class: "sc-lightbox", "aria-label": name },
    el("img", { src: url, alt: name }),
    el("div", { class: "sc-lightbox-bar" },
      el("a", { href: url, target: "_blank", rel: "noopener", text: t("attach.openOriginal") }), close));
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => e.target === dialog && dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    from.focus();
  });
  const root = from.getRootNode();
  (root.body || root).append(dialog);
  dialog.showModal();
  close.focus();
}

/** Files waiting to be uploaded, kept in IndexedDB (database `name`) so
 * that a reload or a lost connection does not lose them; null without IndexedDB. */
function pendingFiles(name) {
  if (!name || !globalThis.indexedDB) return null;
  const opened = new Promise((resolve) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore("files", { keyPath: "id" });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
  });
  const run = async (mode, fn) => {
    const db = await opened;
    if (!db) return null;
    return new Promise((resolve) => {
      const tx = db.transaction("files", mode);
      const req = fn(tx.objectStore("files"));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => resolve(null);
    });
  };
  return {
    put: (entry) => run("readwrite", (st) => st.put(entry)),
    remove: (id) => run("readwrite", (st) => st.delete(id)),
    all: async () => (await run("readonly", (st) => st.getAll())) || [],
  };
}

const TRANSIENT = ["unavailable", "rate_limited", "scanner_unavailable"];

/**
 * Uploads for a page, through `getClient()` (the page's current
 * SupportChatClient): `status` (an element with role=status) shows
 * "Uploading…" with a progress bar, or the error in the page's language
 * with a Retry button. `sendWith(upload, conversation)` sends the message
 * once a file is stored. `attach(files)` uploads them one after another.
 * With `keep` (an IndexedDB name) a file is kept until its message is in
 * the client's outbox, and `attach.resume()` (after a reload) uploads what
 * a failure or the reload interrupted.
 */
export function uploader(getClient, status, sendWith, conversation = () => null, keep = null) {
  const text = el("span", {});
  const bar = el("progress", { max: "1", value: "0", class: "sc-progress", "aria-hidden": "true" });
  const retry = el("button", { type: "button", class: "sc-link", text: t("attach.retry"), hidden: true });
  status.append(text, bar, retry);
  status.hidden = true;
  const pending = pendingFiles(keep);
  let failed = [];
  async function upload(item) {
    const { file, conv } = item;
    status.hidden = false;
    retry.hidden = true;
    text.textContent = t("attach.uploading") + " " + (file.name || "");
    bar.hidden = false;
    bar.value = 0;
    try {
      const up = await getClient().upload(file, conv, (f) => (bar.value = f));
      sendWith(up, conv);
      if (pending) await pending.remove(item.id);
      status.hidden = true;
    } catch (e) {
      bar.hidden = true;
      text.textContent = t(uploadErrorKey(e.code)) + " (" + (file.name || "") + ")";
      const transient = TRANSIENT.includes(e.code);
      retry.hidden = !transient;
      if (transient) failed.push(item);
      else if (pending) await pending.remove(item.id);
    }
  }
  async function attach(files) {
    for (const file of files) {
      const item = { id: `${Date.now()}-${Math.random().toString(36).slice(2)}`, file, conv: conversation() };
      if (pending) await pending.put({ id: item.id, owner: getClient().identity, conv: item.conv, name: file.name, type: file.type, blob: file });
      await upload(item);
    }
  }
  attach.resume = async () => {
    if (!pending) return;
    const owner = getClient().identity;
    for (const e of await pending.all()) {
      if (e.owner !== owner || failed.some((f) => f.id === e.id)) continue;
      await upload({ id: e.id, conv: e.conv, file: new File([e.blob], e.name || "file", { type: e.type || "" }) });
    }
  };
  retry.addEventListener("click", async () => {
    const again = failed;
    failed = [];
    for (const item of again) await upload(item);
  });
  return attach;
}

/** Files dropped on `zone` (drag and drop) go to `attach`. */
export function dropZone(zone, attach) {
  zone.addEventListener("dragover", (e) => {
    if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) {
      e.preventDefault();
      zone.classList.add("sc-dropping");
    }
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("sc-dropping"));
  zone.addEventListener("drop", (e) => {
    zone.classList.remove("sc-dropping");
    const files = [...((e.dataTransfer && e.dataTransfer.files) || [])];
    if (files.length) {
      e.preventDefault();
      attach(files);
    }
  });
}

/** An internal note in the console's conversation: marked as such, with its author. */
function buildNote(n, conv) {
  const who = personName(n.author, conv);
  const li = el("li", { class: "sc-note", "data-note": n.id || n.key, "data-after": n.after_seq || 0 });
  const time = n.ts ? el("time", { class: "sc-time", datetime: new Date(n.ts * 1000).toISOString(), title: formatDateTime(n.ts), text: formatTime(n.ts) }) : null;
  li.append(el("div", { class: "sc-meta" }, el("strong", { text: t("msg.note") }), el("span", { class: "sc-who", text: who }), time),
    el("div", { class: "sc-body", dir: "auto" }, ...linkify(n.body)));
  return li;
}

function quickReplyBar(qr, opts) {
  const bar = el("div", { class: "sc-quick", role: "group", "aria-label": t("msg.suggested") });
  for (const q of qr) bar.append(el("button", { type: "button", class: "sc-chip", dir: "auto", text: q.label, onclick: () => opts.onQuickReply && opts.onQuickReply(q.value, q) }));
  return bar;
}

/** Keep a scroll container pinned to the bottom if it was there. */
export function pinnedScroll(box, fn) {
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  fn();
  if (atBottom) box.scrollTop = box.scrollHeight;
}
