// Actions: the list (newest first, filtered, a page at a time) and one action's detail with
// its live progress per target, its report's decisions, and cancelling it while scheduled.

import { ApiError, api, query } from "./api.js";
import { age, confirmDialog, every, field, h, notice, replace, table, text, values } from "./dom.js";

const STATUSES = ["", "running", "scheduled", "completed", "incomplete", "cancelled", "expired"];
const ORIGINS = ["", "revocation", "event", "aws", "vault", "policy", "sweep", "lock", "unlock", "drain", "undrain"];
const FINISHED = new Set(["completed", "incomplete", "cancelled", "expired"]);

/** Waits up to a minute for an action to finish; resolves with its report. */
export async function finished(id) {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const { data } = await api("GET", `/v1/actions/${encodeURIComponent(id)}`);
    if (data.report && FINISHED.has(data.status)) return data.report;
    await new Promise((r) => setTimeout(r, 500));
  }
  // A target that does not answer is retried for a long time; the page must not wait.
  throw new ApiError(0, "still_running", `action ${id} has not finished yet: follow it on the Actions page`);
}

/** Decisions that end (or would end, or failed to end) a session, as opposed to sparing it. */
const ENDING = new Set(["terminated", "cancelled", "would_terminate", "would_cancel", "failed", "remaining"]);

/** One row per session decision, what was decided and why: those ended first, those
 * spared (with their rule) folded below, since a selector spares every other session. */
export function decisionsTable(decisions) {
  const row = (d) =>
    h("tr", { testid: "decision-row", dataset: { decision: d.decision, pid: d.pid } },
      h("td", {}, d.pid), h("td", {}, text(d.login)), h("td", {}, d.decision), h("td", {}, text(d.rule)));
  const ended = decisions.filter((d) => ENDING.has(d.decision));
  const spared = decisions.filter((d) => !ENDING.has(d.decision));
  return h("div", {},
    table("decisions", ["pid", "login", "decision", "why"], ended, row, "No session is ended."),
    spared.length
      ? h("details", { testid: "spared" },
        h("summary", {}, `${spared.length} session(s) spared, and why`),
        table("spared-decisions", ["pid", "login", "decision", "why"], spared, row))
      : null);
}

export function render(root, path) {
  return path.length ? detail(root, path[0]) : index(root);
}

function index(root) {
  const filters = h(
    "form",
    { class: "filters", testid: "action-filters" },
    field("Status", h("select", { name: "status", testid: "filter-status" }, STATUSES.map((s) => h("option", { value: s }, s || "any")))),
    field("Origin", h("select", { name: "origin", testid: "filter-origin" }, ORIGINS.map((s) => h("option", { value: s }, s || "any")))),
    field("Actor", h("input", { name: "actor", testid: "filter-actor", placeholder: "operator:alice" })),
    h("button", { type: "submit", testid: "apply-filters" }, "Apply"),
  );
  const rows = h("div", {});
  const more = h("button", { type: "button", testid: "more", hidden: true }, "Older");
  let cursor = null;
  let shown = [];

  async function load(reset) {
    if (reset) {
      cursor = null;
      shown = [];
    }
    try {
      const { data } = await api("GET", `/v1/actions${query({ ...values(filters), limit: 50, before: cursor })}`);
      shown = shown.concat(data.actions);
      cursor = data.next;
      more.hidden = !cursor;
      replace(rows, table("action-list", ["accepted", "origin", "actor", "status", "finished", ""], shown, (a) =>
        h("tr", { testid: "action-row", dataset: { status: a.status } },
          h("td", { title: a.created_at }, `${age(a.created_at)} ago`),
          h("td", {}, text(a.origin)),
          h("td", {}, a.actor),
          h("td", { class: `status ${a.status}` }, a.status),
          h("td", {}, a.finished_at ? `${age(a.finished_at)} ago` : "—"),
          h("td", {}, h("a", { href: `#/actions/${encodeURIComponent(a.action_id)}`, testid: "action-link" }, "open"))),
        "No actions."));
    } catch (e) {
      replace(rows, notice("error", e.message));
    }
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true);
  });
  more.addEventListener("click", () => load(false));
  replace(root, h("h1", {}, "Actions"), filters, rows, more);
  // The first page refreshes; older pages are loaded on request.
  return every(5000, () => (cursor === null || shown.length <= 50 ? load(true) : null));
}

