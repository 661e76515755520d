// The signed-in client: guilds, channels, messages, members, DMs and friends, search, voice and
// DM calls. State lives in one App object; each area has a render function that rebuilds its
// part of the page from that state (the lists are short, and rebuilding keeps events simple).

import { ApiError } from "./api.js";
import { clear, formatBytes, formatTime, h, replace, toast } from "./dom.js";
import { Gateway } from "./gateway.js";
import { Voice } from "./voice.js";

const PAGE = 50;
const TYPING_EVERY_MS = 4_000;
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
const MENTION = /<@([0-9a-f-]{36})>/g;
const STATUS_LABEL = { online: "Online", away: "Away", busy: "Busy", offline: "Offline" };

function errText(err) {
  if (err instanceof ApiError) return err.message;
  return String(err && err.message ? err.message : err);
}

export class App {
  constructor(root, api, onSignOut) {
    this.root = root;
    this.api = api;
    this.onSignOut = onSignOut;
    this.me = null;
    this.guilds = new Map();
    this.dms = new Map();
    this.view = "home";
    this.channelId = null;
    this.messages = new Map();
    this.unread = new Map();
    this.mentions = new Map();
    this.members = new Map();
    this.presence = new Map();
    this.users = new Map();
    this.typing = new Map();
    this.friends = { friends: [], incoming: [], outgoing: [] };
    this.replyTo = null;
    this.editing = null;
    this.lastTypingSent = 0;
    this.objectUrls = new Map();
    this.imageNodes = new Map();
    this.calls = new Map();
    this.searchResults = null;
    this.panel = null;
    this.gateway = new Gateway(api);
    this.voice = null;
  }

  // -- start ---------------------------------------------------------------------------------
  async start() {
    this.me = await this.api.get("/users/@me");
    this.remember(this.me);
    this.voice = new Voice(this.gateway, this.me.id);
    this.voice.beforeRejoin = (channelId) => this.beforeVoiceRejoin(channelId);
    this.voice.addEventListener("change", () => this.renderVoice());
    this.voice.addEventListener("stats", () => this.renderVoiceStats());
    this.voice.addEventListener("problem", (e) => toast(`Voice: ${e.detail}`, "error"));
    this.buildLayout();
    this.bindGateway();
    await Promise.all([this.loadDms(), this.loadFriends()]);
    this.renderAll();
    await this.gateway.start();
  }

  stop() {
    if (this.voice) {
      this.voice.teardown();
      this.voice.media.remove();
    }
    this.gateway.stop();
    for (const url of this.objectUrls.values()) url.then((u) => URL.revokeObjectURL(u)).catch(() => {});
  }

  remember(user) {
    if (user && user.id) this.users.set(user.id, { ...(this.users.get(user.id) || {}), ...user });
  }

  name(userId) {
    const user = this.users.get(userId);
    if (!user) return "unknown user";
    return user.display_name || user.username;
  }

  // -- layout --------------------------------------------------------------------------------
  buildLayout() {
    this.el = {};
    const el = this.el;
    el.guilds = h("nav", { class: "guild-bar", "aria-label": "Servers" });
    el.sidebarHead = h("div", { class: "sidebar-head" });
    el.channels = h("nav", { class: "channel-list", "aria-label": "Channels" });
    el.voicePanel = h("section", { class: "voice-panel", "aria-label": "Voice", hidden: true });
    el.userPanel = h("div", { class: "user-panel" });
    el.sidebar = h(
      "aside",
      { class: "sidebar", id: "sidebar" },
      el.sidebarHead,
      el.channels,
      el.voicePanel,
      el.userPanel,
    );
    el.connection = h("span", { class: "connection", role: "status", dataset: { state: "offline" } }, "Offline");
    el.title = h("h2", { class: "channel-title", id: "channel-title" }, "");
    el.headerActions = h("div", { class: "header-actions" });
    el.search = h(
      "form",
      { class: "search", role: "search" },
      h("label", { for: "search-input", class: "visually-hidden" }, "Search messages"),
      h("input", { id: "search-input", type: "search", name: "q", placeholder: "Search", maxlength: 256 }),
    );
    el.search.addEventListener("submit", (e) => {
      e.preventDefault();
      this.search(new FormData(el.search).get("q"));
    });
    const navToggle = h(
      "button",
      { class: "icon-button only-narrow", type: "button", "aria-label": "Show channels", "aria-controls": "sidebar" },
      "☰",
    );
    navToggle.addEventListener("click", () => this.toggleNarrow("nav"));
    const membersToggle = h(
      "button",
      { class: "icon-button", type: "button", "aria-label": "Show members", "aria-controls": "side-panel" },
      "👥",
    );
    membersToggle.addEventListener("click", () => {
      this.searchResults = null;
      if (this.wide()) this.panel = this.panel === "members" ? null : "members";
      else this.toggleNarrow("panel");
      this.renderPanel();
    });
    el.header = h(
      "header",
      { class: "chat-header" },
      navToggle,
      el.title,
      el.connection,
      el.headerActions,
      el.search,
      membersToggle,
    );
    el.stage = h("section", { class: "stage", "aria-label": "Screen shares", hidden: true });
    el.loadOlder = h("button", { type: "button", class: "load-older", hidden: true }, "Load older messages");
    el.loadOlder.addEventListener("click", () => this.loadOlder());
    el.messages = h("ol", { class: "messages", "aria-label": "Messages" });
    // Not a live region: the list is rebuilt on changes, which a screen reader would read out
    // whole. New messages from others are announced through el.announce instead.
    el.scroller = h(
      "div",
      { class: "scroller", role: "region", "aria-label": "Message history", tabindex: "0" },
      el.loadOlder,
      el.messages,
    );
    el.announce = h("div", { class: "visually-hidden", "aria-live": "polite" });
    el.scroller.addEventListener("scroll", () => {
      if (el.scroller.scrollTop < 40 && !el.loadOlder.hidden) this.loadOlder();
    });
    el.typing = h("div", { class: "typing", "aria-live": "polite" });
    el.replyBar = h("div", { class: "reply-bar", hidden: true });
    el.progress = h("progress", { class: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
    el.input = h("textarea", {
      id: "composer-input",
      rows: 1,
      placeholder: "Message",
      "aria-label": "Message",
      maxlength: 4000,
    });
    el.file = h("input", { type: "file", id: "file-input", class: "visually-hidden", multiple: true });
    el.composer = h(
      "form",
      { class: "composer", "aria-label": "Send a message" },
      h("label", { for: "file-input", class: "icon-button attach", title: "Attach files" }, "📎", h("span", { class: "visually-hidden" }, "Attach files")),
      el.file,
      el.input,
      h("button", { type: "submit", class: "primary send" }, "Send"),
    );
    el.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    el.input.addEventListener("keydown", (e) => this.composerKey(e));
    el.input.addEventListener("input", () => this.typed());
    el.file.addEventListener("change", () => this.uploadFiles());
    el.main = h(
      "main",
      { class: "chat", "aria-labelledby": "channel-title" },
      el.header,
      el.stage,
      el.scroller,
      el.typing,
      el.replyBar,
      el.progress,
      el.composer,
      el.announce,
    );
    el.home = h("section", { class: "home", hidden: true, "aria-label": "Friends" });
    el.panel = h("aside", { class: "side-panel", id: "side-panel", "aria-label": "Members" });
    el.banner = h("div", { class: "call-banner", role: "alert", hidden: true });
    el.dialog = h("dialog", { class: "dialog" });
    el.layout = h("div", { class: "layout" }, el.guilds, el.sidebar, el.main, el.panel);
    replace(this.root, el.banner, el.layout, el.dialog);
    // On narrow screens the channel list and side panel cover the chat: a tap on the chat or
    // Escape closes them.
    el.main.addEventListener("click", (e) => {
      if (el.layout.dataset.open === "nav" && !e.target.closest(".only-narrow")) el.layout.dataset.open = "";
    });
    el.layout.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && el.layout.dataset.open) {
        el.layout.dataset.open = "";
        el.input.focus();
      }
    });
    this.root.removeAttribute("aria-busy");
    this.gateway.addEventListener("state", (e) => {
      const labels = { online: "Connected", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" };
      el.connection.dataset.state = e.detail.state;
      el.connection.dataset.resumes = String(this.gateway.resumes);
      el.connection.textContent = labels[e.detail.state] || e.detail.state;
      el.connection.title = e.detail.detail || "";
    });
    this.panel = "members";
    document.addEventListener("keydown", (e) => this.shortcut(e));
  }

