/** The persisted queue shared by every tab of a site: IndexedDB, else localStorage, else memory. */

import { keysWith, local } from "./storage";
import type { Json } from "./util";

/** One queued event: `k` orders the queue (enqueue time, then a counter) and is unique per event. */
export interface Rec {
  k: string;
  e: Json;
}

export interface Queue {
  readonly kind: string;
  put(recs: Rec[]): Promise<void>;
  /** The oldest `limit` events, oldest first. */
  read(limit: number): Promise<Rec[]>;
  del(keys: string[]): Promise<void>;
  size(): Promise<number>;
  close(): void;
}

export type StorageKind = "indexeddb" | "localstorage" | "memory";

const STORE = "q";

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function committed(t: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    t.oncomplete = () => resolve();
    t.onabort = t.onerror = () => reject(t.error);
  });
}

function openDb(name: string): Promise<IDBDatabase> {
  const request = indexedDB.open(name, 1);
  request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "k" });
  return done(request);
}

/** IndexedDB: every put and delete is its own transaction, so tabs never overwrite each other. */
export async function idbQueue(name: string): Promise<Queue> {
  let conn: Promise<IDBDatabase> | undefined;
  const db = () =>
    (conn ||= openDb(name).then(
      (d) => {
        // Another version, or the user clearing site data, closes us: reopen on next use.
        d.onversionchange = d.onclose = () => {
          d.close();
          conn = undefined;
        };
        return d;
      },
      (error) => {
        conn = undefined;
        throw error;
      },
    ));
  await db();
  const tx = async <T>(mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T> | void): Promise<T> => {
    const t = (await db()).transaction(STORE, mode);
    const r = fn(t.objectStore(STORE));
    const [result] = await Promise.all([r && done(r), committed(t)]);
    return result as T;
  };
  return {
    kind: "indexeddb",
    put: (recs) => tx("readwrite", (s) => void recs.forEach((r) => s.put(r))),
    read: (limit) => tx("readonly", (s) => s.getAll(null, limit) as IDBRequest<Rec[]>),
    del: (keys) => tx("readwrite", (s) => void keys.forEach((k) => s.delete(k))),
    size: () => tx("readonly", (s) => s.count()),
    close: () => void conn?.then((d) => d.close()),
  };
}

/** localStorage: one item per event (no read-modify-write that two tabs could interleave). */
export function lsQueue(prefix: string, storage: Storage): Queue {
  const keys = () => keysWith(storage, prefix);
  return {
    kind: "localstorage",
    put: async (recs) => recs.forEach((r) => storage.setItem(prefix + r.k, JSON.stringify(r.e))),
    read: async (limit) => {
      const found: Rec[] = [];
      for (const k of keys().slice(0, limit)) {
        const raw = storage.getItem(prefix + k);
        if (raw) found.push({ k, e: JSON.parse(raw) });
      }
      return found;
    },
    del: async (ks) => ks.forEach((k) => storage.removeItem(prefix + k)),
    size: async () => keys().length,
    close: () => {},
  };
}

/** Memory: events survive nothing, but the SDK still batches and retries. */
export function memoryQueue(): Queue {
  const items = new Map<string, Json>();
  return {
    kind: "memory",
    put: async (recs) => recs.forEach((r) => items.set(r.k, r.e)),
    read: async (limit) =>
      [...items.keys()]
        .sort()
        .slice(0, limit)
        .map((k) => ({ k, e: items.get(k)! })),
    del: async (keys) => keys.forEach((k) => items.delete(k)),
    size: async () => items.size,
    close: () => {},
  };
}

/** The best queue the page allows, starting from `preferred`. */
export async function openQueue(preferred: StorageKind, writeKey: string): Promise<Queue> {
  const name = "livora:" + writeKey;
  if (preferred == "indexeddb" && globalThis.indexedDB) {
    try {
      return await idbQueue(name);
    } catch {
      // Blocked (private modes, disabled storage): fall through.
    }
  }
  const storage = local();
  return preferred != "memory" && storage ? lsQueue(name + ":q:", storage) : memoryQueue();
}
