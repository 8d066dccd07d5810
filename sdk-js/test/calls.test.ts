// Segment's calls and payloads, identity and sessions, consent and middleware.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Analytics, VERSION } from "../src/analytics.ts";
import { browser, sleep, until } from "./env.ts";

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

test("a track call carries Segment's fields and reaches POST /v1/batch with the write key", async (t) => {
  const w = browser();
  t.after(w.close);
  const analytics = await w.tab({ flushAt: 1 });
  await analytics.track("Product Viewed", { product_id: "p1" });
  await until(() => w.cell.log.length == 1);
  const [{ sent }] = w.cell.log;
  assert.equal(sent.url, "https://cell.example.test/v1/batch");
  assert.equal(sent.headers["Content-Type"], "text/plain");
  assert.equal(sent.body.writeKey, "wk_test");
  assert.match(sent.body.sentAt, ISO);
  const [event] = sent.body.batch;
  assert.equal(event.type, "track");
  assert.equal(event.event, "Product Viewed");
  assert.deepEqual(event.properties, { product_id: "p1" });
  assert.match(event.messageId, UUID_V4);
  assert.match(event.timestamp, ISO);
  assert.equal(event.sentAt, sent.body.sentAt);
  assert.equal(event.anonymousId, analytics.user().anonymousId());
  assert.equal(event.userId, undefined);
  const c = event.context;
  assert.deepEqual(c.library, { name: "livora-analytics.js", version: VERSION });
  assert.deepEqual(c.page, {
    path: "/products",
    referrer: "https://search.example.org/",
    search: "?utm_source=news&utm_medium=email&utm_campaign=spring",
    title: "Products",
    url: "https://shop.example.com/products?utm_source=news&utm_medium=email&utm_campaign=spring",
  });
  assert.equal(c.userAgent, "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0");
  assert.equal(c.locale, "fr-FR");
  assert.deepEqual(c.campaign, { source: "news", medium: "email", name: "spring" });
  assert.equal(typeof c.session_id, "number");
});

test("message ids are unique UUID v4 and kept when given; options merge into the event", async (t) => {
  const w = browser({ url: "https://shop.example.com/" });
  t.after(w.close);
  const analytics = await w.tab({ flushAt: 1000, context: { app: { name: "shop" } } });
  const ids = new Set<string>();
  for (let i = 0; i < 200; i++) ids.add((await analytics.track("E"))!.messageId as string);
  assert.equal(ids.size, 200);
  for (const id of ids) assert.match(id, UUID_V4);
  const custom = await analytics.track("E", {}, {
    messageId: "m-1",
    timestamp: new Date("2024-05-01T10:00:00Z"),
    context: { ip: "10.1.2.3" },
    integrations: { All: false },
  });
  assert.equal(custom!.messageId, "m-1");
  assert.equal(custom!.timestamp, "2024-05-01T10:00:00.000Z");
  const context = custom!.context as Record<string, unknown>;
  assert.equal(context.ip, "10.1.2.3");
  assert.deepEqual(context.app, { name: "shop" });
  assert.equal(context.campaign, undefined, "no UTM parameters, no campaign");
  assert.deepEqual(custom!.integrations, { All: false });
});

test("identify, page, screen, group and alias build Segment's shapes", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000 });
  const identified = await a.identify("u1", { plan: "pro" });
  assert.equal(identified!.userId, "u1");
  assert.deepEqual(identified!.traits, { plan: "pro" });
  const more = await a.identify({ email: "ann@example.com" });
  assert.equal(more!.userId, "u1");
  assert.deepEqual(more!.traits, { plan: "pro", email: "ann@example.com" }, "traits merge");

  const page = await a.page();
  assert.equal(page!.type, "page");
  assert.equal((page!.properties as any).url, "https://shop.example.com/products?utm_source=news&utm_medium=email&utm_campaign=spring");
  assert.equal((page!.properties as any).title, "Products");
  const named = await a.page("Pricing", { plan: "pro" });
  assert.equal(named!.name, "Pricing");
  assert.equal((named!.properties as any).plan, "pro");
  assert.equal((named!.properties as any).name, "Pricing");
  const both = await a.page("Docs", "Install");
  assert.deepEqual([both!.category, both!.name], ["Docs", "Install"]);
  const screen = await a.screen("Home");
  assert.deepEqual([screen!.type, screen!.name, (screen!.properties as any).url], ["screen", "Home", undefined]);

  const group = await a.group("acme", { seats: 5 });
  assert.deepEqual([group!.groupId, group!.traits], ["acme", { seats: 5 }]);
  const alias = await a.alias("u2");
  assert.deepEqual([alias!.type, alias!.userId, alias!.previousId], ["alias", "u2", "u1"]);
  assert.equal(await a.track(""), undefined, "a track without a name is refused");
  assert.ok(w.warnings.some((args) => String(args[1]).includes("event name")));
});

