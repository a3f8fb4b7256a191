// Building the page. Every string becomes a text node or an attribute value, never HTML:
// values from databases (an application_name is chosen by whoever connects) are shown,
// never run. Event handlers are functions, never strings.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "type", "selected", "required"]);

/** An element with attributes, properties, listeners (`onclick: fn`) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === "testid") {
      el.dataset.testid = value;
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (PROPERTIES.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Appends children: nodes as they are, strings and numbers as text, arrays flattened. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Control characters, zero-width characters and bidirectional overrides: a client can put
// them in an application name to hide or reorder what an operator reads.
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;

/** A value for a table cell: `—` for none, text otherwise, with invisible characters shown
 * as `\u202e` escapes. */
export function text(value) {
  if (value === undefined || value === null || value === "") return "—";
  if (Array.isArray(value)) return value.length ? value.join(", ") : "—";
  const s = typeof value === "object" ? JSON.stringify(value) : String(value);
  return s.replace(INVISIBLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** How long ago an RFC 3339 moment was, as `3m 12s`; `—` for none. */
export function age(moment, now = Date.now()) {
  if (!moment) return "—";
  const seconds = Math.max(0, Math.round((now - Date.parse(moment)) / 1000));
  return duration(seconds);
}

/** Seconds as `1h 2m`, `3m 12s` or `5s`. */
export function duration(seconds) {
  if (seconds >= 3600) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  if (seconds >= 60) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${seconds}s`;
}

/** A table with a header row, one row per item from `row(item)`, and `empty` when none. */
export function table(testid, headings, items, row, empty = "Nothing to show.") {
  if (!items.length) return h("p", { class: "empty", testid }, empty);
  return h(
    "table",
    { testid },
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, items.map(row)),
  );
}

/** A labelled form field. */
export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", {}, label), control, hint ? h("small", {}, hint) : null);
}

/** A message area: errors and confirmations, announced to screen readers. */
export function notice(kind, message, testid = "notice") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", testid }, message);
}

/** The values of a form's named fields that are not empty, trimmed. */
export function values(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    const v = typeof value === "string" ? value.trim() : value;
    if (v !== "") out[key] = v;
  }
  return out;
}

/** Opens a modal dialog built by `build(close)` and resolves with what `close` is given;
 * Escape closes it with `dismissed`. */
function modal(dismissed, build) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { testid: "confirm-dialog", class: "confirm" });
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    append(dialog, [build(close)]);
    dialog.addEventListener("cancel", () => close(dismissed));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** The dialog's buttons: cancel (closing with `dismissed`) and the confirming one. */
function buttons(close, dismissed, confirm) {
  return h(
    "div",
    { class: "buttons" },
    h("button", { type: "button", testid: "confirm-cancel", onclick: () => close(dismissed) }, "Cancel"),
    confirm,
  );
}

/** Asks to confirm in a modal dialog; resolves true only on the confirm button. */
export function confirmDialog(title, lines, confirmLabel) {
  return modal(false, (close) => [
    h("h2", {}, title),
    lines.map((l) => h("p", {}, l)),
    buttons(close, false,
      h("button", { type: "button", class: "danger", testid: "confirm", onclick: () => close(true) }, confirmLabel)),
  ]);
}

/** Runs `task` now and every `ms` while the tab is visible; returns what stops it. */
export function every(ms, task) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await task();
      } catch (e) {
        console.warn("refresh failed", e);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** A comma-separated field as a list of its non-empty values. */
export function list(value) {
  return (value || "").split(",").map((s) => s.trim()).filter(Boolean);
}

/** Asks for a reason in a modal dialog; resolves with it, or null when cancelled. */
export function reasonDialog(title, confirmLabel) {
  const input = h("input", { name: "reason", required: true, testid: "dialog-reason", placeholder: "Why (recorded in the audit trail)" });
  const answer = modal(null, (close) => {
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", {}, title),
      field("Reason", input),
      buttons(close, null, h("button", { type: "submit", class: "danger", testid: "confirm" }, confirmLabel)),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.trim()) close(input.value.trim());
    });
    return form;
  });
  input.focus();
  return answer;
}
