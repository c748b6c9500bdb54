/**
 * Model stage `qwen3`: the architecture from a preset or an HF config.json, and the initial
 * weights from HF's random init or a checkpoint directory.
 *
 * @module
 */
import { z } from "zod";
import { registerStage } from "../spec.ts";
import { UserError } from "../../errors.ts";
import { getPreset, PRESET_NAMES } from "../../model/presets.ts";
import { loadConfigFile } from "../../model/config.ts";
import { randomInit } from "../../model/weights.ts";
import { openCheckpoint } from "../../model/checkpoint.ts";
import { openCheckpointTensors } from "../../model/device_weights.ts";
import type { ModelImpl, StageContext } from "./types.ts";
import type { Qwen3Config } from "../../model/config.ts";
import { resolvePath } from "./dataset.ts";

const qwen3Schema = z.strictObject({
  type: z.literal("qwen3"),
  /**
   * A preset name (qwen3-0.5b … qwen3-32b, tiny, micro, …). Give this or config, or neither
   * with a checkpoint `init` (its config.json is the architecture).
   */
  preset: z.string().min(1).optional(),
  /** An HF config.json path, relative to the pipeline file. Give this or preset. */
  config: z.string().min(1).optional(),
  /**
   * "random" (HF init: N(0, initializer_range), norms 1) or a checkpoint directory, relative to
   * the pipeline file; a checkpoint is its own config (preset and config may be left out, and
   * when given must match it). Default random.
   */
  init: z.string().min(1).default("random"),
  /** Seed of the random init; default the run seed. */
  init_seed: z.number().int().nonnegative().optional(),
  /**
   * How θ is stored on the device: f32, or bf16 (half the bytes; updates rounded
   * stochastically so steps below a bf16 ulp still count, checkpoints written in BF16).
   * Default f32.
   */
  storage: z.enum(["f32", "bf16"]).default("f32"),
});

/** The model stage's settings. */
export type Qwen3ModelSettings = z.infer<typeof qwen3Schema>;

/**
 * The architecture a model stage names, without reading any weights: the preset, the
 * config.json, or (with neither) the init checkpoint's config.json. `deno task plan` uses it;
 * so does the stage itself. Faults are one line at the key to edit.
 */
export async function modelConfigOf(
  s: Pick<Qwen3ModelSettings, "preset" | "config" | "init">,
  ctx: Pick<StageContext, "baseDir" | "where">,
): Promise<{ config: Qwen3Config; from: "preset" | "config" | "init" }> {
  const init = s.init ?? "random";
  if (s.preset !== undefined && s.config !== undefined) {
    throw new UserError(
      `${ctx.where(["model"])}: model: give exactly one of preset or config, not both`,
    );
  }
  if (s.preset !== undefined) {
    if (!PRESET_NAMES.includes(s.preset)) {
      throw new UserError(
        `${
          ctx.where(["model", "preset"])
        }: model.preset: unknown preset "${s.preset}"; presets are ${PRESET_NAMES.join(", ")}`,
      );
    }
    return { config: getPreset(s.preset), from: "preset" };
  }
  if (s.config !== undefined) {
    return { config: await loadConfigFile(resolvePath(s.config, ctx)), from: "config" };
  }
  if (init === "random") {
    throw new UserError(
      `${ctx.where(["model"])}: model: give preset or config (a random init needs an ` +
        `architecture), or init: a checkpoint dir, whose config.json is the architecture`,
    );
  }
  const dir = resolvePath(init, ctx);
  const configPath = `${dir.replace(/\/+$/, "")}/config.json`;
  try {
    await Deno.stat(configPath);
  } catch {
    throw new UserError(
      `${ctx.where(["model", "init"])}: model.init: ${dir} has no config.json; give a ` +
        `checkpoint dir (config.json and model.safetensors), or preset or config beside init`,
    );
  }
  return { config: await loadConfigFile(configPath), from: "init" };
}

function qwen3(s: Qwen3ModelSettings): ModelImpl {
  return {
    storage: s.storage,
    async resolve(ctx) {
      const { config, from } = await modelConfigOf(s, ctx);
      if (s.init === "random") {
        // The run seed is the init seed unless one is given: the context knows the run seed.
        const seed = s.init_seed ?? ctx.seed;
        return {
          config,
          tensors: () => randomInit(config, { seed }),
          source: `random init (seed ${seed})`,
        };
      }
      const dir = resolvePath(s.init, ctx);
      const ckpt = await openCheckpoint(dir);
      ckpt.close();
      if (
        from !== "init" &&
        JSON.stringify({ ...ckpt.config, torchDtype: "" }) !==
          JSON.stringify({ ...config, torchDtype: "" })
      ) {
        throw new UserError(
          `${
            ctx.where(["model", "init"])
          }: model.init: checkpoint ${dir} has a different architecture than model.${from}; ` +
            `drop model.${from} (a checkpoint is its own config) or init from a matching checkpoint`,
        );
      }
      return {
        config,
        source: dir,
        tensors: async function* () {
          yield* await openCheckpointTensors(dir);
        },
      };
    },
  };
}

registerStage({
  kind: "model",
  type: "qwen3",
  description: "Qwen3 (HF Qwen3ForCausalLM), from a preset or config.json",
  schema: qwen3Schema,
  create: qwen3,
});
