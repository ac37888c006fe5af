'use strict';
// Reference relay for bench/run.py: supportchat's wire protocol v1, just
// enough of it (hello, start, accept, message -> ack + delivery, ping) for
// the same load generator to drive it, on the npm `ws` package.
//
// It keeps everything in memory and writes nothing anywhere: there is no
// durability, no idempotency table and no history. Its ack is sent as soon
// as the message is parsed. It is the "how fast could a bare relay be"
// yardstick, not a chat server.
//
// permessage-deflate is configured like supportchat's defaults
// (conf/supportchat.toml [websocket]): server window 11 bits, memLevel 3,
// the client asked for an 11-bit window, context takeover on in both
// directions, and only messages of 1024 bytes or more compressed. `ws`
// applies its own `threshold` only when context takeover is off, so the
// threshold is applied here, per send, with the `compress` option.
//
// Usage: RELAY_JWT_SECRET=... node node_relay.js [--port 0] [--host 127.0.0.1]
//        [--no-deflate] [--threshold 1024] [--window-bits 11] [--mem-level 4]
// Prints "listening <port>" once it accepts connections.

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const HOST = option('--host', '127.0.0.1');
const PORT = Number(option('--port', '0'));
const DEFLATE = !process.argv.includes('--no-deflate');
const THRESHOLD = Number(option('--threshold', '1024'));
const WINDOW_BITS = Number(option('--window-bits', '11'));
const MEM_LEVEL = Number(option('--mem-level', '3'));
const SECRET = process.env.RELAY_JWT_SECRET || '';
const PATH = '/ws';
const SUBPROTOCOL = 'supportchat.v1';
const MAX_MESSAGE_BYTES = 65536;
const MAX_BODY_CHARS = 4000;
const HEARTBEAT = 30;            // seconds, announced in hello
const PING_INTERVAL_MS = 30000;  // like auto_ping_interval
const PING_TIMEOUT_MS = 10000;   // like auto_ping_timeout
const QUEUE_LIMIT = 50;          // unassigned conversations in an agent's hello
const LEEWAY = 30;

if (SECRET.length < 32) {
  process.stderr.write('node_relay: RELAY_JWT_SECRET must be 32+ characters\n');
  process.exit(2);
}

// -- tokens: HS256 JWTs with sub, role, exp ---------------------------------
function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyToken(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = decodePart(parts[0]);
    claims = decodePart(parts[1]);
  } catch (e) {
    return null;
  }
  if (!header || header.alg !== 'HS256') return null;
  const mac = crypto.createHmac('sha256', SECRET).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], 'base64url');
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  if (typeof claims.exp !== 'number' || claims.exp + LEEWAY < Date.now() / 1000) return null;
  if (typeof claims.sub !== 'string' || !claims.sub || claims.sub.length > 128) return null;
  if (!['customer', 'agent', 'admin'].includes(claims.role)) return null;
  const name = typeof claims.name === 'string' ? claims.name : null;
  return { id: claims.sub, role: claims.role, name };
}

function tokenOf(req) {
  const auth = req.headers.authorization;
  if (auth) {
    const m = /^bearer\s+(\S+)/i.exec(auth);
    if (m) return m[1];
  }
  const q = req.url.indexOf('?');
  if (q >= 0) {
    const t = new URLSearchParams(req.url.slice(q + 1)).get('access_token');
    if (t) return t;
  }
  return null;
}

// -- state -------------------------------------------------------------------
const byUser = new Map();      // user id -> Set of sockets
const agents = new Set();      // sockets of agents and admins
const conversations = new Map(); // id -> conversation
const openOf = new Map();      // customer id -> open conversation id
const unassigned = new Map();  // id -> conversation, in creation order
const convsOf = new Map();     // user id -> Set of conversation ids

function join(userId, convId) {
  let set = convsOf.get(userId);
  if (!set) convsOf.set(userId, (set = new Set()));
  set.add(convId);
}

function now() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function newId(prefix) {
  const ms = Math.floor(Date.now()).toString(16).padStart(12, '0');
  return prefix + ms + crypto.randomBytes(8).toString('hex');
}

function wireConversation(c) {
  return {
    id: c.id, status: c.status, customer_id: c.customer_id, created_at: c.created_at,
    last_seq: c.last_seq, last_msg_id: c.last_msg_id, last_ts: c.last_ts,
  };
}

function userWire(p) {
  const out = { id: p.id, role: p.role };
  if (p.name) out.name = p.name;
  return out;
}

