/** The Analytics client: Segment's calls, identity, sessions, and delivery of the persisted queue. */

import { exclusive } from "./lock";
import { type Queue, type Rec, type StorageKind, openQueue } from "./queue";
import { cookieGet, cookieSet, keysWith, local, lsGet, lsSet } from "./storage";
import { type Json, campaign, now, retryAfter, uuid, warn } from "./util";

declare const __VERSION__: string;
export const VERSION = typeof __VERSION__ == "string" ? __VERSION__ : "0.0.0-dev";
const LIBRARY = { name: "livora-analytics.js", version: VERSION };

/** Return the event to send (changed or not), or `null` to drop it. `undefined` keeps it as it is. */
export type Middleware = (event: Json) => Json | null | undefined | void;

export interface Options {
  /** The cell's base URL, e.g. `https://ingest.eu.livora.example` (default: the page's own origin). */
  host?: string;
  /** Send as soon as this many events wait (default 20). */
  flushAt?: number;
  /** Send at most this many milliseconds after an event is queued (default 5000). */
  flushInterval?: number;
  /** Events per request (default 100, the cell's smallest plan limit). */
  maxBatchSize?: number;
  /** Events kept while the cell cannot be reached; beyond it the oldest are dropped (default 10000). */
  maxQueueSize?: number;
  /** First retry delay in milliseconds, doubled per failure, with jitter (default 1000). */
  retryBaseDelay?: number;
  /** Longest retry delay in milliseconds (default 60000). */
  maxRetryDelay?: number;
  /** A request that takes longer is abandoned and retried (default 10000 ms). */
  requestTimeout?: number;
  /** A session ends after this many idle milliseconds (default 30 minutes). */
  sessionTimeout?: number;
  /** Cookie domain for the ids, e.g. `.example.com` to share them across subdomains. */
  cookieDomain?: string;
  /** Cookie lifetime in seconds (default one year). */
  cookieMaxAge?: number;
  /** Where the queue lives: `indexeddb` (default, falls back to `localstorage`, then `memory`). */
  storage?: StorageKind;
  /**
   * Events sent with keepalive as a page unloaded get no answer, so later pages send them again
   * (the cell's pipeline drops the copy by `messageId`), for this long; after it they are taken as
   * delivered. Keep it under the pipeline's dedup window (default 24 hours).
   */
  resendWindow?: number;
  /** Consent before the visitor chose: `true` tracks nothing until `optIn()` (default false). */
  optedOut?: boolean;
  /** Runs on every event before it is queued; see `Middleware`. */
  beforeSend?: Middleware;
  /** Merged into every event's `context`. */
  context?: Json;
}

export interface CallOptions {
  timestamp?: Date | string;
  context?: Json;
  integrations?: Json;
  anonymousId?: string;
  messageId?: string;
}

export interface User {
  id(): string | null;
  anonymousId(): string;
  traits(): Json;
}

type Props = Json | undefined;
type Opts = CallOptions | undefined;

const ANONYMOUS_ID = "livora_anonymous_id";
const USER_ID = "livora_user_id";
const TRAITS = "livora_user_traits";
const SESSION = "livora_session";
const OPT_OUT = "livora_opt_out";
// The cell takes 500 KB per request, a keepalive request at most 64 KB.
const MAX_BODY = 450000;
const MAX_KEEPALIVE_BODY = 60000;

const defaults = {
  host: "",
  flushAt: 20,
  flushInterval: 5000,
  maxBatchSize: 100,
  maxQueueSize: 10000,
  retryBaseDelay: 1000,
  maxRetryDelay: 60000,
  requestTimeout: 10000,
  sessionTimeout: 1800000,
  cookieMaxAge: 31536000,
  resendWindow: 86400000,
  storage: "indexeddb" as StorageKind,
  optedOut: false,
};

const win = (): (Window & typeof globalThis) | undefined => (typeof window == "object" ? window : undefined);

let sequence = 0;

/** A queue key that sorts by enqueue time, then by call order within a millisecond. */
const queueKey = (t: number, id: string) =>
  ("00000000" + t.toString(36)).slice(-9) + ("000" + (sequence++ % 46656).toString(36)).slice(-3) + id;

