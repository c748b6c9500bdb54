// The iteration is a value: the program `deno task plan` prints is the program a training
// iteration executes, op for op, and its buffers are what the device allocates, byte for byte.
// Also: the record layouts every encoder, WGSL kernel and native kernel share.
import { assert, assertEquals } from "./helpers.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { bindingRange, type Device, expand, type Op, type Program } from "../kernels/device.ts";
import { compile } from "../pipeline/compile.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { specEngineOptions } from "../pipeline/engine_options.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { strategyFromSpec } from "../pipeline/strategy.ts";
import { createStage } from "../pipeline/spec.ts";
import { packBatches } from "../pipeline/data.ts";
import {
  cDefines,
  FACTOR,
  offsetOf,
  PERTURB,
  readRecord,
  RECORDS,
  SHARD,
  UPDATE,
  wgslStruct,
  writeRecord,
} from "../kernels/records.ts";
import { encodePerturbParams, encodeUpdateParams } from "../kernels/es_update.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A device that runs what `inner` runs and keeps every op it executed, blocks expanded. */
function tracing(inner: Device): Device & { executed: Op[] } {
  const executed: Op[] = [];
  return new Proxy(inner, {
    get(target, key) {
      if (key === "executed") return executed;
      if (key === "run") {
        return (program: Program, label?: string) => {
          executed.push(...expand(program));
          return target.run(program, label);
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as Device & { executed: Op[] };
}

/** What an op is, as plain data: kernel, constants, grid and the byte ranges it binds. */
function describe(op: Op): unknown {
  if (op.op === "dispatch") {
    return {
      op: op.op,
      label: op.label,
      stage: op.stage,
      role: op.role,
      kernel: op.kernel,
      variant: op.variant,
      consts: op.consts,
      workgroups: op.workgroups,
      bindings: op.bindings.map((b) => {
        const r = bindingRange(b);
        return [r.buffer.label, r.offset, r.size];
      }),
    };
  }
  if (op.op === "copy") {
    return {
      op: op.op,
      label: op.label,
      stage: op.stage,
      from: [op.src.label, op.srcOffset],
      to: [op.dst.label, op.dstOffset],
      bytes: op.bytes,
    };
  }
  return { op: op.op, label: op.label, buffer: op.buffer.label };
}

for (const backend of ["cpu", "webgpu"] as const) {
  for (const variant of ["chunks", "lowrank"] as const) {
    Deno.test(`the printed plan is the executed program, op for op and byte for byte (${backend}, ${variant})`, async () => {
      // micro-smoke, and the same with low-rank perturbations of rank 2.
      const file = `${ROOT}configs/pipelines/micro-smoke.yaml`;
      const text = await Deno.readTextFile(file);
      const loaded = loadPipelineText(
        variant === "chunks" ? text : text.replace("type: gaussian", "type: lowrank\n  rank: 2"),
        { file, overrides: { iterations: 1 } },
      );
      const { spec, config } = await resolvePipeline(loaded);
      const device = tracing(await acquireDevice({ backend }));
      try {
        const plan = await compile(spec, config, {
          target: { backend: device.backend, name: device.name, limits: device.limits },
        });
        const options = specEngineOptions(
          spec,
          config,
          Math.max(plan.samplesPerIteration, createStage(spec, "dataset").holdout),
        );
        const engine = await EsEngine.create(device, options);
        // One iteration's micro-batches of full length: the shape the plan is drawn for.
        const M = plan.samplesPerIteration, T = plan.maxLen;
        const rows = Array.from(
          { length: M },
          (_, b) => Array.from({ length: T }, (_, t) => (b * 31 + t * 7) % config.vocabSize),
        );
        const batches = [];
        for (let at = 0; at < M; at += plan.microBatch) {
          const ids = rows.slice(at, at + plan.microBatch);
          batches.push({ inputIds: ids, attentionMask: ids.map((r) => r.map(() => 1)) });
        }
        const strategy = strategyFromSpec(spec, config);
        const r = await engine.evaluate(packBatches(batches), {
          iteration: 0,
          population: strategy.ask(0).members,
          heldOut: false,
        });
        assert(r.fitness.every(Number.isFinite), JSON.stringify(r.fitness));
        engine.update({ iteration: 0, coefficients: strategy.tell(0, r.fitness).coefficients });
        await device.finish();
        const executed = device.executed.map(describe);
        const planned = [...expand(plan.iteration)].map(describe);
        assertEquals(executed.length, planned.length, "as many ops run as the plan lists");
        executed.forEach((e, i) => assertEquals(e, planned[i], `op ${i}`));
        assert(executed.some((e) => (e as { stage?: string }).stage === "update"));
        // Every buffer the engine allocated, in order, with its bytes and purpose.
        assertEquals(
          device.allocations().map((a) => [a.label, a.bytes, a.purpose]),
          plan.buffers.map((b) => [b.name, b.bytes, b.role]),
        );
        engine.destroy();
      } finally {
        device.destroy();
      }
    });
  }
}

Deno.test("records: one layout per record, written and read through it, the same in WGSL and C", () => {
  // Every field of every record written and read back at its own word.
  for (const r of RECORDS) {
    const words = new Uint32Array(r.words + 3);
    const values = Object.fromEntries(
      r.fields.map((f, i) => [f.name, f.type === "f32" ? 0.5 + i : 1000 + i]),
    );
    writeRecord(r, words, 3, values);
    assertEquals(readRecord(r, words, 3), values, r.name);
    // The WGSL struct lists the same fields in the same order, with the same types.
    const struct = wgslStruct(r);
    const fields = [...struct.matchAll(/^ {2}(\w+): (\w+),/gm)].map((m) => [m[1], m[2]]);
    assertEquals(fields, r.fields.map((f) => [f.name, f.type]), `${r.name} struct`);
    // The C macros give each field's word offset.
    const c = cDefines([r]);
    for (const f of r.fields) {
      const m = new RegExp(`#define ESF_${r.name.toUpperCase()}_${f.name.toUpperCase()} (\\d+) `)
        .exec(c);
      assert(m && Number(m[1]) === offsetOf(r, f.name), `${r.name}.${f.name} in C`);
    }
  }
  // The encoders write through the layouts.
  const p = encodePerturbParams(
    [{ seed: 2 ** 32 + 7, iteration: 3, member: 4, scale: -0.25, slot: 9 }],
    32,
  );
  assertEquals(readRecord(PERTURB, p, 0), {
    seed_lo: 7,
    seed_hi: 1,
    iteration: 3,
    noise: 4,
    scale: -0.25,
    slot: 9,
  });
  const u = encodeUpdateParams({ seed: 5, iteration: 6, coefficients: [0.5, -1] });
  assertEquals(readRecord(UPDATE, u, 0), { seed_lo: 5, seed_hi: 0, iteration: 6, count: 2 });
  assertEquals([...new Float32Array(u.buffer, UPDATE.words * 4, 2)], [0.5, -1]);
  assertEquals(SHARD.words, 8);
  assertEquals(FACTOR.words, 11);
});