function sendText(ws, text) {
  if (ws.readyState !== 1) return;
  ws.send(text, { compress: DEFLATE && Buffer.byteLength(text) >= THRESHOLD });
}

function send(ws, frame) {
  sendText(ws, JSON.stringify(frame));
}

function sendError(ws, code, message, ref) {
  const frame = { type: 'error', code, message };
  if (ref !== undefined && ref !== null) frame.ref = ref;
  send(ws, frame);
}

function deliver(userIds, frame, exclude, roles) {
  const text = JSON.stringify(frame);
  const targets = new Set();
  for (const uid of userIds) {
    const set = byUser.get(uid);
    if (set) for (const ws of set) targets.add(ws);
  }
  if (roles) for (const ws of agents) targets.add(ws);
  if (exclude) targets.delete(exclude);
  for (const ws of targets) sendText(ws, text);
}

function appendMessage(conv, sender, kind, body, clientMsgId, event) {
  conv.last_seq += 1;
  const ts = now();
  const msg = {
    type: 'message', conversation: conv.id, msg_id: newId('m'), seq: conv.last_seq,
    client_msg_id: clientMsgId, sender: { id: sender.id, role: sender.role },
    kind, body, ts,
  };
  if (event) msg.event = event;
  conv.last_msg_id = msg.msg_id;
  conv.last_ts = ts;
  return msg;
}

// Server pings like Autobahn's autoPing: one timer per connection, restarted
// by any traffic from the client; no pong within the timeout drops it.
function schedulePing(ws, delay) {
  ws.pingTimer = setTimeout(() => pingDue(ws), delay);
}

function pingDue(ws) {
  if (ws.readyState !== 1) return;
  const t = Date.now();
  if (ws.pingSent) {
    if (t - ws.pingSent >= PING_TIMEOUT_MS) return ws.terminate();
    return schedulePing(ws, PING_TIMEOUT_MS - (t - ws.pingSent));
  }
  const quiet = t - ws.lastSeen;
  if (quiet < PING_INTERVAL_MS) return schedulePing(ws, PING_INTERVAL_MS - quiet);
  ws.pingSent = t;
  ws.ping();
  schedulePing(ws, PING_TIMEOUT_MS);
}

// -- frames ------------------------------------------------------------------
function onStart(ws, p, f) {
  if (p.role !== 'customer') return sendError(ws, 'forbidden', 'only customers start conversations', f.ref);
  const existing = openOf.get(p.id);
  if (existing) {
    return send(ws, { type: 'conversation', ref: f.ref, conversation: wireConversation(conversations.get(existing)) });
  }
  const conv = {
    id: newId('c'), status: 'open', customer_id: p.id, created_at: now(),
    last_seq: 0, last_msg_id: null, last_ts: null, participants: [p.id], hasAgent: false,
  };
  conversations.set(conv.id, conv);
  openOf.set(p.id, conv.id);
  join(p.id, conv.id);
  unassigned.set(conv.id, conv);
  const body = wireConversation(conv);
  send(ws, { type: 'conversation', ref: f.ref, conversation: body });
  deliver([p.id], { type: 'conversation', conversation: body }, ws, true);
}

function onAccept(ws, p, f) {
  if (p.role !== 'agent' && p.role !== 'admin') return sendError(ws, 'forbidden', 'only agents accept conversations', f.ref);
  const conv = typeof f.conversation === 'string' ? conversations.get(f.conversation) : undefined;
  if (!conv || conv.status !== 'open') return sendError(ws, 'not_found', 'no such conversation', f.ref);
  if (!conv.participants.includes(p.id)) {
    conv.participants.push(p.id);
    join(p.id, conv.id);
    if (p.role === 'agent') {
      conv.hasAgent = true;
      unassigned.delete(conv.id);
    }
    const msg = appendMessage(conv, p, 'event', `${p.name || p.id} joined the conversation`, null,
      { name: 'joined', user: userWire(p) });
    deliver(conv.participants, msg, null, false);
  }
  send(ws, { type: 'conversation', ref: f.ref, conversation: wireConversation(conv) });
}