function detail(root, id) {
  const head = h("div", {});
  const steps = h("div", {});
  const report = h("div", {});
  const message = h("div", {});
  const cancelButton = h("button", { type: "button", class: "danger", testid: "cancel-action", hidden: true }, "Cancel this action…");
  const cancelReason = h("input", { name: "reason", testid: "cancel-reason", placeholder: "Why it is called off", hidden: true });
  let stop = () => {};

  async function load() {
    try {
      const { data } = await api("GET", `/v1/actions/${encodeURIComponent(id)}`);
      const shown = data.scheduled ? "scheduled" : data.status;
      replace(head,
        h("dl", {},
          h("dt", {}, "Status"), h("dd", { testid: "action-status", class: `status ${shown}` }, shown),
          h("dt", {}, "Actor"), h("dd", {}, data.actor),
          h("dt", {}, "Accepted"), h("dd", { title: data.created_at }, `${age(data.created_at)} ago`),
          h("dt", {}, "Finished"), h("dd", {}, data.finished_at ? `${age(data.finished_at)} ago` : "—")),
        h("p", {}, h("a", { href: `#/audit?action_id=${encodeURIComponent(id)}`, testid: "action-audit" }, "Audit records of this action")));
      replace(steps, table("step-list", ["target", "state", "attempts", "failure", "last error", "next attempt"], data.steps, (s) =>
        h("tr", { testid: "step-row" }, h("td", {}, s.target), h("td", {}, s.state), h("td", {}, s.attempts),
          h("td", {}, text(s.failure)), h("td", {}, text(s.last_error)), h("td", {}, text(s.next_attempt_at)))));
      const scheduled = data.scheduled;
      cancelButton.hidden = !scheduled;
      cancelReason.hidden = !scheduled;
      if (data.report) {
        const r = data.report;
        replace(report,
          h("h2", {}, r.dry_run ? "Report (dry run: nothing was changed)" : "Report"),
          r.targets.length ? null : h("p", { class: "empty" }, "No target was acted on."),
          r.targets.map((t) => h("div", { testid: "target-report" },
            h("h3", {}, t.target),
            h("p", {}, `${t.found} in scope · ${t.terminated?.length ?? 0} terminated · ${t.cancelled?.length ?? 0} cancelled · ${t.skipped?.length ?? 0} spared · ${t.remaining?.length ?? 0} remaining`),
            t.error ? notice("error", t.error) : null,
            (t.notes ?? []).map((n) => h("p", { class: "note" }, n)),
            decisionsTable(t.decisions ?? []))));
      }
      if (FINISHED.has(data.status)) stop();
    } catch (e) {
      replace(message, notice("error", e.message));
      if (e.status === 404) stop();
    }
  }

  cancelButton.addEventListener("click", async () => {
    const why = cancelReason.value.trim();
    if (!why) {
      replace(message, notice("error", "A reason is required to cancel."));
      return;
    }
    if (!(await confirmDialog("Cancel this action?", [`Reason: ${why}`], "Cancel the action"))) return;
    try {
      await api("POST", `/v1/actions/${encodeURIComponent(id)}/cancel`, { reason: why });
      replace(message, notice("ok", "Cancelled."));
      load();
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  });

  replace(root,
    h("p", {}, h("a", { href: "#/actions" }, "← all actions")),
    h("h1", {}, "Action ", h("code", {}, id)),
    head, message, h("p", { class: "buttons" }, cancelReason, cancelButton), steps, report);
  stop = every(1500, load);
  return () => stop();
}