export class Analytics {
  writeKey = "";
  options = { ...defaults } as typeof defaults & Options;
  queue?: Queue;
  private loading?: Promise<void>;
  private early: [string, unknown[], (v: unknown) => void][] = [];
  private tab = uuid();
  private anon = "";
  private uid: string | null = null;
  private userTraits: Json = {};
  private session = "";
  private out = false;
  private middleware: Middleware[] = [];
  // Events this tab queued that it has not seen delivered: what a closing page sends with keepalive.
  private pending = new Map<string, Rec>();
  private writes = new Set<Promise<unknown>>();
  private storing = new Set<string>();
  private unsent = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private running?: Promise<boolean>;
  private again = false;
  private all = false;
  private closed = false;
  private retries = "0 0";
  private listeners: [EventTarget, string, () => void][] = [];
  private host = "";
  private store: (key: string, value: string | null) => void = () => {};

  /** Start the SDK with a web source's write key. Calls made before it are kept and run after. */
  load(writeKey: string, options: Options = {}): Promise<void> {
    if (this.loading) return this.loading;
    this.writeKey = writeKey;
    const o = (this.options = { ...defaults, ...options });
    this.host = o.host.replace(/\/+$/, "");
    if (o.beforeSend) this.middleware.push(o.beforeSend);
    const cookie = { domain: o.cookieDomain, maxAge: o.cookieMaxAge, secure: win()?.location.protocol == "https:" };
    this.store = (key, value) => {
      cookieSet(key, value, cookie);
      lsSet(key, value);
    };
    this.anon = this.read(ANONYMOUS_ID) || uuid();
    this.store(ANONYMOUS_ID, this.anon);
    this.uid = this.read(USER_ID);
    this.userTraits = parse(lsGet(TRAITS)) || {};
    const consent = this.read(OPT_OUT);
    this.out = consent == null ? o.optedOut : consent == "1";
    const w = win();
    if (w) {
      const on = (target: EventTarget, type: string, fn: () => void) => {
        target.addEventListener(type, fn);
        this.listeners.push([target, type, fn]);
      };
      on(w, "pagehide", () => this.beacon());
      on(w.document, "visibilitychange", () => w.document.visibilityState == "hidden" && void this.flush());
      on(w, "online", () => {
        this.backoff(0, 0);
        void this.flush();
      });
    }
    return (this.loading = openQueue(o.storage, writeKey).then((queue) => {
      this.queue = queue;
      for (const [method, args, resolve] of this.early.splice(0)) resolve((this as any)[method](...args));
      // Whatever earlier pages (or tabs) left behind goes out now.
      void this.flush();
    }));
  }

  /** A localStorage key of this write key's delivery state. */
  private key(name: string): string {
    return "livora:" + this.writeKey + ":" + name;
  }

  /** Delivered or dropped: out of the queue, and no longer this tab's to send on unload. */
  private async forget(recs: Rec[]): Promise<void> {
    await this.queue!.del(recs.map((r) => r.k));
    for (const r of recs) {
      this.pending.delete(r.k);
      lsSet(this.key("b:" + r.k), null);
    }
  }

  private read(key: string): string | null {
    return cookieGet(key) ?? lsGet(key);
  }

  /** Record an action the user took. */
  track(event: string, properties?: Props, options?: Opts): Promise<Json | undefined> {
    if (!event) {
      warn("track() needs an event name");
      return Promise.resolve(undefined);
    }
    return this.call("track", { event, properties: properties || {} }, options, arguments);
  }

  /** Tie the visitor to a user id and remember their traits (merged with earlier ones). */
  identify(userId?: string | Json | null, traits?: Props, options?: Opts): Promise<Json | undefined> {
    if (!this.queue) return this.later("identify", arguments);
    if (typeof userId == "object" && userId) [userId, traits, options] = [null, userId, traits as Opts];
    if (userId) {
      if (this.uid && this.uid != userId) this.userTraits = {};
      this.uid = String(userId);
      this.store(USER_ID, this.uid);
    }
    this.userTraits = { ...this.userTraits, ...traits };
    lsSet(TRAITS, JSON.stringify(this.userTraits));
    return this.call("identify", { traits: this.userTraits }, options, arguments);
  }

  /** A page view: `page()`, `page(name)`, `page(category, name)`, each optionally with properties. */
  page(category?: string | Json, name?: string | Json, properties?: Props, options?: Opts): Promise<Json | undefined> {
    return this.view("page", arguments, category, name, properties, options);
  }

