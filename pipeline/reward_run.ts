/**
 * The reward fitness in a run (fitness type `reward`, pipeline/stages/reward.ts): what
 * runTraining (pipeline/run.ts) calls instead of the engine's log-likelihood evaluation.
 *
 *   iteration t, the strategy's population, the subset of M prompts (every member the same):
 *     per member group (engine.evaluateWith: the group's records in, its whole tensors formed):
 *       per micro-batch of prompts: generate with the KV cache (model/decode.ts), every member
 *         of the group at once, each reading its own perturbed weights
 *       reward of each completion; F_j = mean over the M prompts
 *     at an evaluation (output.eval_every): θ generates for the held-out prompts: eval_reward,
 *       and the first fitness.eval_samples of them as prompt → completion samples
 *   the metrics line gets reward_mean, reward_max and reward_min over the members (the fitness
 *   the strategy shapes), eval_reward and samples where evaluated, and tokens_per_s counts the
 *   tokens generated
 *
 * Generation is greedy unless fitness.temperature > 0; sampled draws are keyed by (run seed,
 * iteration, prompt, step) and shared by every member (common random numbers), so the members
 * differ by their weights alone and a resumed run draws the same.
 *
 * Memory beyond the engine's: one decoder (the KV cache for memberBatch × micro_batch sequences
 * of max_len + max_new_tokens − 1 positions, one prefill chunk of activations, a step's logits);
 * {@link generationPlan} counts it for `deno task plan`.
 *
 * Tests: tests/reward_test.ts.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import { Qwen3Decoder } from "../model/decode.ts";
import type { WeightLookup } from "../model/forward.ts";
import { samplingDraws } from "../model/sampling.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import { qwen3ChatTemplate } from "../tokenizers/chat.ts";
import { type Device, expand, planDevice, type Program } from "../kernels/device.ts";
import { EsEngine, type IterationResult } from "./engine.ts";
import type { MemberRecord } from "./es.ts";
import { tokenizeSamples } from "./data.ts";
import { UserError } from "../errors.ts";
import { createStage, type PipelineSpec } from "./spec.ts";
import { isRewardFitness, type RewardFitnessImpl } from "./stages/reward.ts";
import { parsePromptSample, type PromptSample } from "./stages/prompts.ts";
import { RewardFieldError } from "./rewards.ts";
import { specEngineOptions } from "./engine_options.ts";
import { DEFAULT_LIMITS, type PlanTarget, programJson } from "./compile.ts";
import { formatBytes } from "./limits.ts";

/** One prompt → completion sample of θ, as the metrics line and the dashboard show it. */
export interface RewardSample {
  prompt: string;
  completion: string;
  reward: number;
}

/** The fields a reward run adds to an iteration's metrics line. */
export interface RewardLineFields {
  /** Mean, max and min over the members of their mean reward (the fitness). */
  reward_mean: number;
  reward_max: number;
  reward_min: number;
  /** Tokens the members generated per second of the iteration. */
  tokens_per_s: number;
  /** θ's mean reward on the held-out prompts, where evaluated (and a holdout exists). */
  eval_reward?: number;
  /** A few of θ's completions, where evaluated. */
  samples?: RewardSample[];
}

/** What a reward run is asked to score (runTraining's EvaluateContext, the parts it reads). */
export interface RewardContext {
  engine: EsEngine;
  iteration: number;
  population: readonly MemberRecord[];
  /** The iteration's subset: indices into the tokenized samples (runSetup's). */
  indices: readonly number[];
  heldOut: boolean;
  /** The members [start, end) only (a distributed worker's share). */
  members?: { start: number; end: number };
}

/** The reward fitness of one run: see the module doc. */
export interface RewardRun {
  readonly fitness: RewardFitnessImpl;
  /** The population's fitness (mean reward per member); θ's held-out reward when `heldOut`. */
  evaluate(ctx: RewardContext): Promise<IterationResult>;
  /** The iteration's metrics fields (the held-out generation too, when evaluate did not run it). */
  lineFields(
    ctx: RewardContext,
    fitness: readonly number[],
    seconds: number,
  ): Promise<RewardLineFields>;
  /** Frees the decoder. */
  destroy(): void;
}

/** The sampling round of θ's held-out generations (iterations use their own number). */
const EVAL_ROUND = 0xFFFFFFFF;

/** What a reward run needs of the run: the pipeline, the model, the tokenizer, the samples. */
export interface RewardRunInputs {
  spec: PipelineSpec;
  config: Qwen3Config;
  tokenizer: Tokenizer;
  texts: string[];
  /** The pipeline file's places, for messages. */
  loaded?: { where(path: readonly (string | number)[]): string };
}

