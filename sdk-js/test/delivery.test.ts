// Batching, the persisted queue, retries and backoff, refusals, and the pagehide send.
import assert from "node:assert/strict";
import { test } from "node:test";

import { browser, sleep, until } from "./env.ts";

const ids = (events: Record<string, any>[]) => events.map((e) => e.messageId as string);

test("events go in batches of flushAt, or after flushInterval when fewer wait", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 5, flushInterval: 60000 });
  for (let i = 0; i < 13; i++) await a.track("E", { i });
  await until(() => w.cell.accepted().length == 10);
  await sleep(100);
  assert.deepEqual(
    w.cell.log.map((r) => r.sent.body.batch.length),
    [5, 5],
    "three events wait for the interval",
  );
  await a.close();

  const b = await w.tab({ flushAt: 5, flushInterval: 150 }); // a new page sends what the last one left
  assert.equal(w.cell.accepted().length, 13);
  const start = Date.now();
  await b.track("Lonely");
  await sleep(60);
  assert.equal(w.cell.log.length, 3, "one event waits for the interval");
  await until(() => w.cell.log.length == 4);
  assert.ok(Date.now() - start >= 140, "sent after flushInterval");
  assert.deepEqual(
    w.cell.accepted().map((e) => e.properties.i ?? "lonely"),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "lonely"],
    "in order",
  );
});

test("flush() sends everything now and resolves true once the queue is empty", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, flushInterval: 60000, maxBatchSize: 30 });
  for (let i = 0; i < 75; i++) void a.track("E", { i });
  assert.equal(await a.flush(), true);
  assert.deepEqual(
    w.cell.log.map((r) => r.sent.body.batch.length),
    [30, 30, 15],
  );
  assert.equal(await a.queue!.size(), 0);
});

test("the queue survives a reload: a new page sends what the last one could not, once", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = () => "network-error";
  const first = await w.tab({ flushAt: 3, retryBaseDelay: 60000 });
  const tracked = [];
  for (let i = 0; i < 7; i++) tracked.push((await first.track("Offline", { i }))!.messageId);
  await until(() => w.cell.log.length >= 1);
  assert.equal(await first.flush(), false, "the cell is down: events stay queued");
  await first.close(); // the page goes away
  assert.equal(w.cell.accepted().length, 0);

  w.cell.reply = (sent) => ({ status: 202, body: { accepted: sent.body.batch.length } });
  localStorage.removeItem("livora:wk_test:retry"); // the visitor came back much later
  const second = await w.tab({ flushAt: 3 });
  await until(() => w.cell.accepted().length == 7);
  await second.flush();
  assert.deepEqual(ids(w.cell.accepted()), tracked);
  assert.equal(await second.queue!.size(), 0);
});

test("network errors and 5xx back off exponentially with jitter; 503 and 429 honour Retry-After", async (t) => {
  const w = browser();
  t.after(w.close);
  let failures = 5;
  w.cell.reply = () => (failures-- > 0 ? (failures % 2 ? "network-error" : { status: 500 }) : { status: 202 });
  const a = await w.tab({ flushAt: 1, retryBaseDelay: 40, maxRetryDelay: 1000 });
  const event = await a.track("Retried");
  await until(() => w.cell.accepted().length == 1, 5000);
  const times = w.cell.log.map((r) => r.sent.at);
  const gaps = times.slice(1).map((at, i) => at - times[i]);
  // Attempt n waits between half and all of 40 ms * 2^n (plus timer slack on a busy machine).
  gaps.forEach((gap, n) => {
    assert.ok(gap >= 20 * 2 ** n - 5, `gap ${n} of ${gaps} is at least half its ceiling`);
    assert.ok(gap <= 40 * 2 ** n + 500, `gap ${n} of ${gaps} is at most its ceiling`);
  });
  assert.equal(w.cell.log.length, 6);
  assert.ok(w.cell.log.every((r) => r.sent.body.batch[0].messageId == event!.messageId), "the same event every time");
  assert.deepEqual(w.warnings, [], "retries are silent");

  for (const status of [503, 429]) {
    w.cell.log = [];
    let first = true;
    w.cell.reply = () => (first ? ((first = false), { status, headers: { "Retry-After": "1" } }) : { status: 202 });
    await a.track("Busy");
    await until(() => w.cell.accepted().length == 1, 5000);
    const [refused, accepted] = w.cell.log.map((r) => r.sent.at);
    assert.ok(accepted - refused >= 995, `${status}: waited ${accepted - refused} ms for Retry-After: 1`);
  }
});