  /** A screen view (as in mobile apps); the same arguments as `page`. */
  screen(category?: string | Json, name?: string | Json, properties?: Props, options?: Opts): Promise<Json | undefined> {
    return this.view("screen", arguments, category, name, properties, options);
  }

  /** Put the user in a group (an account, a company). */
  group(groupId: string, traits?: Props, options?: Opts): Promise<Json | undefined> {
    return this.call("group", { groupId, traits: traits || {} }, options, arguments);
  }

  /** Merge two identities: `previousId` (by default the current user or anonymous id) becomes `userId`. */
  alias(userId: string, previousId?: string, options?: Opts): Promise<Json | undefined> {
    return this.call("alias", { userId, previousId: previousId || this.uid || this.anon }, options, arguments);
  }

  /** The current user: `id()`, `anonymousId()` and `traits()`. */
  user(): User {
    return { id: () => this.uid, anonymousId: () => this.anon, traits: () => ({ ...this.userTraits }) };
  }

  /** Forget the user (logout): new anonymous id, no user id or traits, a new session. */
  reset(): void {
    this.uid = null;
    this.userTraits = {};
    this.anon = uuid();
    this.store(USER_ID, null);
    this.store(ANONYMOUS_ID, this.anon);
    lsSet(TRAITS, null);
    lsSet(SESSION, null);
    this.session = "";
  }

  /** Consent withdrawn: nothing is tracked, and events not yet sent are deleted. Remembered. */
  async optOut(): Promise<void> {
    this.out = true;
    this.store(OPT_OUT, "1");
    this.pending.clear();
    await this.loading;
    await Promise.all(this.writes);
    const q = this.queue;
    if (!q) return;
    for (let recs; (recs = await q.read(500)).length; ) await this.forget(recs);
  }

  /** Consent given: tracking resumes. Remembered. */
  optIn(): void {
    this.out = false;
    this.store(OPT_OUT, "0");
  }

  /** Whether the visitor opted out. */
  optedOut(): boolean {
    return this.out;
  }

  /** Add a before-send middleware; see `Middleware`. */
  addMiddleware(fn: Middleware): void {
    this.middleware.push(fn);
  }

  /**
   * Send what is queued now. Resolves to true once the queue is empty, false when events remain
   * (the cell is unreachable and a retry is scheduled, or another tab is sending them).
   */
  flush(): Promise<boolean> {
    return this.send(true);
  }

  /** Stop: no more timers or listeners; waits for the send in progress, then closes the queue. */
  async close(): Promise<void> {
    this.closed = true;
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    await Promise.all([...this.writes, this.running]);
    clearTimeout(this.timer);
    this.queue?.close();
  }

  private view(type: string, args: IArguments, category?: string | Json, name?: string | Json, properties?: Props, options?: Opts) {
    if (typeof category == "object") [category, name, properties, options] = [undefined, undefined, category, name as Opts];
    else if (typeof name == "object") [category, name, properties, options] = [undefined, category, name, properties as Opts];
    else if (name == null) [category, name] = [undefined, category];
    const fields: Json = { name, properties: { ...(type == "page" ? pageContext() : {}), name, category, ...properties } };
    if (category) fields.category = category;
    return this.call(type, fields, options, args);
  }

  private later(method: string, args: IArguments): Promise<Json | undefined> {
    return new Promise((resolve) => this.early.push([method, [...args], resolve as (v: unknown) => void]));
  }

