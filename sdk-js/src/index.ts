/** Livora's browser SDK (ES module build): `import { analytics } from "@livora/analytics"`. */

import { Analytics } from "./analytics";

export { Analytics, VERSION } from "./analytics";
export type { CallOptions, Middleware, Options, User } from "./analytics";
export type { StorageKind } from "./queue";

/** The page's client; `new Analytics()` makes another (e.g. for a second write key). */
export const analytics = new Analytics();
