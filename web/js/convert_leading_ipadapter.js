// Edit menu: "Convert ComfyUI_IPAdapter_plus nodes". Converts the open graph in place, with the
// pack's one converter (ipadapter_core/convert), reached through the server route in
// nodes/convert_route.py. Nodes of that pack show as missing when it is not installed; the
// frontend still keeps their saved data, which is what the converter reads.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const COMMAND = "ExactIPAdapter.ConvertLeadingWorkflow";
const ROUTE = "/exact_ipadapter/convert";

function toast(severity, summary, detail, life) {
  app.extensionManager.toast.add({ severity, summary, detail, life });
}

async function convertOpenGraph() {
  const workflow = app.graph.serialize();
  let answer;
  try {
    const response = await api.fetchApi(ROUTE, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ workflow }),
    });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error ?? `${ROUTE} answered ${response.status}`);
  } catch (error) {
    toast("error", "IP-Adapter: conversion failed", String(error.message ?? error));
    return;
  }
  const { report, lines } = answer;
  if (!report.converted.length) {
    toast("info", "IP-Adapter: nothing to convert", lines.join("\n"), 8000);
    return;
  }
  // In place: the same tab, one undo step back to the original graph, marked modified until saved.
  app.graph.configure(answer.workflow);
  app.graph.setDirtyCanvas(true, true);
  app.extensionManager.workflow.activeWorkflow?.changeTracker?.checkState();
  const severity = report.unconvertible.length ? "warn" : "success";
  toast(severity, `IP-Adapter: converted ${report.converted.length} node(s)`, lines.join("\n"), report.unconvertible.length ? 0 : 10000);
  console.info(lines.join("\n"));
}

app.registerExtension({
  name: "ExactIPAdapter.ConvertLeadingWorkflow",
  commands: [
    {
      id: COMMAND,
      label: "Convert ComfyUI_IPAdapter_plus nodes",
      icon: "pi pi-sync",
      tooltip: "Replace the open workflow's IPAdapter_plus nodes with IP-Adapter (reference-exact) nodes of the same effect",
      function: convertOpenGraph,
    },
  ],
  menuCommands: [{ path: ["Edit"], commands: [COMMAND] }],
});