test("anonymous and user ids persist in a cookie and localStorage; reset forgets the user", async (t) => {
  const w = browser();
  t.after(w.close);
  const first = await w.tab();
  const anonymous = first.user().anonymousId();
  assert.match(anonymous, UUID_V4);
  await first.identify("user-7", { plan: "pro" });
  assert.equal(w.cookies.jar.get("livora_anonymous_id"), anonymous);
  assert.equal(w.cookies.jar.get("livora_user_id"), "user-7");
  assert.equal(w.storage.getItem("livora_anonymous_id"), anonymous);
  assert.equal(w.storage.getItem("livora_user_id"), "user-7");

  // A reload (a new instance on the same profile) comes back as the same visitor.
  const reloaded = await w.tab();
  assert.deepEqual(
    [reloaded.user().id(), reloaded.user().anonymousId(), reloaded.user().traits()],
    ["user-7", anonymous, { plan: "pro" }],
  );
  // Either store alone is enough: cookies cleared, localStorage kept (and the other way round).
  w.cookies.jar.clear();
  assert.equal((await w.tab()).user().id(), "user-7");
  w.storage.clear();
  w.cookies.jar.set("livora_anonymous_id", "from-cookie");
  assert.equal((await w.tab()).user().anonymousId(), "from-cookie");

  reloaded.reset();
  assert.equal(reloaded.user().id(), null);
  assert.notEqual(reloaded.user().anonymousId(), anonymous);
  assert.deepEqual(reloaded.user().traits(), {});
  assert.equal(w.cookies.jar.get("livora_user_id"), undefined);
  const after = await reloaded.track("After Logout");
  assert.equal(after!.userId, undefined);
  assert.equal(after!.anonymousId, reloaded.user().anonymousId());
});

test("a session id is kept while events come within the idle timeout, shared by tabs, renewed after", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ flushAt: 1000, sessionTimeout: 500 });
  const b = await w.tab({ flushAt: 1000, sessionTimeout: 500 });
  const session = (e: Record<string, unknown> | undefined) => (e!.context as Record<string, number>).session_id;
  const first = session(await a.track("One"));
  await sleep(100);
  assert.equal(session(await b.track("Two")), first, "another tab continues the session");
  await sleep(100);
  assert.equal(session(await a.track("Three")), first, "activity keeps it alive");
  await sleep(650);
  const next = session(await a.track("Four"));
  assert.ok(next > first, "idle past the timeout starts a new session");
  assert.equal(session(await b.track("Five")), next);
  a.reset();
  assert.ok(session(await a.track("Six")) >= next);
});

test("before-send middleware can change or drop events before they are queued", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({
    flushAt: 2,
    beforeSend: (e) => (e.event == "Secret" ? null : { ...e, properties: { ...(e.properties as object), stamped: true } }),
  });
  a.addMiddleware((e) => {
    (e.context as Record<string, unknown>).consent = "granted"; // mutating in place, returning nothing
  });
  a.addMiddleware(() => {
    throw new Error("broken middleware");
  });
  assert.equal(await a.track("Secret"), undefined);
  assert.equal(await a.track("Broken"), undefined, "a failing middleware drops the event");
  assert.ok(w.warnings.some((args) => String(args[1]).includes("middleware failed")));
  const b = await w.tab({ flushAt: 2, beforeSend: (e) => ({ ...e, properties: { stamped: true } }) });
  b.addMiddleware((e) => {
    (e.context as Record<string, unknown>).consent = "granted";
  });
  await b.track("Kept");
  await b.track("Kept too");
  await until(() => w.cell.accepted().length == 2);
  for (const e of w.cell.accepted()) {
    assert.deepEqual(e.properties, { stamped: true });
    assert.equal(e.context.consent, "granted");
  }
});

test("optOut stops tracking, deletes what was queued and is remembered; optIn resumes", async (t) => {
  const w = browser();
  t.after(w.close);
  w.cell.reply = () => "network-error";
  const a = await w.tab({ flushAt: 1000, retryBaseDelay: 60000 });
  await a.track("Before");
  assert.equal(await a.queue!.size(), 1);
  await a.optOut();
  assert.equal(await a.queue!.size(), 0, "queued events are deleted");
  assert.equal(await a.track("During"), undefined);
  assert.equal(await a.queue!.size(), 0);
  const reloaded = await w.tab();
  assert.equal(reloaded.optedOut(), true, "remembered across page loads");
  reloaded.optIn();
  assert.ok(await reloaded.track("After"));
  assert.equal((await w.tab()).optedOut(), false);
  assert.deepEqual(w.cell.accepted(), []);
});

test("optedOut: true waits for consent on a first visit", async (t) => {
  const w = browser();
  t.after(w.close);
  const a = await w.tab({ optedOut: true, flushAt: 1 });
  assert.equal(await a.track("Too Early"), undefined);
  a.optIn();
  await a.track("Consented");
  await until(() => w.cell.accepted().length == 1);
  assert.equal(w.cell.accepted()[0].event, "Consented");
  assert.equal((await w.tab({ optedOut: true })).optedOut(), false, "the visitor's choice wins over the default");
});

test("calls made before load run once it has loaded, in order", async (t) => {
  const w = browser();
  t.after(w.close);
  const analytics = new Analytics();
  w.tabs.push(analytics);
  const early = [analytics.identify("u9"), analytics.track("Early", { n: 1 }), analytics.page("Home")];
  await analytics.load("wk_test", { host: "https://cell.example.test/", flushAt: 3 });
  const events = await Promise.all(early);
  assert.deepEqual(
    events.map((e) => [e!.type, e!.userId]),
    [
      ["identify", "u9"],
      ["track", "u9"],
      ["page", "u9"],
    ],
  );
  await until(() => w.cell.accepted().length == 3);
  assert.equal(w.cell.log[0].sent.url, "https://cell.example.test/v1/batch", "a trailing slash on host is fine");
});
