// Entry point: pick the sign-in screen or the client, and switch between them.

import { Api } from "./api.js";
import { App } from "./app.js";
import { renderAuth, takeSsoResult } from "./auth.js";

const root = document.getElementById("app");
const api = new Api();
let app = null;

async function signedIn() {
  app = new App(root, api, signOut);
  try {
    await app.start();
  } catch (err) {
    app.stop();
    app = null;
    api.clear();
    renderAuth(root, api, signedIn, `Could not start: ${err.message || err}`);
  }
}

async function signOut() {
  try {
    await api.post("/auth/logout");
  } catch {
    // Signing out locally is what matters; the session expires on its own otherwise.
  }
  if (app) app.stop();
  app = null;
  api.clear();
  renderAuth(root, api, signedIn);
}

api.onSignedOut = (why) => {
  if (app) app.stop();
  app = null;
  renderAuth(root, api, signedIn, why);
};

const ssoError = takeSsoResult(api);
if (api.signedIn) {
  // A reload: the saved access token may have expired meanwhile; refresh schedules itself.
  api.schedule();
  signedIn();
} else {
  renderAuth(root, api, signedIn, ssoError ? `Single sign-on failed: ${ssoError}` : "");
}
