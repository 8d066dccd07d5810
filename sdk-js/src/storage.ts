/** Synchronous key-value persistence: localStorage and first-party cookies, each failing quietly. */

export function local(): Storage | undefined {
  try {
    const s = globalThis.localStorage;
    // Touching it throws where storage is blocked (some privacy modes, sandboxed frames).
    s.getItem("livora");
    return s;
  } catch {
    return undefined;
  }
}

/** The keys that start with `prefix`, without it, sorted. */
export function keysWith(storage: Storage, prefix: string): string[] {
  const found: string[] = [];
  for (let i = 0; i < storage.length; i++) {
    const key = storage.key(i);
    if (key && key.indexOf(prefix) == 0) found.push(key.slice(prefix.length));
  }
  return found.sort();
}

export function lsGet(key: string): string | null {
  try {
    return local()?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

export function lsSet(key: string, value: string | null): void {
  try {
    const s = local();
    value == null ? s?.removeItem(key) : s?.setItem(key, value);
  } catch {
    // Full or blocked: the value stays in memory only.
  }
}

export function cookieGet(name: string): string | null {
  try {
    for (const part of document.cookie.split("; ")) {
      const i = part.indexOf("=");
      if (part.slice(0, i) == name) return decodeURIComponent(part.slice(i + 1));
    }
  } catch {
    // No document (a worker or a test): cookies are not used.
  }
  return null;
}

export interface CookieOptions {
  domain?: string;
  maxAge: number;
  secure?: boolean;
}

export function cookieSet(name: string, value: string | null, options: CookieOptions): void {
  try {
    document.cookie =
      name +
      "=" +
      (value == null ? "" : encodeURIComponent(value)) +
      "; path=/; SameSite=Lax; max-age=" +
      (value == null ? 0 : options.maxAge) +
      (options.domain ? "; domain=" + options.domain : "") +
      (options.secure ? "; Secure" : "");
  } catch {
    // No document.
  }
}
