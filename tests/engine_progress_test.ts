// Progress within an iteration (train's "iteration 0: member 7/16"): with onProgress the engine
// runs the iteration's program in pieces, and the pieces are the very ops of the planned
// program, in order, to the same fitness bits; the reports count members up to N.
import { assert, assertEquals, testBackends } from "./helpers.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { type Device, expand, type Op, type Program } from "../kernels/device.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { specEngineOptions } from "../pipeline/engine_options.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { strategyFromSpec } from "../pipeline/strategy.ts";
import { packBatches } from "../pipeline/data.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A device that runs what `inner` runs and keeps every op it executed, blocks expanded. */
function tracing(inner: Device): Device & { executed: Op[]; runs: number } {
  const executed: Op[] = [];
  let runs = 0;
  return new Proxy(inner, {
    get(target, key) {
      if (key === "executed") return executed;
      if (key === "runs") return runs;
      if (key === "run") {
        return (program: Program, label?: string) => {
          runs++;
          executed.push(...expand(program));
          return target.run(program, label);
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as Device & { executed: Op[]; runs: number };
}

/** An op as plain data: what it is and the bytes it moves or binds. */
function describe(op: Op): unknown {
  if (op.op === "copy") {
    return [op.label, op.src.label, op.srcOffset, op.dst.label, op.dstOffset, op.bytes];
  }
  if (op.op === "dispatch") return [op.label, op.kernel, op.variant, op.workgroups];
  return [op.label, op.buffer.label];
}

// Groups of 3 compile batched kernels for ~25 s on lavapipe: the CPU backend covers them.
for (const memberBatch of [1, 3]) {
  testBackends(
    `engine progress: the pieces are the planned program (member_batch ${memberBatch})`,
    async (backend) => {
      const file = `${ROOT}configs/pipelines/micro-smoke.yaml`;
      // Population 8 in groups of 3: two whole groups and a rest of 2.
      const text = (await Deno.readTextFile(file))
        .replace("population: 4", "population: 8")
        .replace("max_len: 32", `max_len: 32\n  member_batch: ${memberBatch}`);
      const { spec, config } = await resolvePipeline(loadPipelineText(text, { file }));
      const device = tracing(await acquireDevice({ backend }));
      try {
        const engine = await EsEngine.create(device, specEngineOptions(spec, config, 8));
        assertEquals(engine.memberBatch, memberBatch);
        const ids = Array.from(
          { length: 8 },
          (_, b) => Array.from({ length: 32 }, (_, t) => (b * 31 + t * 7) % 256),
        );
        const packed = packBatches([{
          inputIds: ids,
          attentionMask: ids.map((r) => r.map(() => 1)),
        }]);
        engine.setHeldOut(packed);
        const members = strategyFromSpec(spec, config).ask(0).members;

        const whole = await engine.evaluate(packed, {
          iteration: 0,
          population: members,
          heldOut: true,
        });
        const planned = device.executed.splice(0).map(describe);
        const runsBefore = device.runs;

        const reports: { done: number; of: number }[] = [];
        const pieces = await engine.evaluate(packed, {
          iteration: 0,
          population: members,
          heldOut: true,
          onProgress: (p) => reports.push(p),
        });
        const executed = device.executed.splice(0).map(describe);
        assertEquals(executed.length, planned.length, "as many ops as the whole program");
        executed.forEach((e, i) => assertEquals(e, planned[i], `op ${i}`));
        assertEquals(pieces.fitness, whole.fitness, "the same fitness, bit for bit");
        assertEquals(pieces.heldOut, whole.heldOut, "the same held-out R");

        // One report per piece: the head (held-out pass), then each group.
        const groups = Math.ceil(8 / memberBatch);
        assertEquals(device.runs - runsBefore, 1 + groups, "one run per piece");
        assertEquals(reports.length, 1 + groups);
        assertEquals(reports[0], { done: 0, of: 8 });
        assertEquals(reports.at(-1), { done: 8, of: 8 });
        for (let i = 1; i < reports.length; i++) {
          assert(
            reports[i].done > reports[i - 1].done,
            `reports count up: ${JSON.stringify(reports)}`,
          );
        }
        engine.destroy();
      } finally {
        device.destroy();
      }
    },
    { backends: memberBatch === 1 ? ["webgpu", "cpu"] : ["cpu"] },
  );
}