  private call(type: string, fields: Json, options: Opts, args: IArguments): Promise<Json | undefined> {
    if (!this.queue) return this.later(type, args);
    if (this.out) return Promise.resolve(undefined);
    const o = options || {};
    const t = now();
    const w = win();
    const nav = globalThis.navigator;
    const context: Json = {
      ...this.options.context,
      library: LIBRARY,
      userAgent: nav?.userAgent,
      locale: nav?.language,
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      session_id: this.sessionId(t),
    };
    if (w) {
      context.page = pageContext();
      const utm = campaign(w.location.search);
      if (utm) context.campaign = utm;
    }
    let event: Json | null | undefined | void = {
      type,
      messageId: o.messageId || uuid(),
      timestamp: new Date(o.timestamp || t).toISOString(),
      anonymousId: o.anonymousId || this.anon,
      ...(this.uid && { userId: this.uid }),
      ...fields,
      context: { ...context, ...o.context },
      ...(o.integrations && { integrations: o.integrations }),
    };
    for (const fn of this.middleware) {
      try {
        const changed = fn(event);
        if (changed !== undefined) event = changed;
      } catch (error) {
        warn("a middleware failed; the event is dropped", error);
        event = null;
      }
      if (!event) return Promise.resolve(undefined);
    }
    const rec = { k: queueKey(t, event.messageId as string), e: event };
    this.pending.set(rec.k, rec);
    this.storing.add(rec.k);
    const write = this.queue.put([rec]).then(
      async () => {
        this.storing.delete(rec.k);
        await this.trim();
        this.writes.delete(write);
        if (++this.unsent >= this.options.flushAt) void this.send(false);
        else this.schedule(this.options.flushInterval);
        return event as Json;
      },
      (error) => {
        this.storing.delete(rec.k);
        this.writes.delete(write);
        this.pending.delete(rec.k);
        warn("could not queue an event; it is lost", error);
        return undefined;
      },
    );
    this.writes.add(write);
    return write;
  }

  /** The session id: kept while events come less than `sessionTimeout` apart, shared by tabs. */
  private sessionId(t: number): number {
    const [id, last] = (lsGet(SESSION) || this.session || "0 0").split(" ").map(Number);
    const current = id && t - last < this.options.sessionTimeout ? id : t;
    lsSet(SESSION, (this.session = current + " " + t));
    return current;
  }

  private async trim(): Promise<void> {
    const q = this.queue!;
    const over = (await q.size()) - this.options.maxQueueSize;
    if (over > 0) {
      warn(`the queue is full; dropping the ${over} oldest events`);
      await this.forget(await q.read(over));
    }
  }

  private schedule(delay: number): void {
    if (!this.timer && !this.closed) this.timer = setTimeout(() => void this.flush(), delay);
  }

