// Voice through the server's SFU (docs/protocol.md, "Voice (WebRTC SFU)"). The server always
// offers; we answer. m-line 0 is where our microphone goes; every other m-line the server sends
// on carries one other participant's audio or screen; a video m-line the server receives on is
// where our screen goes. The SDP does not say who is on which m-line, so we mirror the server's
// slot rule from the room events (a new source takes the first free slot of its kind, else a new
// m-line at the end) to show who is speaking and whose screen is whose.

const SPEAKING_LEVEL = 0.02;
const STATS_INTERVAL_MS = 500;
const REPORT_EVERY = 10; // stats ticks between voice_stats reports (5 s)

export function parseMlines(sdp) {
  const sections = sdp.split(/\r?\n(?=m=)/).slice(1);
  return sections.map((section) => {
    const kind = section.slice(2, section.indexOf(" "));
    const mid = (section.match(/^a=mid:(.*)$/m) || [])[1];
    const direction = (section.match(/^a=(sendrecv|sendonly|recvonly|inactive)$/m) || [])[1] || "sendrecv";
    return { kind, mid: mid === undefined ? null : mid.trim(), direction };
  });
}

export class Voice extends EventTarget {
  constructor(gateway, selfId) {
    super();
    this.gw = gateway;
    this.selfId = selfId;
    this.channelId = null;
    this.pc = null;
    this.peerId = null;
    this.mic = null;
    this.screen = null;
    this.screenTransceiver = null;
    this.micAttached = false;
    this.muted = false;
    this.participants = new Map();
    this.slots = [];
    this.slotsKnown = false;
    this.awaitingJoin = false;
    this.otherRooms = new Map();
    this.sendMids = [];
    this.levels = new Map();
    this.energy = null;
    this.stats = { inboundAudioBytes: 0, outboundAudioBytes: 0, rttMs: null, jitterMs: 0, loss: 0 };
    this.chain = Promise.resolve();
    this.statsTimer = null;
    this.ticks = 0;
    this.media = document.createElement("div");
    this.media.hidden = true;
    document.body.append(this.media);
    this.beforeRejoin = async () => true;

    const on = (type, fn) => gateway.addEventListener(type, (e) => fn.call(this, e.detail));
    on("voice_offer", (d) => {
      this.chain = this.chain.then(() => this.answer(d)).catch((err) => this.fail(err));
    });
    on("voice_error", this.onError);
    on("voice_room_state", this.onRoomState);
    on("voice_user_joined", this.onJoined);
    on("voice_user_left", this.onLeft);
    on("voice_user_muted", this.onMuted);
    on("voice_user_unmuted", this.onMuted);
    on("screen_share_started", this.onShareStarted);
    on("screen_share_stopped", this.onShareStopped);
    // Our peer died with the old connection: join again on the new one.
    on("ready", this.rejoin);
    on("resumed", this.rejoin);
  }

  get active() {
    return this.channelId !== null;
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }

  fail(err) {
    this.dispatchEvent(new CustomEvent("problem", { detail: String(err && err.message ? err.message : err) }));
  }

  async ensureMic() {
    if (this.mic) return;
    try {
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      this.mic.getAudioTracks().forEach((t) => (t.enabled = !this.muted));
    } catch (err) {
      // Still join: listening needs no microphone.
      this.fail(`microphone unavailable (${err.name || err}); joined listen-only`);
      this.mic = null;
    }
  }

  async join(channelId) {
    await this.ensureMic();
    this.resetPeer();
    this.channelId = channelId;
    this.awaitingJoin = true;
    this.gw.send("voice_join", { channel_id: channelId });
    this.startStats();
    this.changed();
  }

  leave() {
    if (this.channelId) this.gw.send("voice_leave");
    this.teardown();
  }

  async rejoin() {
    if (!this.channelId) return;
    const channelId = this.channelId;
    this.resetPeer();
    if (!(await this.beforeRejoin(channelId))) {
      this.teardown();
      return;
    }
    this.awaitingJoin = true;
    this.gw.send("voice_join", { channel_id: channelId });
    this.changed();
  }

  resetPeer() {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.peerId = null;
    this.micAttached = false;
    this.screenTransceiver = null;
    this.sendMids = [];
    this.media.replaceChildren();
    this.slots = [];
    this.slotsKnown = false;
    this.participants.clear();
    this.levels.clear();
  }

  teardown() {
    this.resetPeer();
    this.stopLocalScreen();
    if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
    this.mic = null;
    this.channelId = null;
    this.otherRooms.clear();
    clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.stats = { inboundAudioBytes: 0, outboundAudioBytes: 0, rttMs: null, jitterMs: 0, loss: 0 };
    this.changed();
  }

