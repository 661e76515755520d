// REST client: bearer tokens, refresh before expiry, the contract's error shape, uploads with
// progress. Same origin as the page, so no CORS and no token ever leaves for another host.

const STORAGE_KEY = "vox.session";
// Refresh this long before the access token expires, so requests never race its expiry.
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.fields = error.fields || {};
    this.body = error;
  }
}

export class Api {
  constructor() {
    this.tokens = null;
    this.refreshTimer = null;
    this.inflightRefresh = null;
    this.onSignedOut = () => {};
    this.onTokens = () => {};
    // A duplicated tab starts with a copy of this tab's sessionStorage, hence the same refresh
    // token. Refresh tokens rotate and a rotated one presented again revokes the session, so
    // tabs holding the same token refresh one at a time (a Web Lock) and pass the new tokens on.
    this.channel = "BroadcastChannel" in window ? new BroadcastChannel("vox.tokens") : null;
    if (this.channel) {
      this.channel.onmessage = (event) => {
        const { replaced, tokens } = event.data || {};
        if (this.tokens && tokens && replaced === this.tokens.refresh_token) this.setTokens(tokens, false);
      };
    }
    try {
      const saved = sessionStorage.getItem(STORAGE_KEY);
      if (saved) this.tokens = JSON.parse(saved);
    } catch {
      this.tokens = null;
    }
  }

  get signedIn() {
    return this.tokens !== null;
  }

  get userId() {
    return this.tokens ? this.tokens.user_id : null;
  }

  setTokens(body, announce = true) {
    const replaced = this.tokens ? this.tokens.refresh_token : null;
    this.tokens = {
      access_token: body.access_token,
      refresh_token: body.refresh_token,
      user_id: body.user_id,
      expires_at: body.expires_at || Date.now() + Number(body.expires_in || 900) * 1000,
    };
    if (announce && replaced && this.channel) this.channel.postMessage({ replaced, tokens: this.tokens });
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.tokens));
    this.schedule();
    this.onTokens(this.tokens);
  }

  clear() {
    this.tokens = null;
    clearTimeout(this.refreshTimer);
    sessionStorage.removeItem(STORAGE_KEY);
  }

  schedule() {
    clearTimeout(this.refreshTimer);
    if (!this.tokens) return;
    const wait = Math.max(5_000, this.tokens.expires_at - Date.now() - REFRESH_MARGIN_MS);
    // After a failure that did not end the session (the network), try again in a while.
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => this.tokens && this.retryLater()), wait);
  }

  retryLater() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => this.tokens && this.retryLater()), 30_000);
  }

  // One refresh at a time: refresh tokens rotate, and presenting a rotated one again would
  // revoke the whole session (reuse detection).
  refresh() {
    if (!this.tokens) return Promise.reject(new ApiError(401, null));
    if (!this.inflightRefresh) {
      const held = this.tokens.refresh_token;
      const run = async () => {
        // Another tab may have rotated our shared token while we waited for the lock; its
        // message can trail the lock by a moment, hence the short wait.
        if (navigator.locks) await new Promise((resolve) => setTimeout(resolve, 50));
        if (!this.tokens || this.tokens.refresh_token !== held) return;
        this.setTokens(await this.raw("POST", "/auth/refresh", { refresh_token: held }, false));
      };
      const locked = navigator.locks ? navigator.locks.request("vox.refresh", run) : run();
      this.inflightRefresh = locked
        .catch((err) => {
          if (err instanceof ApiError && err.status === 401) {
            this.clear();
            this.onSignedOut("Your session ended; please sign in again.");
          }
          throw err;
        })
        .finally(() => {
          this.inflightRefresh = null;
        });
    }
    return this.inflightRefresh;
  }

  async accessToken() {
    if (!this.tokens) throw new ApiError(401, null);
    if (this.tokens.expires_at - Date.now() < 10_000) await this.refresh();
    return this.tokens.access_token;
  }

  async raw(method, path, body, auth = true) {
    const headers = {};
    if (auth) headers.Authorization = `Bearer ${await this.accessToken()}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(`/api/v1${path}`, init);
    if (response.status === 204) return null;
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  async request(method, path, body) {
    try {
      return await this.raw(method, path, body, true);
    } catch (err) {
      // A token can expire between our check and the server's (clock skew, a sleeping laptop).
      if (err instanceof ApiError && err.code === "token_expired") {
        await this.refresh();
        return this.raw(method, path, body, true);
      }
      throw err;
    }
  }

  get(path) {
    return this.request("GET", path);
  }
  post(path, body) {
    return this.request("POST", path, body === undefined ? {} : body);
  }
  patch(path, body) {
    return this.request("PATCH", path, body);
  }
  put(path) {
    return this.request("PUT", path);
  }
  del(path) {
    return this.request("DELETE", path);
  }

  // fetch() cannot report upload progress; XMLHttpRequest can.
  async upload(path, form, onProgress) {
    const token = await this.accessToken();
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/v1${path}`);
      xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
      xhr.onload = () => {
        let data = null;
        try {
          data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
        } catch {
          data = null;
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new ApiError(xhr.status, data));
      };
      xhr.onerror = () => reject(new ApiError(0, { error: { message: "network error" } }));
      xhr.send(form);
    });
  }

  // Attachments need the bearer token, so <img src> cannot load them directly: fetch, then
  // hand the element an object URL (allowed by the page's CSP as blob:).
  async objectUrl(url) {
    const response = await fetch(url, { headers: { Authorization: `Bearer ${await this.accessToken()}` } });
    if (!response.ok) throw new ApiError(response.status, null);
    return URL.createObjectURL(await response.blob());
  }
}
