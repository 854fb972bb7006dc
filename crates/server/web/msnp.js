// MSNP24 over the HTTP gateway (protocol reference §1, §3 and §11): frame encoding and decoding,
// formatted messages, and one gateway session (open, ordered sends, one held long poll at a time).
// No DOM here except DOMParser for XML bodies, so the wire logic stays apart from the page.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The gateway's URL; every request names the session in its query. */
const GATEWAY = "/gateway/gateway.dll";
/** Seconds a poll may be held (§11 caps it at 60). */
export const LIFESPAN = 30;

/** Escapes text for an XML element or attribute. */
export function xmlEscape(text) {
  return String(text)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&apos;");
}

/** Parses an XML body; returns null when it is not well-formed. */
export function parseXml(text) {
  const doc = new DOMParser().parseFromString(text, "application/xml");
  return doc.getElementsByTagName("parsererror").length > 0 ? null : doc;
}

/** The text of the first descendant `name` of `node`, or `fallback`. */
export function childText(node, name, fallback = "") {
  const el = node ? node.getElementsByTagName(name)[0] : undefined;
  return el ? el.textContent : fallback;
}

/** `8:bob;epid={…}` → `bob`; `19:…@thread.skype` stays as it is. */
export function accountOf(address) {
  const bare = String(address || "").split(";")[0];
  return bare.startsWith("8:") ? bare.slice(2) : bare;
}

/** A random epid in the 8-4-4-4-12 layout. */
export function newEpid() {
  return crypto.randomUUID();
}

/** A random decimal Client-Message-ID, as real clients send. */
export function newClientMessageId() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return ((BigInt(words[0] & 0x7fffffff) << 32n) | BigInt(words[1])).toString();
}

