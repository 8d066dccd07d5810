// Builds dist/livora.esm.js (ES module), dist/livora.min.js (minified IIFE for a <script> tag) and
// dist/types, prints the IIFE's minified+gzipped size and fails above the budget.
// `--outdir=DIR` writes the two bundles (no types) to DIR instead: tests build their own copy.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const BUDGET = 8 * 1024;

const custom = process.argv.find((a) => a.startsWith("--outdir="));
const out = custom ? custom.slice("--outdir=".length) : join(root, "dist");
rmSync(out, { recursive: true, force: true });
const common = {
  bundle: true,
  target: "es2020",
  define: { __VERSION__: JSON.stringify(version) },
  logLevel: "warning",
  legalComments: "none",
};
await build({ ...common, entryPoints: [join(root, "src/index.ts")], outfile: join(out, "livora.esm.js"), format: "esm" });
await build({
  ...common,
  entryPoints: [join(root, "src/browser.ts")],
  outfile: join(out, "livora.min.js"),
  format: "iife",
  minify: true,
});
if (!custom) {
  execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", root, "--emitDeclarationOnly"], {
    stdio: "inherit",
  });
}

const minified = readFileSync(join(out, "livora.min.js"));
const gzipped = gzipSync(minified, { level: 9 }).length;
const kb = (n) => `${(n / 1024).toFixed(2)} KB (${n} bytes)`;
console.log(`livora.min.js: ${kb(minified.length)} minified, ${kb(gzipped)} minified+gzipped (budget ${kb(BUDGET)})`);
if (gzipped > BUDGET) {
  console.error(`The bundle is over its budget of ${kb(BUDGET)} minified+gzipped.`);
  process.exit(1);
}
