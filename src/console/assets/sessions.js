// Sessions: one target's sessions under the selector's filters, refreshed live, with what
// each holds (state, transaction age, who blocks whom). Tick sessions or take the whole
// filter, preview (a dry run: every decision and its reason), then revoke with a reason,
// after confirming the count the preview found. The revocation carries that count
// (`expect_count`), so sever refuses it if the selection has grown since.

import { ApiError, api, query } from "./api.js";
import { age, confirmDialog, every, field, h, list, notice, replace, table, text, values } from "./dom.js";
import { finished, decisionsTable } from "./actions.js";

const STATES = ["", "active", "idle", "idle_in_transaction", "idle_in_transaction_aborted"];
const REFRESH_MS = 3000;

/** The key that names one session: a pid alone is reused, the pid and its start are not. */
function key(s) {
  return `${s.pid}@${s.backend_start ?? ""}`;
}

export function render(root) {
  const ticked = new Map();
  let last = null; // the latest listing
  let preview = null; // {body, count, report}

  const targetSelect = h("select", { name: "target", testid: "filter-target", required: true });
  const filters = h(
    "form",
    { class: "filters", testid: "session-filters" },
    field("Target", targetSelect),
    field("Login", h("input", { name: "login", testid: "filter-login", placeholder: "app_orders, batch" })),
    field("Database", h("input", { name: "database", testid: "filter-database" })),
    field("Application", h("input", { name: "application", testid: "filter-application", placeholder: "psql*" })),
    field("Client", h("input", { name: "client", testid: "filter-client", placeholder: "10.0.0.0/8" })),
    field("State", h("select", { name: "state", testid: "filter-state" }, STATES.map((s) => h("option", { value: s }, s || "any")))),
    field("Idle for", h("input", { name: "idle_for", testid: "filter-idle-for", placeholder: "5m" })),
    field("Query text", h("input", { type: "checkbox", name: "include_query", value: "true", testid: "filter-include-query" })),
    h("button", { type: "submit", testid: "apply-filters" }, "Apply"),
  );
  const live = h("input", { type: "checkbox", checked: true, testid: "live" });
  const status = h("div", { class: "status" });
  const summary = h("div", {});
  const listing = h("div", {});
  const selection = h("p", { testid: "selection" });
  const mode = h(
    "select",
    { name: "mode", testid: "mode" },
    h("option", { value: "terminate" }, "terminate"),
    h("option", { value: "graceful" }, "graceful (let transactions finish, then cancel, then terminate)"),
    h("option", { value: "cancel" }, "cancel the running statement only"),
  );
  const reason = h("textarea", { name: "reason", rows: 2, testid: "reason", placeholder: "Why (recorded in the audit trail)" });
  const previewButton = h("button", { type: "button", testid: "preview" }, "Preview");
  const revokeButton = h("button", { type: "button", class: "danger", testid: "revoke", disabled: true }, "Revoke…");
  const previewArea = h("div", { testid: "preview-report" });
  const message = h("div", {});

  replace(
    root,
    h("h1", {}, "Sessions"),
    filters,
    h("p", { class: "toolbar" }, h("label", {}, live, " refresh every 3 s"), status),
    summary,
    listing,
    h(
      "section",
      { class: "act" },
      h("h2", {}, "Preview and revoke"),
      selection,
      field("How", mode),
      field("Reason", reason),
      h("div", { class: "buttons" }, previewButton, revokeButton),
      message,
      previewArea,
    ),
  );

  const filterValues = () => values(filters);

  /** What the revocation asks for: the ticked sessions, or the whole filter. */
  function selectorBody() {
    const v = filterValues();
    const body = { targets: [v.target], mode: mode.value };
    if (ticked.size) {
      body.all_logins = true;
      body.sessions = [...ticked.values()].map((s) =>
        s.backend_start ? { pid: s.pid, backend_start: s.backend_start } : { pid: s.pid });
      return body;
    }
    const selector = selectorFields(v);
    if (!selector.logins) body.all_logins = true;
    return { ...body, ...selector };
  }

  /** The filter form as the selector's fields, leaving out those not given (the listing's
   * query and the revocation's body say the same). */
  function selectorFields(v) {
    const fields = {
      logins: list(v.login),
      databases: list(v.database),
      application_names: list(v.application),
      client_addrs: list(v.client),
      states: list(v.state),
      idle_for: v.idle_for,
    };
    return Object.fromEntries(Object.entries(fields).filter(([, x]) => x !== undefined && x.length));
  }

  function describeSelection() {
    const v = filterValues();
    replace(
      selection,
      ticked.size
        ? `${ticked.size} ticked session(s) on ${v.target ?? "?"}.`
        : `Every session the filter selects on ${v.target ?? "?"} (tick sessions to choose single ones).`,
    );
  }

  function invalidatePreview() {
    preview = null;
    revokeButton.disabled = true;
    replace(previewArea);
  }

  function drawListing() {
    if (!last) return;
    const includeQuery = Boolean(filterValues().include_query);
    const rows = last.sessions;
    // A ticked session that is gone is no longer ticked.
    const present = new Set(rows.map(key));
    let pruned = false;
    for (const k of [...ticked.keys()]) {
      if (!present.has(k)) {
        ticked.delete(k);
        pruned = true;
      }
    }
    if (pruned) invalidatePreview();
    const headings = ["", "pid", "login", "database", "application", "client", "state", "for",
      "transaction", "waits for", "blocked by", "blocking", "connected"];
    if (includeQuery) headings.push("query");
    replace(
      summary,
      table("summary-list", ["login", "sessions", "open transactions", "oldest transaction", "sessions blocked"],
        last.summary, (s) => h("tr", { testid: "summary-row" },
          h("td", {}, text(s.login)), h("td", {}, s.sessions), h("td", {}, s.open_transactions),
          h("td", {}, age(s.oldest_xact_start)), h("td", {}, s.blocked_sessions)), "No sessions selected."),
    );
    replace(
      listing,
      last.errors.map((e) => notice("error", `${e.target}: ${e.error}`, "target-error")),
      last.unknown.length
        ? notice("info", `${last.unknown.length} session(s) left out: a value the filter needs could not be read (${[...new Set(last.unknown.map((u) => u.reason))].join(", ")}).`, "undecided")
        : null,
      table("session-list", headings, rows, (s) => {
        const box = h("input", {
          type: "checkbox",
          testid: "select-session",
          checked: ticked.has(key(s)),
          "aria-label": `select session ${s.pid}`,
          onchange: () => {
            if (box.checked) ticked.set(key(s), s);
            else ticked.delete(key(s));
            describeSelection();
            invalidatePreview();
          },
        });
        const cls = [s.blocking > 0 ? "blocker" : "", s.blocked_by.length ? "blocked" : ""].join(" ").trim();
        return h("tr", { testid: "session-row", class: cls || null, dataset: { pid: s.pid, login: s.login ?? "" } },
          h("td", {}, box),
          h("td", {}, s.pid),
          h("td", { testid: "session-login" }, text(s.login)),
          h("td", {}, text(s.database)),
          h("td", { testid: "session-application" }, text(s.application_name)),
          h("td", {}, text(s.client_addr)),
          h("td", {}, text(s.state)),
          h("td", {}, age(s.state_since)),
          h("td", {}, s.xact_start ? age(s.xact_start) : "—"),
          h("td", {}, text(s.wait_event)),
          h("td", {}, text(s.blocked_by)),
          h("td", {}, s.blocking || "—"),
          h("td", { title: s.backend_start ?? "" }, age(s.backend_start)),
          includeQuery ? h("td", { class: "query" }, text(s.query)) : null);
      }, "No sessions match."),
    );
    describeSelection();
  }

  async function refresh() {
    const v = filterValues();
    if (!v.target) return;
    const params = {
      target: v.target,
      ...selectorFields(v),
      include_query: v.include_query ? "true" : undefined,
    };
    try {
      last = (await api("GET", `/v1/sessions${query(params)}`)).data;
      replace(status, `updated ${new Date().toLocaleTimeString()}`);
      drawListing();
    } catch (e) {
      replace(status, notice("error", e.message, "listing-error"));
    }
  }

  let stop = () => {};
  const start = () => {
    stop();
    stop = live.checked ? every(REFRESH_MS, refresh) : (refresh(), () => {});
  };

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    ticked.clear();
    invalidatePreview();
    start();
  });
  targetSelect.addEventListener("change", () => {
    ticked.clear();
    invalidatePreview();
    start();
  });
  live.addEventListener("change", start);
  mode.addEventListener("change", invalidatePreview);

  previewButton.addEventListener("click", async () => {
    replace(message);
    invalidatePreview();
    const body = selectorBody();
    previewButton.disabled = true;
    try {
      const answer = await api("POST", "/v1/revocations", {
        ...body,
        reason: reason.value.trim() || "preview from the console",
        dry_run: true,
      });
      const report = answer.status === 200 ? answer.data : await finished(answer.data.action_id);
      const count = report.targets.reduce((n, t) => n + (t.matched?.length ?? 0), 0);
      preview = { body, count, report };
      replace(
        previewArea,
        h("p", { testid: "preview-count" }, `${count} session(s) would be ended.`),
        report.targets.map((t) => h("div", {},
          h("h3", {}, t.target),
          t.error ? notice("error", t.error) : null,
          decisionsTable(t.decisions ?? []))),
      );
      revokeButton.disabled = count === 0;
    } catch (e) {
      replace(message, notice("error", e.message, "preview-error"));
    } finally {
      previewButton.disabled = false;
    }
  });

  revokeButton.addEventListener("click", async () => {
    replace(message);
    if (!preview) return;
    const body = selectorBody();
    if (JSON.stringify(body) !== JSON.stringify(preview.body)) {
      invalidatePreview();
      replace(message, notice("error", "The selection changed since the preview: preview again."));
      return;
    }
    const why = reason.value.trim();
    if (!why) {
      replace(message, notice("error", "A reason is required: it is recorded in the audit trail.", "reason-required"));
      reason.focus();
      return;
    }
    const { count } = preview;
    const sure = await confirmDialog(
      `End ${count} session(s) on ${body.targets[0]}?`,
      [`Reason: ${why}`, `How: ${body.mode}`, "If more sessions are selected by the time it runs, sever refuses it."],
      `End ${count} session(s)`,
    );
    if (!sure) return;
    revokeButton.disabled = true;
    try {
      const answer = await api("POST", "/v1/revocations", { ...body, reason: why, expect_count: count });
      location.hash = `#/actions/${encodeURIComponent(answer.data.action_id)}`;
    } catch (e) {
      invalidatePreview();
      const grew = e instanceof ApiError && e.code === "selection_grew";
      replace(message, notice("error", grew ? `${e.message}. Nothing was ended: preview again.` : e.message, "revoke-error"));
    }
  });

  (async () => {
    try {
      const targets = (await api("GET", "/v1/targets")).data.targets;
      replace(targetSelect, targets.map((t) => h("option", { value: t.id }, `${t.id} (${t.engine})`)));
      start();
    } catch (e) {
      replace(status, notice("error", e.message));
    }
  })();

  return () => stop();
}