  async answer(d) {
    if (!this.channelId && !d.channel_id) return;
    // A moderator's move arrives as an offer for another channel with a new peer.
    const moved = Boolean(d.channel_id && d.channel_id !== this.channelId);
    if (moved) {
      this.channelId = d.channel_id;
      this.startStats();
    }
    if (d.peer_id !== this.peerId) {
      if (this.pc) this.pc.close();
      this.media.replaceChildren();
      this.micAttached = false;
      this.screenTransceiver = null;
      if (moved) {
        this.slots = [];
        this.slotsKnown = false;
        this.participants.clear();
        this.awaitingJoin = false;
        const state = this.otherRooms.get(d.channel_id);
        if (state) this.onRoomState(state);
      }
      this.peerId = d.peer_id;
      this.pc = new RTCPeerConnection({ iceServers: [] });
      this.pc.ontrack = (event) => this.onTrack(event);
      this.pc.onicecandidate = (event) => {
        if (event.candidate && event.candidate.candidate) {
          this.gw.send("voice_ice_candidate", { candidate: event.candidate.toJSON() });
        }
      };
      this.pc.onconnectionstatechange = () => this.changed();
      await this.ensureMic();
    }
    const pc = this.pc;
    await pc.setRemoteDescription({ type: "offer", sdp: d.sdp });
    const mlines = parseMlines(d.sdp);
    const byMid = new Map(pc.getTransceivers().map((t) => [t.mid, t]));
    const micLine = byMid.get(mlines[0] && mlines[0].mid);
    if (micLine && !this.micAttached) {
      const track = this.mic ? this.mic.getAudioTracks()[0] : null;
      await micLine.sender.replaceTrack(track);
      micLine.direction = "sendonly";
      this.micAttached = true;
    }
    for (const line of mlines.slice(1)) {
      if (line.kind === "video" && line.direction === "recvonly") {
        const transceiver = byMid.get(line.mid);
        if (transceiver) {
          this.screenTransceiver = transceiver;
          // Kept sendonly after a share ends: a later share then only swaps the track in,
          // which is all the server expects (it offers that m-line once).
          transceiver.direction = "sendonly";
          const track = this.screen ? this.screen.getVideoTracks()[0] : null;
          await transceiver.sender.replaceTrack(track);
        }
      }
    }
    this.sendMids = mlines.filter((m) => m.direction === "sendonly").map((m) => m.mid);
    await pc.setLocalDescription(await pc.createAnswer());
    this.gw.send("voice_answer", { sdp: pc.localDescription.sdp });
    this.changed();
  }

  onTrack(event) {
    const { track, transceiver } = event;
    if (track.kind === "audio") {
      const audio = document.createElement("audio");
      audio.autoplay = true;
      audio.srcObject = new MediaStream([track]);
      audio.dataset.mid = transceiver.mid;
      this.media.append(audio);
      audio.play().catch(() => {});
    }
    this.changed();
  }

  // -- room events ---------------------------------------------------------------------------
  mine(d) {
    return this.channelId !== null && d.channel_id === this.channelId;
  }

  takeSlot(userId, kind) {
    const free = this.slots.find((s) => s.kind === kind && s.user === null);
    if (free) free.user = userId;
    else this.slots.push({ kind, user: userId });
  }

  freeSlots(userId, kind = null) {
    for (const slot of this.slots) {
      if (slot.user === userId && (kind === null || slot.kind === kind)) slot.user = null;
    }
  }

  onRoomState(d) {
    if (!this.mine(d)) {
      this.otherRooms.set(d.channel_id, d);
      return;
    }
    const includesMe = d.participants.some((p) => p.user_id === this.selfId);
    // Until our join is confirmed, a state without us is about the membership we just left.
    if (this.awaitingJoin && !includesMe) return;
    this.awaitingJoin = false;
    if (!this.slotsKnown) {
      // Our join: the server routed everyone already there to us in room order.
      for (const p of d.participants) {
        if (p.user_id === this.selfId) continue;
        this.takeSlot(p.user_id, "audio");
        if (p.screen_sharing) this.takeSlot(p.user_id, "video");
      }
      this.slotsKnown = true;
    }
    const previous = this.participants;
    this.participants = new Map(
      d.participants.map((p) => [p.user_id, { ...(previous.get(p.user_id) || {}), ...p }]),
    );
    this.changed();
  }

  onJoined(d) {
    if (!this.mine(d)) return;
    if (d.user_id !== this.selfId && this.slotsKnown && !this.participants.has(d.user_id)) {
      this.takeSlot(d.user_id, "audio");
    }
    const p = this.participants.get(d.user_id) || { user_id: d.user_id, muted: false, screen_sharing: false };
    this.participants.set(d.user_id, { ...p, username: d.username });
    this.changed();
  }

  onLeft(d) {
    if (!this.mine(d)) return;
    if (d.user_id === this.selfId) {
      // While our join is pending this is the old peer going (a rejoin after a reconnect);
      // otherwise another device of ours joined voice, or we were removed.
      if (!this.awaitingJoin) this.teardown();
      return;
    }
    this.freeSlots(d.user_id);
    this.participants.delete(d.user_id);
    this.changed();
  }

  onMuted(d) {
    if (!this.mine(d)) return;
    const p = this.participants.get(d.user_id);
    if (p) Object.assign(p, { muted: d.muted, self_muted: d.self_muted, server_muted: d.server_muted });
    this.changed();
  }

