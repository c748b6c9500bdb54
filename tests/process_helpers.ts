// Child processes of the multi-process tests (distributed_test.ts, distributed_isolated_test.ts):
// their output collected as it comes, a wait that kills past its deadline, and a registry so a
// test's cleanup can SIGKILL whatever it left running.

/** A child process whose output is collected as it comes. */
export interface Proc {
  pid: number;
  out: () => string;
  /** Exit code, or a thrown error (and a SIGKILL) past `ms`. */
  wait(ms: number): Promise<number>;
  kill(signal?: Deno.Signal): void;
}

/** Every {@link watch}ed process still running. */
export const live: Set<Proc> = new Set<Proc>();

/** Watches `child` (spawned with piped stdout and stderr); `what` names it in a timeout. */
export function watch(child: Deno.ChildProcess, what: string): Proc {
  let text = "";
  const dec = new TextDecoder();
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) text += dec.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  let code: number | null = null;
  const status = child.status.then(async (s) => {
    await drained;
    code = s.code;
    live.delete(proc);
    return s.code;
  });
  const proc: Proc = {
    pid: child.pid,
    out: () => text,
    kill(signal: Deno.Signal = "SIGKILL") {
      if (code !== null) return;
      try {
        child.kill(signal);
      } catch { /* already exited */ }
    },
    async wait(ms: number) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          proc.kill();
          reject(new Error(`${what} still running after ${ms} ms:\n${text}`));
        }, ms);
      });
      try {
        return await Promise.race([status, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
  live.add(proc);
  return proc;
}
