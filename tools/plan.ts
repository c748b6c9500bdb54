/**
 * `deno task plan PIPELINE`: what a pipeline will run and how much device memory it takes,
 * before anything is allocated: stages → kernels with dispatch counts per iteration, the
 * buffers with their bytes and shards, and the total.
 *
 *   deno task plan [PIPELINE.yaml] [--json]
 *
 * Planning allocates nothing (the 32B preset plans on a laptop); it uses the limits of the
 * adapter Deno finds, or WebGPU's defaults when there is none.
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, intFlag, parseFlags, runMain } from "./cli.ts";
import { DEFAULT_PIPELINE_PATH, loadPipelineFile } from "../pipeline/load.ts";
import {
  compile,
  countDispatches,
  DEFAULT_LIMITS,
  type Plan,
  programJson,
} from "../pipeline/compile.ts";
import type { Program } from "../kernels/device.ts";
import { parseBackend, planTarget } from "../kernels/backend.ts";
import { modelConfigOf, type Qwen3ModelSettings } from "../pipeline/stages/model.ts";
import { UserError } from "../errors.ts";
import type { Qwen3Config } from "../model/config.ts";
import { getPreset, paramCount } from "../model/presets.ts";
import { memoryReport, type MemoryRow } from "../pipeline/memory.ts";
import {
  formatGenerationPlan,
  generationPlan,
  generationPlanJson,
} from "../pipeline/reward_run.ts";

/** Bytes in human units (binary). */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}

/** The plan as text: stages → kernels, buffers, bytes, total. */
export function formatPlan(plan: Plan, o: { file: string; config: Qwen3Config }): string {
  const lines: string[] = [];
  lines.push(`plan ${plan.name} (${o.file})`);
  lines.push(
    `  model: ${
      (paramCount(o.config) / 1e6).toFixed(2)
    }M parameters, ${o.config.numLayers} layers, hidden ${o.config.hiddenSize}, vocab ${o.config.vocabSize}`,
  );
  lines.push(
    `  backend ${plan.backend} on ${plan.adapter}, shards of at most ${
      formatBytes(plan.shardBytes)
    }`,
  );
  lines.push(
    `  one iteration: N=${plan.population} members × ${plan.samplesPerIteration} samples ` +
      `(micro-batches of ${plan.microBatch} × ${plan.maxLen} tokens)`,
  );
  lines.push("", "stages → kernels (dispatches per iteration)");
  const counts = countDispatches(plan.iteration);
  const byStage = new Map<string, string[]>();
  for (const [key, n] of counts) {
    const [stage, kernel] = key.split("/");
    byStage.set(stage, [...(byStage.get(stage) ?? []), `${kernel} ×${n}`]);
  }
  lines.push(
    `  dataset   one upload of the iteration's tokens (ids, mask, targets), one readback of N fitness values`,
  );
  for (const stage of ["perturb", "model", "fitness", "update"]) {
    lines.push(`  ${stage.padEnd(9)} ${(byStage.get(stage) ?? []).join(", ")}`);
  }
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  lines.push(
    `  total     ${total} dispatches, 1 run and 1 readback for evaluation, 1 run for the update`,
  );
  lines.push("", "loop structure (the program one iteration runs)");
  const walk = (program: Program, depth: number) => {
    let flat = 0;
    const flush = () => {
      if (flat > 0) lines.push(`${"  ".repeat(depth + 1)}${flat} steps`);
      flat = 0;
    };
    for (const op of program) {
      if (op.op !== "block") {
        flat++;
        continue;
      }
      flush();
      lines.push(`${"  ".repeat(depth + 1)}${op.what} ×${op.repeat}:`);
      walk(op.body, depth + 1);
    }
    flush();
  };
  walk(plan.iteration, 0);
  lines.push("", "buffers");
  const roles = ["weights", "scratch", "activations", "tokens", "es"] as const;
  const what: Record<typeof roles[number], string> = {
    weights: "θ, f32, HF [out, in] layout",
    scratch:
      "the member's perturbed vectors and matrix row chunks (a whole θ_j with scratch: copy; low rank: vectors and A, B factors)",
    activations: "one micro-batch of the forward and one LM-head chunk",
    tokens: "the iteration's and the held-out samples",
    es: "perturb/update params, shard tables, fitness totals",
  };
  for (const role of roles) {
    const bs = plan.buffers.filter((b) => b.role === role);
    lines.push(
      `  ${role.padEnd(12)} ${formatBytes(plan.bytes[role]).padStart(11)}  ${bs.length} buffers (${
        what[role]
      })`,
    );
  }
  const sharded = Object.entries(plan.sharded);
  if (sharded.length > 0) {
    lines.push(`  sharded: ${sharded.map(([n, k]) => `${n} in ${k} shards`).join(", ")}`);
  }
  const biggest = [...plan.buffers].sort((a, b) => b.bytes - a.bytes).slice(0, 8);
  lines.push("  largest:");
  for (const b of biggest) {
    lines.push(`    ${b.name.padEnd(48)} ${formatBytes(b.bytes).padStart(11)}`);
  }
  lines.push(
    "",
    `total device memory: ${formatBytes(plan.bytes.total)} (${plan.bytes.total} bytes)`,
  );
  return lines.join("\n");
}

