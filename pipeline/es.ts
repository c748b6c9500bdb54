/**
 * The ES estimator of EA4LLM as pure functions: fitness shaping, the gradient estimate, the
 * update coefficients the GPU update consumes, antithetic member ↔ noise mapping, step-decay
 * schedules, and a float64 reference update that tests hold the GPU to.
 *
 * Paper: "EA4LLM", §3 (ES estimator; Salimans et al. 2017 [6]). N = population, D = parameters.
 * Population order with antithetic sampling is blocked: members 0..K−1 use +ε_0..+ε_{K−1},
 * members K..2K−1 use −ε_0..−ε_{K−1} (N = 2K), matching tests/fixtures/es_update.json.
 *
 * The ES strategy (pipeline/strategy.ts) composes these into ask(t)/tell(t, fitness); the run,
 * the distributed processes and the planner call the strategy, not these functions.
 *
 * @module
 */

/** Fitness shaping names, as the pipeline's `shape.type` spells them. */
export type Shaping = "zscore" | "rank";

/**
 * Z-score shaping (EA4LLM §3): w_j = (r_j − μ_r)/(σ_r + 1e-8) with μ_r = (1/N)Σ r_k and the
 * population standard deviation σ_r² = (1/N)Σ (r_k − μ_r)². A constant r gives all zeros.
 */
export function zscoreShape(r: ArrayLike<number>): Float64Array {
  const n = r.length;
  const w = new Float64Array(n);
  if (n === 0) return w;
  let mean = 0;
  for (let j = 0; j < n; j++) mean += r[j];
  mean /= n;
  let variance = 0;
  for (let j = 0; j < n; j++) variance += (r[j] - mean) ** 2;
  const std = Math.sqrt(variance / n);
  for (let j = 0; j < n; j++) w[j] = (r[j] - mean) / (std + 1e-8);
  return w;
}

/**
 * Rank shaping (EA4LLM §3): w_j = 2·rank(r_j)/(N−1) − 1 ∈ [−1, 1], ranks 0..N−1 ascending; tied
 * values share the average of the ranks they span (so shaping is independent of member order).
 * N = 1 has no spread to rank and gives w = [0].
 */
export function rankShape(r: ArrayLike<number>): Float64Array {
  const n = r.length;
  const w = new Float64Array(n);
  if (n <= 1) return w;
  const order = Array.from({ length: n }, (_, j) => j).sort((a, b) => r[a] - r[b]);
  for (let lo = 0; lo < n;) {
    let hi = lo + 1;
    while (hi < n && r[order[hi]] === r[order[lo]]) hi++;
    const rank = (lo + hi - 1) / 2; // average of ranks lo..hi−1
    for (let k = lo; k < hi; k++) w[order[k]] = (2 * rank) / (n - 1) - 1;
    lo = hi;
  }
  return w;
}

/** Shapes fitness values by name: {@link zscoreShape} or {@link rankShape}. */
export function shapeFitness(r: ArrayLike<number>, shaping: Shaping): Float64Array {
  return shaping === "rank" ? rankShape(r) : zscoreShape(r);
}

/**
 * The ES gradient estimate (EA4LLM §3): ĝ = (1/N) Σ_j w_j ε_j, with ε_j the signed noise of
 * member j (row j of `eps`, length D). N = w.length.
 */
export function esGradient(w: ArrayLike<number>, eps: readonly ArrayLike<number>[]): Float64Array {
  if (eps.length !== w.length) {
    throw new RangeError(`esGradient: ${w.length} weights but ${eps.length} noise rows`);
  }
  const d = eps.length === 0 ? 0 : eps[0].length;
  const g = new Float64Array(d);
  for (let j = 0; j < w.length; j++) {
    if (eps[j].length !== d) throw new RangeError(`esGradient: noise row ${j} is not length ${d}`);
    for (let i = 0; i < d; i++) g[i] += w[j] * eps[j][i];
  }
  for (let i = 0; i < d; i++) g[i] /= w.length;
  return g;
}

/** Which noise a population member uses: ε_index times sign. */
export interface NoiseMember {
  index: number;
  sign: 1 | -1;
}

/**
 * Member j of a population of N → its noise (blocked antithetic order): without antithetic,
 * {index: j, sign: +1}; with it, N = 2K and member j < K is +ε_j, member j ≥ K is −ε_{j−K}.
 */
export function noiseMember(j: number, population: number, antithetic: boolean): NoiseMember {
  if (!Number.isInteger(j) || j < 0 || j >= population) {
    throw new RangeError(`member ${j} is outside a population of ${population}`);
  }
  if (!antithetic) return { index: j, sign: 1 };
  if (population % 2 !== 0) {
    throw new RangeError(`antithetic sampling needs an even population, got ${population}`);
  }
  const k = population / 2;
  return j < k ? { index: j, sign: 1 } : { index: j - k, sign: -1 };
}

