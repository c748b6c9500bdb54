/**
 * HuggingFace model directories: config.json plus model.safetensors, or shards behind
 * model.safetensors.index.json, and the tokenizer's files beside them (tokenizer.json,
 * tokenizer_config.json, generation_config.json). What transformers' save_pretrained writes,
 * esflow reads; what esflow writes, transformers' from_pretrained loads.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import { formatQwen3Config, loadConfigFile, type Qwen3Config } from "./config.ts";
import {
  openSafetensors,
  parentDir,
  type SafetensorsDtype,
  syncDir,
  type TensorData,
  type TensorEntry,
  type TensorSource,
  type TensorStream,
} from "./safetensors.ts";
import {
  DEFAULT_MAX_SHARD_BYTES,
  INDEX_FILE,
  openSafetensorsIndex,
  writeShardedSafetensors,
  writeTextAtomic,
} from "./safetensors_index.ts";
import { qwen3TensorSpecs } from "./weights.ts";
import { faultPoint } from "../faults.ts";
import type { Tokenizer } from "../tokenizers/tokenizer.ts";
import { checkpointTokenizerFiles } from "../tokenizers/pretrained.ts";

/** The single-file weights name. */
export const WEIGHTS_FILE = "model.safetensors";

/** An open model directory. Tensors are read lazily, one at a time. */
export interface Checkpoint {
  /** The parsed config.json. */
  config: Qwen3Config;
  /** The directory it was opened from. */
  dir: string;
  /**
   * The model's tensors (exactly {@link qwen3TensorSpecs} of the config) with their stored
   * dtype. A tied model's lm_head.weight, when the file has one, is ignored and not listed.
   */
  tensors: ReadonlyMap<string, TensorEntry>;
  /** Reads one tensor as f32. */
  read(name: string): Promise<Float32Array>;
  /** Closes the weight files. */
  close(): void;
}

function joinPath(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function showShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * Opens a model directory: reads config.json, opens model.safetensors.index.json (sharded)
 * or else model.safetensors, and checks that every tensor the config implies is present with
 * its shape and that there is nothing else. A tied model may or may not carry lm_head.weight.
 * Faults are one-line {@link UserError}s naming the directory or file, the tensor, and the
 * expected and found shapes.
 */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`model dir ${dir} does not exist; check the path`);
    }
    throw err;
  }
  if (!info.isDirectory) {
    throw new UserError(
      `${dir}: not a directory; a model is a directory with config.json and model.safetensors`,
    );
  }
  const configPath = joinPath(dir, "config.json");
  if (!(await isFile(configPath))) {
    throw new UserError(
      `${dir}: config.json is missing; a model dir needs config.json beside its weights`,
    );
  }
  const config = await loadConfigFile(configPath);
  const indexPath = joinPath(dir, INDEX_FILE);
  const weightsPath = joinPath(dir, WEIGHTS_FILE);
  let source: TensorSource;
  if (await isFile(indexPath)) source = await openSafetensorsIndex(indexPath);
  else if (await isFile(weightsPath)) source = await openSafetensors(weightsPath);
  else {
    throw new UserError(
      `${dir}: no weights: neither ${WEIGHTS_FILE} nor ${INDEX_FILE} is there; ` +
        `save the model with safetensors`,
    );
  }
  try {
    const tensors = checkTensors(source, config);
    return {
      config,
      dir,
      tensors,
      read(name: string): Promise<Float32Array> {
        if (!tensors.has(name)) {
          return Promise.reject(
            new UserError(`${dir}: the model has no tensor "${name}"; check the name`),
          );
        }
        return source.read(name);
      },
      close: () => source.close(),
    };
  } catch (err) {
    source.close();
    throw err;
  }
}

/** The source's tensors that the config expects, or an error naming the first mismatch. */
function checkTensors(source: TensorSource, config: Qwen3Config): Map<string, TensorEntry> {
  const file = source.path;
  const found = new Map<string, TensorEntry>();
  for (const spec of qwen3TensorSpecs(config)) {
    const entry = source.tensors.get(spec.name);
    if (!entry) {
      const hint = spec.name === "lm_head.weight"
        ? " (config.json says tie_word_embeddings false; is the model tied?)"
        : "";
      throw new UserError(
        `${file}: tensor ${spec.name} ${showShape(spec.shape)} is missing${hint}; ` +
          `the weights do not match config.json`,
      );
    }
    if (
      entry.shape.length !== spec.shape.length || entry.shape.some((d, i) => d !== spec.shape[i])
    ) {
      throw new UserError(
        `${file}: tensor ${spec.name} has shape ${showShape(entry.shape)}, but config.json ` +
          `implies ${showShape(spec.shape)}; the weights do not match config.json`,
      );
    }
    found.set(spec.name, entry);
  }
  for (const name of source.tensors.keys()) {
    if (found.has(name)) continue;
    // Tied checkpoints may or may not store the head; transformers ignores it when tied.
    if (name === "lm_head.weight" && config.tieWordEmbeddings) continue;
    throw new UserError(
      `${file}: unexpected tensor ${name}, not part of a Qwen3 model with this config.json; ` +
        `check num_hidden_layers, attention_bias and tie_word_embeddings`,
    );
  }
  return found;
}

