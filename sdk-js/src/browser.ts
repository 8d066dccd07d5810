/** The `<script>` build: `window.livora`, which also runs the calls a loading snippet recorded. */

import { Analytics } from "./analytics";

const w = window as unknown as { livora?: unknown };
const recorded = w.livora;
const analytics = new Analytics();
w.livora = analytics;
if (Array.isArray(recorded)) {
  for (const [method, ...args] of recorded as [string, ...unknown[]][]) {
    const fn = (analytics as unknown as Record<string, (...a: unknown[]) => unknown>)[method];
    if (typeof fn == "function") fn.apply(analytics, args);
  }
}