/** One member of an iteration's population, as the engine evaluates it. */
export interface MemberRecord {
  /** Its place j in the population: the slot its fitness lands in. */
  slot: number;
  /** The noise it draws, ε_noise ({@link noiseMember}). */
  noise: number;
  /** +1 for ε_noise, −1 for its mirror −ε_noise. */
  sign: 1 | -1;
  /** sign·σ_t: the perturbation's scale before each tensor's group multiplier. */
  scale: number;
}

/** The N members of an iteration with noise scale σ_t, in slot order. */
export function memberRecords(
  population: number,
  antithetic: boolean,
  sigma: number,
): MemberRecord[] {
  return Array.from({ length: population }, (_, j) => {
    const m = noiseMember(j, population, antithetic);
    return { slot: j, noise: m.index, sign: m.sign, scale: m.sign * sigma };
  });
}

/** Distinct noises a population draws: N, or N/2 with antithetic pairs. */
export function noiseCount(population: number, antithetic: boolean): number {
  if (antithetic) noiseMember(0, population, true); // validates evenness
  return antithetic ? population / 2 : population;
}

/** Options of {@link updateCoefficients}. */
export interface CoefficientOptions {
  /** Step size α_t (already decayed). */
  alpha: number;
  /** Noise scale σ_t (already decayed); used by NES only. */
  sigma: number;
  /** NES scaling: θ ← θ + (α/σ)·ĝ instead of θ + α·ĝ. */
  nes?: boolean;
  /** N in ĝ = (1/N)Σ w_j ε_j. Defaults to w.length. */
  population?: number;
}

/**
 * Per-member update coefficients c_j so that θ ← θ + Σ_j c_j ε_j is EA4LLM's update (§3):
 * c_j = α·w_j/N (standard) or (α/σ)·w_j/N (NES). A group multiplier m_g is applied per tensor by
 * the GPU kernel, not here.
 */
export function updateCoefficients(
  w: ArrayLike<number>,
  options: CoefficientOptions,
): Float64Array {
  const n = options.population ?? w.length;
  const step = options.nes ? options.alpha / options.sigma : options.alpha;
  const c = new Float64Array(w.length);
  for (let j = 0; j < w.length; j++) c[j] = (step * w[j]) / n;
  return c;
}

/**
 * Folds per-member coefficients onto distinct noises: d_i = Σ_{j: index(j)=i} sign(j)·c_j (see
 * {@link noiseMember}), so Σ_j c_j ε_{member j} = Σ_i d_i ε_i. With antithetic pairs this halves
 * the noise the GPU update regenerates: d_i = c_i − c_{i+K}.
 */
export function noiseCoefficients(c: ArrayLike<number>, antithetic: boolean): Float64Array {
  const d = new Float64Array(noiseCount(c.length, antithetic));
  for (let j = 0; j < c.length; j++) {
    const m = noiseMember(j, c.length, antithetic);
    d[m.index] += m.sign * c[j];
  }
  return d;
}

/**
 * Step decay (EA4LLM §4 defaults: γ_α = γ_σ = 1, S_α = S_σ = 0): base·γ^floor(iteration/every);
 * every = 0 means no decay.
 */
export function decayed(base: number, gamma: number, every: number, iteration: number): number {
  if (every <= 0) return base;
  return base * gamma ** Math.floor(iteration / every);
}

/** Options of {@link esUpdateReference}. */
export interface EsUpdateOptions {
  sigma: number;
  alpha: number;
  shaping: Shaping;
  nes?: boolean;
  antithetic?: boolean;
}

/** The result of one reference update. */
export interface EsUpdateResult {
  /** θ after the update. */
  theta: Float64Array;
  /** ĝ = (1/N) Σ w_j ε_j. */
  g: Float64Array;
  /** Shaped weights w_j. */
  w: Float64Array;
}

/**
 * One EA4LLM update in float64 (§3): w = shape(r), ĝ = (1/N) Σ_j w_j ε_j,
 * θ ← θ + α·ĝ (or + (α/σ)·ĝ with NES). `eps` holds the distinct noises: N rows, or K = N/2 rows
 * with antithetic sampling, where member j of r uses {@link noiseMember}(j).
 */
export function esUpdateReference(
  theta: ArrayLike<number>,
  eps: readonly ArrayLike<number>[],
  r: ArrayLike<number>,
  options: EsUpdateOptions,
): EsUpdateResult {
  const n = r.length;
  const antithetic = options.antithetic ?? false;
  if (eps.length !== noiseCount(n, antithetic)) {
    throw new RangeError(
      `esUpdateReference: ${n} fitness values need ${noiseCount(n, antithetic)} noise rows, ` +
        `got ${eps.length}`,
    );
  }
  const signed = Array.from({ length: n }, (_, j) => {
    const m = noiseMember(j, n, antithetic);
    return Float64Array.from(eps[m.index], (x) => m.sign * x);
  });
  const w = shapeFitness(r, options.shaping);
  const g = esGradient(w, signed);
  const step = options.nes ? options.alpha / options.sigma : options.alpha;
  const out = Float64Array.from(theta);
  for (let i = 0; i < out.length; i++) out[i] += step * g[i];
  return { theta: out, g, w };
}
