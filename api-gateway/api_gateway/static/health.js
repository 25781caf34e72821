// The Health view: GET /system every few seconds while shown: each service's readiness,
// the jobs in each state, and each consumer group's queue.

import { $, api, badge, clear, h, notice, sentence, STATES } from "./dom.js";

const EVERY_MS = 3000;
let timer = null;
let active = false;

export function init() {
  $("health-refresh").addEventListener("click", () => refresh());
  document.addEventListener("visibilitychange", () => {
    if (active && !document.hidden) refresh();
  });
}

export function show() {
  active = true;
  refresh();
}

export function hide() {
  active = false;
  clearTimeout(timer);
}

async function refresh() {
  clearTimeout(timer);
  try {
    const system = await api("/system", { action: "see the system's health" });
    notice($("health-notice"), system.error ? `Could not read Redis: ${system.error}` : null);
    services(system.services ?? []);
    counts(system.counts?.by_state ?? {});
    queues(system.queues ?? []);
    $("health-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    notice($("health-notice"), err.status === 403 ? sentence(err.message) : `The gateway did not describe the system: ${err.message}`);
    if (err.status === 401 || err.status === 403) active = false; // asking again changes nothing
  } finally {
    // keep going only while someone looks
    if (active && !document.hidden) timer = setTimeout(refresh, EVERY_MS);
  }
}

function services(list) {
  const ready = list.filter((s) => s.ready).length;
  clear($("health-services")).append(
    ...list.map((s) =>
      h("article", { class: `service ${s.ready ? "up" : "down"}`, dataset: { service: s.name, ready: String(!!s.ready) } },
        h("header", {},
          h("strong", {}, s.name),
          h("span", { class: `pill ${s.ready ? "ok" : "bad"}` }, s.ready ? "ready" : "not ready")),
        h("div", { class: "url muted" }, s.url ?? ""),
        s.checks
          ? h("ul", { class: "checks" },
            Object.entries(s.checks).map(([name, result]) =>
              h("li", { class: result === "ok" ? "ok" : "bad" }, h("span", {}, name), h("span", {}, result))))
          : null,
        s.error && !s.checks ? h("p", { class: "error" }, s.error) : null)),
  );
  $("health-services").dataset.ready = `${ready}/${list.length}`;
}

function counts(byState) {
  const order = [...STATES, ...Object.keys(byState).filter((s) => !STATES.includes(s)).sort()];
  const total = Object.values(byState).reduce((a, b) => a + b, 0);
  const el = clear($("health-counts"));
  for (const state of order) {
    const n = byState[state] ?? 0;
    el.append(h("div", { class: `count${n ? "" : " zero"}` }, badge(state), h("span", { class: "n" }, n.toLocaleString())));
  }
  el.append(h("div", { class: "count total" }, h("span", {}, "total"), h("span", { class: "n" }, total.toLocaleString())));
}

function queues(list) {
  const body = clear($("health-queue-rows"));
  for (const q of list) {
    const busy = (q.pending ?? 0) + (q.lag ?? 0) > 0;
    body.append(h("tr", { class: busy ? "busy" : null },
      h("td", { class: "mono" }, q.stream),
      h("td", {}, q.group),
      h("td", { class: "num" }, String(q.pending ?? 0)),
      h("td", { class: "num", title: q.lag == null ? "Redis cannot tell (entries were trimmed)" : null }, q.lag == null ? "?" : String(q.lag))));
  }
  if (!list.length) body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No streams yet.")));
}
