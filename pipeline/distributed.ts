/**
 * Distributed ES over Redis Streams: many processes, on one machine or many, share one
 * population. Only integers and scalars cross the network (design decision 7): every process
 * holds θ, derives the data subset and the noise from (seed, iteration), evaluates the members
 * it claims, and applies the same update from the same fitness values.
 *
 * Keys of run R (P = `esflow:R:`):
 *
 *   esflow:current   STRING  the run a worker without --run serves
 *   P meta           HASH    session, pipeline (YAML text), file and out (the coordinator's,
 *                            for messages only), iterations, seed, population, deadline_ms,
 *                            ledger_from, bundle, data_digest, checkpoint, status, error,
 *                            contributors
 *   P tasks          STREAM  one entry per member range per iteration, consumer group
 *                            "evaluators": {session, iter, seed, sigma, start, end, checksum}
 *   P results        STREAM  {session, iter, start, end, fitness (JSON numbers), checksum,
 *                            consumer} or {session, iter, consumer, error}
 *   P ledger         STREAM  {session, iter, fitness, coefficients}: the result set and the
 *                            per-noise update coefficients of every iteration since ledger_from
 *   P blob:D …       blobs   the samples, the tokenizer and model files, the session's latest
 *                            checkpoint (pipeline/blobs.ts, pipeline/distributed_bootstrap.ts)
 *
 * A worker needs no path of the coordinator's: it rebuilds the pipeline from the published text
 * and blobs in its own cache, starts from the published checkpoint at ledger_from (or, at 0,
 * from the initial weights) and replays the ledger from there. The coordinator publishes every
 * checkpoint it writes (a resumed session's first one too): meta's `checkpoint` and
 * `ledger_from` move to it in one HSET, then the previous checkpoint's blobs are dropped, and
 * the ledger is trimmed to start at its iteration once that entry is written. A joiner that read
 * the meta just before (its checkpoint's blobs gone under its download, or the ledger trimmed
 * past its θ), or a worker that fell more than a checkpoint behind (paused, cut off), bootstraps
 * again from the new one; one that finds the run ended meanwhile just ends. With
 * `--no-publish-checkpoints` only a resumed session's first checkpoint crosses, and a late
 * joiner replays the whole session's ledger.
 *
 * Iteration t, coordinator: checksum θ_t on the GPU; XADD the ranges to tasks; evaluate claimed
 * ranges itself (unless --no-local-eval); XREAD results until every range has a fitness vector
 * from a process whose θ_t checksum matches; shape and update through the ES strategy
 * (pipeline/strategy.ts, called by pipeline/run.ts); XADD the ledger entry. Worker: XREADGROUP
 * a range (or XAUTOCLAIM one whose claim went stale), apply any ledger entries it has not
 * applied (each checked against the strategy's own tell), check its own θ_t checksum against
 * the task's, evaluate `engine.evaluate(packed, {members})`, XADD the result, XACK. While
 * evaluating, a process refreshes its claim (XCLAIM … JUSTID) so only a dead process's claims
 * pass the deadline.
 *
 * Fitness travels as JSON numbers, which round-trip float64 exactly, so every process computes
 * bit-identical coefficients and θ stays bit-identical everywhere; the checksum proves it.
 *
 * @module
 */
import { resolve as absolute } from "node:path";
import type { Backend, Device } from "../kernels/device.ts";
import { WeightsChecksum } from "../kernels/checksum.ts";
import { openCheckpointTensors } from "../model/device_weights.ts";
import type { TensorStream } from "../model/safetensors.ts";
import { EsEngine, type IterationResult } from "./engine.ts";
import { UserError } from "../errors.ts";
import type { ResolvedPipeline } from "./resolve.ts";
import { dataDigest } from "./run_dir.ts";
import { dropBlobsExcept } from "./blobs.ts";
import {
  type BootstrapCost,
  bootstrapPipeline,
  defaultWorkerCache,
  fetchCheckpoint,
  publishBundle,
  publishCheckpoint,
} from "./distributed_bootstrap.ts";
import {
  type EvaluateContext,
  latestCheckpoint,
  RunInterrupted,
  type RunOptions,
  type RunSetup,
  runSetup,
} from "./run.ts";
import { RedisBus, type StreamEntry } from "./distributed/bus.ts";
import { checkRunFits } from "./limits.ts";
import { refuseDistributedReward } from "./reward_run.ts";

export { parseRedisUrl, RedisBus, RedisGone } from "./distributed/bus.ts";

/** The consumer group every evaluating process reads tasks through. */
export const GROUP = "evaluators";
/** The key naming the run a worker without --run serves. */
export const CURRENT_KEY = "esflow:current";