  // Alt+Up / Alt+Down: previous / next text channel or conversation, from anywhere.
  shortcut(e) {
    if (!e.altKey || (e.key !== "ArrowUp" && e.key !== "ArrowDown") || !this.el) return;
    const buttons = [...this.el.channels.querySelectorAll("button[data-channel]")];
    if (!buttons.length) return;
    e.preventDefault();
    const at = buttons.findIndex((b) => b.dataset.channel === this.channelId);
    const next = buttons[(at + (e.key === "ArrowUp" ? -1 : 1) + buttons.length) % buttons.length];
    this.openChannel(next.dataset.channel).then(() => this.el.input.focus(), (err) => toast(errText(err), "error"));
  }

  // At narrower widths the side panel and the channel list open over the chat, one at a time.
  wide() {
    return window.matchMedia("(min-width: 1100px)").matches;
  }

  toggleNarrow(which) {
    this.el.layout.dataset.open = this.el.layout.dataset.open === which ? "" : which || "";
  }

  renderAll() {
    this.renderGuilds();
    this.renderSidebar();
    this.renderHeader();
    this.renderMessages();
    this.renderPanel();
    this.renderVoice();
    this.renderUserPanel();
  }

  // -- gateway events ------------------------------------------------------------------------
  bindGateway() {
    const on = (type, fn) => this.gateway.addEventListener(type, (e) => fn.call(this, e.detail));
    on("ready", this.onReady);
    on("resumed", () => this.subscribeCurrent());
    on("message_new", this.onMessageNew);
    on("message_edit", this.onMessageEdit);
    on("message_delete", this.onMessageDelete);
    on("reaction_add", (d) => this.onReaction(d, true));
    on("reaction_remove", (d) => this.onReaction(d, false));
    on("typing_start", this.onTypingStart);
    on("typing_stop", (d) => this.stopTypingOf(d.channel_id, d.user_id));
    on("presence_update", (d) => {
      this.presence.set(d.user_id, d.status);
      this.renderPanel();
    });
    on("patch", (d) => {
      if (d.entity_type === "user") {
        this.remember({ id: d.entity_id, ...d.diff });
        this.renderPanel();
      }
    });
    on("guild_update", this.onGuildUpdate);
    on("channel_create", this.onChannelChange);
    on("channel_update", this.onChannelChange);
    on("channel_delete", this.onChannelDelete);
    on("member_join", this.onMemberJoin);
    on("member_leave", this.onMemberLeave);
    on("member_update", (d) => {
      const members = this.members.get(d.guild_id);
      if (members) members.set(d.user.id, d);
    });
    on("dm_create", (d) => {
      this.dms.set(d.id, d);
      d.recipients.forEach((u) => this.remember(u));
      this.renderSidebar();
    });
    on("friend_request_received", (d) => {
      toast(`${d.request.user.username} sent you a friend request`);
      this.loadFriends().then(() => this.renderHome());
    });
    on("friend_request_accepted", (d) => {
      toast(`${d.user.username} is now your friend`);
      this.loadFriends().then(() => this.renderHome());
    });
    on("call_ringing", this.onCallRinging);
    on("call_started", (d) => this.updateCall(d.channel_id, { state: "active" }));
    on("call_user_joined", (d) => this.updateCall(d.channel_id, { state: "active", participants: d.participants }));
    on("call_user_left", (d) => this.updateCall(d.channel_id, { participants: d.participants }));
    on("call_declined", (d) => {
      if (d.user_id !== this.me.id) toast(`${this.name(d.user_id)} declined the call`);
    });
    on("call_ended", this.onCallEnded);
  }

  async onReady(d) {
    // A fresh session (first connect, or the old one expired): anything may have changed.
    this.readies = (this.readies || 0) + 1;
    if (this.readies > 1) await Promise.all([this.loadDms(), this.loadFriends()]).catch(() => {});
    this.guilds = new Map(d.guilds.map((g) => [g.id, { ...(this.guilds.get(g.id) || {}), ...g }]));
    await Promise.all(d.guilds.map((g) => this.loadGuild(g.id).catch(() => {})));
    if (this.view !== "home" && !this.guilds.has(this.view)) this.view = "home";
    if (this.channelId) {
      // Events were missed: cached history may be stale everywhere.
      this.messages.clear();
      await this.openChannel(this.channelId, { keepPanel: true }).catch(() => this.showHome());
    } else if (this.view === "home") {
      this.showHome();
    }
    this.renderAll();
  }

  subscribeCurrent() {
    if (this.channelId) this.gateway.send("subscribe", { channel_id: this.channelId });
  }

  onMessageNew(m) {
    this.remember(m.author);
    const store = this.messages.get(m.channel_id);
    if (store && !store.list.some((x) => x.id === m.id)) store.list.push(m);
    this.stopTypingOf(m.channel_id, m.author.id);
    const mine = m.author.id === this.me.id;
    const visible = m.channel_id === this.channelId && !document.hidden;
    if (!mine && !visible) {
      this.unread.set(m.channel_id, (this.unread.get(m.channel_id) || 0) + 1);
      if (this.mentionsMe(m)) this.mentions.set(m.channel_id, (this.mentions.get(m.channel_id) || 0) + 1);
      this.renderGuilds();
      this.renderSidebar();
    }
    if (m.guild_id === null && this.dms.has(m.channel_id)) {
      this.dms.get(m.channel_id).last_message_id = m.id;
    }
    if (m.channel_id === this.channelId) {
      this.renderMessages({ stick: mine });
      if (!mine) this.el.announce.textContent = `${m.author.display_name || m.author.username}: ${m.content.slice(0, 200)}`;
    }
  }

  onMessageEdit(m) {
    const store = this.messages.get(m.channel_id);
    if (!store) return;
    const i = store.list.findIndex((x) => x.id === m.id);
    if (i >= 0) store.list[i] = { ...store.list[i], ...m };
    if (m.channel_id === this.channelId) this.renderMessages();
  }

