// The console's shell: sign-in, navigation between pages (the part of the URL after `#`),
// and stopping a page's polling when another is shown.

import { api, onUnauthorized, signIn, signOut, token } from "./api.js";
import { field, h, notice, replace } from "./dom.js";
import * as sessions from "./sessions.js";
import * as actions from "./actions.js";
import * as audit from "./audit.js";
import * as locks from "./locks.js";
import * as policies from "./policies.js";

const PAGES = { sessions, actions, audit, locks, policies };

const main = document.getElementById("main");
const nav = document.querySelector("[data-testid=nav]");
const signOutButton = document.getElementById("sign-out");
let leave = () => {};

function showSignIn(message) {
  leave();
  leave = () => {};
  nav.hidden = true;
  signOutButton.hidden = true;
  const input = h("input", {
    type: "password",
    name: "token",
    autocomplete: "off",
    required: true,
    testid: "token",
    placeholder: "sev_…",
  });
  const status = h("div", {});
  const form = h(
    "form",
    { class: "sign-in", testid: "page-sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an operator token. It is kept in this tab only, and forgotten when the tab closes."),
    field("Operator token", input),
    h("button", { type: "submit", testid: "sign-in" }, "Sign in"),
    status,
  );
  if (message) replace(status, notice("error", message));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    signIn(input.value.trim());
    try {
      // Any operator route proves the token; this one is cheap.
      await api("GET", "/v1/actions?limit=1");
      if (!location.hash || location.hash === "#/") location.hash = "#/sessions";
      route();
    } catch (e) {
      signOut();
      replace(status, notice("error", e.status === 401 ? "That token was refused." : e.message));
    }
  });
  replace(main, form);
  input.focus();
}

function route() {
  if (!token()) return showSignIn();
  nav.hidden = false;
  signOutButton.hidden = false;
  const [, first, ...rest] = location.hash.replace(/\?.*$/, "").split("/");
  const name = first || "sessions";
  const params = new URLSearchParams(location.hash.includes("?") ? location.hash.slice(location.hash.indexOf("?") + 1) : "");
  const page = PAGES[name];
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("current", link.getAttribute("href") === `#/${name}`);
  }
  leave();
  leave = () => {};
  if (!page) {
    replace(main, notice("error", "No such page."));
    return;
  }
  const container = h("section", { testid: `page-${name}${rest.length ? "-detail" : ""}` });
  replace(main, container);
  leave = page.render(container, rest.map(decodeURIComponent), params) || (() => {});
}

onUnauthorized(() => {
  signOut();
  showSignIn("The token was refused: sign in again.");
});
signOutButton.addEventListener("click", () => {
  signOut();
  showSignIn();
});
window.addEventListener("hashchange", route);
route();
