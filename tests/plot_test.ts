// `deno task plot` and `deno task sweep` end to end: a real tiny run plotted to SVG (parsed as
// XML, its marks counted) and PNG (signature and size), a two-value sweep on micro-smoke, and
// bad input as one line with exit code 2.
import { DOMParser, type Element } from "@xmldom/xmldom";
import { assert, assertEquals, runCli, tempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MICRO = `${ROOT}configs/pipelines/micro-smoke.yaml`;

/** Parses SVG text strictly: any XML error throws. */
function parseSvg(svg: string) {
  const doc = new DOMParser({
    onError: (level, message) => {
      if (level !== "warning") throw new Error(`SVG is not well-formed XML: ${message}`);
    },
  }).parseFromString(svg, "image/svg+xml");
  assertEquals(doc.documentElement?.nodeName, "svg", "root element");
  return doc;
}

/** The <path> elements inside vega's mark groups of one kind (role-mark: data, not legend). */
function markPaths(doc: ReturnType<typeof parseSvg>, mark: "line" | "symbol"): Element[] {
  const groups = Array.from(doc.getElementsByTagName("g")).filter((g) => {
    const cls = (g.getAttribute("class") ?? "").split(" ");
    return cls.includes(`mark-${mark}`) && cls.includes("role-mark");
  });
  return groups.flatMap((g) => Array.from(g.getElementsByTagName("path")));
}

/** Width and height from a PNG's IHDR chunk. */
function pngSize(bytes: Uint8Array): { width: number; height: number } {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  assert(sig.every((b, i) => bytes[i] === b), "PNG signature");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/** Metrics lines of a run dir, and how many carry a held-out loss. */
async function metrics(dir: string): Promise<{ lines: number; evals: number }> {
  const lines = (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  return { lines: lines.length, evals: lines.filter((l) => l.eval_loss !== undefined).length };
}

Deno.test("plot: a real tiny run to SVG and PNG", async () => {
  const tmp = await tempDir("esflow-plot-");
  const run = `${tmp}/micro-run`;
  const train = await runCli(["tools/train.ts", MICRO, "--out", run, "--quiet", "--no-status"]);
  assertEquals(train.code, 0, `train: ${train.stderr}`);
  const { lines, evals } = await metrics(run);

  // Default output: RUN_DIR/plot.svg.
  const svgRun = await runCli(["tools/plot.ts", run]);
  assertEquals(svgRun.code, 0, `plot: ${svgRun.stderr}`);
  const svg = await Deno.readTextFile(`${run}/plot.svg`);
  const doc = parseSvg(svg);
  // The legend names the run: the pipeline's name, from its state.json.
  assert(svg.includes(">micro-smoke<"), "the SVG names the run");
  // One line per run in each panel: held-out loss and mean fitness.
  assertEquals(markPaths(doc, "line").length, 2, "line marks");
  // One point per held-out evaluation (micro-smoke evaluates every iteration).
  assertEquals(markPaths(doc, "symbol").length, evals, "loss points");
  assertEquals(evals, lines, "micro-smoke evaluates each iteration");

  const png = `${tmp}/out/plot.png`;
  const pngRun = await runCli(["tools/plot.ts", run, "--out", png]);
  assertEquals(pngRun.code, 0, `plot png: ${pngRun.stderr}`);
  const { width, height } = pngSize(await Deno.readFile(png));
  assert(width >= 800 && width <= 4000, `PNG width ${width}`);
  assert(height >= 300 && height <= 2000, `PNG height ${height}`);
  assert(width > height, "two panels side by side");
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("sweep: two population sizes on micro-smoke, plotted together", async () => {
  const tmp = await tempDir("esflow-sweep-");
  const out = `${tmp}/sweep`;
  const r = await runCli([
    "tools/sweep.ts",
    MICRO,
    "--set",
    "perturb.population=4,6",
    "--out",
    out,
    "--iterations",
    "2",
    "--quiet",
  ]);
  assertEquals(r.code, 0, `sweep: ${r.stderr}`);
  for (const v of ["population=4", "population=6"]) {
    assertEquals((await metrics(`${out}/${v}`)).lines, 2, `${v} iterations`);
    const yaml = await Deno.readTextFile(`${out}/${v}.yaml`);
    assert(yaml.includes(`population: ${v.split("=")[1]}`), `${v}.yaml sets the value`);
    const state = JSON.parse(await Deno.readTextFile(`${out}/${v}/final/state.json`));
    assertEquals(state.pipeline.perturb.population, Number(v.split("=")[1]), `${v} trained so`);
  }
  const doc = parseSvg(await Deno.readTextFile(`${out}/plot.svg`));
  // Two runs × two panels; the runs share a pipeline name, so the legend shows the variants.
  assertEquals(markPaths(doc, "line").length, 4, "line marks");
  const svg = await Deno.readTextFile(`${out}/plot.svg`);
  assert(svg.includes(">population=4<") && svg.includes(">population=6<"), "legend labels");

  // Plotting several dirs by hand gives the same two lines per panel.
  const both = await runCli([
    "tools/plot.ts",
    `${out}/population=4`,
    `${out}/population=6`,
    "--out",
    `${tmp}/both.svg`,
  ]);
  assertEquals(both.code, 0, both.stderr);
  assertEquals(markPaths(parseSvg(await Deno.readTextFile(`${tmp}/both.svg`)), "line").length, 4);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("plot and sweep: bad input is one line, exit 2, nothing written", async () => {
  const tmp = await tempDir("esflow-plot-bad-");
  await Deno.mkdir(`${tmp}/empty`);
  await Deno.mkdir(`${tmp}/blank`);
  await Deno.writeTextFile(`${tmp}/blank/metrics.jsonl`, "\n");
  const cases: [string[], RegExp][] = [
    [["tools/plot.ts", `${tmp}/nope`], /no such run dir/],
    [["tools/plot.ts", `${tmp}/empty`], /no metrics\.jsonl/],
    [["tools/plot.ts", `${tmp}/blank`], /no metrics lines/],
    [["tools/plot.ts", `${tmp}/empty`, "--out", `${tmp}/p.pdf`], /no metrics\.jsonl|unknown/],
    [["tools/plot.ts"], /at least one run dir/],
    [["tools/plot.ts", "--bogus"], /bogus/],
    [
      ["tools/sweep.ts", MICRO, "--set", "perturb.popultion=4,8", "--out", `${tmp}/s`],
      /did you mean perturb\.population/,
    ],
    [["tools/sweep.ts", MICRO, "--set", "perturb=4,8", "--out", `${tmp}/s`], /is a section/],
    [["tools/sweep.ts", MICRO, "--set", "nothing.here=1", "--out", `${tmp}/s`], /no key "nothing"/],
    [
      ["tools/sweep.ts", MICRO, "--set", "perturb.population=4,x", "--out", `${tmp}/s`],
      /population=x: .*micro-smoke\.yaml:\d+:\d+: perturb\.population/,
    ],
    [["tools/sweep.ts", MICRO, "--set", "perturb.population", "--out", `${tmp}/s`], /KEY=V1,V2/],
    [
      ["tools/sweep.ts", MICRO, "--set", "perturb.population=4,4", "--out", `${tmp}/s`],
      /given twice/,
    ],
    [["tools/sweep.ts", MICRO, "--out", `${tmp}/s`], /--set/],
    [
      ["tools/sweep.ts", `${tmp}/missing.yaml`, "--set", "seed=1,2", "--out", `${tmp}/s`],
      /cannot read the pipeline/,
    ],
    [
      ["tools/sweep.ts", MICRO, "--set", "seed=1,2", "--iterations", "0", "--out", `${tmp}/s`],
      /--iterations/,
    ],
  ];
  for (const [args, want] of cases) {
    const r = await runCli(args);
    const what = args.slice(1).join(" ");
    assertEquals(r.code, 2, `${what}: exit code (stderr: ${r.stderr})`);
    const err = r.stderr.trim();
    assert(!err.includes("\n"), `${what}: one line, got:\n${err}`);
    assert(want.test(err), `${what}: ${err} does not match ${want}`);
  }
  // An unknown extension is refused before anything is read or written.
  await Deno.writeTextFile(`${tmp}/empty/metrics.jsonl`, '{"iter":0,"fitness_mean":-5}\n');
  const pdf = await runCli(["tools/plot.ts", `${tmp}/empty`, "--out", `${tmp}/p.pdf`]);
  assertEquals(pdf.code, 2);
  assert(/unknown extension "\.pdf"/.test(pdf.stderr), pdf.stderr);
  for (const f of ["p.pdf", "s"]) {
    assert(!(await Deno.stat(`${tmp}/${f}`).catch(() => null)), `${f} was written`);
  }
  await Deno.remove(tmp, { recursive: true });
});