  onMessageDelete(d) {
    const store = this.messages.get(d.channel_id);
    if (!store) return;
    store.list = store.list.filter((x) => x.id !== d.id);
    if (d.channel_id === this.channelId) this.renderMessages();
  }

  onReaction(d, add) {
    const store = this.messages.get(d.channel_id);
    const m = store && store.list.find((x) => x.id === d.message_id);
    if (!m) return;
    const mine = d.user_id === this.me.id;
    let r = m.reactions.find((x) => x.emoji === d.emoji);
    if (add) {
      if (!r) {
        r = { emoji: d.emoji, count: 0, me: false };
        m.reactions.push(r);
      }
      r.count += 1;
      if (mine) r.me = true;
    } else if (r) {
      r.count -= 1;
      if (mine) r.me = false;
      if (r.count <= 0) m.reactions = m.reactions.filter((x) => x !== r);
    }
    if (d.channel_id === this.channelId) this.renderMessages();
  }

  onTypingStart(d) {
    if (d.user_id === this.me.id) return;
    let map = this.typing.get(d.channel_id);
    if (!map) this.typing.set(d.channel_id, (map = new Map()));
    clearTimeout(map.get(d.user_id));
    // The server sends typing_stop; the timer only covers a stop lost with a dropped connection.
    map.set(d.user_id, setTimeout(() => this.stopTypingOf(d.channel_id, d.user_id), 11_000));
    this.renderTyping();
  }

  stopTypingOf(channelId, userId) {
    const map = this.typing.get(channelId);
    if (!map || !map.has(userId)) return;
    clearTimeout(map.get(userId));
    map.delete(userId);
    this.renderTyping();
  }

  onGuildUpdate(g) {
    if (g.deleted) {
      this.guilds.delete(g.id);
      if (this.view === g.id) this.showHome();
    } else {
      const old = this.guilds.get(g.id) || {};
      this.guilds.set(g.id, { ...old, ...g, channels: old.channels || g.channels || [] });
    }
    this.renderGuilds();
    this.renderSidebar();
  }

  onChannelChange(c) {
    const g = this.guilds.get(c.guild_id);
    if (!g) return;
    g.channels = [...(g.channels || []).filter((x) => x.id !== c.id), c];
    this.renderSidebar();
    if (c.id === this.channelId) this.renderHeader();
  }

  onChannelDelete(c) {
    const g = this.guilds.get(c.guild_id);
    if (g) g.channels = (g.channels || []).filter((x) => x.id !== c.id);
    if (c.id === this.channelId) this.openFirstChannel();
    this.renderSidebar();
  }

  onMemberJoin(d) {
    this.remember(d.user);
    if (d.user.id === this.me.id && d.guild) {
      this.guilds.set(d.guild_id, d.guild);
      this.renderGuilds();
      return;
    }
    let members = this.members.get(d.guild_id);
    if (members) members.set(d.user.id, d);
    if (this.presence.get(d.user.id) === undefined) this.presence.set(d.user.id, "online");
    this.renderPanel();
  }

  onMemberLeave(d) {
    if (d.user.id === this.me.id) {
      this.guilds.delete(d.guild_id);
      if (this.view === d.guild_id) this.showHome();
      this.renderGuilds();
      if (d.reason !== "leave") toast(`You were removed from a server (${d.reason})`, "error");
      return;
    }
    const members = this.members.get(d.guild_id);
    if (members) members.delete(d.user.id);
    this.renderPanel();
  }

  // -- loading -------------------------------------------------------------------------------
  async loadGuild(guildId) {
    const g = await this.api.get(`/guilds/${guildId}`);
    this.guilds.set(guildId, g);
    return g;
  }

  async loadMembers(guildId) {
    const [members, presences] = await Promise.all([
      this.api.get(`/guilds/${guildId}/members`),
      this.api.get(`/guilds/${guildId}/presences`).catch(() => []),
    ]);
    members.forEach((m) => this.remember(m.user));
    presences.forEach((p) => this.presence.set(p.user_id, p.status));
    this.members.set(guildId, new Map(members.map((m) => [m.user.id, m])));
  }

  async loadDms() {
    const dms = await this.api.get("/dms");
    this.dms = new Map(dms.map((d) => [d.id, d]));
    dms.forEach((d) => d.recipients.forEach((u) => this.remember(u)));
  }

  async loadFriends() {
    this.friends = await this.api.get("/friends");
    this.friends.friends.forEach((u) => this.remember(u));
  }

  channel(channelId) {
    if (this.dms.has(channelId)) return this.dms.get(channelId);
    for (const g of this.guilds.values()) {
      const c = (g.channels || []).find((x) => x.id === channelId);
      if (c) return c;
    }
    return null;
  }

  // -- navigation ----------------------------------------------------------------------------
  async showGuild(guildId) {
    this.view = guildId;
    this.searchResults = null;
    let g = this.guilds.get(guildId);
    if (!g || !g.channels) g = await this.loadGuild(guildId);
    if (!this.members.has(guildId)) await this.loadMembers(guildId).catch(() => {});
    this.renderGuilds();
    this.renderSidebar();
    await this.openFirstChannel();
  }

  async openFirstChannel() {
    const g = this.guilds.get(this.view);
    const text = g ? sortChannels(g.channels || []).filter((c) => c.channel_type === "text") : [];
    if (text.length) await this.openChannel(text[0].id);
    else this.showHome();
  }

  showHome() {
    if (this.channelId) this.gateway.send("unsubscribe", { channel_id: this.channelId });
    this.view = "home";
    this.channelId = null;
    this.searchResults = null;
    this.renderAll();
    this.renderHome();
  }

  async openChannel(channelId, { keepPanel = false } = {}) {
    const c = this.channel(channelId);
    if (!c) return;
    if (this.channelId && this.channelId !== channelId) {
      this.gateway.send("unsubscribe", { channel_id: this.channelId });
    }
    this.view = c.guild_id || "home";
    this.channelId = channelId;
    this.replyTo = null;
    this.editing = null;
    this.imageNodes.clear();
    if (!keepPanel) this.searchResults = null;
    this.unread.delete(channelId);
    this.mentions.delete(channelId);
    this.gateway.send("subscribe", { channel_id: channelId });
    if (!this.messages.has(channelId)) {
      const page = await this.api.get(`/channels/${channelId}/messages?limit=${PAGE}`);
      page.forEach((m) => this.remember(m.author));
      this.messages.set(channelId, { list: page.reverse(), hasMore: page.length === PAGE });
    }
    if (c.guild_id && !this.members.has(c.guild_id)) await this.loadMembers(c.guild_id).catch(() => {});
    if (this.el.layout.dataset.open === "nav") this.el.layout.dataset.open = "";
    this.renderAll();
    this.renderMessages({ stick: true });
  }

