/**
 * The records the host writes and the kernels read, each defined once: its fields in word
 * order. The TypeScript encoders write through {@link writeRecord}, the WGSL kernels get the
 * struct (or the word offsets) from {@link wgslStruct} / {@link wgslOffsets}, and the native CPU
 * kernels get the same offsets as C macros from {@link cDefines} (prepended to
 * kernels/cpu/esflow.c when it is built), so no layout is mirrored by hand.
 *
 * Every field is one 32-bit word: a u32, or an f32 stored as its bits. Records sit in tables at a
 * binding-aligned stride (kernels/es_update.ts paramStride), so a dispatch binds one record.
 *
 * Tests: tests/program_test.ts (every record through its layout, WGSL and C).
 *
 * @module
 */

/** One 32-bit field of a record. */
export interface RecordField {
  name: string;
  type: "u32" | "f32";
  /** What it holds (becomes the comment beside the field in WGSL and C). */
  doc: string;
}

/** A record: its name (the WGSL struct's) and its fields in word order. */
export interface RecordLayout<F extends string = string> {
  name: string;
  fields: readonly (RecordField & { name: F })[];
  /** Words before the record's trailing array (when it has one). */
  words: number;
  /** A trailing runtime-sized array: its name and element type (WGSL `array<T>`). */
  tail?: { name: string; type: "u32" | "f32"; doc: string };
}

function layout<F extends string>(
  name: string,
  fields: readonly [F, "u32" | "f32", string][],
  tail?: RecordLayout["tail"],
): RecordLayout<F> {
  return {
    name,
    fields: fields.map(([n, type, doc]) => ({ name: n, type, doc })),
    words: fields.length,
    ...(tail ? { tail } : {}),
  };
}

/**
 * One piece of a tensor a perturb or update dispatch covers (a shard, or a row chunk of one) and
 * the tensor's group multiplier (kernels/es_update.ts createShardTable, createPerturbTable).
 */
export const SHARD = layout("Shard", [
  ["start", "u32", "first element of this piece in the whole tensor (rowStart·rowSize)"],
  ["count", "u32", "elements in this piece"],
  ["tensor", "u32", "tensor id: the Philox counter's second word"],
  ["numel", "u32", "elements in the whole tensor"],
  ["multiplier", "f32", "group multiplier m_g of this tensor"],
  ["src", "u32", "perturb only: index in the bound θ buffer of element `start`"],
  ["dst", "u32", "perturb only: index in the bound out buffer of element `start`"],
  ["member_stride", "u32", "perturb only: elements between batched members' copies in out"],
]);

/**
 * One member of an iteration, as its perturb, factor and accumulate kernels read it
 * (kernels/es_update.ts encodePerturbParams).
 */
export const PERTURB = layout("Perturb", [
  ["seed_lo", "u32", "run seed, low 32 bits (the Philox key)"],
  ["seed_hi", "u32", "run seed, high 32 bits"],
  ["iteration", "u32", "the iteration t"],
  ["noise", "u32", "the member's noise index (antithetic members share one)"],
  ["scale", "f32", "±σ_t: the member's sign times the noise scale"],
  ["slot", "u32", "the member's place j in the population: its fitness slot"],
]);

/**
 * The update of one iteration: the noises' coefficients d_i (kernels/es_update.ts
 * encodeUpdateParams), read by es_update and the low-rank update's factors.
 */
export const UPDATE = layout("Update", [
  ["seed_lo", "u32", "run seed, low 32 bits (the Philox key)"],
  ["seed_hi", "u32", "run seed, high 32 bits"],
  ["iteration", "u32", "the iteration t"],
  ["count", "u32", "n, the number of noises"],
], { name: "coeffs", type: "f32", doc: "d_i, per noise index" });

/**
 * One dispatch of lowrank_factors: which rows of a factor (A or B), in which layout, with which
 * scale (kernels/lowrank.ts createFactorTable).
 */