const TORCH_DTYPE_OF: Readonly<Record<SafetensorsDtype, string>> = {
  F32: "float32",
  BF16: "bfloat16",
  F16: "float16",
};

/** Options of {@link saveCheckpoint}. */
export interface SaveCheckpointOptions {
  /** The model's config; config.json's torch_dtype is set to match `dtype`. */
  config: Qwen3Config;
  /**
   * Every tensor of {@link qwen3TensorSpecs}(config), in any order, one at a time. A tied
   * model's lm_head.weight, if present, is skipped.
   */
  tensors: TensorStream;
  /** Stored element type; default "F32" (ES updates of 5e-4 vanish in BF16 rounding). */
  dtype?: SafetensorsDtype;
  /** Largest shard in bytes of tensor data; default 5 GB. One shard is written as model.safetensors. */
  maxShardBytes?: number;
  /** Replace `dir` if it exists; default false, which makes an existing `dir` an error. */
  overwrite?: boolean;
  /** More files to write into the directory in the same atomic step, by name (e.g. state.json). */
  files?: Record<string, string | Uint8Array>;
  /**
   * The model's tokenizer: its tokenizer.json and tokenizer_config.json, and a
   * generation_config.json, are written beside config.json as save_pretrained does
   * (tokenizers/pretrained.ts), so eval and generate use it by default.
   */
  tokenizer?: Tokenizer;
}

/**
 * Saves a model directory atomically: everything is written and fsynced in a temporary
 * directory beside `dir`, which is then renamed to `dir`. A crash leaves either no `dir` (or
 * the old one) or the complete new one, never a half-written checkpoint under the final name;
 * the temporary directory is removed on failure. With `overwrite`, the old `dir` is moved aside
 * before the rename and deleted after it. A process killed in between leaves `.NAME.PID-TAG.tmp`
 * (and `.NAME.PID-TAG.old`) beside `dir`: pipeline/run_dir.ts cleanRunDir puts the old one back
 * when `dir` is missing and removes the rest.
 */
export async function saveCheckpoint(dir: string, options: SaveCheckpointOptions): Promise<void> {
  const { config } = options;
  const dtype = options.dtype ?? "F32";
  const final = dir.replace(/\/+$/, "");
  const parent = parentDir(final);
  const exists = await Deno.stat(final).then(() => true, (err) => {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  });
  if (exists && !options.overwrite) {
    throw new UserError(`${final}: already exists; choose a new checkpoint dir or pass overwrite`);
  }
  await Deno.mkdir(parent, { recursive: true });
  const base = final.slice(final.lastIndexOf("/") + 1);
  const tag = `${Deno.pid}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;
  const temp = joinPath(parent, `.${base}.${tag}.tmp`);
  await Deno.mkdir(temp);
  try {
    faultPoint("checkpoint.temp");
    const savedConfig: Qwen3Config = { ...config, torchDtype: TORCH_DTYPE_OF[dtype] };
    await writeTextAtomic(joinPath(temp, "config.json"), formatQwen3Config(savedConfig));
    faultPoint("checkpoint.config");
    const layout = qwen3TensorSpecs(config);
    const expected = new Set(layout.map((s) => s.name));
    await writeShardedSafetensors(temp, onlyModelTensors(options.tensors, { expected, config }), {
      dtype,
      layout,
      maxShardBytes: options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES,
    });
    faultPoint("checkpoint.weights");
    const tokenizer = options.tokenizer ? await checkpointTokenizerFiles(options.tokenizer) : {};
    for (const [name, content] of Object.entries({ ...tokenizer, ...options.files })) {
      if (name.includes("/") || name === "config.json" || name.endsWith(".safetensors")) {
        throw new Error(`saveCheckpoint: extra file name "${name}" is not allowed`);
      }
      await writeTextAtomic(joinPath(temp, name), content);
    }
    faultPoint("checkpoint.files");
    await syncDir(temp);
    faultPoint("checkpoint.synced");
  } catch (err) {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
    throw err;
  }
  // Move the old checkpoint aside rather than deleting it first, so some complete checkpoint
  // exists at every moment except between the two renames.
  let aside: string | undefined;
  if (exists) {
    aside = joinPath(parent, `.${base}.${tag}.old`);
    await Deno.rename(final, aside);
    faultPoint("checkpoint.aside");
  }
  try {
    await Deno.rename(temp, final);
  } catch (err) {
    if (aside) await Deno.rename(aside, final).catch(() => {});
    await Deno.remove(temp, { recursive: true }).catch(() => {});
    throw err;
  }
  faultPoint("checkpoint.renamed");
  await syncDir(parent);
  if (aside) await Deno.remove(aside, { recursive: true });
}

/** Passes through the model's tensors, dropping a tied model's lm_head and rejecting strangers. */
async function* onlyModelTensors(
  tensors: TensorStream,
  options: { expected: ReadonlySet<string>; config: Qwen3Config },
): AsyncGenerator<TensorData> {
  for await (const t of tensors) {
    if (!options.expected.has(t.name)) {
      if (t.name === "lm_head.weight" && options.config.tieWordEmbeddings) continue;
      throw new Error(`saveCheckpoint: tensor "${t.name}" is not part of this Qwen3 config`);
    }
    yield t;
    // The writer has taken the tensor (it is on its way into the file).
    faultPoint("checkpoint.tensor");
  }
}
