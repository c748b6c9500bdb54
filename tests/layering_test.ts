// The folders import downward only (issue 10, housekeeping): kernels/, model/ and tokenizers/
// import nothing from pipeline/, server/ or tools/ (UserError and the fault points live at the
// root for them), and no import cycle joins modules of different folders.
import { assert } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const FOLDERS = ["kernels", "model", "tokenizers", "pipeline", "server", "tools", "examples"];
const LOW = ["kernels", "model", "tokenizers"], HIGH = ["pipeline", "server", "tools"];

/** Every .ts module under the project's folders and at the root, relative to ROOT. */
function modules(): string[] {
  const out = [...Deno.readDirSync(ROOT)]
    .filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) => e.name);
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(ROOT + dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.name.endsWith(".ts")) out.push(p);
    }
  };
  for (const f of FOLDERS) walk(f);
  return out;
}

/** The relative imports of a module (static, type-only, re-exports and dynamic), resolved. */
function importsOf(path: string): string[] {
  // Comment lines hold doc examples that import ../mod.ts; they import nothing.
  const code = Deno.readTextFileSync(ROOT + path).split("\n")
    .filter((l) => !/^\s*(\*|\/\/|\/\*)/.test(l)).join("\n");
  const specs = [
    ...code.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+"(\.[^"]+)"/g),
    ...code.matchAll(/import\(\s*"(\.[^"]+)"\s*\)/g),
    ...code.matchAll(/(?:^|\n)\s*import\s+"(\.[^"]+)"/g),
  ].map((m) => m[1]);
  return specs.map((s) => new URL(s, `file://${ROOT}${path}`).pathname.slice(ROOT.length));
}

const folderOf = (p: string) => p.includes("/") ? p.split("/")[0] : ".";

Deno.test("kernels/, model/ and tokenizers/ import nothing from pipeline/, server/ or tools/", () => {
  const graph = new Map(modules().map((m) => [m, importsOf(m)]));
  const upward = [...graph].flatMap(([m, deps]) =>
    LOW.includes(folderOf(m))
      ? deps.filter((d) => HIGH.includes(folderOf(d))).map((d) => `${m} → ${d}`)
      : []
  );
  assert(upward.length === 0, `upward imports:\n${upward.join("\n")}`);
  assert(graph.get("model/checkpoint.ts")!.includes("errors.ts"), "the scan sees imports");
});

Deno.test("no import cycle joins modules of different folders", () => {
  const graph = new Map(modules().map((m) => [m, importsOf(m)]));
  // Tarjan's strongly connected components: a component of more than one module is a cycle.
  const index = new Map<string, number>(), low = new Map<string, number>();
  const stack: string[] = [], on = new Set<string>(), cycles: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) cycles.push(component);
    }
  };
  for (const m of graph.keys()) if (!index.has(m)) visit(m);
  const across = cycles.filter((c) => new Set(c.map(folderOf)).size > 1);
  assert(
    across.length === 0,
    `cycles across folders:\n${across.map((c) => c.join(" → ")).join("\n")}`,
  );
});
