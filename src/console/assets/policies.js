// Policies and targets: each policy's state (window, pause, streak, last and next
// evaluation) with a dry run and resume, and each target's reachability.

import { api } from "./api.js";
import { age, every, h, notice, replace, table, text } from "./dom.js";

export function render(root) {
  const policyList = h("div", {});
  const targetList = h("div", {});
  const message = h("div", {});

  async function run(name) {
    try {
      const { data } = await api("POST", `/v1/policies/${encodeURIComponent(name)}/run`, { execute: false });
      const id = data.action?.action_id;
      replace(message, notice("ok", `Dry run of ${name}: ${data.outcome}.`, "policy-run"), " ",
        id ? h("a", { href: `#/actions/${encodeURIComponent(id)}` }, "See its report") : null);
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  }

  async function resume(name) {
    try {
      await api("POST", `/v1/policies/${encodeURIComponent(name)}/resume`);
      replace(message, notice("ok", `${name} resumed.`));
      load();
    } catch (e) {
      replace(message, notice("error", e.message));
    }
  }

  async function load() {
    const [policies, targets] = await Promise.allSettled([api("GET", "/v1/policies"), api("GET", "/v1/targets")]);
    if (policies.status === "fulfilled") {
      replace(policyList, table("policy-list", ["policy", "kind", "targets", "enforcement", "every", "in window", "paused", "streak", "last", "next", ""], policies.value.data.policies, (p) =>
        h("tr", { testid: "policy-row", dataset: { policy: p.name } },
          h("td", {}, p.name), h("td", {}, p.kind), h("td", {}, text(p.targets)), h("td", {}, p.enforcement),
          h("td", {}, p.interval), h("td", {}, p.in_window ? "yes" : "no"),
          h("td", {}, p.paused ? `since ${age(p.paused.at)} ago: ${text(p.paused.reason)}` : "no"),
          h("td", {}, p.streak),
          h("td", {}, p.last_evaluation ? `${p.last_evaluation.outcome}, ${age(p.last_evaluation.at)} ago (${p.last_evaluation.matched} matched, ${p.last_evaluation.ended} ended)` : "—"),
          h("td", {}, text(p.next_evaluation)),
          h("td", {},
            h("button", { type: "button", testid: "run-policy", onclick: () => run(p.name) }, "Dry run"),
            p.paused ? h("button", { type: "button", testid: "resume-policy", onclick: () => resume(p.name) }, "Resume") : null)),
        "No policies are configured."));
    } else {
      replace(policyList, notice("error", policies.reason.message));
    }
    if (targets.status === "fulfilled") {
      replace(targetList, table("target-list", ["target", "engine", "reachable", "latency", "sessions", "limit", "checked", "error"], targets.value.data.targets, (t) =>
        h("tr", { testid: "target-row", class: t.reachable ? null : "down", dataset: { target: t.id } },
          h("td", {}, t.id), h("td", {}, t.engine), h("td", { testid: "target-reachable" }, t.reachable ? "yes" : "no"),
          h("td", {}, t.latency_ms === undefined || t.latency_ms === null ? "—" : `${Number(t.latency_ms).toFixed(1)} ms`),
          h("td", {}, text(t.sessions)), h("td", {}, text(t.connection_limit)),
          h("td", {}, t.checked_at ? `${age(t.checked_at)} ago` : "—"), h("td", {}, text(t.error)))));
    } else {
      replace(targetList, notice("error", targets.reason.message));
    }
  }

  replace(root, h("h1", {}, "Policies and targets"), message,
    h("h2", {}, "Policies"), policyList, h("h2", {}, "Targets"), targetList);
  return every(5000, load);
}