  async loadOlder() {
    const store = this.messages.get(this.channelId);
    if (!store || !store.hasMore || this.loadingOlder) return;
    this.loadingOlder = true;
    const channelId = this.channelId;
    try {
      const oldest = store.list[0];
      const page = await this.api.get(
        `/channels/${channelId}/messages?limit=${PAGE}${oldest ? `&before=${oldest.id}` : ""}`,
      );
      page.forEach((m) => this.remember(m.author));
      store.list = [...page.reverse(), ...store.list];
      store.hasMore = page.length === PAGE;
      if (channelId === this.channelId) {
        const scroller = this.el.scroller;
        const fromBottom = scroller.scrollHeight - scroller.scrollTop;
        this.renderMessages();
        scroller.scrollTop = scroller.scrollHeight - fromBottom;
      }
    } catch (err) {
      toast(errText(err), "error");
    } finally {
      this.loadingOlder = false;
    }
  }

  // -- rendering: guilds and channels ----------------------------------------------------------
  renderGuilds() {
    const el = this.el.guilds;
    const dmUnread = [...this.dms.keys()].reduce((n, id) => n + (this.unread.get(id) || 0), 0);
    const items = [
      this.guildButton("home", "Home", "⌂", dmUnread, () => this.showHome()),
      ...[...this.guilds.values()].map((g) => {
        const unread = (g.channels || []).reduce((n, c) => n + (this.unread.get(c.id) || 0), 0);
        return this.guildButton(g.id, g.name, initials(g.name), unread, () =>
          this.showGuild(g.id).catch((e) => toast(errText(e), "error")),
        );
      }),
    ];
    const add = h("button", { type: "button", class: "guild-button add", "aria-label": "Create or join a server" }, "+");
    add.addEventListener("click", () => this.guildDialog());
    replace(el, h("ul", {}, items.map((b) => h("li", {}, b)), h("li", {}, add)));
  }

  guildButton(id, label, text, unread, onClick) {
    const current = this.view === id;
    const button = h(
      "button",
      {
        type: "button",
        class: `guild-button${current ? " current" : ""}`,
        "aria-label": unread ? `${label}, ${unread} unread` : label,
        "aria-current": current ? "page" : null,
        title: label,
        dataset: { guild: id },
      },
      text,
      unread ? h("span", { class: "badge", "aria-hidden": "true" }, String(unread)) : null,
    );
    button.addEventListener("click", onClick);
    return button;
  }

  renderSidebar() {
    if (!this.el) return;
    if (this.view === "home") return this.renderDmList();
    const g = this.guilds.get(this.view);
    if (!g) return;
    const invite = h("button", { type: "button", class: "small" }, "Invite");
    invite.addEventListener("click", () => this.createInvite(g.id));
    replace(this.el.sidebarHead, h("h2", { class: "guild-name" }, g.name), invite);
    const channels = sortChannels(g.channels || []);
    const text = channels.filter((c) => c.channel_type === "text");
    const voice = channels.filter((c) => c.channel_type === "voice");
    replace(
      this.el.channels,
      h("h3", {}, "Text channels"),
      h("ul", {}, text.map((c) => h("li", {}, this.channelButton(c, `# ${c.name}`)))),
      voice.length ? h("h3", {}, "Voice channels") : null,
      h(
        "ul",
        {},
        voice.map((c) =>
          h("li", {}, this.voiceButton(c), this.voice.channelId === c.id ? this.voiceParticipants() : null),
        ),
      ),
    );
  }

  channelButton(c, label) {
    const unread = this.unread.get(c.id) || 0;
    const mentions = this.mentions.get(c.id) || 0;
    const current = this.channelId === c.id;
    const button = h(
      "button",
      {
        type: "button",
        class: `channel${current ? " current" : ""}${unread ? " unread" : ""}`,
        "aria-current": current ? "page" : null,
        dataset: { channel: c.id },
      },
      h("span", { class: "channel-name" }, label),
      unread
        ? h(
            "span",
            { class: `badge${mentions ? " mention" : ""}`, "aria-label": `${unread} unread${mentions ? `, ${mentions} mentions` : ""}` },
            String(unread),
          )
        : null,
    );
    button.addEventListener("click", () => this.openChannel(c.id).catch((e) => toast(errText(e), "error")));
    return button;
  }

  voiceButton(c) {
    const joined = this.voice.channelId === c.id;
    const button = h(
      "button",
      {
        type: "button",
        class: `channel voice${joined ? " current" : ""}`,
        dataset: { voiceChannel: c.id },
        "aria-label": joined ? `${c.name}, connected` : `Join voice ${c.name}`,
      },
      `🔊 ${c.name}`,
    );
    button.addEventListener("click", () => {
      if (!joined) this.voice.join(c.id).catch((e) => toast(errText(e), "error"));
    });
    return button;
  }

  voiceParticipants() {
    const list = [...this.voice.participants.values()];
    return h(
      "ul",
      { class: "voice-participants", "aria-label": "In voice" },
      list.map((p) =>
        h(
          "li",
          {
            class: `participant${this.voice.speaking(p.user_id) ? " speaking" : ""}`,
            dataset: { userId: p.user_id },
          },
          h("span", { class: "avatar", "aria-hidden": "true" }, initials(p.username || this.name(p.user_id))),
          h("span", {}, p.username || this.name(p.user_id)),
          p.muted ? h("span", { class: "muted-icon", title: "Muted" }, "🔇", h("span", { class: "visually-hidden" }, "muted")) : null,
          p.screen_sharing ? h("span", { title: "Sharing screen" }, "🖥") : null,
          this.voice.speaking(p.user_id) ? h("span", { class: "visually-hidden" }, "speaking") : null,
        ),
      ),
    );
  }

  renderDmList() {
    const friendsButton = h("button", { type: "button", class: `channel${this.channelId ? "" : " current"}` }, "👋 Friends");
    friendsButton.addEventListener("click", () => this.showHome());
    replace(this.el.sidebarHead, h("h2", { class: "guild-name" }, "Direct messages"));
    const dms = [...this.dms.values()];
    replace(
      this.el.channels,
      h("ul", {}, h("li", {}, friendsButton)),
      h("h3", {}, "Conversations"),
      dms.length ? null : h("p", { class: "hint" }, "No conversations yet."),
      h("ul", {}, dms.map((d) => h("li", {}, this.channelButton(d, `@ ${this.dmName(d)}`)))),
    );
  }

  dmName(d) {
    const others = d.recipients.filter((u) => u.id !== this.me.id);
    return others.map((u) => u.display_name || u.username).join(", ") || "Just you";
  }

  renderUserPanel() {
    const status = h(
      "select",
      { "aria-label": "Your status", class: "status-select" },
      ["online", "away", "busy", "offline"].map((s) =>
        h("option", { value: s, selected: (this.presence.get(this.me.id) || "online") === s }, s === "offline" ? "Invisible" : STATUS_LABEL[s]),
      ),
    );
    status.addEventListener("change", () => {
      this.presence.set(this.me.id, status.value);
      this.gateway.send("set_status", { status: status.value });
    });
    const out = h("button", { type: "button", class: "small" }, "Sign out");
    out.addEventListener("click", () => this.onSignOut());
    replace(
      this.el.userPanel,
      h("span", { class: "avatar", "aria-hidden": "true" }, initials(this.me.display_name || this.me.username)),
      h("span", { class: "me-name", title: this.me.username }, this.me.display_name || this.me.username),
      status,
      out,
    );
  }

