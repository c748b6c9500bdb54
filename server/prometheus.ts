/**
 * GET /metrics: the run's gauges in Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * Every value is a gauge with a `run` label, so none ends in `_total` (the suffix Prometheus
 * keeps for counters; the run's length is esflow_iterations_planned). A value the run does not have yet (no held-out loss
 * before the first evaluation) has its HELP and TYPE lines and no sample, which Prometheus reads
 * as absent rather than as a made-up 0.
 *
 * @module
 */
import type { StatusBody } from "./status.ts";

/** The Content-Type of the exposition format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** A sample value: Go-style floats, with NaN and ±Inf spelled as Prometheus expects. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** The exposition text of a status. */
export function prometheusText(s: StatusBody): string {
  const run = `run="${escapeLabel(s.run)}"`;
  const gauges: [name: string, help: string, value: number | null][] = [
    ["esflow_iteration", "ES iterations completed.", s.iteration],
    // Not `_total`: Prometheus keeps that suffix for counters, and this is the planned length.
    ["esflow_iterations_planned", "ES iterations the run is asked for.", s.total],
    ["esflow_fitness_mean", "Mean fitness of the latest population.", s.fitness_mean],
    ["esflow_fitness_max", "Best fitness of the latest population.", s.fitness_max],
    ["esflow_fitness_min", "Worst fitness of the latest population.", s.fitness_min],
    ["esflow_eval_loss", "Latest held-out loss (nats per token).", s.eval_loss],
    ["esflow_sigma", "Perturbation scale of the latest iteration.", s.sigma],
    ["esflow_alpha", "Learning rate of the latest iteration.", s.alpha],
    [
      "esflow_tokens_per_second",
      "Population-scored tokens per second of the latest iteration.",
      s.tokens_per_s,
    ],
    ["esflow_eta_seconds", "Estimated seconds until the run ends.", s.eta_seconds],
    [
      "esflow_planned_memory_bytes",
      "Device memory of the compiled plan in bytes.",
      s.planned_memory_bytes,
    ],
    ["esflow_running", "1 while the run is training, else 0.", s.state === "running" ? 1 : 0],
    ["esflow_sse_clients", "Open event-stream clients.", s.sse_clients],
  ];
  const out: string[] = [];
  for (const [name, help, value] of gauges) {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    if (value !== null) out.push(`${name}{${run}} ${formatValue(value)}`);
  }
  return out.join("\n") + "\n";
}