  onShareStarted(d) {
    if (!this.mine(d)) return;
    if (d.user_id !== this.selfId && this.slotsKnown) this.takeSlot(d.user_id, "video");
    const p = this.participants.get(d.user_id);
    if (p) p.screen_sharing = true;
    this.changed();
  }

  onShareStopped(d) {
    if (!this.mine(d)) return;
    this.freeSlots(d.user_id, "video");
    const p = this.participants.get(d.user_id);
    if (p) p.screen_sharing = false;
    if (d.user_id === this.selfId) this.stopLocalScreen();
    this.changed();
  }

  onError(d) {
    if (d.removed || d.request === "voice_join") this.teardown();
    if (d.request === "voice_screen_share_start") this.stopLocalScreen();
    this.fail(d.message || d.code);
  }

  // -- controls ------------------------------------------------------------------------------
  setMuted(muted) {
    this.muted = muted;
    if (this.mic) this.mic.getAudioTracks().forEach((t) => (t.enabled = !muted));
    this.gw.send(muted ? "voice_mute" : "voice_unmute");
    this.changed();
  }

  async startScreen() {
    if (!this.channelId || this.screen) return;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    this.screen = stream;
    const track = stream.getVideoTracks()[0];
    track.onended = () => this.stopScreen();
    if (this.screenTransceiver) await this.screenTransceiver.sender.replaceTrack(track);
    this.gw.send("voice_screen_share_start", { quality: "auto" });
    this.changed();
  }

  stopScreen() {
    if (!this.screen) return;
    this.gw.send("voice_screen_share_stop");
    this.stopLocalScreen();
  }

  stopLocalScreen() {
    if (this.screenTransceiver) this.screenTransceiver.sender.replaceTrack(null).catch(() => {});
    if (this.screen) this.screen.getTracks().forEach((t) => t.stop());
    this.screen = null;
    this.changed();
  }

  // Remote screens, as {user, track} for every video slot that has a sharer.
  screens() {
    if (!this.pc) return [];
    const byMid = new Map(this.pc.getTransceivers().map((t) => [t.mid, t]));
    const out = [];
    this.slots.forEach((slot, i) => {
      const transceiver = byMid.get(this.sendMids[i]);
      if (slot.kind === "video" && slot.user && transceiver) {
        out.push({ user: slot.user, track: transceiver.receiver.track });
      }
    });
    return out;
  }

  speaking(userId) {
    return (this.levels.get(userId) || 0) > SPEAKING_LEVEL;
  }

  // -- stats ---------------------------------------------------------------------------------
  startStats() {
    if (this.statsTimer) return;
    this.statsTimer = setInterval(() => this.pollStats().catch(() => {}), STATS_INTERVAL_MS);
  }

  // The level over the last interval (RMS from the energy counters), not the instant's level:
  // short sounds between two polls still count as speaking.
  averageLevel(key, s, energy) {
    const now = { e: s.totalAudioEnergy || 0, d: s.totalSamplesDuration || 0 };
    energy.set(key, now);
    const before = this.energy && this.energy.get(key);
    if (!before || now.d <= before.d) return s.audioLevel || 0;
    return Math.sqrt(Math.max(0, now.e - before.e) / (now.d - before.d));
  }

  async pollStats() {
    const pc = this.pc;
    if (!pc) return;
    const report = await pc.getStats();
    const midByTrack = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
    const levelByMid = new Map();
    const energy = new Map();
    let inbound = 0;
    let outbound = 0;
    let selfLevel = 0;
    let rtt = null;
    let jitter = 0;
    let lost = 0;
    let received = 0;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        inbound += s.bytesReceived || 0;
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        jitter = Math.max(jitter, (s.jitter || 0) * 1000);
        const mid = s.mid !== undefined ? s.mid : midByTrack.get(s.trackIdentifier);
        levelByMid.set(mid, this.averageLevel(`in:${mid}`, s, energy));
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        outbound += s.bytesSent || 0;
      } else if (s.type === "media-source" && s.kind === "audio") {
        selfLevel = this.averageLevel("self", s, energy);
      } else if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime * 1000;
      }
    });
    this.energy = energy;
    this.levels.clear();
    this.levels.set(this.selfId, this.muted ? 0 : selfLevel);
    this.slots.forEach((slot, i) => {
      if (slot.kind === "audio" && slot.user) this.levels.set(slot.user, levelByMid.get(this.sendMids[i]) || 0);
    });
    const loss = received + lost > 0 ? (100 * lost) / (received + lost) : 0;
    this.stats = { inboundAudioBytes: inbound, outboundAudioBytes: outbound, rttMs: rtt, jitterMs: jitter, loss };
    this.ticks += 1;
    if (this.ticks % REPORT_EVERY === 0 && rtt !== null) {
      this.gw.send("voice_stats", {
        latency_ms: Math.round(rtt),
        packet_loss: Math.round(loss * 100) / 100,
        jitter_ms: Math.round(jitter * 10) / 10,
      });
    }
    this.dispatchEvent(new Event("stats"));
  }
}