  renderHeader() {
    const c = this.channelId ? this.channel(this.channelId) : null;
    const actions = [];
    if (!c) {
      this.el.title.textContent = this.view === "home" ? "Friends" : "";
    } else if (c.channel_type === "dm") {
      this.el.title.textContent = `@ ${this.dmName(c)}`;
      const call = this.calls.get(c.id);
      const inCall = this.voice.channelId === c.id;
      if (inCall) {
        const hang = h("button", { type: "button", class: "danger small" }, "Hang up");
        hang.addEventListener("click", () => this.leaveCall(c.id));
        actions.push(hang);
      } else if (call && call.state !== "ended") {
        const join = h("button", { type: "button", class: "small" }, "Join call");
        join.addEventListener("click", () => this.acceptCall(c.id));
        actions.push(join);
      } else {
        const start = h("button", { type: "button", class: "small", "aria-label": "Start a voice call" }, "📞 Call");
        start.addEventListener("click", () => this.startCall(c.id));
        actions.push(start);
      }
    } else {
      this.el.title.textContent = `# ${c.name}`;
    }
    replace(this.el.headerActions, actions);
    this.el.search.hidden = this.view === "home";
    const onHome = this.view === "home" && !this.channelId;
    this.el.scroller.hidden = onHome;
    this.el.composer.hidden = onHome;
    this.el.typing.hidden = onHome;
    this.el.home.hidden = !onHome;
    if (onHome && !this.el.home.isConnected) this.el.main.insertBefore(this.el.home, this.el.scroller);
    this.el.input.placeholder = c ? `Message ${c.channel_type === "dm" ? "@" + this.dmName(c) : "#" + c.name}` : "Message";
  }

  // -- rendering: messages ----------------------------------------------------------------
  renderMessages({ stick = false } = {}) {
    if (!this.el) return;
    const scroller = this.el.scroller;
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    const store = this.channelId ? this.messages.get(this.channelId) : null;
    if (!store) {
      clear(this.el.messages);
      this.el.loadOlder.hidden = true;
      return;
    }
    this.el.loadOlder.hidden = !store.hasMore;
    const byId = new Map(store.list.map((m) => [m.id, m]));
    const c = this.channel(this.channelId);
    const start =
      !store.hasMore && c
        ? h("li", { class: "beginning" }, c.channel_type === "dm" ? `This is the beginning of your conversation with ${this.dmName(c)}.` : `This is the beginning of #${c.name}.`)
        : null;
    replace(this.el.messages, start, store.list.map((m) => this.messageItem(m, byId)));
    if (stick || atBottom) scroller.scrollTop = scroller.scrollHeight;
    this.renderTyping();
  }

  mentionsMe(m) {
    return (
      (m.mentions || []).includes(this.me.id) || m.mention_type === "everyone" || m.mention_type === "here"
    );
  }

  content(text) {
    const parts = [];
    let last = 0;
    for (const match of text.matchAll(MENTION)) {
      if (match.index > last) parts.push(text.slice(last, match.index));
      const self = match[1] === this.me.id;
      parts.push(h("span", { class: `mention${self ? " self" : ""}` }, `@${this.name(match[1])}`));
      last = match.index + match[0].length;
    }
    if (last < text.length) parts.push(text.slice(last));
    return parts.map((p) =>
      typeof p === "string" ? highlightBroadcast(p) : p,
    );
  }

  messageItem(m, byId) {
    const mine = m.author.id === this.me.id;
    const classes = ["message"];
    if (mine) classes.push("mine");
    if (this.mentionsMe(m) && !mine) classes.push("mentioned");
    const reply = m.reply_to
      ? (() => {
          const parent = byId.get(m.reply_to);
          return h(
            "div",
            { class: "reply-context" },
            "↪ ",
            parent ? h("strong", {}, parent.author.display_name || parent.author.username) : "a message",
            parent ? ` ${parent.content.replace(MENTION, (_, id) => `@${this.name(id)}`).slice(0, 80)}` : "",
          );
        })()
      : null;
    const body =
      this.editing === m.id
        ? this.editForm(m)
        : h("div", { class: "content" }, m.encrypted ? h("em", {}, "Encrypted message") : this.content(m.content));
    const actions = h("div", { class: "actions", role: "group", "aria-label": "Message actions" });
    const act = (label, text, fn, cls = "") => {
      const b = h("button", { type: "button", class: `icon-button ${cls}`, "aria-label": label, title: label }, text);
      b.addEventListener("click", fn);
      actions.append(b);
    };
    act("Reply", "↩", () => this.startReply(m));
    act("Add reaction", "☺", (e) => this.reactionPicker(m, e.currentTarget));
    if (mine && !m.encrypted) act("Edit", "✎", () => this.startEdit(m));
    if (mine) act("Delete", "🗑", () => this.deleteMessage(m), "danger");
    const reactions = m.reactions.length
      ? h(
          "div",
          { class: "reactions" },
          m.reactions.map((r) => {
            const b = h(
              "button",
              {
                type: "button",
                class: `reaction${r.me ? " me" : ""}`,
                "aria-pressed": r.me ? "true" : "false",
                "aria-label": `${r.emoji} ${r.count}`,
                dataset: { emoji: r.emoji },
              },
              `${r.emoji} ${r.count}`,
            );
            b.addEventListener("click", () => this.toggleReaction(m, r.emoji, !r.me));
            return b;
          }),
        )
      : null;
    return h(
      "li",
      { class: classes.join(" "), dataset: { id: m.id }, tabindex: "-1" },
      reply,
      h(
        "div",
        { class: "meta" },
        h("span", { class: "author" }, m.author.display_name || m.author.username),
        h("time", { datetime: m.created_at }, formatTime(m.created_at)),
        m.edited_at ? h("span", { class: "edited" }, "(edited)") : null,
      ),
      body,
      m.attachments.length ? h("div", { class: "attachments" }, m.attachments.map((a) => this.attachment(a))) : null,
      reactions,
      actions,
    );
  }

  attachment(a) {
    // Lists are rebuilt on every change; reusing an image's node avoids decoding it again.
    const kept = this.imageNodes.get(a.id);
    if (kept) return kept;
    if (a.mime_type.startsWith("image/")) {
      const img = h("img", { class: "preview", alt: a.filename, loading: "lazy", dataset: { attachment: a.id } });
      this.objectUrl(a.url).then(
        (url) => (img.src = url),
        () => (img.alt = `${a.filename} (could not load)`),
      );
      const link = h("button", { type: "button", class: "image-link", "aria-label": `Open ${a.filename}` }, img);
      link.addEventListener("click", () => this.download(a, true));
      this.imageNodes.set(a.id, link);
      return link;
    }
    const b = h("button", { type: "button", class: "file" }, `📄 ${a.filename} (${formatBytes(a.size_bytes)})`);
    b.addEventListener("click", () => this.download(a, false));
    return b;
  }

  objectUrl(url) {
    if (!this.objectUrls.has(url)) {
      const p = this.api.objectUrl(url);
      p.catch(() => this.objectUrls.delete(url));
      this.objectUrls.set(url, p);
    }
    return this.objectUrls.get(url);
  }