  /** Start sending, or note that another round is wanted. `all` sends a last partial batch too. */
  private send(all: boolean): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (all) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.unsent = 0;
    this.all ||= all;
    if (this.running) {
      this.again = true;
      return this.running;
    }
    return (this.running = this.deliver().finally(() => (this.running = undefined)));
  }

  /** Shared by tabs: the failures in a row and when the next attempt may go. */
  private backoff(failures?: number, until?: number): [number, number] {
    const key = this.key("retry");
    if (failures != null) lsSet(key, (this.retries = failures + " " + until));
    return (lsGet(key) || this.retries).split(" ").map(Number) as [number, number];
  }

  private async deliver(): Promise<boolean> {
    await this.loading;
    let empty = false;
    do {
      const all = this.all;
      this.again = this.all = false;
      await Promise.all(this.writes);
      const locked = await exclusive(this.key("send"), this.tab, async () => (empty = await this.drain(all)));
      if (!locked) {
        // Another tab is sending (the queue is shared): look again later in case it stopped short.
        this.schedule(this.options.flushInterval);
        return false;
      }
    } while (this.again);
    return empty;
  }

  /**
   * Send batches until the queue is empty (`all`) or holds less than a batch, or until the cell asks
   * us to wait. Runs holding the send lock, so no other tab reads the same events meanwhile.
   */
  private async drain(all: boolean): Promise<boolean> {
    const q = this.queue!;
    const o = this.options;
    // Halved for the rest of this round when the cell finds a batch too large.
    let size = o.maxBatchSize;
    for (;;) {
      const [failures, until] = this.backoff();
      if (until > now()) {
        this.schedule(until - now());
        return false;
      }
      // Stored before the read: if the queue is empty, someone delivered (or dropped) them.
      const stored = [...this.pending.keys()].filter((k) => !this.storing.has(k));
      const recs = await q.read(size);
      if (!recs.length) {
        stored.forEach((k) => this.pending.delete(k));
        // Unload marks of events another tab delivered: nothing is queued, none is needed.
        const s = local();
        if (s) keysWith(s, this.key("b:")).forEach((k) => lsSet(this.key("b:" + k), null));
        return true;
      }
      const resent = recs.filter((r) => now() - +(lsGet(this.key("b:" + r.k)) || now()) > o.resendWindow);
      if (resent.length) {
        await this.forget(resent);
        continue;
      }
      if (!all && recs.length < o.flushAt) {
        // A partial batch waits for the interval (or for more events).
        this.schedule(o.flushInterval);
        return false;
      }
      const body = this.body(recs);
      if (new TextEncoder().encode(body).length > MAX_BODY && recs.length > 1) {
        size = Math.ceil(recs.length / 2);
        continue;
      }
      let response: Response | undefined;
      const abort = new AbortController();
      const timeout = setTimeout(() => abort.abort(), o.requestTimeout);
      try {
        response = await fetch(this.host + "/v1/batch", {
          method: "POST",
          body,
          // NOTE: text/plain with the write key in the body is a "simple" request: no preflight.
          headers: { "Content-Type": "text/plain" },
          credentials: "omit",
          signal: abort.signal,
        });
      } catch {
        // Offline, refused, timed out: retried below.
      }
      clearTimeout(timeout);
      const status = response ? response.status : 0;
      if (status >= 200 && status < 300) {
        await this.forget(recs);
        if (failures) this.backoff(0, 0);
        continue;
      }
      if (!status || status >= 500 || status == 429 || status == 408) {
        // Exponential backoff with jitter (half fixed, half random), never sooner than Retry-After.
        const ceiling = Math.min(o.maxRetryDelay, o.retryBaseDelay * 2 ** failures);
        const delay = Math.max(ceiling / 2 + (Math.random() * ceiling) / 2, retryAfter(response?.headers.get("Retry-After") || null));
        this.backoff(failures + 1, now() + delay);
        this.schedule(delay);
        return false;
      }
      // Another 4xx: the cell accepted none of the batch. Drop the events it names, resend the rest.
      const problem: Json = await response!.json().catch(() => ({}));
      const named = ((problem.errors as Json[]) || []).map((e) => recs[e.index as number]).filter(Boolean);
      // What is left of a batch that was due is still due.
      all = true;
      if (status == 413 && !named.length && recs.length > 1) {
        size = Math.ceil(recs.length / 2);
        continue;
      }
      const dropped = named.length ? named : recs;
      warn(`the cell refused ${dropped.length} event(s) (${status} ${problem.code || ""}); they are dropped`, problem);
      await this.forget(dropped);
    }
  }

  private body(recs: Rec[]): string {
    const sentAt = new Date().toISOString();
    return JSON.stringify({ batch: recs.map((r) => ({ ...r.e, sentAt })), sentAt, writeKey: this.writeKey });
  }

  /**
   * The page is going away: send this tab's undelivered events with keepalive (it outlives the
   * page). They stay queued, marked, since no answer will come: a later page sends them again
   * within `resendWindow` (the cell's pipeline drops the copy by `messageId`), or deletes them
   * after it. Skipped while offline or while the cell is failing: the queue keeps them anyway.
   */
  private beacon(): void {
    const nav = globalThis.navigator;
    if (!this.pending.size || this.out || nav?.onLine === false || this.backoff()[1] > now()) return;
    const recs: Rec[] = [];
    let bytes = 200;
    for (const rec of this.pending.values()) {
      bytes += JSON.stringify(rec.e).length + 40;
      if (bytes > MAX_KEEPALIVE_BODY) break;
      recs.push(rec);
    }
    const body = this.body(recs);
    const url = this.host + "/v1/batch";
    try {
      if (!(nav?.sendBeacon && nav.sendBeacon(url, new Blob([body], { type: "text/plain" })))) {
        void fetch(url, { method: "POST", body, keepalive: true, credentials: "omit", headers: { "Content-Type": "text/plain" } }).catch(() => {});
      }
      const t = String(now());
      for (const r of recs) lsSet(this.key("b:" + r.k), t);
    } catch {
      // Not sent: the events are still queued for the next page.
    }
  }
}

function parse(raw: string | null): Json | undefined {
  try {
    return raw ? JSON.parse(raw) : undefined;
  } catch {
    return undefined;
  }
}

function pageContext(): Json {
  const w = win();
  if (!w) return {};
  const { location: l, document: d } = w;
  return { path: l.pathname, referrer: d.referrer, search: l.search, title: d.title, url: l.href };
}
