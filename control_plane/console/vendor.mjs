// Copies the console's third-party assets from node_modules into static/vendor (served by the app).
import { copyFileSync, mkdirSync } from "node:fs";

const assets = [["node_modules/htmx.org/dist/htmx.min.js", "static/vendor/htmx.min.js"]];
mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of assets) copyFileSync(from, to);