  async download(a, open) {
    try {
      const url = await this.objectUrl(a.url);
      const link = h("a", { href: url, download: open ? null : a.filename, target: open ? "_blank" : null, rel: "noopener" });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  renderTyping() {
    const map = this.typing.get(this.channelId);
    const names = map ? [...map.keys()].map((id) => this.name(id)) : [];
    this.el.typing.textContent = !names.length
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length < 4
          ? `${names.join(", ")} are typing…`
          : "Several people are typing…";
  }

  // -- composing ------------------------------------------------------------------------------
  composerKey(e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      this.send();
    } else if (e.key === "Escape" && this.replyTo) {
      this.cancelReply();
    } else if (e.key === "ArrowUp" && !this.el.input.value) {
      const store = this.messages.get(this.channelId);
      const own = store && [...store.list].reverse().find((m) => m.author.id === this.me.id && !m.encrypted);
      if (own) {
        e.preventDefault();
        this.startEdit(own);
      }
    }
  }

  typed() {
    const now = Date.now();
    if (this.channelId && this.el.input.value && now - this.lastTypingSent > TYPING_EVERY_MS) {
      this.lastTypingSent = now;
      this.gateway.send("typing", { channel_id: this.channelId });
    }
  }

  // "@name" of a member becomes the <@id> mention the server understands.
  encodeMentions(text) {
    const c = this.channel(this.channelId);
    const pool = c && c.guild_id ? [...(this.members.get(c.guild_id) || new Map()).values()].map((m) => m.user) : (c?.recipients || []);
    const byName = new Map(pool.map((u) => [u.username.toLowerCase(), u.id]));
    return text.replace(/(^|\s)@([A-Za-z0-9_.-]{2,32})/g, (all, lead, name) => {
      const id = byName.get(name.toLowerCase());
      return id ? `${lead}<@${id}>` : all;
    });
  }

  async send() {
    const text = this.el.input.value.trim();
    if (!text || !this.channelId) return;
    const body = { content: this.encodeMentions(text) };
    if (this.replyTo) body.reply_to = this.replyTo.id;
    this.el.input.value = "";
    const channelId = this.channelId;
    this.cancelReply();
    this.lastTypingSent = 0;
    this.gateway.send("stop_typing", { channel_id: channelId });
    try {
      const m = await this.api.post(`/channels/${channelId}/messages`, body);
      this.onMessageNew(m);
    } catch (err) {
      this.el.input.value = text;
      toast(errText(err), "error");
    }
  }

  async uploadFiles() {
    const files = [...this.el.file.files];
    if (!files.length || !this.channelId) return;
    const form = new FormData();
    files.forEach((f) => form.append("file", f, f.name));
    const text = this.el.input.value.trim();
    if (text) form.append("content", this.encodeMentions(text));
    const progress = this.el.progress;
    progress.hidden = false;
    progress.value = 0;
    try {
      const m = await this.api.upload(`/channels/${this.channelId}/messages/upload`, form, (v) => (progress.value = v));
      this.el.input.value = "";
      this.onMessageNew(m);
    } catch (err) {
      toast(`Upload failed: ${errText(err)}`, "error");
    } finally {
      progress.hidden = true;
      this.el.file.value = "";
    }
  }

  startReply(m) {
    this.replyTo = m;
    const cancel = h("button", { type: "button", class: "icon-button", "aria-label": "Cancel reply" }, "✕");
    cancel.addEventListener("click", () => this.cancelReply());
    replace(this.el.replyBar, `Replying to ${m.author.display_name || m.author.username}`, cancel);
    this.el.replyBar.hidden = false;
    this.el.input.focus();
  }

  cancelReply() {
    this.replyTo = null;
    this.el.replyBar.hidden = true;
  }

  startEdit(m) {
    this.editing = m.id;
    this.renderMessages();
    const area = this.el.messages.querySelector(`[data-id="${m.id}"] textarea`);
    if (area) area.focus();
  }

  editForm(m) {
    const area = h("textarea", { "aria-label": "Edit message", maxlength: 4000 }, m.content);
    const form = h(
      "form",
      { class: "edit-form" },
      area,
      h("button", { type: "submit", class: "primary small" }, "Save"),
      h("button", { type: "button", class: "small", dataset: { cancel: "1" } }, "Cancel"),
    );
    const done = () => {
      this.editing = null;
      this.renderMessages();
      this.el.input.focus();
    };
    form.querySelector("[data-cancel]").addEventListener("click", done);
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") done();
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const content = area.value.trim();
      if (!content) return;
      try {
        const updated = await this.api.patch(`/messages/${m.id}`, { content: this.encodeMentions(content) });
        this.onMessageEdit(updated);
        done();
      } catch (err) {
        toast(errText(err), "error");
      }
    });
    return form;
  }

  async deleteMessage(m) {
    if (!window.confirm("Delete this message?")) return;
    try {
      await this.api.del(`/messages/${m.id}`);
      this.onMessageDelete({ id: m.id, channel_id: m.channel_id });
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  reactionPicker(m, anchor) {
    const existing = anchor.parentElement.querySelector(".picker");
    if (existing) {
      existing.remove();
      return;
    }
    const picker = h("div", { class: "picker", role: "group", "aria-label": "Pick a reaction" });
    for (const emoji of QUICK_REACTIONS) {
      const b = h("button", { type: "button", class: "icon-button", "aria-label": `React ${emoji}`, dataset: { emoji } }, emoji);
      b.addEventListener("click", () => {
        picker.remove();
        this.toggleReaction(m, emoji, true);
      });
      picker.append(b);
    }
    picker.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        picker.remove();
        anchor.focus();
      }
    });
    anchor.parentElement.append(picker);
    picker.querySelector("button").focus();
  }

  async toggleReaction(m, emoji, add) {
    const path = `/messages/${m.id}/reactions/${encodeURIComponent(emoji)}`;
    try {
      if (add) await this.api.put(path);
      else await this.api.del(path);
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  // -- side panel: members / search -----------------------------------------------------------
  renderPanel() {
    if (!this.el) return;
    const panel = this.el.panel;
    if (this.searchResults) return this.renderSearch();
    const c = this.channelId ? this.channel(this.channelId) : null;
    const guildId = this.view !== "home" ? this.view : null;
    panel.hidden = this.panel !== "members" || (!guildId && !(c && c.channel_type === "dm"));
    panel.setAttribute("aria-label", "Members");
    if (panel.hidden) return;
    let users;
    if (guildId) {
      const members = this.members.get(guildId);
      users = members ? [...members.values()].map((m) => m.user) : [];
    } else {
      users = c.recipients;
    }
    const status = (u) => (u.id === this.me.id ? this.presence.get(u.id) || "online" : this.presence.get(u.id) || "offline");
    const online = users.filter((u) => status(u) !== "offline");
    const offline = users.filter((u) => status(u) === "offline");
    const item = (u) => {
      const s = status(u);
      const li = h(
        "li",
        { class: `member status-${s}`, dataset: { userId: u.id } },
        h("span", { class: "avatar", "aria-hidden": "true" }, initials(u.display_name || u.username), h("span", { class: "dot" })),
        h("span", { class: "member-name" }, u.display_name || u.username),
        h("span", { class: "visually-hidden" }, `, ${STATUS_LABEL[s]}`),
      );
      if (u.id !== this.me.id) {
        const dm = h("button", { type: "button", class: "icon-button", "aria-label": `Message ${u.username}`, title: "Message" }, "✉");
        dm.addEventListener("click", () => this.openDm(u.id));
        li.append(dm);
      }
      return li;
    };
    replace(
      panel,
      h("h3", {}, `Online — ${online.length}`),
      h("ul", { class: "member-list" }, online.map(item)),
      offline.length ? h("h3", {}, `Offline — ${offline.length}`) : null,
      h("ul", { class: "member-list" }, offline.map(item)),
    );
  }

  async search(q) {
    q = (q || "").trim();
    if (!q || this.view === "home") return;
    try {
      const body = await this.api.get(`/guilds/${this.view}/search?q=${encodeURIComponent(q)}&limit=25`);
      this.searchResults = { q, results: body.results };
      if (!this.wide()) this.el.layout.dataset.open = "panel";
      this.renderSearch();
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  renderSearch() {
    const panel = this.el.panel;
    panel.hidden = false;
    panel.setAttribute("aria-label", "Search results");
    const close = h("button", { type: "button", class: "icon-button", "aria-label": "Close search" }, "✕");
    close.addEventListener("click", () => {
      this.searchResults = null;
      if (this.el.layout.dataset.open === "panel") this.el.layout.dataset.open = "";
      this.renderPanel();
    });
    const { q, results } = this.searchResults;
    replace(
      panel,
      h("div", { class: "panel-head" }, h("h3", {}, `Results for “${q}”`), close),
      results.length ? null : h("p", { class: "hint" }, "Nothing found."),
      h(
        "ol",
        { class: "search-results" },
        results.map((m) => {
          const c = this.channel(m.channel_id);
          const b = h(
            "button",
            { type: "button", class: "result", dataset: { id: m.id } },
            h("span", { class: "meta" }, `${m.author.display_name || m.author.username} in #${c ? c.name : "?"} · ${formatTime(m.created_at)}`),
            h("span", { class: "content" }, this.content(m.content)),
          );
          b.addEventListener("click", () => this.jumpTo(m));
          return h("li", {}, b);
        }),
      ),
    );
  }

  async jumpTo(m) {
    await this.openChannel(m.channel_id, { keepPanel: true });
    const item = this.el.messages.querySelector(`[data-id="${m.id}"]`);
    if (item) {
      item.scrollIntoView({ block: "center" });
      item.classList.add("flash");
      item.focus();
    }
  }

  // -- home: friends and DMs ----------------------------------------------------------------
  renderHome() {
    if (!this.el || this.view !== "home" || this.channelId) return;
    const addForm = h(
      "form",
      { class: "inline-form", "aria-label": "Add a friend" },
      h("label", { for: "friend-name" }, "Add a friend by username"),
      h("input", { id: "friend-name", name: "username", required: true, maxlength: 32, autocomplete: "off" }),
      h("button", { type: "submit", class: "primary" }, "Send request"),
    );
    addForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const res = await this.api.post("/friends/requests", { username: new FormData(addForm).get("username") });
        toast(res.since ? `You are now friends with ${res.user.username}` : "Friend request sent");
        await this.loadFriends();
        this.renderHome();
      } catch (err) {
        toast(errText(err), "error");
      }
    });
    const btn = (label, fn, cls = "small") => {
      const b = h("button", { type: "button", class: cls }, label);
      b.addEventListener("click", async () => {
        try {
          await fn();
          await this.loadFriends();
          this.renderHome();
        } catch (err) {
          toast(errText(err), "error");
        }
      });
      return b;
    };
    const f = this.friends;
    replace(
      this.el.home,
      h("h2", {}, "Friends"),
      addForm,
      f.incoming.length ? h("h3", {}, "Incoming requests") : null,
      h(
        "ul",
        { class: "friend-list" },
        f.incoming.map((r) =>
          h(
            "li",
            {},
            h("span", {}, r.user.username),
            btn("Accept", () => this.api.post(`/friends/requests/${r.id}/accept`), "primary small"),
            btn("Decline", () => this.api.del(`/friends/requests/${r.id}`)),
          ),
        ),
      ),
      f.outgoing.length ? h("h3", {}, "Pending") : null,
      h(
        "ul",
        { class: "friend-list" },
        f.outgoing.map((r) => h("li", {}, h("span", {}, r.user.username), btn("Cancel", () => this.api.del(`/friends/requests/${r.id}`)))),
      ),
      h("h3", {}, `All friends — ${f.friends.length}`),
      f.friends.length ? null : h("p", { class: "hint" }, "No friends yet. Add someone by username."),
      h(
        "ul",
        { class: "friend-list" },
        f.friends.map((u) => {
          const message = h("button", { type: "button", class: "small primary" }, "Message");
          message.addEventListener("click", () => this.openDm(u.id));
          return h(
            "li",
            {},
            h("span", {}, u.display_name || u.username),
            message,
            btn("Remove", () => this.api.del(`/friends/${u.id}`), "small danger"),
          );
        }),
      ),
    );
  }

  async openDm(userId) {
    try {
      const dm = await this.api.post("/dms", { recipients: [userId] });
      this.dms.set(dm.id, dm);
      dm.recipients.forEach((u) => this.remember(u));
      this.view = "home";
      await this.openChannel(dm.id);
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  // -- dialogs: guilds and invites ----------------------------------------------------------
  guildDialog() {
    const dialog = this.el.dialog;
    const create = h(
      "form",
      { class: "auth-form", "aria-label": "Create a server" },
      h("h2", {}, "Create a server"),
      h("label", { for: "new-guild-name" }, "Server name"),
      h("input", { id: "new-guild-name", name: "name", required: true, maxlength: 100 }),
      h("button", { type: "submit", class: "primary" }, "Create"),
    );
    const join = h(
      "form",
      { class: "auth-form", "aria-label": "Join a server" },
      h("h2", {}, "Join with an invite"),
      h("label", { for: "invite-code" }, "Invite code or link"),
      h("input", { id: "invite-code", name: "code", required: true, maxlength: 200, autocomplete: "off" }),
      h("button", { type: "submit", class: "primary" }, "Join"),
    );
    const close = h("button", { type: "button", class: "small" }, "Close");
    close.addEventListener("click", () => dialog.close());
    create.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const g = await this.api.post("/guilds", { name: new FormData(create).get("name") });
        this.guilds.set(g.id, g);
        dialog.close();
        await this.showGuild(g.id);
      } catch (err) {
        toast(errText(err), "error");
      }
    });
    join.addEventListener("submit", async (e) => {
      e.preventDefault();
      const raw = String(new FormData(join).get("code")).trim();
      const code = raw.split(/[/#?=]/).filter(Boolean).pop();
      try {
        const member = await this.api.post(`/invites/${encodeURIComponent(code)}`);
        await this.loadGuild(member.guild_id);
        dialog.close();
        await this.showGuild(member.guild_id);
      } catch (err) {
        toast(errText(err), "error");
      }
    });
    replace(dialog, create, join, close);
    dialog.showModal();
    create.querySelector("input").focus();
  }

  async createInvite(guildId) {
    try {
      const invite = await this.api.post(`/guilds/${guildId}/invites`, { max_uses: 0, expires_in: 86_400 });
      const dialog = this.el.dialog;
      const copy = h("button", { type: "button", class: "primary small" }, "Copy");
      copy.addEventListener("click", () => navigator.clipboard.writeText(invite.code).then(() => toast("Copied")).catch(() => {}));
      const close = h("button", { type: "button", class: "small" }, "Close");
      close.addEventListener("click", () => dialog.close());
      replace(
        dialog,
        h("h2", {}, "Invite people"),
        h("p", {}, "Share this code; it works for 24 hours."),
        h("output", { class: "invite-code", "aria-label": "Invite code" }, invite.code),
        h("div", { class: "row" }, copy, close),
      );
      dialog.showModal();
      copy.focus();
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  // -- voice panel ----------------------------------------------------------------------------
  renderVoice() {
    if (!this.el || !this.voice) return;
    const v = this.voice;
    const panel = this.el.voicePanel;
    panel.hidden = !v.active;
    this.renderSidebar();
    this.renderHeader();
    this.renderStage();
    if (!v.active) return;
    const c = this.channel(v.channelId);
    const name = c ? (c.channel_type === "dm" ? `Call with ${this.dmName(c)}` : c.name) : "Voice";
    const mute = h("button", { type: "button", class: "small", "aria-pressed": v.muted ? "true" : "false" }, v.muted ? "Unmute" : "Mute");
    mute.addEventListener("click", () => v.setMuted(!v.muted));
    const share = h("button", { type: "button", class: "small", "aria-pressed": v.screen ? "true" : "false" }, v.screen ? "Stop sharing" : "Share screen");
    share.addEventListener("click", () => {
      if (v.screen) v.stopScreen();
      else v.startScreen().catch((e) => toast(`Screen share: ${errText(e)}`, "error"));
    });
    const leave = h("button", { type: "button", class: "small danger" }, "Leave");
    leave.addEventListener("click", () => (c && c.channel_type === "dm" ? this.leaveCall(c.id) : v.leave()));
    const state = v.pc ? v.pc.connectionState : "joining";
    this.el.voiceStats = h("p", { class: "voice-stats", dataset: { inboundAudioBytes: "0" } }, "");
    replace(
      panel,
      h("p", { class: "voice-title" }, h("strong", {}, "Voice "), h("span", { class: "voice-state", dataset: { state } }, state), ` — ${name}`),
      c && c.channel_type === "dm" ? this.voiceParticipants() : null,
      this.el.voiceStats,
      h("div", { class: "row" }, mute, share, leave),
    );
    this.renderVoiceStats();
  }

  renderVoiceStats() {
    const stats = this.voice.stats;
    const el = this.el.voiceStats;
    if (el) {
      el.dataset.inboundAudioBytes = String(stats.inboundAudioBytes);
      el.dataset.outboundAudioBytes = String(stats.outboundAudioBytes);
      el.textContent = `↓ ${formatBytes(stats.inboundAudioBytes)} ↑ ${formatBytes(stats.outboundAudioBytes)}${
        stats.rttMs !== null ? ` · ${Math.round(stats.rttMs)} ms` : ""
      }`;
    }
    // Speaking rings change with every stats tick; only the participant items need updating.
    for (const li of this.root.querySelectorAll(".voice-participants .participant")) {
      li.classList.toggle("speaking", this.voice.speaking(li.dataset.userId));
    }
  }

  renderStage() {
    const v = this.voice;
    const screens = v.active ? v.screens() : [];
    const stage = this.el.stage;
    // A <video> per track, kept across renders: a new element would restart the stream.
    const previous = this.videos || new Map();
    this.videos = new Map();
    const tile = (key, stream, label) => {
      let video = previous.get(key);
      if (!video) {
        video = h("video", { autoplay: true, muted: true, playsinline: true });
        video.srcObject = stream();
      }
      video.setAttribute("aria-label", label);
      this.videos.set(key, video);
      return h("figure", {}, video, h("figcaption", {}, label));
    };
    const tiles = screens.map(({ user, track }) =>
      tile(track.id, () => new MediaStream([track]), `${this.name(user)}'s screen`),
    );
    if (v.screen) tiles.push(tile("self", () => v.screen, "Your screen"));
    stage.hidden = tiles.length === 0;
    replace(stage, tiles);
  }

  // -- DM calls ----------------------------------------------------------------------------------
  updateCall(channelId, changes) {
    const call = { ...(this.calls.get(channelId) || { channel_id: channelId }), ...changes };
    this.calls.set(channelId, call);
    if (changes.state === "active" || (changes.participants && changes.participants.includes(this.me.id))) {
      this.hideBanner(channelId);
    }
    this.renderHeader();
  }

  onCallRinging(d) {
    this.updateCall(d.channel_id, { state: "ringing", started_by: d.started_by });
    const banner = this.el.banner;
    const accept = h("button", { type: "button", class: "primary small" }, "Accept");
    accept.addEventListener("click", () => this.acceptCall(d.channel_id));
    const decline = h("button", { type: "button", class: "danger small" }, "Decline");
    decline.addEventListener("click", async () => {
      this.hideBanner(d.channel_id);
      await this.api.post(`/dms/${d.channel_id}/call/decline`).catch((e) => toast(errText(e), "error"));
    });
    banner.dataset.channel = d.channel_id;
    replace(banner, h("span", {}, `📞 ${this.name(d.started_by)} is calling you`), accept, decline);
    banner.hidden = false;
    accept.focus();
  }

  hideBanner(channelId) {
    if (this.el.banner.dataset.channel === channelId) this.el.banner.hidden = true;
  }

  async startCall(channelId) {
    try {
      const call = await this.api.post(`/dms/${channelId}/call`);
      this.calls.set(channelId, call);
      await this.voice.join(channelId);
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  async acceptCall(channelId) {
    this.hideBanner(channelId);
    try {
      const call = await this.api.post(`/dms/${channelId}/call/join`);
      this.calls.set(channelId, call);
      if (this.channelId !== channelId) {
        this.view = "home";
        await this.openChannel(channelId);
      }
      await this.voice.join(channelId);
    } catch (err) {
      toast(errText(err), "error");
    }
  }

  async leaveCall(channelId) {
    this.voice.leave();
    await this.api.post(`/dms/${channelId}/call/leave`).catch(() => {});
    this.renderHeader();
  }

  onCallEnded(d) {
    this.updateCall(d.channel_id, { state: "ended" });
    this.hideBanner(d.channel_id);
    if (this.voice.channelId === d.channel_id) this.voice.teardown();
  }

  // A dropped connection took our peer, which left the DM call: join the call again first.
  async beforeVoiceRejoin(channelId) {
    const c = this.channel(channelId);
    if (!c || c.channel_type !== "dm") return true;
    try {
      const call = await this.api.post(`/dms/${channelId}/call/join`);
      this.calls.set(channelId, call);
      return true;
    } catch {
      toast("The call ended while you were disconnected");
      return false;
    }
  }
}

function sortChannels(channels) {
  return [...channels].sort((a, b) => a.position - b.position || (a.id < b.id ? -1 : 1));
}

function initials(name) {
  const words = String(name || "?").split(/[\s_.-]+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[1][0] : String(name || "?").slice(0, 2)).toUpperCase();
}

function highlightBroadcast(text) {
  const parts = text.split(/(@everyone|@here)/);
  return parts.map((p) => (p === "@everyone" || p === "@here" ? h("span", { class: "mention" }, p) : p));
}