test("a 400 naming some events drops only those (with a warning) and resends the others", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = (sent) => {
    const bad = sent.body.batch.map((e, index) => ({ e, index })).filter(({ e }) => e.properties.bad);
    if (!bad.length) return { status: 202 };
    return {
      status: 400,
      body: {
        code: "events_rejected",
        errors: bad.map(({ e, index }) => ({ index, message_id: e.messageId, code: "invalid_event", detail: "bad" })),
      },
    };
  };
  const a = await w.tab({ flushAt: 4 });
  const sent = [];
  for (const bad of [false, true, false, true]) sent.push(await a.track("E", { bad }));
  await until(() => w.cell.accepted().length == 2);
  assert.equal(await a.flush(), true);
  assert.deepEqual(ids(w.cell.accepted()), [sent[0]!.messageId, sent[2]!.messageId]);
  assert.equal(w.warnings.length, 1);
  assert.match(String(w.warnings[0][1]), /refused 2 event\(s\) \(400 events_rejected\)/);
});

test("other 4xx drop the batch with a warning; a 413 without names splits the batch first", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = () => ({ status: 401, body: { code: "invalid_write_key" } });
  const a = await w.tab({ flushAt: 1000 });
  await a.track("One");
  await a.track("Two");
  assert.equal(await a.flush(), true);
  assert.equal(w.cell.log.length, 1, "not retried");
  assert.equal(await a.queue!.size(), 0);
  assert.match(String(w.warnings[0][1]), /refused 2 event\(s\) \(401 invalid_write_key\)/);

  w.cell.log = [];
  w.cell.reply = (s) => (s.body.batch.length > 2 ? { status: 413, body: { code: "too_many_events" } } : { status: 202 });
  for (let i = 0; i < 8; i++) await a.track("E", { i });
  assert.equal(await a.flush(), true);
  assert.deepEqual(
    w.cell.log.map((r) => [r.status, r.sent.body.batch.length]),
    [
      [413, 8],
      [413, 4],
      [202, 2],
      [202, 2],
      [202, 2],
      [202, 2],
    ],
  );
  assert.deepEqual(
    w.cell.accepted().map((e) => e.properties.i),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
});

test("without IndexedDB the queue lives in localStorage and still survives a reload", async (t) => {
  const w = browser();
  t.after(w.close);
  (globalThis as Record<string, unknown>).indexedDB = undefined;
  w.cell.reply = () => ({ status: 503, headers: { "Retry-After": "60" } });
  const first = await w.tab({ flushAt: 2 });
  assert.equal(first.queue!.kind, "localstorage");
  const a = await first.track("Kept", { n: 1 });
  const b = await first.track("Kept", { n: 2 });
  await until(() => w.cell.log.length == 1);
  await first.close();
  assert.equal(w.storage.length > 0, true);
  w.cell.reply = () => ({ status: 202 });
  localStorage.removeItem("livora:wk_test:retry");
  const second = await w.tab({ flushAt: 2, storage: "indexeddb" });
  assert.equal(await second.flush(), true);
  assert.deepEqual(ids(w.cell.accepted()), [a!.messageId, b!.messageId]);
  const left = Array.from({ length: w.storage.length }, (_, i) => w.storage.key(i)).filter((k) => k!.includes(":q:"));
  assert.deepEqual(left, []);
});

test("storage: memory keeps nothing across pages but still delivers", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ storage: "memory", flushAt: 2 });
  assert.equal(a.queue!.kind, "memory");
  await a.track("A");
  await a.track("B");
  await until(() => w.cell.accepted().length == 2);
});

