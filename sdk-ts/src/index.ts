/**
 * `@tracelab/sdk`: record what a Node app does to the outside world as TraceLab events.
 *
 * ```ts
 * import { init, trace } from "@tracelab/sdk";
 * init({ workflowName: "my-awesome-workflow", serviceName: "my-typescript-service" });
 * await fetch("https://example.com");          // traced
 * await trace("plan", async () => { ... });     // a kind:function span; calls inside nest under it
 * ```
 */
export { init, flush, shutdown, getStats as stats } from "./recorder.js";
export { trace, traced, type TraceOptions } from "./trace.js";
export { registerHook, HookHandle, type HookFn, type HookResult } from "./hooks.js";
export { ConfigError, type InitOptions, type SDKConfig } from "./config.js";
export { MARKER as REDACTED } from "./redaction.js";
export { SDK_VERSION as version } from "./version.js";
export { activeIntegrations } from "./integrations/registry.js";
export type { StatsSnapshot } from "./stats.js";
