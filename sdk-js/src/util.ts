/** Small helpers shared by the SDK's modules. */

export type Json = Record<string, unknown>;

export const now = (): number => Date.now();

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A random (version 4) UUID, from `crypto.randomUUID` where the page is a secure context. */
export function uuid(): string {
  const c = globalThis.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  let h = "";
  for (let i = 0; i < 16; i++) h += (i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "") + (b[i] + 256).toString(16).slice(1);
  return h;
}

/** Segment's `context.campaign` from a query string's `utm_*` parameters (`utm_campaign` is `name`). */
export function campaign(search: string): Json | undefined {
  let found: Json | undefined;
  new URLSearchParams(search).forEach((value, key) => {
    if (key.indexOf("utm_") == 0 && value) {
      const name = key.slice(4);
      (found = found || {})[name == "campaign" ? "name" : name] = value;
    }
  });
  return found;
}

export const warn = (...args: unknown[]): void => console.warn("[livora]", ...args);

/** `Retry-After` as milliseconds: delta seconds or an HTTP date; 0 when absent or unreadable. */
export function retryAfter(value: string | null): number {
  if (!value) return 0;
  const seconds = Number(value);
  const ms = isNaN(seconds) ? Date.parse(value) - now() : seconds * 1000;
  return ms > 0 ? ms : 0;
}
