// tools/record.ts: the README's recording of the default run. Its text twin keeps what a
// terminal finally shows: a line redrawn with carriage returns is its last drawing, and colour
// and cursor sequences are gone.
import { assertEquals } from "./helpers.ts";
import { finalLines } from "../tools/record.ts";

Deno.test("record: the final screen of redrawn lines, without escape sequences", () => {
  const out = "esflow train\r\n\x1b[2K⠋ loading\r\x1b[2K⠙ iteration 0\r\x1b[2Kiter 1/3 done\n" +
    "\x1b[32mok\x1b[0m\n\n";
  assertEquals(finalLines(out), ["esflow train", "iter 1/3 done", "ok"]);
});
