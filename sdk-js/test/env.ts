// A browser-like world for unit tests: one "browser profile" (IndexedDB, localStorage, cookies,
// Web Locks) shared by any number of tabs (Analytics instances), and a scriptable cell behind fetch.
import "fake-indexeddb/auto";
import { IDBFactory } from "fake-indexeddb";

import { Analytics, type Options } from "../src/analytics.ts";

type G = Record<string, unknown>;
const g = globalThis as unknown as G;

export class MemoryStorage {
  private items = new Map<string, string>();
  get length(): number {
    return this.items.size;
  }
  key(i: number): string | null {
    return [...this.items.keys()][i] ?? null;
  }
  getItem(k: string): string | null {
    return this.items.has(k) ? this.items.get(k)! : null;
  }
  setItem(k: string, v: string): void {
    this.items.set(k, String(v));
  }
  removeItem(k: string): void {
    this.items.delete(k);
  }
  clear(): void {
    this.items.clear();
  }
}

/** document.cookie with max-age handling (enough for first-party cookies on one path). */
class CookieJar {
  jar = new Map<string, string>();
  get cookie(): string {
    return [...this.jar].map(([k, v]) => `${k}=${v}`).join("; ");
  }
  set cookie(raw: string) {
    const [pair, ...attrs] = raw.split("; ");
    const i = pair.indexOf("=");
    const maxAge = attrs.find((a) => a.startsWith("max-age="));
    if (maxAge && Number(maxAge.slice(8)) <= 0) this.jar.delete(pair.slice(0, i));
    else this.jar.set(pair.slice(0, i), pair.slice(i + 1));
  }
}

/** An in-process Web Locks API (exclusive locks, `ifAvailable`), as a browser shares between tabs. */
class Locks {
  constructor(private excludes = true) {}
  held = new Set<string>();
  waiting = new Map<string, (() => void)[]>();
  async request<T>(name: string, options: { ifAvailable?: boolean }, fn: (lock: object | null) => Promise<T>): Promise<T> {
    if (this.held.has(name) && this.excludes) {
      if (options.ifAvailable) return fn(null);
      await new Promise<void>((resolve) => this.waiting.set(name, [...(this.waiting.get(name) || []), resolve]));
    }
    this.held.add(name);
    try {
      return await fn({ name });
    } finally {
      this.held.delete(name);
      this.waiting.get(name)?.shift()?.();
    }
  }
}

export interface Sent {
  url: string;
  body: { batch: Record<string, any>[]; sentAt: string; writeKey: string };
  headers: Record<string, string>;
  keepalive: boolean;
  at: number;
}

export type Reply = { status: number; body?: unknown; headers?: Record<string, string> } | "network-error";

/** The cell behind `fetch`: records every request; `reply` decides each answer (202 by default). */
export class FakeCell {
  requests: Sent[] = [];
  beacons: Sent[] = [];
  delay = 0;
  /** Requests received so far, answered or not (with `delay`, some may be in flight). */
  started = 0;
  reply: (sent: Sent) => Reply = (sent) => ({ status: 202, body: { accepted: sent.body.batch.length } });

  /** Every non-keepalive request with the status it got (0: a network error). */
  log: { sent: Sent; status: number }[] = [];

  /** The events of every request answered 2xx, in order. */
  accepted(): Record<string, any>[] {
    return this.log.filter((r) => r.status >= 200 && r.status < 300).flatMap((r) => r.sent.body.batch);
  }

  fetch = async (url: string, init: RequestInit): Promise<Response> => {
    const sent: Sent = {
      url,
      body: JSON.parse(String(init.body)),
      headers: { ...(init.headers as Record<string, string>) },
      keepalive: Boolean(init.keepalive),
      at: Date.now(),
    };
    if (init.keepalive) {
      this.beacons.push(sent);
      return new Response(null, { status: 202 });
    }
    this.started++;
    if (this.delay) await new Promise((r) => setTimeout(r, this.delay));
    const reply = this.reply(sent);
    this.log.push({ sent, status: reply == "network-error" ? 0 : reply.status });
    this.requests.push(sent);
    if (reply == "network-error") throw new TypeError("Failed to fetch");
    return new Response(reply.body === undefined ? null : JSON.stringify(reply.body), {
      status: reply.status,
      headers: reply.headers,
    });
  };
}

export interface World {
  cell: FakeCell;
  storage: MemoryStorage;
  cookies: CookieJar;
  window: EventTarget & G;
  warnings: unknown[][];
  tabs: Analytics[];
  tab(options?: Options, writeKey?: string): Promise<Analytics>;
  close(): Promise<void>;
}

/** A fresh browser profile: empty storage, cookies and IndexedDB, a page on `url`. */
export function browser({
  url = "https://shop.example.com/products?utm_source=news&utm_medium=email&utm_campaign=spring",
  locks = true as boolean | "broken",
} = {}): World {
  const cell = new FakeCell();
  const storage = new MemoryStorage();
  const cookies = new CookieJar();
  const location = new URL(url);
  const document = Object.assign(new EventTarget(), {
    title: "Products",
    referrer: "https://search.example.org/",
    visibilityState: "visible",
  });
  Object.defineProperty(document, "cookie", {
    get: () => cookies.cookie,
    set: (v: string) => (cookies.cookie = v),
  });
  const beacon = (target: string, data: Blob) => {
    void data.text().then((text) =>
      cell.beacons.push({ url: target, body: JSON.parse(text), headers: {}, keepalive: true, at: Date.now() }),
    );
    return true;
  };
  const navigator: G = { userAgent: "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0", language: "fr-FR", sendBeacon: beacon };
  if (locks) navigator.locks = new Locks(locks != "broken");
  const window = Object.assign(new EventTarget(), { location, document, navigator });
  const warnings: unknown[][] = [];
  g.window = window;
  g.document = document;
  g.localStorage = storage;
  g.indexedDB = new IDBFactory();
  g.fetch = cell.fetch;
  Object.defineProperty(globalThis, "navigator", { value: navigator, configurable: true, writable: true });
  console.warn = (...args: unknown[]) => void warnings.push(args);
  const tabs: Analytics[] = [];
  return {
    cell,
    storage,
    cookies,
    window,
    warnings,
    tabs,
    async tab(options: Options = {}, writeKey = "wk_test") {
      const analytics = new Analytics();
      tabs.push(analytics);
      await analytics.load(writeKey, { host: "https://cell.example.test", ...options });
      // The first send (of what earlier pages left) has finished: tests start from a known state.
      await analytics.flush();
      return analytics;
    },
    async close() {
      await Promise.all(tabs.map((t) => t.close()));
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Wait until `check` holds (polling), or fail after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, ms = 3000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