/** The reward run of a pipeline whose fitness is a reward, else null. */
export function rewardRun(
  run: RewardRunInputs,
  split: { train: readonly number[]; holdout: readonly number[] },
): RewardRun | null {
  const fitness = createStage(run.spec, "fitness");
  if (!isRewardFitness(fitness)) return null;
  return new RewardRunImpl(run, fitness, split);
}

/**
 * Refuses a distributed run (--redis, a worker) of a reward fitness in one line: its members
 * generate with the host between decode steps, which the distributed evaluation does not do yet.
 */
export function refuseDistributedReward(
  spec: PipelineSpec,
  where?: (path: readonly (string | number)[]) => string,
): void {
  if (!isRewardFitness(createStage(spec, "fitness"))) return;
  throw new UserError(
    `${where ? `${where(["fitness", "type"])}: ` : ""}fitness.type reward does not run ` +
      `distributed (--redis, deno task worker) yet: train it in one process, without --redis`,
  );
}

/** The decoder's shape for a reward fitness: sequences per member, cache slots. */
function decoderShape(
  s: RewardFitnessImpl["settings"],
  o: { prompts: number; config: Qwen3Config; where?: string },
): { maxBatch: number; maxSeqLen: number } {
  const maxSeqLen = s.max_len + s.max_new_tokens - 1;
  if (maxSeqLen > o.config.maxPositionEmbeddings) {
    throw new UserError(
      `${o.where ? `${o.where}: ` : ""}fitness: max_len ${s.max_len} prompt tokens and ` +
        `max_new_tokens ${s.max_new_tokens} need ${maxSeqLen} positions, more than the model's ` +
        `max_position_embeddings ${o.config.maxPositionEmbeddings}; lower one of them`,
    );
  }
  return { maxBatch: Math.max(1, Math.min(s.micro_batch, o.prompts)), maxSeqLen };
}

class RewardRunImpl implements RewardRun {
  readonly fitness: RewardFitnessImpl;
  #run: RewardRunInputs;
  #samples: PromptSample[];
  /** Token index → sample index (samples of under two tokens are not in the token list). */
  #origin: number[];
  #split: { train: readonly number[]; holdout: readonly number[] };
  #ids = new Map<number, number[]>();
  #render: (prompt: string) => string;
  #stopIds: number[];
  #decoder: Qwen3Decoder | null = null;
  #heldOutDone: { iteration: number; fields: Partial<RewardLineFields> } | null = null;
  #generated = 0;