/** The Redis keys of run `run`. */
export function runKeys(
  run: string,
): { meta: string; tasks: string; results: string; ledger: string } {
  const p = `esflow:${run}:`;
  return { meta: `${p}meta`, tasks: `${p}tasks`, results: `${p}results`, ledger: `${p}ledger` };
}

/** Two processes hold different θ (or compute different updates): the run cannot go on. */
export class DivergenceError extends RunInterrupted {
  override name = "DivergenceError";
}

/** A member range of one iteration, as announced on the tasks stream. */
export interface Task {
  id: string;
  session: string;
  iter: number;
  seed: number;
  sigma: number;
  start: number;
  end: number;
  checksum: string;
}

function parseTask(e: StreamEntry): Task {
  const f = e.fields;
  return {
    id: e.id,
    session: f.session,
    iter: Number(f.iter),
    seed: Number(f.seed),
    sigma: Number(f.sigma),
    start: Number(f.start),
    end: Number(f.end),
    checksum: f.checksum,
  };
}

/** Member ranges [start, end) of `size` members covering a population of `n`. */
export function memberRanges(n: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(n, s + size)]);
  return out;
}

/** Tuning knobs read from the environment (documented in the README). */
export function distributedSettings(population: number): { rangeSize: number; deadlineMs: number } {
  const int = (name: string, fallback: number) => {
    const v = Deno.env.get(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) {
      throw new UserError(`${name} must be a positive integer, got "${v}"`);
    }
    return n;
  };
  return {
    // About 8 ranges per iteration: enough to share among a few processes, few enough that the
    // per-claim readback (~11 ms on lavapipe) stays small next to the members' forwards.
    rangeSize: Math.min(
      population,
      int("ESFLOW_RANGE_SIZE", Math.max(1, Math.ceil(population / 8))),
    ),
    deadlineMs: int("ESFLOW_CLAIM_DEADLINE_MS", 10_000),
  };
}

/**
 * The results of one iteration as they arrive: one fitness vector per range, from any process.
 * Results of another iteration or session are stale and ignored; a duplicate (a range that was
 * reclaimed and evaluated twice) is ignored too, since seeded evaluation gives the same numbers.
 * A result computed on a θ whose checksum differs from the coordinator's, or a worker's report
 * of divergence, throws {@link DivergenceError}.
 */
export class ResultSet {
  readonly session: string;
  readonly iteration: number;
  readonly checksum: string;
  readonly ranges: readonly [number, number][];
  #fitness = new Map<number, number[]>();
  /** Members evaluated per consumer, counting accepted results only. */
  readonly contributors = new Map<string, number>();

  constructor(o: {
    session: string;
    iteration: number;
    checksum: string;
    ranges: readonly [number, number][];
  }) {
    this.session = o.session;
    this.iteration = o.iteration;
    this.checksum = o.checksum;
    this.ranges = o.ranges;
  }