/** One frame as bytes: `CMD TrID TARGET LENGTH\r\n` then the payload (LENGTH in bytes, §1). */
export function encodeFrame(cmd, trid, target, payload) {
  const body = encoder.encode(payload);
  const head = encoder.encode(`${cmd} ${trid} ${target} ${body.length}\r\n`);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

function concat(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Joins response bodies and cuts them into frames; a frame split across bodies is kept for later. */
export class FrameReader {
  constructor() {
    this.buffer = new Uint8Array(0);
  }

  /** Adds bytes; returns the whole frames now available, or throws on a malformed first line. */
  push(bytes) {
    this.buffer = concat([this.buffer, bytes]);
    const frames = [];
    for (;;) {
      let eol = -1;
      for (let i = 0; i + 1 < this.buffer.length; i++) {
        if (this.buffer[i] === 13 && this.buffer[i + 1] === 10) {
          eol = i;
          break;
        }
      }
      if (eol < 0) return frames;
      const line = decoder.decode(this.buffer.subarray(0, eol));
      const parts = line.split(" ");
      if (parts.length !== 4 || !/^\d+$/.test(parts[3]) || !/^\d+$/.test(parts[1])) {
        throw new Error(`malformed frame line: ${line.slice(0, 80)}`);
      }
      const length = Number(parts[3]);
      if (this.buffer.length < eol + 2 + length) return frames;
      const payload = decoder.decode(this.buffer.subarray(eol + 2, eol + 2 + length));
      this.buffer = this.buffer.slice(eol + 2 + length);
      frames.push({ cmd: parts[0], trid: Number(parts[1]), target: parts[2], payload });
    }
  }
}

/** Reads one header block from `pos`: lines up to an empty line. Returns [Map, position after]. */
function headerBlock(text, pos) {
  const headers = new Map();
  while (pos < text.length) {
    const eol = text.indexOf("\r\n", pos);
    const line = eol < 0 ? text.slice(pos) : text.slice(pos, eol);
    pos = eol < 0 ? text.length : eol + 2;
    if (line === "") break;
    const colon = line.indexOf(":");
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return [headers, pos];
}

/** A reply's payload: its header block and the body after it (§1). */
export function parsePayload(payload) {
  if (payload.startsWith("<")) return { headers: new Map(), body: payload };
  const [headers, pos] = headerBlock(payload, 0);
  return { headers, body: payload.slice(pos) };
}

/** A formatted message (§3): transport headers, routing, reliability, content headers and body. */
export function parseFormatted(payload) {
  let pos = 0;
  const blocks = [];
  for (let i = 0; i < 4; i++) {
    const [h, next] = headerBlock(payload, pos);
    blocks.push(h);
    pos = next;
  }
  const [transport, routing, reliability, content] = blocks;
  let body = payload.slice(pos);
  const length = Number(content.get("content-length"));
  if (Number.isInteger(length)) {
    body = decoder.decode(encoder.encode(body).subarray(0, length));
  }
  return { transport, routing, reliability, content, body };
}

/**
 * A formatted message's payload. `kind` is the content block's first header (e.g.
 * ["Messaging", "2.0"]); `content` the other content headers in order; Content-Length is added.
 */
export function formatMessage({ transport = [], to, from, kind, content = [], body = "" }) {
  const lines = [];
  for (const [k, v] of transport) lines.push(`${k}: ${v}\r\n`);
  lines.push("\r\n");
  lines.push(`Routing: 1.0\r\nTo: ${to}\r\nFrom: ${from}\r\n\r\n`);
  lines.push("Reliability: 1.0\r\n\r\n");
  lines.push(`${kind[0]}: ${kind[1]}\r\n`);
  for (const [k, v] of content) lines.push(`${k}: ${v}\r\n`);
  lines.push(`Content-Length: ${encoder.encode(body).length}\r\n\r\n`);
  lines.push(body);
  return lines.join("");
}

/** Whether a frame is an error reply (a three-digit command, §9). */
export function isError(frame) {
  return /^\d{3}$/.test(frame.cmd);
}

/** Thrown when the gateway session is over; `reason` says why. */
export class SessionEnded extends Error {
  constructor(reason) {
    super(`session ended: ${reason}`);
    this.reason = reason;
  }
}

/**
 * One gateway session: one MSNP endpoint (§11). Frames the server sends on its own go to
 * `onFrame`; the end of the session (OUT, 400, network) goes to `onEnd` once.
 */
export class GatewaySession {
  constructor({ onFrame, onEnd }) {
    this.onFrame = onFrame;
    this.onEnd = onEnd;
    this.sessionId = null;
    this.nextTrid = 1;
    this.pending = new Map();
    this.registration = null;
    this.reader = new FrameReader();
    this.outbox = [];
    this.sending = false;
    this.ended = null;
    this.pollAbort = null;
    this.timeoutSecs = null;
  }

  /** A payload with the current Registration header and this body (§1). */
  payload(body = "") {
    return this.registration ? `Registration: ${this.registration}\r\n\r\n${body}` : `\r\n${body}`;
  }

  /** The transport headers for a formatted message. */
  transport() {
    return this.registration ? [["Registration", this.registration]] : [];
  }

  /** Opens the session with these frames pipelined (CNT, ATH, BND); resolves to their replies. */
  async open(frames) {
    const { bytes, replies } = this.prepare(frames);
    let response;
    try {
      response = await fetch(`${GATEWAY}?Version=1&Protocol=mtp&Action=open&Server=NS&IP=none`, {
        method: "POST",
        headers: { "Content-Type": "application/x-msn-messenger", "X-MSN-GWCapabilities": "*" },
        body: bytes,
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (e) {
      this.end("network");
      throw new SessionEnded("network");
    }
    if (!response.ok) {
      this.end(`http ${response.status}`);
      throw new SessionEnded(`http ${response.status}`);
    }
    const header = response.headers.get("X-MSN-Messenger") || "";
    const match = /SessionID=([^;\s]+)/.exec(header);
    if (!match) {
      this.end("no session id");
      throw new SessionEnded("no session id");
    }
    this.sessionId = match[1];
    this.timeoutSecs = Number(response.headers.get("X-MSN-SessionTimeout")) || null;
    this.take(new Uint8Array(await response.arrayBuffer()));
    this.pollLoop();
    return Promise.all(replies);
  }

  prepare(frames) {
    const chunks = [];
    const replies = [];
    for (const f of frames) {
      const trid = this.nextTrid++;
      replies.push(new Promise((resolve, reject) => this.pending.set(trid, { resolve, reject })));
      chunks.push(encodeFrame(f.cmd, trid, f.target, f.payload));
    }
    return { bytes: concat(chunks), replies };
  }

  /** Sends one frame; resolves to the frame answering its TrID (maybe an error frame). */
  request(cmd, target, payload) {
    if (this.ended) return Promise.reject(new SessionEnded(this.ended));
    const { bytes, replies } = this.prepare([{ cmd, target, payload }]);
    this.outbox.push(bytes);
    this.flush();
    return replies[0];
  }

  /** Sends a frame no reply is awaited for (OUT). */
  post(cmd, target, payload) {
    if (this.ended) return;
    this.outbox.push(encodeFrame(cmd, this.nextTrid++, target, payload));
    this.flush();
  }

  /** Posts queued frames, one request at a time so the server sees them in order. */
  async flush() {
    if (this.sending || this.ended) return;
    this.sending = true;
    try {
      while (this.outbox.length > 0 && !this.ended) {
        const bytes = concat(this.outbox.splice(0));
        const response = await this.exchange(`SessionID=${encodeURIComponent(this.sessionId)}`, bytes);
        if (!response) return;
      }
    } finally {
      this.sending = false;
    }
  }

  /** One gateway request; its answer's frames are handled. Returns false once the session ended. */
  async exchange(query, body, signal) {
    let response;
    try {
      response = await fetch(`${GATEWAY}?${query}`, {
        method: "POST",
        headers: { "Content-Type": "application/x-msn-messenger" },
        body,
        cache: "no-store",
        credentials: "same-origin",
        signal,
      });
    } catch (e) {
      if (!this.ended) this.end(signal && signal.aborted ? "closed" : "network");
      return false;
    }
    if (response.status === 400) {
      this.end("gone");
      return false;
    }
    if (!response.ok) {
      this.end(`http ${response.status}`);
      return false;
    }
    let bytes;
    try {
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch (e) {
      this.end("network");
      return false;
    }
    this.take(bytes);
    return !this.ended;
  }

  async pollLoop() {
    while (!this.ended) {
      this.pollAbort = new AbortController();
      const query = `Action=poll&SessionID=${encodeURIComponent(this.sessionId)}&Lifespan=${LIFESPAN}`;
      if (!(await this.exchange(query, new Uint8Array(0), this.pollAbort.signal))) return;
    }
  }

  take(bytes) {
    let frames;
    try {
      frames = this.reader.push(bytes);
    } catch (e) {
      console.warn(e);
      this.end("bad frame");
      return;
    }
    for (const frame of frames) {
      if (this.ended) return;
      const registration = /(?:^|\r\n)Set-Registration: ([^\r\n]+)/.exec(frame.payload);
      if (registration) this.registration = registration[1];
      const waiting = frame.trid !== 0 ? this.pending.get(frame.trid) : undefined;
      if (waiting) {
        this.pending.delete(frame.trid);
        waiting.resolve(frame);
      } else if (frame.cmd === "OUT") {
        const reason = childText(parseXml(parsePayload(frame.payload).body), "reason", "out");
        this.end(`out:${reason}`);
      } else {
        try {
          this.onFrame(frame);
        } catch (e) {
          console.error("frame handler failed", e);
        }
      }
    }
  }

  /** Signs out (`OUT CON`) and ends the session. */
  signOut() {
    if (this.ended) return;
    const bytes = encodeFrame("OUT", this.nextTrid++, "CON", "");
    // Sent on its own request so it goes even while a send is in flight; keepalive lets it
    // finish when the page is closing.
    fetch(`${GATEWAY}?SessionID=${encodeURIComponent(this.sessionId)}`, {
      method: "POST",
      headers: { "Content-Type": "application/x-msn-messenger" },
      body: bytes,
      keepalive: true,
      credentials: "same-origin",
    }).catch(() => {});
    this.end("signed out");
  }

  end(reason) {
    if (this.ended) return;
    this.ended = reason;
    if (this.pollAbort) this.pollAbort.abort();
    for (const waiting of this.pending.values()) waiting.reject(new SessionEnded(reason));
    this.pending.clear();
    this.onEnd(reason);
  }
}
