// Locks and drains: the active ones with their expiry; keep a login out or a database clear
// for a bounded time (with a reason), and lift one early.

import { api } from "./api.js";
import { age, confirmDialog, every, field, h, notice, reasonDialog, replace, table, text, values } from "./dom.js";

export function render(root) {
  const lockList = h("div", {});
  const drainList = h("div", {});
  const message = h("div", {});
  const targets = h("datalist", { id: "target-ids" });

  const lockForm = h(
    "form",
    { class: "filters", testid: "lock-form" },
    field("Login", h("input", { name: "login", required: true, testid: "lock-login" })),
    field("Targets", h("input", { name: "targets", required: true, value: "all", list: "target-ids", testid: "lock-targets" }), "a target id, or all"),
    field("For", h("input", { name: "for", required: true, value: "30m", testid: "lock-for" })),
    field("Also end its sessions", h("input", { type: "checkbox", name: "terminate", value: "true", checked: true, testid: "lock-terminate" })),
    field("Reason", h("input", { name: "reason", required: true, testid: "lock-reason" })),
    h("button", { type: "submit", class: "danger", testid: "lock" }, "Lock login…"),
  );
  const drainForm = h(
    "form",
    { class: "filters", testid: "drain-form" },
    field("Target", h("input", { name: "target", required: true, list: "target-ids", testid: "drain-target" })),
    field("Database", h("input", { name: "database", required: true, testid: "drain-database" })),
    field("For", h("input", { name: "for", required: true, value: "15m", testid: "drain-for" })),
    field("Reason", h("input", { name: "reason", required: true, testid: "drain-reason" })),
    h("button", { type: "submit", class: "danger", testid: "drain" }, "Drain database…"),
  );

  async function lift(kind, id, what) {
    const why = await reasonDialog(`Lift the ${kind} on ${what} early?`, "Lift it");
    if (!why) return;
    try {
      await api("DELETE", `/v1/${kind}s/${encodeURIComponent(id)}?reason=${encodeURIComponent(why)}`);
      replace(message, notice("ok", `The ${kind} on ${what} is lifted.`));
      load();
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  }

  /** The active locks or drains (`kind`), each named by its `what` (login or database). */
  function listed(kind, what, items) {
    return table(`${kind}-list`, [what, "target", "since", "until", "state", "reason", "by", ""], items, (x) =>
      h("tr", { testid: `${kind}-row` },
        h("td", {}, x[what]), h("td", {}, x.target), h("td", { title: x.since }, `${age(x.since)} ago`),
        h("td", {}, text(x.until)), h("td", {}, x.state), h("td", {}, text(x.reason)), h("td", {}, x.actor),
        h("td", {}, h("button", { type: "button", testid: `lift-${kind}`, onclick: () => lift(kind, x[`${kind}_id`], x[what]) }, "Lift"))),
      `No active ${kind}s.`);
  }

  async function load() {
    try {
      const [locks, drains] = await Promise.all([api("GET", "/v1/locks"), api("GET", "/v1/drains")]);
      replace(lockList, listed("lock", "login", locks.data));
      replace(drainList, listed("drain", "database", drains.data));
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  }

  async function submit(path, body, question) {
    if (!(await confirmDialog(question, [`Reason: ${body.reason}`, `For: ${body.for}`], "Go ahead"))) return;
    try {
      const answer = await api("POST", path, body);
      replace(message, notice("ok", "Done.", "lock-done"), " ",
        h("a", { href: `#/actions/${encodeURIComponent(answer.data.action_id)}` }, "Follow the action"));
      load();
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  }

  lockForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const v = values(lockForm);
    const body = { login: v.login, targets: v.targets === "all" ? "all" : v.targets.split(",").map((s) => s.trim()), for: v.for, reason: v.reason, terminate: Boolean(v.terminate) };
    submit("/v1/locks", body, `Lock ${v.login} on ${v.targets} for ${v.for}?`);
  });
  drainForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const v = values(drainForm);
    submit("/v1/drains", { target: v.target, database: v.database, for: v.for, reason: v.reason }, `Drain ${v.database} on ${v.target} for ${v.for}?`);
  });

  api("GET", "/v1/targets").then(({ data }) => replace(targets, data.targets.map((t) => h("option", { value: t.id })))).catch(() => {});
  replace(root, h("h1", {}, "Locks and drains"), targets, message,
    h("h2", {}, "Locked logins"), lockList, lockForm,
    h("h2", {}, "Drained databases"), drainList, drainForm);
  return every(5000, load);
}