function onMessage(ws, p, f) {
  if (typeof f.conversation !== 'string' || !f.conversation || typeof f.client_msg_id !== 'string' || !f.client_msg_id) {
    return sendError(ws, 'bad_request', "'conversation' and 'client_msg_id' must be non-empty strings", f.ref);
  }
  if (typeof f.body !== 'string' || !f.body.trim()) return sendError(ws, 'bad_request', "'body' must be a non-empty string", f.ref);
  if (f.body.length > MAX_BODY_CHARS) return sendError(ws, 'too_large', `'body' is longer than ${MAX_BODY_CHARS} characters`, f.ref);
  const conv = conversations.get(f.conversation);
  if (!conv || !conv.participants.includes(p.id)) return sendError(ws, 'not_found', 'no such conversation', f.ref);
  const msg = appendMessage(conv, p, 'text', f.body, f.client_msg_id, null);
  send(ws, {
    type: 'ack', ref: f.ref, conversation: conv.id, client_msg_id: f.client_msg_id,
    msg_id: msg.msg_id, seq: msg.seq, ts: msg.ts, duplicate: false,
  });
  deliver(conv.participants, msg, ws, false);
}

function onFrame(ws, p, data, isBinary) {
  ws.lastSeen = Date.now();
  if (isBinary) return sendError(ws, 'bad_request', 'binary frames are not supported; send JSON text');
  const text = data.toString('utf8');
  if (text.trim() === 'ping') return sendText(ws, 'pong');
  let f;
  try {
    f = JSON.parse(text);
  } catch (e) {
    return sendError(ws, 'bad_request', 'frame is not valid JSON');
  }
  if (!f || typeof f !== 'object' || Array.isArray(f)) return sendError(ws, 'bad_request', 'frame must be a JSON object');
  const ref = typeof f.ref === 'number' || typeof f.ref === 'string' ? f.ref : undefined;
  switch (f.type) {
    case 'ping': return send(ws, ref === undefined ? { type: 'pong' } : { type: 'pong', ref });
    case 'start': return onStart(ws, p, f);
    case 'accept': return onAccept(ws, p, f);
    case 'message': return onMessage(ws, p, f);
    default: return sendError(ws, 'bad_request', 'unknown frame type', ref);
  }
}

function onOpen(ws, p) {
  ws.principal = p;
  ws.lastSeen = Date.now();
  ws.pingSent = 0;
  let set = byUser.get(p.id);
  if (!set) byUser.set(p.id, (set = new Set()));
  set.add(ws);
  if (p.role === 'agent' || p.role === 'admin') agents.add(ws);
  const states = [];
  for (const id of convsOf.get(p.id) || []) {
    const conv = conversations.get(id);
    if (conv.status === 'open') {
      states.push({ id: conv.id, status: conv.status, last_seq: conv.last_seq, last_msg_id: conv.last_msg_id,
        last_ts: conv.last_ts, unread: 0, last_read_seq: conv.last_seq });
    }
  }
  const hello = { type: 'hello', user: userWire(p), heartbeat: HEARTBEAT, conversations: states };
  if (agents.has(ws)) {
    hello.queue = [];
    for (const conv of unassigned.values()) {
      if (hello.queue.length >= QUEUE_LIMIT) break;
      hello.queue.push(wireConversation(conv));
    }
  }
  send(ws, hello);
  ws.on('message', (data, isBinary) => onFrame(ws, p, data, isBinary));
  ws.on('pong', () => { ws.lastSeen = Date.now(); ws.pingSent = 0; });
  schedulePing(ws, PING_INTERVAL_MS);
  ws.on('close', () => {
    clearTimeout(ws.pingTimer);
    const s = byUser.get(p.id);
    if (s) {
      s.delete(ws);
      if (!s.size) byUser.delete(p.id);
    }
    agents.delete(ws);
  });
  ws.on('error', () => {});
}

// -- server ------------------------------------------------------------------
const wss = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_MESSAGE_BYTES,
  clientTracking: true,
  handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  perMessageDeflate: DEFLATE ? {
    serverMaxWindowBits: WINDOW_BITS,
    clientMaxWindowBits: WINDOW_BITS,
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    zlibDeflateOptions: { memLevel: MEM_LEVEL },
    threshold: THRESHOLD,
  } : false,
});

function reject(socket, status, text, code, message) {
  const body = JSON.stringify({ error: { code, message } });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  const ok = path === '/healthz';
  res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' });
  res.end(JSON.stringify(ok ? { status: 'ok' } : { error: { code: 'not_found', message: 'no such resource' } }));
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  if (req.url.split('?')[0] !== PATH) return reject(socket, 404, 'Not Found', 'not_found', 'no such resource');
  const token = tokenOf(req);
  const principal = token ? verifyToken(token) : null;
  if (!principal) return reject(socket, 401, 'Unauthorized', 'unauthorized', 'a valid bearer token is required');
  wss.handleUpgrade(req, socket, head, (ws) => onOpen(ws, principal));
});


function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(PORT, HOST, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
