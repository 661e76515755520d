// The gateway connection: identify, heartbeats, and reconnecting after a drop by resuming the
// session (the server replays what was missed) or, when the session is gone, identifying again.
// Listeners get every server frame as an event named after its type, plus "state" changes.

const CLOSE_SESSION_GONE = 4009;
const CLOSE_AUTH_FAILED = 4004;
const CLOSE_NOT_AUTHENTICATED = 4003;
const MAX_BACKOFF_MS = 10_000;

export class Gateway extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.url = null;
    this.ws = null;
    this.state = "offline";
    this.sessionId = null;
    this.lastSeq = 0;
    this.heartbeat = null;
    this.awaitingAck = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = true;
    this.resuming = false;
    this.resumes = 0;
    window.addEventListener("online", () => this.reconnectNow());
  }

  setState(state, detail = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail } }));
  }

  async start() {
    this.stopped = false;
    if (!this.url) {
      // Same origin as the page; the server names the gateway (it may sit on its own port or
      // behind a proxy), and the page's CSP allows exactly that URL.
      const info = await this.api.get("/gateway");
      this.url = info.url;
    }
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    this.sessionId = null;
    if (this.ws) this.ws.close(1000, "signed out");
    this.ws = null;
    this.setState("offline");
  }

  connect() {
    if (this.stopped) return;
    this.setState(this.sessionId ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event);
  }

  send(type, d = null) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.state !== "online") return false;
    this.ws.send(JSON.stringify({ type, d }));
    return true;
  }

  async onFrame(ws, raw) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    const d = frame.d || {};
    switch (frame.type) {
      case "hello": {
        this.startHeartbeat(d.heartbeat_interval_ms || 30_000);
        let token;
        try {
          token = await this.api.accessToken();
        } catch {
          ws.close(1000, "no session");
          return;
        }
        if (this.sessionId) {
          this.resuming = true;
          ws.send(
            JSON.stringify({
              type: "resume",
              d: { token, session_id: this.sessionId, last_seq: this.lastSeq },
            }),
          );
        } else {
          ws.send(JSON.stringify({ type: "identify", d: { token } }));
        }
        return;
      }
      case "ready":
        this.resuming = false;
        this.sessionId = d.session_id;
        this.lastSeq = 0;
        this.attempt = 0;
        this.setState("online");
        this.emit("ready", d);
        return;
      case "resumed":
        this.resuming = false;
        // Scaled out, a resume can move the session: the new id is the one to resume next time.
        this.sessionId = d.session_id || this.sessionId;
        this.attempt = 0;
        this.resumes += 1;
        this.setState("online");
        this.emit("resumed", d);
        return;
      case "heartbeat_ack":
        this.awaitingAck = false;
        return;
      default:
        if (typeof frame.seq === "number") this.lastSeq = frame.seq;
        this.emit(frame.type, d);
    }
  }

  emit(type, d) {
    this.dispatchEvent(new CustomEvent(type, { detail: d }));
  }

  startHeartbeat(interval) {
    this.stopHeartbeat();
    this.awaitingAck = false;
    this.heartbeat = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      // No ack since the last beat: the network path is dead even if the socket looks open.
      if (this.awaitingAck) {
        this.ws.close(4000, "heartbeat timeout");
        return;
      }
      this.awaitingAck = true;
      this.ws.send(JSON.stringify({ type: "heartbeat", d: null }));
    }, interval * 0.8);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  async onClose(ws, event) {
    if (ws !== this.ws) return;
    this.stopHeartbeat();
    this.ws = null;
    if (this.stopped) return;
    // 4009 answers a resume of a session that is gone; outside a resume it is a heartbeat
    // timeout, after which the session is still resumable.
    const resumeRefused = event.code === CLOSE_SESSION_GONE && this.resuming;
    this.resuming = false;
    if (resumeRefused || event.code === CLOSE_NOT_AUTHENTICATED) {
      this.sessionId = null;
    } else if (event.code === CLOSE_AUTH_FAILED) {
      // A revoked or expired token: a refresh tells which (it signs out when revoked).
      this.sessionId = null;
      try {
        await this.api.refresh();
      } catch {
        this.stop();
        return;
      }
    }
    this.emit("disconnected", { code: event.code });
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    clearTimeout(this.retryTimer);
    const base = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempt);
    const wait = this.attempt === 0 ? 100 : base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.setState(this.sessionId ? "reconnecting" : "connecting", `retrying in ${Math.round(wait / 1000)} s`);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }
}
