// Two tabs share one queue (the same IndexedDB or localStorage): each event is sent once.
import assert from "node:assert/strict";
import { test } from "node:test";

import { exclusive } from "../src/lock.ts";
import { browser, sleep, until } from "./env.ts";

async function race(locks: boolean, storage: "indexeddb" | "localstorage") {
  const w = browser({ locks });
  try {
    w.cell.delay = 15; // slow answers: the tabs' sends overlap
    const options = { flushAt: 7, flushInterval: 40, storage };
    const tabs = [await w.tab(options), await w.tab(options)];
    const tracked: string[] = [];
    await Promise.all(
      tabs.map(async (tab, n) => {
        for (let i = 0; i < 60; i++) {
          tracked.push((await tab.track("Clicked", { tab: n, i }))!.messageId as string);
          if (i % 9 == 0) void tab.flush(); // and explicit flushes, from both tabs at once
          if (i % 4 == 0) await sleep(3);
        }
      }),
    );
    await until(() => w.cell.accepted().length >= tracked.length, 10000, "every event");
    await Promise.all(tabs.map((tab) => tab.flush()));
    await sleep(100);
    const sent = w.cell.log.flatMap((r) => r.sent.body.batch.map((e) => e.messageId as string));
    assert.equal(new Set(sent).size, tracked.length, "every event was sent");
    assert.equal(sent.length, tracked.length, "and none twice");
    assert.deepEqual(new Set(sent), new Set(tracked));
  } finally {
    await w.close();
  }
}

test("two tabs with Web Locks never send an event twice (IndexedDB queue)", () => race(true, "indexeddb"));

test("two tabs with the localStorage lease never send an event twice (IndexedDB queue)", () =>
  race(false, "indexeddb"));

test("two tabs with the localStorage lease never send an event twice (localStorage queue)", () =>
  race(false, "localstorage"));

async function simultaneousFlushes(locks: boolean | "broken"): Promise<{ sent: number; tracked: number }> {
  const w = browser({ locks });
  try {
    w.cell.delay = 50;
    const a = await w.tab({ flushAt: 1000 });
    const b = await w.tab({ flushAt: 1000 });
    for (let i = 0; i < 10; i++) await (i % 2 ? a : b).track("E", { i });
    await Promise.all([a.flush(), b.flush(), a.flush(), b.flush()]);
    await Promise.all([a.flush(), b.flush()]);
    return { sent: w.cell.log.flatMap((r) => r.sent.body.batch).length, tracked: 10 };
  } finally {
    await w.close();
  }
}

test("both tabs flushing the same events at once: each sent once, with Web Locks or the lease", async () => {
  for (const locks of [true, false]) {
    assert.deepEqual(await simultaneousFlushes(locks), { sent: 10, tracked: 10 }, `locks: ${locks}`);
  }
  // The same race with a lock that never excludes: both tabs send the same events (what the lock prevents).
  const broken = await simultaneousFlushes("broken");
  assert.equal(broken.sent, 20);
});

test("a tab that finds the lock taken leaves its events to the holder, then checks again", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.delay = 150;
  const a = await w.tab({ flushAt: 1000, flushInterval: 100 });
  const b = await w.tab({ flushAt: 1000, flushInterval: 100 });
  await a.track("From A");
  const sending = a.flush();
  await until(() => w.cell.started == 1); // A holds the lock, its request in flight
  const fromB = await b.track("From B");
  assert.equal(await b.flush(), false, "B does not send while A holds the lock");
  assert.equal(await sending, true);
  await until(() => w.cell.accepted().some((e) => e.messageId == fromB!.messageId), 3000, "B's event");
  assert.deepEqual(
    w.cell.accepted().map((e) => e.event),
    ["From A", "From B"],
  );
});

test("the lease: one holder at a time, a renewing holder keeps it, an expired one is taken over", async (t) => {
  const w = browser({ locks: false });
  t.after(w.close);
  let inside = 0;
  let most = 0;
  const runs: string[] = [];
  const work = (who: string) => async () => {
    most = Math.max(most, ++inside);
    runs.push(who);
    await sleep(60);
    inside--;
  };
  const results = await Promise.all(["a", "b", "c", "d"].map((who) => exclusive("lock:test", who, work(who))));
  assert.equal(most, 1);
  assert.equal(results.filter(Boolean).length, 1, "one of four simultaneous claims wins");
  assert.equal(runs.length, 1);
  assert.equal(localStorage.getItem("lock:test"), null, "released");
  // A holder that vanished (a crashed tab) leaves a lease that expires.
  localStorage.setItem("lock:test", `crashed ${Date.now() + 100}`);
  assert.equal(await exclusive("lock:test", "e", work("e")), false);
  await sleep(120);
  assert.equal(await exclusive("lock:test", "e", work("e")), true);
});
