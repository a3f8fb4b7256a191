// Audit: browse and filter the trail (newest first, older pages on request), export it as
// JSON lines, and verify it. Verification runs on the server in the background (a whole
// trail can take longer than one request may), and the page polls for its verdict.

import { api, download, query } from "./api.js";
import { every, field, h, notice, replace, table, text, values } from "./dom.js";

const PAGE = 100;

export function render(root, _path, params) {
  const filters = h(
    "form",
    { class: "filters", testid: "audit-filters" },
    field("Kind", h("input", { name: "kind", testid: "filter-kind", placeholder: "session.terminated", value: params.get("kind") ?? "" })),
    field("Actor", h("input", { name: "actor", testid: "filter-actor", placeholder: "operator:alice", value: params.get("actor") ?? "" })),
    field("Action", h("input", { name: "action_id", testid: "filter-action", value: params.get("action_id") ?? "" })),
    h("button", { type: "submit", testid: "apply-filters" }, "Apply"),
  );
  const records = h("div", {});
  const more = h("button", { type: "button", testid: "more", hidden: true }, "Older");
  const message = h("div", {});
  const verdict = h("div", { testid: "verify-verdict" });
  const exportButton = h("button", { type: "button", testid: "export" }, "Export JSON lines");
  const verifyButton = h("button", { type: "button", testid: "verify" }, "Verify the trail");
  let shown = [];
  let before = null;
  let stopVerify = () => {};

  async function load(reset) {
    if (reset) {
      shown = [];
      before = null;
    }
    try {
      const { data } = await api("GET", `/v1/audit${query({ ...values(filters), limit: PAGE, before_seq: before })}`);
      shown = shown.concat(data.records);
      before = data.next_before_seq ?? null;
      more.hidden = before === null;
      replace(records, table("audit-list", ["seq", "at", "kind", "actor", "action", "detail"], shown, (r) =>
        h("tr", { testid: "audit-row", dataset: { kind: r.kind, seq: r.seq } },
          h("td", {}, r.seq), h("td", {}, r.at), h("td", {}, r.kind), h("td", {}, r.actor),
          h("td", {}, r.action_id ? h("a", { href: `#/actions/${encodeURIComponent(r.action_id)}` }, r.action_id.slice(0, 8)) : "—"),
          h("td", { class: "detail" }, h("code", {}, text(r.detail)))),
        "No records."));
    } catch (e) {
      replace(records, notice("error", e.message));
    }
  }

  function showVerification(v) {
    const lines = [h("strong", { testid: "verify-status", dataset: { status: v.status } }, v.status)];
    if (v.report) {
      lines.push(` · ${v.report.records} record(s) checked`);
      for (const p of v.report.problems ?? []) lines.push(h("p", { class: "notice error" }, `#${p.seq}: ${p.what}`));
    }
    if (v.error) lines.push(h("p", { class: "notice error" }, v.error));
    replace(verdict, h("p", { class: `verdict ${v.status}` }, lines));
  }

  verifyButton.addEventListener("click", async () => {
    stopVerify();
    verifyButton.disabled = true;
    try {
      const { data } = await api("POST", "/v1/audit/verifications");
      showVerification(data);
      stopVerify = every(1000, async () => {
        const v = (await api("GET", `/v1/audit/verifications/${encodeURIComponent(data.id)}`)).data;
        showVerification(v);
        if (v.status !== "running") {
          stopVerify();
          verifyButton.disabled = false;
        }
      });
    } catch (e) {
      verifyButton.disabled = false;
      replace(verdict, notice("error", e.message));
    }
  });
  exportButton.addEventListener("click", async () => {
    try {
      await download(`/v1/audit/export${query(values(filters))}`, "sever-audit.jsonl");
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  });
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true);
  });
  more.addEventListener("click", () => load(false));

  replace(root, h("h1", {}, "Audit trail"), filters,
    h("p", { class: "buttons" }, exportButton, verifyButton), verdict, message, records, more);
  load(true);
  return () => stopVerify();
}