  constructor(
    run: RewardRunInputs,
    fitness: RewardFitnessImpl,
    split: { train: readonly number[]; holdout: readonly number[] },
  ) {
    this.#run = run;
    this.fitness = fitness;
    this.#split = split;
    const s = fitness.settings;
    this.#samples = run.texts.map(parsePromptSample);
    this.#origin = tokenizeSamples(run.texts, run.tokenizer, { maxLen: s.max_len }).origin;
    const chat = s.chat ? qwen3ChatTemplate(run.tokenizer) : undefined;
    this.#render = chat ? chat.render : (p) => p;
    // Positions beyond the model are a pipeline fault: say so before anything trains.
    decoderShape(s, { prompts: 1, config: run.config, where: run.loaded?.where(["fitness"]) });
    this.#stopIds = [
      ...new Set(
        [run.config.eosTokenId, run.tokenizer.eosId, chat?.endId].filter((x): x is number =>
          x !== undefined
        ),
      ),
    ];
  }

  /** The prompt's ids: its text (in the chat template) tokenized, the last max_len kept. */
  #promptIds(sample: number): number[] {
    let ids = this.#ids.get(sample);
    if (!ids) {
      const all = this.#run.tokenizer.encode(this.#render(this.#samples[sample].prompt));
      if (all.length === 0) {
        throw new UserError(`prompt ${sample} of the dataset is empty once tokenized`);
      }
      ids = all.slice(-this.fitness.settings.max_len);
      this.#ids.set(sample, ids);
    }
    return ids;
  }

  #decoderFor(engine: EsEngine): Qwen3Decoder {
    if (this.#decoder && this.#decoder.device === engine.device) return this.#decoder;
    const s = this.fitness.settings;
    const prompts = Math.max(
      createStage(this.#run.spec, "dataset").samplesPerIteration,
      this.#split.holdout.length,
    );
    const shape = decoderShape(s, {
      prompts,
      config: this.#run.config,
      where: this.#run.loaded?.where(["fitness", "max_new_tokens"]),
    });
    this.#decoder = new Qwen3Decoder(engine.device, this.#run.config, engine.thetaWeights, {
      ...shape,
      members: engine.memberBatch,
      upProjection: engine.options.lowRank !== undefined,
    });
    return this.#decoder;
  }

  /**
   * Completions of `samples` (sample indices) by `members` members reading `weights`: per
   * member, per sample, the text and its generated token count.
   */
  async #generate(
    engine: EsEngine,
    o: { weights: WeightLookup; members: number; samples: readonly number[]; round: number },
  ): Promise<{ text: string; tokens: number }[][]> {
    const s = this.fitness.settings, decoder = this.#decoderFor(engine);
    const B = decoder.options.maxBatch;
    const draws = samplingDraws(this.#run.spec.seed);
    const out: { text: string; tokens: number }[][] = Array.from({ length: o.members }, () => []);
    const tok = this.#run.tokenizer;
    for (let first = 0; first < o.samples.length; first += B) {
      const group = o.samples.slice(first, first + B);
      const result = await decoder.generate(group.map((i) => this.#promptIds(i)), {
        maxNewTokens: s.max_new_tokens,
        sampling: { temperature: s.temperature, topK: s.top_k, topP: s.top_p },
        draw: (step, prompt) => draws(step, first + prompt, o.round),
        stopIds: this.#stopIds,
        stopStrings: s.stop,
        decode: (ids) => tok.decode(ids),
        weights: o.weights,
        members: o.members,
      });
      result.sequences.forEach((g, k) => {
        out[Math.floor(k / group.length)].push({ text: g.text ?? "", tokens: g.newIds.length });
      });
    }
    return out;
  }

  /** The reward of one completion of sample `i`, a missing field as a one-line error. */
  #score(i: number, c: { text: string; tokens: number }): number {
    const sample = this.#samples[i];
    try {
      const r = this.fitness.score({
        completion: c.text,
        prompt: sample.prompt,
        fields: sample.fields,
        tokens: c.tokens,
        countTokens: (t) => this.#run.tokenizer.encode(t).length,
      });
      if (!Number.isFinite(r)) {
        throw new UserError(`the reward of prompt ${i} is ${r}; a reward must be a finite number`);
      }
      return r;
    } catch (e) {
      if (!(e instanceof RewardFieldError)) throw e;
      const at = this.#run.loaded?.where(["fitness", "reward"]);
      throw new UserError(`${at ? `${at}: ` : ""}fitness.reward: ${e.message}`);
    }
  }

  async evaluate(ctx: RewardContext): Promise<IterationResult> {
    const samples = ctx.indices.map((i) => this.#origin[i]);
    this.#generated = 0;
    const res = await ctx.engine.evaluateWith(
      { iteration: ctx.iteration, population: ctx.population, members: ctx.members },
      async ({ count, weights }) => {
        const gens = await this.#generate(ctx.engine, {
          weights,
          members: count,
          samples,
          round: ctx.iteration,
        });
        return gens.map((member) => {
          this.#generated += member.reduce((a, c) => a + c.tokens, 0);
          return member.reduce((a, c, k) => a + this.#score(samples[k], c), 0) / samples.length;
        });
      },
    );
    if (ctx.heldOut) {
      this.#heldOutDone = { iteration: ctx.iteration, fields: await this.#heldOut(ctx.engine) };
    }
    return res;
  }

  /** θ's generations for the held-out prompts: eval_reward and the first samples. */
  async #heldOut(engine: EsEngine): Promise<Partial<RewardLineFields>> {
    const s = this.fitness.settings;
    const held = this.#split.holdout.map((i) => this.#origin[i]);
    // Without a holdout, the samples come from the first training prompts (no eval_reward).
    const shown = held.length > 0 ? held : this.#split.train.slice(0, s.eval_samples)
      .map((i) => this.#origin[i]);
    const which = held.length > 0 ? held : shown;
    if (which.length === 0) return {};
    const [gens] = await this.#generate(engine, {
      weights: engine.thetaWeights,
      members: 1,
      samples: which,
      round: EVAL_ROUND,
    });
    const rewards = gens.map((c, k) => this.#score(which[k], c));
    const samples = which.slice(0, s.eval_samples).map((i, k) => ({
      prompt: this.#samples[i].prompt,
      completion: gens[k].text,
      reward: rewards[k],
    }));
    return {
      ...(held.length > 0
        ? { eval_reward: rewards.reduce((a, b) => a + b, 0) / rewards.length }
        : {}),
      ...(samples.length > 0 ? { samples } : {}),
    };
  }

  async lineFields(
    ctx: RewardContext,
    fitness: readonly number[],
    seconds: number,
  ): Promise<RewardLineFields> {
    let held: Partial<RewardLineFields> = {};
    if (ctx.heldOut) {
      held = this.#heldOutDone?.iteration === ctx.iteration
        ? this.#heldOutDone.fields
        : await this.#heldOut(ctx.engine);
    }
    this.#heldOutDone = null;
    return {
      reward_mean: fitness.reduce((a, b) => a + b, 0) / fitness.length,
      reward_max: Math.max(...fitness),
      reward_min: Math.min(...fitness),
      tokens_per_s: this.#generated / Math.max(seconds, 1e-9),
      ...held,
    };
  }

  destroy(): void {
    this.#decoder?.destroy();
    this.#decoder = null;
  }
}

