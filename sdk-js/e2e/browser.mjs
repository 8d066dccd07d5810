// Drives headless Chromium for the end-to-end tests: one browser profile (tabs share its storage),
// commands as JSON lines on stdin ({id, op, ...}), one JSON answer per line on stdout ({id, ok, result | error}).
//   open {tab, url}    a new tab on url        eval {tab, expr}   evaluate an expression (awaited)
//   reload {tab}        reload, wait for load   close {tab}        close the tab (pagehide runs)
//   logs {tab}          the tab's console lines quit               close the browser and exit
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "livora-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const tabs = new Map();
const logs = new Map();

function tab(name) {
  const page = tabs.get(name);
  if (!page) throw new Error(`no tab ${name}`);
  return page;
}

const ops = {
  async open({ tab: name, url }) {
    const page = await context.newPage();
    logs.set(name, []);
    page.on("console", (m) => logs.get(name).push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => logs.get(name).push(`pageerror: ${e.message}`));
    tabs.set(name, page);
    await page.goto(url, { waitUntil: "load" });
    return page.url();
  },
  eval: ({ tab: name, expr }) => tab(name).evaluate(expr),
  async reload({ tab: name }) {
    await tab(name).reload({ waitUntil: "load" });
  },
  async close({ tab: name }) {
    await tab(name).close({ runBeforeUnload: true });
    tabs.delete(name);
  },
  logs: ({ tab: name }) => logs.get(name) || [],
  async quit() {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    process.exit(0);
  },
};

const write = (answer) => process.stdout.write(JSON.stringify(answer) + "\n");
write({ id: 0, ok: true, result: "ready" });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    write({ id: command.id, ok: true, result: (await ops[command.op](command)) ?? null });
  } catch (error) {
    write({ id: command.id, ok: false, error: String(error && error.stack ? error.stack : error) });
  }
}
await ops.quit();
