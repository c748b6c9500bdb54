/**
 * Test-only fault injection: named points in the run loop and in checkpoint writes where a test
 * can make the process die (SIGKILL, as a power cut or the OOM killer would) or fail as a full
 * disk would, and an iteration that blocks the main thread as a long native kernel call does.
 * Nothing here acts unless its environment variable is set.
 *
 * - `ESFLOW_TEST_FAULT=POINT@N[,POINT@N…]`: at the N-th time (1-based) this process reaches
 *   POINT, SIGKILL itself. `enospc:POINT@N` throws the error a full disk gives instead.
 * - `ESFLOW_TEST_ITERATION_BLOCK_MS=MS`: every iteration first blocks the main thread for MS
 *   milliseconds (Atomics.wait: no timer, no event loop turn), as a synchronous native kernel
 *   call or a WebGPU readback wait does.
 *
 * The points, in the order a checkpoint reaches them: checkpoint.temp (the temp dir exists),
 * checkpoint.config, checkpoint.tensor (after each tensor is streamed into the file),
 * checkpoint.weights, checkpoint.files (state.json), checkpoint.synced, checkpoint.aside (an old
 * checkpoint moved aside), checkpoint.renamed (the new one in place). In the loop: run.manifest
 * (run.json written), iteration.metrics (a metrics line appended, before its checkpoint),
 * iteration.done (after the checkpoint).
 *
 * It lives at the root because model/checkpoint.ts and the run loop (pipeline/run.ts) both reach
 * its points, and model/ imports nothing from pipeline/.
 *
 * @module
 */

interface Fault {
  point: string;
  at: number;
  action: "kill" | "enospc";
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // No env permission (a library user): no faults.
    return undefined;
  }
}

function parseFaults(spec: string | undefined): Fault[] {
  if (!spec) return [];
  return spec.split(",").filter((s) => s.trim() !== "").map((s) => {
    const m = /^(?:(kill|enospc):)?([a-z.]+)@(\d+)$/.exec(s.trim());
    if (!m) throw new Error(`ESFLOW_TEST_FAULT: "${s}" is not [kill:|enospc:]POINT@N`);
    return { point: m[2], at: Number(m[3]), action: (m[1] ?? "kill") as Fault["action"] };
  });
}

const faults = parseFaults(readEnv("ESFLOW_TEST_FAULT"));
const reached = new Map<string, number>();

/** The error a full disk gives (what Deno throws for ENOSPC). */
export function diskFullError(): Error {
  const e = new Error("No space left on device (os error 28)");
  (e as Error & { code: string }).code = "ENOSPC";
  return e;
}

/** Marks `point` reached: SIGKILLs the process or throws ENOSPC when a test asked for it. */
export function faultPoint(point: string): void {
  if (faults.length === 0) return;
  const n = (reached.get(point) ?? 0) + 1;
  reached.set(point, n);
  for (const f of faults) {
    if (f.point !== point || f.at !== n) continue;
    if (f.action === "enospc") throw diskFullError();
    Deno.kill(Deno.pid, "SIGKILL");
  }
}

const blockMs = Number(readEnv("ESFLOW_TEST_ITERATION_BLOCK_MS") ?? 0);
const blocker = blockMs > 0 ? new Int32Array(new SharedArrayBuffer(4)) : null;

/** Blocks the main thread for ESFLOW_TEST_ITERATION_BLOCK_MS, when set (a slow iteration). */
export function blockIteration(): void {
  if (blocker) Atomics.wait(blocker, 0, 0, blockMs);
}