/** What {@link generationPlan} reports: the decoder a reward fitness adds to the plan. */
export interface GenerationPlan {
  /** Sequences decoded at once: memberBatch × prompts per micro-batch. */
  sequences: number;
  /** Cache slots per sequence: max_len + max_new_tokens − 1. */
  slots: number;
  /** The KV cache, all layers, keys and values. */
  cacheBytes: number;
  /** The decoder's activations, logits, ids and positions. */
  workspaceBytes: number;
  /** One decode step's program (every layer, the cache write and attention, the LM head). */
  decodeStep: Program;
  /** Dispatches of one decode step and of one prefill chunk. */
  decodeDispatches: number;
  prefillDispatches: number;
  /** Tokens per prefill chunk. */
  prefillChunk: number;
}

/**
 * The generation a reward fitness adds to a pipeline's plan, on a planning device of `target`:
 * the decoder it allocates (the KV cache and its workspace) and one decode step's program, built
 * by the code a run uses. Null for another fitness. For `deno task plan` (tools/plan.ts).
 */
export async function generationPlan(
  spec: PipelineSpec,
  config: Qwen3Config,
  o: { target?: PlanTarget; device?: Device } = {},
): Promise<GenerationPlan | null> {
  const fitness = createStage(spec, "fitness");
  if (!isRewardFitness(fitness)) return null;
  const device = o.device ??
    planDevice(o.target ?? { backend: "webgpu", name: "planning", limits: DEFAULT_LIMITS });
  const ds = createStage(spec, "dataset");
  const engine = await EsEngine.create(
    device,
    specEngineOptions(spec, config, Math.max(ds.samplesPerIteration, ds.holdout)),
  );
  const shape = decoderShape(fitness.settings, {
    prompts: Math.max(ds.samplesPerIteration, ds.holdout),
    config,
  });
  const decoder = new Qwen3Decoder(device, config, engine.thetaWeights, {
    ...shape,
    members: engine.memberBatch,
    upProjection: engine.options.lowRank !== undefined,
  });
  const sequences = engine.memberBatch * shape.maxBatch;
  // θ's program for one member's sequences: a group's reads the same tensors through its own
  // lookup, in the same kernels.
  const step = decoder.steps({ batch: shape.maxBatch, newTokens: 1, head: true });
  const prefill = decoder.steps({
    batch: shape.maxBatch,
    newTokens: decoder.options.prefillChunk,
    head: false,
  });
  const count = (p: Program) => [...expand(p)].filter((op) => op.op === "dispatch").length;
  const plan: GenerationPlan = {
    sequences,
    slots: shape.maxSeqLen,
    cacheBytes: decoder.cacheBytes,
    workspaceBytes: decoder.workspaceBytes,
    decodeStep: step.steps,
    decodeDispatches: count(step.steps),
    prefillDispatches: count(prefill.steps),
    prefillChunk: decoder.options.prefillChunk,
  };
  if (device.executes) {
    decoder.destroy();
    engine.destroy();
  }
  return plan;
}

/** The generation plan as lines for `deno task plan`, with the total beside the plan's. */
export function formatGenerationPlan(g: GenerationPlan, o: { planBytes: number }): string {
  const b = (n: number) => `${formatBytes(n)} (${n} bytes)`;
  return [
    "generation (fitness type reward): the decoder each member group generates with",
    `  ${g.sequences} sequences at once (member batch × prompts per micro-batch), ${g.slots} ` +
    `cache slots each (max_len + max_new_tokens − 1)`,
    `  KV cache      ${b(g.cacheBytes)}`,
    `  workspace     ${
      b(g.workspaceBytes)
    } (one prefill chunk of ${g.prefillChunk} tokens, a step's logits)`,
    `  one decode step: ${g.decodeDispatches} dispatches and a readback of the logits; one ` +
    `prefill chunk: ${g.prefillDispatches} dispatches`,
    "",
    `total device memory with generation: ${b(o.planBytes + g.cacheBytes + g.workspaceBytes)}`,
  ].join("\n");
}

/** The generation plan as plain JSON (the decode step's ops as compile.ts programJson writes them). */
export function generationPlanJson(g: GenerationPlan): Record<string, unknown> {
  const { decodeStep, ...rest } = g;
  return {
    sequences: rest.sequences,
    slots: rest.slots,
    cache_bytes: rest.cacheBytes,
    workspace_bytes: rest.workspaceBytes,
    decode_dispatches: rest.decodeDispatches,
    prefill_dispatches: rest.prefillDispatches,
    prefill_chunk: rest.prefillChunk,
    decode_step: programJson(decodeStep),
  };
}