export const FACTOR = layout("Factor", [
  ["tensor", "u32", "Philox counter word of this factor"],
  ["row0", "u32", "first row written"],
  ["rows", "u32", "rows written"],
  ["rank", "u32", "r: the counter element of (row, k) is row·r + k"],
  ["row_stride", "u32", "elements between rows in out"],
  ["noise_stride", "u32", "elements between noises in out"],
  ["k_stride", "u32", "elements between factor columns in out"],
  ["scaled", "u32", "1: times the noise's scale"],
  ["multiplier", "f32", "m_g/√r for A, 1 for B"],
  ["noise0", "u32", "first noise written"],
  ["span", "u32", "noise columns written (zeros past the last noise); 0: up to the last"],
]);

/** Every record, for the C header. */
export const RECORDS: readonly RecordLayout[] = [SHARD, PERTURB, UPDATE, FACTOR];

/** Bytes of a record's fixed fields. */
export function recordBytes(r: RecordLayout): number {
  return r.words * 4;
}

/** The word offset of `field` in `r`. */
export function offsetOf<F extends string>(r: RecordLayout<F>, field: F): number {
  const i = r.fields.findIndex((f) => f.name === field);
  if (i < 0) throw new Error(`record ${r.name} has no field ${field}`);
  return i;
}

/**
 * Writes one record's fields at word `at` of `words`: u32 fields checked to be u32s, f32
 * fields as their bits. A field left out is 0.
 */
export function writeRecord<F extends string>(
  r: RecordLayout<F>,
  words: Uint32Array,
  at: number,
  values: Partial<Record<F, number>>,
): void {
  const f32 = new Float32Array(words.buffer, words.byteOffset, words.length);
  r.fields.forEach((f, i) => {
    const v = values[f.name] ?? 0;
    if (f.type === "f32") {
      f32[at + i] = v;
      return;
    }
    if (!Number.isInteger(v) || v < 0 || v > 0xFFFFFFFF) {
      throw new RangeError(`${r.name}.${f.name} = ${v} is not a u32`);
    }
    words[at + i] = v;
  });
}

/** Reads one record's fields at word `at` of `words` (tests, and the CPU device's accumulate). */
export function readRecord<F extends string>(
  r: RecordLayout<F>,
  words: Uint32Array,
  at: number,
): Record<F, number> {
  const f32 = new Float32Array(words.buffer, words.byteOffset, words.length);
  return Object.fromEntries(
    r.fields.map((f, i) => [f.name, f.type === "f32" ? f32[at + i] : words[at + i]]),
  ) as Record<F, number>;
}

/** The WGSL struct of a record (with its trailing array, where it has one). */
export function wgslStruct(r: RecordLayout): string {
  const lines = r.fields.map((f) => `  ${f.name}: ${f.type}, // ${f.doc}`);
  if (r.tail) lines.push(`  ${r.tail.name}: array<${r.tail.type}>, // ${r.tail.doc}`);
  return `// kernels/records.ts ${r.name}\nstruct ${r.name} {\n${lines.join("\n")}\n}\n`;
}

/**
 * WGSL constants of a record's word offsets, for kernels that read records out of a u32 array
 * (one record per member): `PERTURB_SCALE: u32 = 4u` and so on.
 */
export function wgslOffsets(r: RecordLayout): string {
  return r.fields.map((f, i) =>
    `const ${r.name.toUpperCase()}_${f.name.toUpperCase()}: u32 = ${i}u;`
  )
    .join("\n") + "\n";
}

/** C macros of every record's word offsets and sizes: `ESF_PERTURB_SCALE 4`, `ESF_PERTURB_WORDS 6`. */
export function cDefines(records: readonly RecordLayout[] = RECORDS): string {
  const lines = ["// Generated from kernels/records.ts: the word offsets of each record's fields."];
  for (const r of records) {
    const up = r.name.toUpperCase();
    r.fields.forEach((f, i) =>
      lines.push(`#define ESF_${up}_${f.name.toUpperCase()} ${i} // ${f.doc}`)
    );
    lines.push(`#define ESF_${up}_WORDS ${r.words}`);
  }
  return lines.join("\n") + "\n";
}
