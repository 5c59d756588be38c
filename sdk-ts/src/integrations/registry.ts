/**
 * The integrations registry: one module per patched library, each with idempotent
 * `install()` / `uninstall()` (uninstall restores the original exactly).
 *
 * `init()` calls `activateIntegrations`; a library that is not installed is skipped silently,
 * and one whose patching fails is counted in `stats()`, never thrown into the app.
 */
import { ConfigError } from "../config.js";
import { describeError, type SDKStats } from "../stats.js";
import * as fetchIntegration from "./fetch.js";
import * as nodeFetchIntegration from "./node-fetch.js";
import * as sendgridIntegration from "./sendgrid.js";

export interface Integration {
  install(): boolean;
  uninstall(): void;
}

export const INTEGRATIONS: Readonly<Record<string, Integration>> = {
  fetch: fetchIntegration,
  "node-fetch": nodeFetchIntegration,
  sendgrid: sendgridIntegration,
};

const active = new Set<string>();

/** Install `names` (null: all known) and uninstall the ones no longer wanted. */
export function activateIntegrations(names: readonly string[] | null, stats: SDKStats): void {
  const chosen = new Set(names ?? Object.keys(INTEGRATIONS));
  const unknown = [...chosen].filter((n) => !(n in INTEGRATIONS));
  if (unknown.length) {
    throw new ConfigError(`unknown integration(s) ${JSON.stringify(unknown.sort())}; known: ${JSON.stringify(Object.keys(INTEGRATIONS).sort())}`);
  }
  for (const name of [...active]) {
    if (!chosen.has(name)) {
      try {
        INTEGRATIONS[name].uninstall();
      } catch (err) {
        stats.countError(name, `uninstall failed: ${describeError(err)}`);
      }
      active.delete(name);
    }
  }
  for (const name of chosen) {
    try {
      if (INTEGRATIONS[name].install()) active.add(name);
    } catch (err) {
      stats.countError(name, `install failed: ${describeError(err)}`);
    }
  }
}

/** Uninstall every integration, restoring the originals. */
export function deactivateIntegrations(): void {
  for (const name of [...active]) {
    try {
      INTEGRATIONS[name].uninstall();
    } catch {
      // restoring is best effort: the patched functions call through when inactive anyway
    }
    active.delete(name);
  }
}

export function activeIntegrations(): string[] {
  return [...active].sort();
}