test("pagehide sends this tab's undelivered events with a beacon; they stay queued for the next page", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, flushInterval: 60000 });
  const events = [await a.track("Clicked"), await a.track("Left")];
  w.window.dispatchEvent(new Event("pagehide"));
  await until(() => w.cell.beacons.length == 1);
  const [beacon] = w.cell.beacons;
  assert.equal(beacon.url, "https://cell.example.test/v1/batch");
  assert.equal(beacon.body.writeKey, "wk_test");
  assert.deepEqual(ids(beacon.body.batch), ids(events as Record<string, any>[]));
  assert.equal(await a.queue!.size(), 2, "no answer can be read: the next page sends them again (same messageId)");

  // Without sendBeacon, fetch with keepalive does the same.
  (globalThis.navigator as unknown as Record<string, unknown>).sendBeacon = undefined;
  w.window.dispatchEvent(new Event("pagehide"));
  await until(() => w.cell.beacons.length == 2);
  assert.equal(w.cell.beacons[1].keepalive, true);

  const marked = () => Array.from({ length: w.storage.length }, (_, i) => w.storage.key(i)!).filter((k) => k.includes(":b:"));
  assert.equal(marked().length, 2, "marked as sent on unload");

  // Delivered events are not sent again, and nothing is sent while the cell is failing.
  assert.equal(await a.flush(), true);
  assert.deepEqual(marked(), [], "delivered: unmarked");
  w.window.dispatchEvent(new Event("pagehide"));
  w.cell.reply = () => ({ status: 503, headers: { "Retry-After": "30" } });
  await a.track("During Outage");
  assert.equal(await a.flush(), false);
  w.window.dispatchEvent(new Event("pagehide"));
  await sleep(30);
  assert.equal(w.cell.beacons.length, 2);
});

test("going offline then online retries at once", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = () => "network-error";
  const a = await w.tab({ flushAt: 1, retryBaseDelay: 60000 });
  await a.track("Offline");
  await until(() => w.cell.log.length == 1);
  w.cell.reply = () => ({ status: 202 });
  w.window.dispatchEvent(new Event("online"));
  await until(() => w.cell.accepted().length == 1);
});

test("beyond maxQueueSize the oldest events are dropped with a warning", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = () => "network-error";
  const a = await w.tab({ flushAt: 1000, maxQueueSize: 5, retryBaseDelay: 60000 });
  for (let i = 0; i < 8; i++) await a.track("E", { i });
  const kept = await a.queue!.read(100);
  assert.deepEqual(
    kept.map((r) => (r.e.properties as { i: number }).i),
    [3, 4, 5, 6, 7],
  );
  assert.ok(w.warnings.some((args) => String(args[1]).includes("queue is full")));
});

test("events sent on unload are sent again by a later page within resendWindow, then taken as delivered", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, flushInterval: 60000 });
  const recent = await a.track("Recent");
  const old = await a.track("Long Ago");
  w.window.dispatchEvent(new Event("pagehide"));
  await until(() => w.cell.beacons.length == 1);
  await a.close();
  // The second event's page unloaded two days ago.
  const marker = Array.from({ length: w.storage.length }, (_, i) => w.storage.key(i)!).find(
    (k) => k.includes(":b:") && k.endsWith(old!.messageId as string),
  )!;
  w.storage.setItem(marker, String(Date.now() - 2 * 86400000));
  const b = await w.tab({ flushAt: 1000 });
  assert.equal(await b.flush(), true);
  assert.deepEqual(ids(w.cell.accepted()), [recent!.messageId], "the recent one again (same messageId), not the old one");
  assert.equal(await b.queue!.size(), 0);
  assert.deepEqual(w.warnings, []);
});

test("nothing is sent on unload while the browser is offline (the queue keeps the events)", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, flushInterval: 60000 });
  await a.track("Offline");
  (globalThis.navigator as unknown as Record<string, unknown>).onLine = false;
  w.window.dispatchEvent(new Event("pagehide"));
  await sleep(30);
  assert.equal(w.cell.beacons.length, 0);
  assert.equal(await a.queue!.size(), 1);
});

test("unload marks of events another tab delivered are cleared once the queue is empty", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, flushInterval: 60000 });
  const b = await w.tab({ flushAt: 1000, flushInterval: 60000 });
  await a.track("From A");
  assert.equal(await b.flush(), true, "tab B delivers tab A's event");
  w.window.dispatchEvent(new Event("pagehide")); // A still counts it as its own: sent again on unload
  await until(() => w.cell.beacons.length == 1);
  const marks = () => Array.from({ length: w.storage.length }, (_, i) => w.storage.key(i)!).filter((k) => k.includes(":b:"));
  assert.equal(marks().length, 1);
  assert.equal(await b.flush(), true);
  assert.deepEqual(marks(), []);
  assert.equal(await a.flush(), true);
  w.window.dispatchEvent(new Event("pagehide"));
  await sleep(20);
  assert.equal(w.cell.beacons.length, 1, "A's own round found the queue empty: nothing left to send on unload");
});
