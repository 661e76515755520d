// The sign-in screen: log in (with a TOTP step when MFA is on), register, and the SSO buttons of
// the server's enabled OIDC providers when it has any.

import { ApiError } from "./api.js";
import { h, replace } from "./dom.js";

// Tokens come back from SSO in the query string of our own URL: take them, then drop them from
// the address bar and the history entry.
export function takeSsoResult(api) {
  const params = new URLSearchParams(window.location.search);
  if (!params.has("access_token") && !params.has("error")) return null;
  history.replaceState(null, "", window.location.pathname);
  if (params.has("error")) return params.get("error_description") || params.get("error");
  api.setTokens({
    access_token: params.get("access_token"),
    refresh_token: params.get("refresh_token"),
    expires_in: Number(params.get("expires_in") || 900),
    user_id: params.get("user_id"),
  });
  return null;
}

function field(label, attrs) {
  const id = `f-${attrs.name}-${Math.random().toString(36).slice(2, 7)}`;
  return h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, ...attrs }));
}

function describe(err) {
  if (err instanceof ApiError) {
    const fields = Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`);
    return fields.length ? `${err.message} (${fields.join(", ")})` : err.message;
  }
  return String(err);
}

export function renderAuth(root, api, onSignedIn, notice = "") {
  const error = h("p", { class: "form-error", role: "alert" }, notice);
  const sso = h("div", { class: "sso" });
  let mode = "login";

  const loginForm = h(
    "form",
    { class: "auth-form", "aria-label": "Sign in" },
    field("Username", { name: "username", autocomplete: "username", required: true, maxlength: 64 }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  const mfaForm = h(
    "form",
    { class: "auth-form", "aria-label": "Two-factor code", hidden: true },
    h("p", {}, "Enter the 6-digit code from your authenticator app."),
    field("Code", {
      name: "code",
      inputmode: "numeric",
      autocomplete: "one-time-code",
      pattern: "[0-9]{6}",
      required: true,
      maxlength: 6,
    }),
    h("button", { type: "submit", class: "primary" }, "Verify"),
  );
  const registerForm = h(
    "form",
    { class: "auth-form", "aria-label": "Create account", hidden: true },
    field("Username", {
      name: "username",
      autocomplete: "username",
      required: true,
      minlength: 2,
      maxlength: 32,
      pattern: "[A-Za-z0-9_.\\-]+",
      title: "2-32 letters, digits, _ . -",
    }),
    field("Password", {
      name: "password",
      type: "password",
      autocomplete: "new-password",
      required: true,
      minlength: 8,
      maxlength: 128,
    }),
    field("Email (optional)", { name: "email", type: "email", autocomplete: "email" }),
    field("Invite code (optional)", { name: "invite_code", autocomplete: "off" }),
    h("button", { type: "submit", class: "primary" }, "Create account"),
  );
  const switcher = h("button", { type: "button", class: "link" }, "Create an account");
  const title = h("h1", {}, "Sign in to Vox");
  let mfaToken = null;

  const busy = (form, on) => {
    for (const el of form.elements) el.disabled = on;
  };

  const finish = async (tokens) => {
    api.setTokens(tokens);
    await onSignedIn();
  };

  loginForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const data = Object.fromEntries(new FormData(loginForm));
    busy(loginForm, true);
    try {
      const body = await api.raw("POST", "/auth/login", data, false);
      if (body.mfa_required) {
        mfaToken = body.mfa_token;
        loginForm.hidden = true;
        mfaForm.hidden = false;
        mfaForm.querySelector("input").focus();
      } else {
        await finish(body);
      }
    } catch (err) {
      error.textContent = describe(err);
    } finally {
      busy(loginForm, false);
    }
  });

  mfaForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const code = new FormData(mfaForm).get("code");
    busy(mfaForm, true);
    try {
      await finish(await api.raw("POST", "/auth/mfa/verify", { mfa_token: mfaToken, code }, false));
    } catch (err) {
      error.textContent = describe(err);
    } finally {
      busy(mfaForm, false);
    }
  });

  registerForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const data = Object.fromEntries(new FormData(registerForm));
    for (const key of ["email", "invite_code"]) if (!data[key]) delete data[key];
    busy(registerForm, true);
    try {
      await api.raw("POST", "/auth/register", data, false);
      const body = await api.raw(
        "POST",
        "/auth/login",
        { username: data.username, password: data.password },
        false,
      );
      await finish(body);
    } catch (err) {
      error.textContent = describe(err);
    } finally {
      busy(registerForm, false);
    }
  });

  switcher.addEventListener("click", () => {
    mode = mode === "login" ? "register" : "login";
    loginForm.hidden = mode !== "login";
    mfaForm.hidden = true;
    registerForm.hidden = mode !== "register";
    title.textContent = mode === "login" ? "Sign in to Vox" : "Create your Vox account";
    switcher.textContent = mode === "login" ? "Create an account" : "I already have an account";
    error.textContent = "";
    (mode === "login" ? loginForm : registerForm).querySelector("input").focus();
  });

  replace(
    root,
    h(
      "main",
      { class: "auth" },
      h("div", { class: "auth-card" }, title, error, loginForm, mfaForm, registerForm, sso, switcher),
    ),
  );
  root.removeAttribute("aria-busy");
  loginForm.querySelector("input").focus();

  // SSO is optional on the server: no route or no enabled provider simply shows no buttons.
  api
    .raw("GET", "/auth/oidc/providers", undefined, false)
    .then((providers) => {
      if (!Array.isArray(providers) || providers.length === 0) return;
      const back = `${window.location.origin}/`;
      replace(
        sso,
        h("p", { class: "divider" }, "or"),
        providers.map((p) =>
          h(
            "a",
            {
              class: "button sso-button",
              href: `/api/v1/auth/oidc/authorize/${encodeURIComponent(p.slug)}?redirect_uri=${encodeURIComponent(back)}`,
            },
            `Continue with ${p.display_name}`,
          ),
        ),
      );
    })
    .catch(() => {});
}
