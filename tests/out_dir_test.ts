// The output dir (issue 13, item 4): an --out that is a file, under a file or unwritable is one
// line and exit 2 with nothing written, never a stack trace; a full disk stops the run with the
// last good checkpoint intact, says how much the next checkpoint needs, and --resume goes on
// once there is space. The disk is a small tmpfs when this machine lets the test mount one,
// else a full disk injected at the same place (faults.ts).
import { assert, assertEquals, tempDir } from "./helpers.ts";
import {
  assertSameRun,
  exists,
  leftovers,
  listTree,
  oneLine,
  train,
  writeSmoke,
} from "./reliability_helpers.ts";

Deno.test("--out that is a file, or under a file: one line, exit 2, nothing written", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  const plain = `${dir}/plain.txt`;
  await Deno.writeTextFile(plain, "not a dir\n");
  let r = await train([file, "--out", plain]);
  oneLine(r, { says: [`output dir ${plain} is a file, not a directory`, "--out DIR"] });
  r = await train([file, "--out", `${plain}/run`]);
  oneLine(r, { says: [`${plain} is a file, so nothing can be created under it`] });
  r = await train([file, "--resume", plain]);
  oneLine(r, { says: [`${plain} is a file`] });
  assertEquals(await Deno.readTextFile(plain), "not a dir\n");
  assertEquals(await listTree(dir), ["p.yaml", "plain.txt"], "nothing else was written");
});

Deno.test("--out where this user cannot write: one line, exit 2", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  // root writes through file modes; /sys refuses everyone.
  let out = "/sys/esflow-unwritable/run";
  if (Deno.uid() !== 0) {
    await Deno.mkdir(`${dir}/ro`);
    await Deno.chmod(`${dir}/ro`, 0o500);
    out = `${dir}/ro/run`;
  }
  const r = await train([file, "--out", out]);
  oneLine(r, { says: [out, "cannot write there", "writable --out DIR"] });
});

/** Mounts a tmpfs of `kib` KiB at a fresh dir; null when this machine does not allow it. */
async function smallDisk(
  kib: number,
): Promise<{ dir: string; grow(kib: number): Promise<void>; done(): Promise<void> } | null> {
  const dir = await tempDir("esflow-disk-");
  const mount = (args: string[]) =>
    new Deno.Command("mount", { args, stdout: "null", stderr: "null" }).output()
      .then((o) => o.success, () => false);
  if (!(await mount(["-t", "tmpfs", "-o", `size=${kib}k`, "tmpfs", dir]))) {
    await Deno.remove(dir);
    return null;
  }
  return {
    dir,
    grow: async (k) => {
      assert(await mount(["-o", `remount,size=${k}k`, dir]), "remount the tmpfs larger");
    },
    done: async () => {
      await new Deno.Command("umount", { args: [dir] }).output();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

Deno.test("a full disk keeps the last good checkpoint, says what the next needs, and resumes", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 1 });
  const ref = `${dir}/ref`;
  let r = await train([file, "--iterations", "4", "--out", ref]);
  assertEquals(r.code, 0, r.stderr);
  // Each checkpoint is ~0.5 MB: room for run.json, metrics and two of them, not three.
  const disk = await smallDisk(1400);
  const out = disk ? `${disk.dir}/run` : `${dir}/run`;
  try {
    r = await train(
      [file, "--iterations", "4", "--out", out],
      disk ? {} : { ESFLOW_TEST_FAULT: "enospc:checkpoint.tensor@60" },
    );
    const line = oneLine(r, { says: ["the disk is full", "a checkpoint needs about", "--resume"] });
    assert(/needs about \d+(\.\d+)? KiB/.test(line), line);
    const kept = /the last good checkpoint (\S+) is intact/.exec(line)?.[1];
    assert(kept && (await exists(`${kept}/state.json`)), `names the checkpoint it kept: ${line}`);
    assert(JSON.parse(await Deno.readTextFile(`${kept}/state.json`)).iteration >= 1);
    assertEquals(await leftovers(out), [], "the failed checkpoint's temp dir is gone");
    // Space again: the run continues to the bytes of one that never stopped.
    await disk?.grow(8192);
    r = await train([file, "--resume", out, "--iterations", "4"]);
    assertEquals(r.code, 0, r.stderr);
    await assertSameRun(ref, out, "disk full, then resumed");
  } finally {
    await disk?.done();
  }
});