  /** Offers one results-stream entry; says what became of it. */
  offer(f: Record<string, string>): "accepted" | "duplicate" | "stale" {
    if (f.session !== this.session || Number(f.iter) !== this.iteration) return "stale";
    if (f.error !== undefined) throw new DivergenceError(f.error);
    if (f.checksum !== this.checksum) {
      throw new DivergenceError(
        `weights diverged at iteration ${this.iteration}: ${f.consumer} has checksum ${f.checksum}, ` +
          `the coordinator ${this.checksum}; every process must run the same esflow on the same pipeline`,
      );
    }
    const start = Number(f.start), end = Number(f.end);
    const r = this.ranges.findIndex(([s, e]) => s === start && e === end);
    if (r < 0) return "stale";
    if (this.#fitness.has(r)) return "duplicate";
    const fitness = JSON.parse(f.fitness) as number[];
    if (!Array.isArray(fitness) || fitness.length !== end - start) {
      throw new Error(
        `result of ${f.consumer} for [${start}, ${end}) has ${fitness.length} values`,
      );
    }
    this.#fitness.set(r, fitness);
    this.contributors.set(f.consumer, (this.contributors.get(f.consumer) ?? 0) + end - start);
    return "accepted";
  }

  /** Every range has a result. */
  get complete(): boolean {
    return this.#fitness.size === this.ranges.length;
  }

  /** Ranges with a result. */
  get done(): number {
    return this.#fitness.size;
  }

  /** Fitness of every member, in member order (only once complete). */
  fitness(): number[] {
    return this.ranges.flatMap((_, r) => this.#fitness.get(r)!);
  }
}

/** This process's consumer name: who evaluated a range shows in the results stream. */
export function consumerName(role: string): string {
  let host = "host";
  try {
    host = Deno.hostname();
  } catch { /* no sys permission */ }
  return `${role}@${host}:${Deno.pid}`;
}

/** What a process needs to serve tasks: its engine, checksum and data, and the bus. */
interface Evaluator {
  bus: RedisBus;
  keys: ReturnType<typeof runKeys>;
  consumer: string;
  engine: EsEngine;
  setup: RunSetup;
  /** The run seed: noise and subsets derive from it. */
  seed: number;
  /** θ_t's checksum, computed at most once per iteration. */
  checksum: (t: number) => Promise<string>;
  deadlineMs: number;
}

/** Claims one task: a new one (blocking up to `blockMs`, 0 = not at all) or a stale claim. */
async function claimTask(
  ev: Evaluator,
  o: { blockMs: number; reclaim: boolean },
): Promise<Task | null> {
  const block = o.blockMs > 0 ? ["BLOCK", o.blockMs] : [];
  const reply = await ev.bus.call([
    "XREADGROUP",
    "GROUP",
    GROUP,
    ev.consumer,
    "COUNT",
    1,
    ...block,
    "STREAMS",
    ev.keys.tasks,
    ">",
  ]);
  const fresh = RedisBus.streamEntries(reply, ev.keys.tasks);
  if (fresh.length > 0) return parseTask(fresh[0]);
  if (!o.reclaim) return null;
  // A claim idle past the deadline belongs to a process that died (live ones refresh theirs).
  const auto = await ev.bus.call([
    "XAUTOCLAIM",
    ev.keys.tasks,
    GROUP,
    ev.consumer,
    ev.deadlineMs,
    "0-0",
    "COUNT",
    1,
  ]) as unknown[];
  const claimed = RedisBus.entries(auto?.[1]);
  return claimed.length > 0 ? parseTask(claimed[0]) : null;
}

/**
 * Evaluates a claimed task on this process's θ_t and publishes the fitness. The claim is
 * refreshed while the GPU works, so a slow process keeps it and a dead one loses it.
 */
async function serveTask(ev: Evaluator, task: Task): Promise<void> {
  const { bus, keys } = ev;
  const refresh = setInterval(() => {
    bus.call(["XCLAIM", keys.tasks, GROUP, ev.consumer, 0, task.id, "JUSTID"]).catch(() => {});
  }, Math.max(50, ev.deadlineMs / 3));
  try {
    const mine = await ev.checksum(task.iter);
    const ask = ev.setup.strategy.ask(task.iter);
    const sigma = ask.sigma;
    if (mine !== task.checksum || sigma !== task.sigma || task.seed !== ev.seed) {
      const error = mine !== task.checksum
        ? `weights diverged at iteration ${task.iter}: ${ev.consumer} has checksum ${mine}, the coordinator ${task.checksum}`
        : `${ev.consumer} derives seed ${ev.seed} and σ ${sigma} for iteration ${task.iter}, the coordinator announced seed ${task.seed} and σ ${task.sigma}`;
      await bus.add(keys.results, {
        session: task.session,
        iter: task.iter,
        consumer: ev.consumer,
        error: `${error}; every process must run the same esflow on the same pipeline`,
      });
      throw new DivergenceError(error);
    }
    // Test-only: a slow evaluation, so a test can kill a process while it holds a claim.
    const delay = Number(Deno.env.get("ESFLOW_TEST_EVAL_DELAY_MS") ?? 0);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    const { packed } = ev.setup.iterationInputs(task.iter);
    const res = await ev.engine.evaluate(packed, {
      iteration: task.iter,
      population: ask.members,
      heldOut: false,
      members: { start: task.start, end: task.end },
    });
    await bus.add(keys.results, {
      session: task.session,
      iter: task.iter,
      start: task.start,
      end: task.end,
      fitness: JSON.stringify(res.fitness),
      checksum: mine,
      consumer: ev.consumer,
    });
    await bus.call(["XACK", keys.tasks, GROUP, task.id]);
  } finally {
    clearInterval(refresh);
  }
}

/** Options of {@link Coordinator.start}. */
export interface CoordinatorOptions {
  /** redis://… or unix://… */
  url: string;
  /** Evaluate members here too (default true; `--no-local-eval` turns it off). */
  localEval?: boolean;
  /** Progress lines (waiting for workers). */
  log?: (line: string) => void;
  /**
   * The backend the coordinator evaluates on, published so every worker runs the same one:
   * backends agree to ~1e-5, not bit for bit, and a run is bit-identical only within one.
   */
  backend?: Backend;
  /**
   * Publish each checkpoint written for workers that join late (default true;
   * `--no-publish-checkpoints` keeps θ out of Redis but for a resumed session's first one).
   */
  publishCheckpoints?: boolean;
}

/**
 * The coordinator: `deno task train PIPELINE --redis URL`. It announces each iteration, shares
 * the members out through the consumer group, collects the fitness, and keeps the ledger.
 * Plug {@link Coordinator.runOptions} into runTraining.
 */
export class Coordinator {
  readonly bus: RedisBus;
  readonly keys: ReturnType<typeof runKeys>;
  readonly session: string;
  /** The run's name (the pipeline's `name`). */
  readonly run: string;
  readonly consumer: string;
  readonly ranges: [number, number][];
  readonly deadlineMs: number;
  readonly localEval: boolean;
  /** Members evaluated per consumer over the whole run. */
  readonly contributors = new Map<string, number>();
  #log: (line: string) => void;
  #checksum: WeightsChecksum | null = null;
  #cursor = "0-0";
  #ledgerFrom: number | null = null;
  /** A Redis failure in onUpdate, raised at the next evaluation (after the metrics line). */
  #pending: unknown = null;
  #setup: RunSetup;
  #seed: number;
  #outDir: string;
  #iterations: number;
  #publishCheckpoints: boolean;
  /** The bundle's blobs: every checkpoint published keeps them. */
  #bundleDigests = new Set<string>();
  /** The iteration whose ledger entry the ledger is trimmed to once written (a checkpoint's). */
  #trimAt: number | null = null;
  #finished = false;
  /** Bytes of blobs this session sent to Redis for workers' bootstraps. */
  bootstrapBytes = 0;

  private constructor(bus: RedisBus, run: ResolvedPipeline, o: CoordinatorOptions) {
    this.bus = bus;
    this.keys = runKeys(run.spec.name);
    this.session = crypto.randomUUID();
    this.run = run.spec.name;
    this.consumer = consumerName("coordinator");
    this.#setup = runSetup(run);
    this.#seed = run.spec.seed;
    this.#outDir = run.outDir;
    this.#iterations = run.spec.iterations;
    this.#publishCheckpoints = o.publishCheckpoints ?? true;
    const N = this.#setup.strategy.population;
    const settings = distributedSettings(N);
    this.ranges = memberRanges(N, settings.rangeSize);
    this.deadlineMs = settings.deadlineMs;
    this.localEval = o.localEval ?? true;
    this.#log = o.log ?? (() => {});
  }

  /**
   * Connects, clears what an earlier session of this run left in Redis, and publishes the run:
   * the pipeline text, the overrides a worker needs to rebuild the same spec, and the samples
   * and files it reads (as blobs; those of an earlier session that this one does not use are
   * dropped).
   */
  static async start(run: ResolvedPipeline, o: CoordinatorOptions): Promise<Coordinator> {
    refuseDistributedReward(run.spec, run.loaded.where);
    const bus = await RedisBus.connect(o.url, { name: consumerName("coordinator") });
    const c = new Coordinator(bus, run, o);
    const { keys } = c;
    await bus.call(["DEL", keys.meta, keys.tasks, keys.results, keys.ledger]);
    await bus.call(["XGROUP", "CREATE", keys.tasks, GROUP, "$", "MKSTREAM"]);
    const { bundle, digests, sent } = await publishBundle(bus, run.spec.name, run);
    c.bootstrapBytes += sent;
    c.#bundleDigests = digests;
    await dropBlobsExcept(bus, run.spec.name, digests);
    const meta: Record<string, string | number> = {
      name: run.spec.name,
      session: c.session,
      pipeline: run.loaded.text,
      file: absolute(run.loaded.file),
      out: absolute(run.outDir),
      iterations: run.spec.iterations,
      seed: run.spec.seed,
      population: c.#setup.strategy.population,
      deadline_ms: c.deadlineMs,
      coordinator: c.consumer,
      backend: o.backend ?? "webgpu",
      bundle: JSON.stringify(bundle),
      data_digest: await dataDigest(c.#setup.tokens),
      status: "running",
    };
    await bus.call(["HSET", keys.meta, ...Object.entries(meta).flat().map(String)]);
    await bus.call(["SET", CURRENT_KEY, run.spec.name]);
    return c;
  }

  /** The hooks runTraining takes. */
  runOptions(): Pick<RunOptions, "evaluator" | "onUpdate" | "onCheckpoint"> {
    return {
      evaluator: (ctx) => this.#guard(() => this.#evaluate(ctx)),
      onUpdate: async (ctx) => {
        try {
          const id = await this.bus.add(this.keys.ledger, {
            session: this.session,
            iter: ctx.iteration,
            fitness: JSON.stringify(ctx.fitness),
            coefficients: JSON.stringify(Array.from(ctx.coefficients)),
          });
          if (ctx.iteration === this.#trimAt) {
            // A joiner starts from the published checkpoint: what comes before it serves no one.
            await this.bus.call(["XTRIM", this.keys.ledger, "MINID", id]);
            this.#trimAt = null;
          }
        } catch (e) {
          // θ_{t+1} is already queued: let the metrics line be written, then stop at t+1.
          this.#pending = e;
        }
      },
      onCheckpoint: async (dir, iteration) => {
        // The final weights serve no joiner; a run that stopped or failed publishes nothing more.
        if (!this.#publishCheckpoints || iteration >= this.#iterations) return;
        if (this.#pending || this.#finished || this.bus.gone) return;
        try {
          await this.#publish(dir, iteration);
        } catch (e) {
          // As a ledger write that failed: the next evaluation raises it.
          this.#pending = e;
        }
      },
    };
  }

  /**
   * Publishes checkpoint `dir` (θ at `iteration`) as the session's latest: meta points to it
   * (checkpoint and ledger_from together, one HSET), then the previous one's blobs go, and the
   * ledger is trimmed to `iteration` once that entry is in.
   */
  async #publish(dir: string, iteration: number): Promise<void> {
    const published = await publishCheckpoint(this.bus, this.run, { dir, iteration });
    await this.bus.call([
      "HSET",
      this.keys.meta,
      "checkpoint",
      JSON.stringify({ iteration, tree: published.tree }),
      "ledger_from",
      iteration,
    ]);
    // A blob both bundle and checkpoint use (a tokenizer file saved beside the weights) stays.
    await dropBlobsExcept(
      this.bus,
      this.run,
      new Set([...this.#bundleDigests, ...published.digests]),
    );
    this.#trimAt = iteration;
  }

  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      if (this.#pending) throw this.#pending;
      return await fn();
    } catch (e) {
      if (e instanceof DivergenceError) {
        await this.finish({ error: e.message }).catch(() => {});
      }
      throw e;
    }
  }

  async #evaluate(ctx: EvaluateContext): Promise<IterationResult> {
    const { bus, keys } = this;
    const t = ctx.iteration;
    this.#checksum ??= new WeightsChecksum(
      ctx.engine.device,
      ctx.engine.names.map((n) => ctx.engine.theta.get(n)!),
    );
    const checksum = await this.#checksum.compute();
    if (this.#ledgerFrom === null) {
      this.#ledgerFrom = t;
      // A resumed session's ledger starts at t: a worker needs θ_t, the checkpoint resumed from.
      const fields: (string | number)[] = ["ledger_from", t];
      if (t > 0) {
        const ck = await latestCheckpoint(this.#outDir);
        if (!ck || ck.state.iteration !== t) {
          throw new Error(
            `${this.#outDir}: no checkpoint of iteration ${t} to publish for workers`,
          );
        }
        const published = await publishCheckpoint(bus, this.run, { dir: ck.dir, iteration: t });
        this.bootstrapBytes += published.sent;
        fields.push("checkpoint", JSON.stringify({ iteration: t, tree: published.tree }));
      }
      await bus.call(["HSET", keys.meta, ...fields]);
    }
    const sigma = ctx.sigma;
    let first: string | null = null;
    for (const [start, end] of this.ranges) {
      const id = await bus.add(keys.tasks, {
        session: this.session,
        iter: t,
        seed: this.#seed,
        sigma,
        start,
        end,
        checksum,
      });
      first ??= id;
    }
    // Earlier iterations' entries are done with: keep the streams short.
    await bus.call(["XTRIM", keys.tasks, "MINID", first!]);
    await bus.call(["XTRIM", keys.results, "MINID", this.#cursor]);

    // Held-out loss on θ_t for the metrics; the GPU queue orders it before any member.
    const heldOut = ctx.heldOut ? await ctx.engine.heldOut() : undefined;
    const set = new ResultSet({
      session: this.session,
      iteration: t,
      checksum,
      ranges: this.ranges,
    });
    const ev: Evaluator = {
      bus,
      keys,
      consumer: this.consumer,
      engine: ctx.engine,
      setup: this.#setup,
      seed: this.#seed,
      checksum: () => Promise.resolve(checksum),
      deadlineMs: this.deadlineMs,
    };
    let lastReclaim = 0, lastNote = performance.now(), lastDone = 0;
    while (!set.complete) {
      let served = false;
      if (this.localEval) {
        const reclaim = performance.now() - lastReclaim > 250;
        if (reclaim) lastReclaim = performance.now();
        const task = await claimTask(ev, { blockMs: 0, reclaim });
        if (task && (task.session !== this.session || task.iter !== t)) {
          await bus.call(["XACK", keys.tasks, GROUP, task.id]);
          served = true;
        } else if (task) {
          await serveTask(ev, task);
          served = true;
        }
      }
      const block = served ? [] : ["BLOCK", this.localEval ? 50 : 200];
      const reply = await bus.call([
        "XREAD",
        "COUNT",
        256,
        ...block,
        "STREAMS",
        keys.results,
        this.#cursor,
      ]);
      for (const e of RedisBus.streamEntries(reply, keys.results)) {
        this.#cursor = e.id;
        set.offer(e.fields);
      }
      if (set.done !== lastDone) {
        lastDone = set.done;
        lastNote = performance.now();
      } else if (performance.now() - lastNote > 30_000) {
        lastNote = performance.now();
        this.#log(
          `iteration ${t}: waiting for workers (${set.done} of ${this.ranges.length} ranges done; ` +
            `start one with: deno task worker --redis URL --run ${this.run})`,
        );
      }
    }
    for (const [k, n] of set.contributors) {
      this.contributors.set(k, (this.contributors.get(k) ?? 0) + n);
    }
    return { fitness: set.fitness(), heldOut };
  }

  /**
   * Marks the run done (or failed with `error`) so workers exit, records who evaluated how many
   * members, and closes the connection. Never throws when Redis is already gone.
   */
  async finish(o: { error?: string; stopped?: boolean } = {}): Promise<void> {
    this.#finished = true;
    try {
      if (this.bus.gone) throw new Error("redis is gone");
      await this.bus.call([
        "HSET",
        this.keys.meta,
        "status",
        o.error ? "failed" : o.stopped ? "stopped" : "done",
        "error",
        o.error ?? "",
        "contributors",
        JSON.stringify(Object.fromEntries(this.contributors)),
      ]);
      // A finished run's blobs serve no one (a later --resume publishes what it needs).
      if (!o.error && !o.stopped) await dropBlobsExcept(this.bus, this.run, new Set());
    } catch { /* Redis is gone: workers find out by themselves */ }
    this.#checksum?.destroy();
    this.#checksum = null;
    this.bus.close();
  }
}

/** Options of {@link runWorker}. */
export interface WorkerOptions {
  /** redis://… or unix://… */
  url: string;
  /** Serve this run; default: the run in `esflow:current`, waiting for one if there is none. */
  run?: string;
  /** Progress lines. */
  log?: (line: string) => void;
  /** The worker's own scratch dir for the run's blobs; default {@link defaultWorkerCache}. */
  cache?: string;
}

/** What a worker did, for its last line. */
export interface WorkerSummary {
  run: string;
  consumer: string;
  /** Members and ranges it evaluated. */
  members: number;
  ranges: number;
  /** Ledger entries it applied (its updates, the catch-up replay included). */
  updates: number;
  /** Of those, the catch-up replay of its last bootstrap, and the iteration it started from. */
  replayed: number;
  startedAt: number;
  /** The iteration its θ had reached when the run ended. */
  iteration: number;
  status: string;
  /** What its bootstraps fetched (every session's). */
  bootstrap: BootstrapCost;
}

/** Polls, every 200 ms, until `fn` returns a value. */
async function poll<T>(fn: () => Promise<T | null>): Promise<T> {
  for (;;) {
    const v = await fn();
    if (v !== null) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A worker: `deno task worker --redis URL [--run NAME]`. It waits for a run, rebuilds the
 * pipeline from the text the coordinator published, starts from the run's latest checkpoint (or
 * the pipeline's initial weights) and replays the ledger to the current θ, then serves tasks
 * until the run is done. A coordinator that restarts (`--resume`) starts a new session; the
 * worker bootstraps again. Returns when the run is done or failed.
 */
export async function runWorker(gpu: Device, o: WorkerOptions): Promise<WorkerSummary> {
  const log = o.log ?? (() => {});
  const consumer = consumerName("worker");
  const bus = await RedisBus.connect(o.url, { name: consumer });
  const summary: WorkerSummary = {
    run: o.run ?? "",
    consumer,
    members: 0,
    ranges: 0,
    updates: 0,
    replayed: 0,
    startedAt: 0,
    iteration: 0,
    status: "",
    bootstrap: { bytes: 0, fetched: 0, resumed: 0, refetched: 0, chunks: 0 },
  };
  const cache = o.cache ?? defaultWorkerCache();
  let announced = false;
  try {
    for (;;) {
      const meta = await poll(async () => {
        const run = o.run ?? String(await bus.call(["GET", CURRENT_KEY]) ?? "");
        const m = run && run !== "null" ? await bus.hash(runKeys(run).meta) : {};
        if (m.session && m.status === "running" && m.ledger_from !== undefined) return m;
        if (o.run && m.session && m.status !== "running") return m;
        if (!announced) {
          log(`waiting for a run${o.run ? ` named ${o.run}` : ""} at ${bus.target.display}`);
        }
        announced = true;
        return null;
      });
      summary.run = meta.name;
      if (meta.status !== "running") {
        summary.status = meta.status;
        return summary;
      }
      const outcome = await serveSession(gpu, bus, meta, { consumer, log, summary, cache })
        .catch((e) => e instanceof RunMoved ? e.outcome : Promise.reject(e));
      if (outcome === "new-checkpoint") {
        log(`${meta.name} published a newer checkpoint than this worker's θ; bootstrapping again`);
        continue;
      }
      if (outcome !== "new-session") {
        summary.status = outcome;
        return summary;
      }
      log(`the coordinator of ${meta.name} restarted; bootstrapping again`);
    }
  } finally {
    bus.close();
  }
}

/**
 * The run ended, its coordinator restarted, or it published a newer checkpoint (and dropped the
 * one this worker read of, or trimmed the ledger past this worker's θ).
 */
class RunMoved extends Error {
  constructor(readonly outcome: string) {
    super(outcome);
  }
}

/**
 * Why the session `meta` was read of no longer holds: it ended ({@link RunMoved} with its
 * status), a new one began ("new-session"), or a newer checkpoint replaced the one `meta` names
 * ("new-checkpoint"); null when it still holds.
 */
async function sessionMoved(bus: RedisBus, meta: Record<string, string>): Promise<RunMoved | null> {
  const [now, status, checkpoint] = await bus.call([
    "HMGET",
    runKeys(meta.name).meta,
    "session",
    "status",
    "checkpoint",
  ]) as (string | null)[];
  if (now !== meta.session) return new RunMoved("new-session");
  if (status !== "running") return new RunMoved(String(status));
  if ((checkpoint ?? undefined) !== meta.checkpoint) return new RunMoved("new-checkpoint");
  return null;
}

/**
 * `fetch`, whose one-line fault (a blob gone from Redis) is no fault when the session it
 * belongs to has ended or been replaced meanwhile, or its checkpoint replaced by a newer one:
 * then {@link RunMoved}.
 */
async function whileSession<T>(
  bus: RedisBus,
  meta: Record<string, string>,
  fetch: () => Promise<T>,
): Promise<T> {
  try {
    return await fetch();
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    throw (await sessionMoved(bus, meta)) ?? e;
  }
}

/** Serves one coordinator session; returns the run's final status, or that a new one began. */
async function serveSession(
  gpu: Device,
  bus: RedisBus,
  meta: Record<string, string>,
  o: { consumer: string; log: (line: string) => void; summary: WorkerSummary; cache: string },
): Promise<string> {
  const keys = runKeys(meta.name);
  const session = meta.session;
  if (meta.backend && meta.backend !== gpu.backend) {
    throw new UserError(
      `run ${meta.name} evaluates on the ${meta.backend} backend and this worker on ${gpu.backend}: ` +
        `backends agree to ~1e-5, not bit for bit, so θ would diverge; ` +
        `start the worker with --backend ${meta.backend}`,
    );
  }
  const cost = o.summary.bootstrap;
  const before = { ...cost };
  const run = await whileSession(
    bus,
    meta,
    () => bootstrapPipeline(bus, meta, { cache: o.cache, cost }),
  );
  refuseDistributedReward(run.spec, run.loaded.where);
  // Sizes against this worker's device, before anything is allocated.
  await checkRunFits(gpu, run);
  const setup = runSetup(run);
  if (meta.data_digest && (await dataDigest(setup.tokens)) !== meta.data_digest) {
    throw new UserError(
      `run ${meta.name}: this worker tokenizes the published samples to other tokens than the ` +
        `coordinator; every process must run the same esflow on the same pipeline`,
    );
  }
  const ledgerFrom = Number(meta.ledger_from);

  // θ: the session's published checkpoint (from Redis), else the initial weights; then the ledger.
  const ck = ledgerFrom > 0
    ? await whileSession(bus, meta, () => fetchCheckpoint(bus, meta, { cache: o.cache, cost }))
    : null;
  let iteration: number;
  let tensors: TensorStream;
  if (ck) {
    iteration = ck.iteration;
    tensors = await openCheckpointTensors(ck.dir);
  } else if (ledgerFrom === 0) {
    iteration = 0;
    tensors = run.model.tensors();
  } else {
    throw new UserError(
      `run ${meta.name}: the ledger in Redis starts at iteration ${ledgerFrom} and the coordinator ` +
        `published no checkpoint there; run the same esflow everywhere`,
    );
  }
  const fetched = cost.fetched - before.fetched;
  o.log(
    `${meta.name}: bootstrap ${cost.bytes - before.bytes} bytes of blobs, ${fetched} chunks ` +
      `fetched from Redis, ${cost.resumed - before.resumed} resumed from the cache, ` +
      `${cost.refetched - before.refetched} refetched`,
  );
  o.log(
    `${meta.name}: θ from ${
      ck ? `the checkpoint of iteration ${ck.iteration} in Redis` : run.model.source
    } (iteration ${iteration})`,
  );
  const engine = await EsEngine.create(gpu, setup.engineOptions(tensors));
  const checksum = new WeightsChecksum(gpu, engine.names.map((n) => engine.theta.get(n)!));
  o.summary.iteration = iteration;
  o.summary.startedAt = iteration;
  o.summary.replayed = 0;
  const spec = run.spec;
  let known: { iteration: number; value: string } | null = null;
  const ev: Evaluator = {
    bus,
    keys,
    consumer: o.consumer,
    engine,
    setup,
    seed: spec.seed,
    checksum: async (t) => {
      if (t !== iteration) throw new Error(`θ is at iteration ${iteration}, not ${t}`);
      if (known?.iteration !== t) known = { iteration: t, value: await checksum.compute() };
      return known.value;
    },
    deadlineMs: Number(meta.deadline_ms),
  };

  // The ledger: each entry is one iteration's result set and update coefficients.
  let cursor = "-";
  const replay = async () => {
    const start = cursor === "-" ? "-" : `(${cursor}`;
    const entries = RedisBus.entries(await bus.call(["XRANGE", keys.ledger, start, "+"]));
    for (const e of entries) {
      cursor = e.id;
      const f = e.fields;
      const t = Number(f.iter);
      if (f.session !== session || t < iteration) continue;
      if (t > iteration) {
        // Trimmed past this θ: a newer checkpoint came out after the meta this worker read, or
        // while this worker lagged (paused, cut off) more than a checkpoint behind.
        const moved = await sessionMoved(bus, meta);
        if (moved) throw moved;
        throw new Error(`ledger of ${meta.name} skips from iteration ${iteration} to ${t}`);
      }
      const fitness = JSON.parse(f.fitness) as number[];
      const d = Float64Array.from(JSON.parse(f.coefficients) as number[]);
      // Same result set, same strategy: the same coefficients, or this process differs.
      const mine = fitness.length === setup.strategy.population
        ? setup.strategy.tell(t, fitness).coefficients
        : new Float64Array(0);
      if (mine.length !== d.length || mine.some((x, i) => x !== d[i])) {
        throw new DivergenceError(
          `${o.consumer} computes other update coefficients than the coordinator at iteration ${t}; ` +
            `every process must run the same esflow on the same pipeline`,
        );
      }
      engine.update({ iteration: t, coefficients: d });
      iteration = t + 1;
      o.summary.updates++;
      o.summary.iteration = iteration;
    }
  };

  try {
    await replay();
    o.summary.replayed = iteration - o.summary.startedAt;
    o.log(
      `${meta.name}: replayed ${o.summary.replayed} ledger entries from iteration ` +
        `${o.summary.startedAt}; at iteration ${iteration}, serving as ${o.consumer}`,
    );
    let lastMeta = performance.now(), lastReclaim = 0;
    for (;;) {
      if (performance.now() - lastMeta > 500) {
        lastMeta = performance.now();
        // Two short fields, not the whole meta hash: this poll runs twice a second per worker.
        const [now, status] = await bus.call([
          "HMGET",
          keys.meta,
          "session",
          "status",
        ]) as (string | null)[];
        if (now !== session) return "new-session";
        if (status !== "running") {
          // A finished run's ledger is complete: end at its final θ, as every process does.
          if (status === "done") await replay();
          return String(status);
        }
      }
      const reclaim = performance.now() - lastReclaim > 250;
      if (reclaim) lastReclaim = performance.now();
      let task: Task | null;
      try {
        task = await claimTask(ev, { blockMs: 200, reclaim });
      } catch (e) {
        // The coordinator deleted the streams to start a new session: NOGROUP when it did so
        // between two reads, UNBLOCKED when this worker was blocked in one.
        if (/^(NOGROUP|UNBLOCKED)/.test(String((e as Error).message))) {
          lastMeta = 0;
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw e;
      }
      if (!task) continue;
      if (task.session !== session) {
        lastMeta = 0;
        continue;
      }
      await replay();
      if (task.iter < iteration) {
        // Stale: that iteration's update is already in the ledger.
        await bus.call(["XACK", keys.tasks, GROUP, task.id]);
        continue;
      }
      if (task.iter > iteration) {
        throw new Error(`task of iteration ${task.iter} announced before the ledger reached it`);
      }
      await serveTask(ev, task);
      o.summary.members += task.end - task.start;
      o.summary.ranges++;
    }
  } finally {
    checksum.destroy();
    engine.destroy();
  }
}