/** The memory report of the paper's six sizes with their shipped pipelines (micro-batch 16 × 256). */
export async function memoryTable(maxBinding: number): Promise<MemoryRow[]> {
  const rows: MemoryRow[] = [];
  // A GPU-sized binding limit: the paper's sizes do not fit lavapipe's 128 MiB activations.
  const limits = {
    ...DEFAULT_LIMITS,
    maxStorageBufferBindingSize: maxBinding,
    maxBufferSize: maxBinding,
  };
  for (const size of ["0.5b", "1.7b", "4b", "8b", "14b", "32b"]) {
    const file = new URL(`../configs/pipelines/qwen3-${size}.yaml`, import.meta.url).pathname;
    const loaded = await loadPipelineFile(file);
    const config = getPreset(`qwen3-${size}`);
    rows.push(
      await memoryReport(loaded.spec, config, {
        target: { backend: "webgpu", name: "planning", limits },
      }),
    );
  }
  return rows;
}

/** The memory report as a Markdown table. */
export function formatMemoryTable(rows: MemoryRow[]): string {
  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  const lines = [
    "| pipeline | parameters | ES f32 θ (GiB) | of which θ + member scratch | ES bf16 θ (GiB) | Adam mixed (GiB) | Adam / ES | Adam / ES bf16 |",
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.name} | ${(r.parameters / 1e9).toFixed(2)}B | ${gib(r.es)} | ${gib(r.es_weights)} | ${
        r.es_bf16 === null ? "—" : gib(r.es_bf16)
      } | ${gib(r.adam)} | ${r.ratio.toFixed(2)}× | ${
        r.ratio_bf16 === null ? "—" : `${r.ratio_bf16.toFixed(2)}×`
      } |`,
    );
  }
  return lines.join("\n");
}

/** plan's flags: the parser, the usage line and `--help` all come from this table. */
export const PLAN_FLAGS = {
  json: { type: "boolean", help: "print the plan (or the memory rows) as JSON" },
  memory: { type: "boolean", help: "ES memory beside Adam's for this pipeline" },
  "memory-table": {
    type: "boolean",
    help: "the memory table of the paper's six pipelines (ignores PIPELINE.yaml)",
  },
  "max-binding": {
    type: "string",
    value: "BYTES",
    help: "plan for a device that binds this many bytes (a GPU binds far more than lavapipe)",
    default: "the device's own limit",
  },
  backend: {
    type: "string",
    value: "auto|webgpu|cpu",
    help: "plan for this backend's device; auto: what train would use here",
    default: "the pipeline's backend, auto",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task plan --help` says besides the flags. */
export const PLAN_HELP: CommandHelp = {
  command: "deno task plan",
  args: "[PIPELINE.yaml]",
  about: "The compiled kernel graph, buffers and device memory of a pipeline, before anything " +
    "is allocated.",
  positionals: [[
    "PIPELINE.yaml",
    "the pipeline to plan (default: configs/pipelines/tiny-austen.yaml)",
  ]],
  example: "deno task plan configs/pipelines/qwen3-4b.yaml --memory",
};

if (import.meta.main) {
  await runMain("plan", async () => {
    const { values, positionals } = parseFlags(Deno.args, PLAN_FLAGS, PLAN_HELP);
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    if (values["memory-table"]) {
      const rows = await memoryTable(
        values["max-binding"] ? intFlag(values["max-binding"], "max-binding", 0) : 2 ** 32 - 4,
      );
      console.log(values.json ? JSON.stringify(rows) : formatMemoryTable(rows));
      return;
    }
    if (positionals.length > 1) {
      throw new UserError("one pipeline file at most; see deno task plan --help");
    }
    const file = positionals[0] ?? DEFAULT_PIPELINE_PATH;
    const loaded = await loadPipelineFile(file);
    // The plan needs the architecture only: no corpus, tokenizer or weights are read.
    const { config } = await modelConfigOf(
      loaded.spec.model as Qwen3ModelSettings,
      { baseDir: loaded.baseDir, where: loaded.where },
    );
    // The device the run would use: --backend, else the pipeline's, resolved as train does.
    let target = await planTarget(backend ?? loaded.spec.backend);
    if (values["max-binding"] !== undefined) {
      // Plan for another adapter: a GPU binds far more than lavapipe's 128 MiB.
      const bytes = intFlag(values["max-binding"], "max-binding", 0);
      target = {
        ...target,
        name: `${target.name}, binding limit set to ${formatBytes(bytes)}`,
        limits: {
          ...target.limits,
          maxStorageBufferBindingSize: bytes,
          maxBufferSize: Math.max(bytes, target.limits.maxBufferSize),
        },
      };
    }
    if (values.memory) {
      const row = await memoryReport(loaded.spec, config, { target });
      console.log(values.json ? JSON.stringify(row) : formatMemoryTable([row]));
      return;
    }
    const plan = await compile(loaded.spec, config, { target });
    // A reward fitness generates: its decoder (the KV cache) is planned beside the iteration.
    const generation = await generationPlan(loaded.spec, config, { target });
    console.log(
      values.json
        ? JSON.stringify({
          ...plan,
          iteration: programJson(plan.iteration),
          ...(generation ? { generation: generationPlanJson(generation) } : {}),
        })
        : formatPlan(plan, { file: loaded.file, config }) +
          (generation
            ? `\n\n${formatGenerationPlan(generation, { planBytes: plan.bytes.total })}`
            : ""),
    );
  });
}
