/** One sender at a time across a site's tabs: the Web Locks API, else a lease in localStorage. */

import { local, lsGet, lsSet } from "./storage";
import { now, sleep } from "./util";

const LEASE_MS = 15000;

/**
 * Run `fn` holding the exclusive lock `name`, unless another tab (or this one) holds it already.
 * Resolves to false, without running `fn`, when the lock is taken.
 */
export async function exclusive(name: string, owner: string, fn: () => Promise<unknown>): Promise<boolean> {
  const locks = (globalThis.navigator as Navigator | undefined)?.locks;
  if (locks) {
    return locks.request(name, { ifAvailable: true }, async (lock) => {
      if (!lock) return false;
      await fn();
      return true;
    });
  }
  // Without localStorage the queue is this tab's own memory: nobody to share with.
  if (!local()) {
    await fn();
    return true;
  }
  // NOTE: localStorage has no compare-and-set: write, let other tabs' writes land, read back.
  // Whoever wrote last wins; a holder renews its lease, a crashed one's expires.
  const holder = () => {
    const [who, until] = (lsGet(name) || " 0").split(" ");
    return +until > now() ? who : "";
  };
  const claim = () => lsSet(name, owner + " " + (now() + LEASE_MS));
  const held = holder();
  if (held && held != owner) return false;
  claim();
  await sleep(25 + Math.random() * 25);
  if (holder() != owner) return false;
  const renew = setInterval(claim, LEASE_MS / 3);
  try {
    await fn();
  } finally {
    clearInterval(renew);
    if (holder() == owner) lsSet(name, null);
  }
  return true;
}
