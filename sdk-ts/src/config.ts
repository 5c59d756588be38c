/**
 * All of the SDK's configuration, read in one place (mirrors `tracelab/config.py`).
 *
 * Arguments win over environment variables, which win over defaults. A malformed environment
 * value never crashes the traced program: it is reported once as a process warning and the
 * default is used instead. The one hard error is a missing workflow name, because every event
 * needs one.
 */
import { homedir, hostname } from "node:os";
import { join } from "node:path";
import { newRunId } from "./ids.js";

export const DEFAULT_STREAM = "trace.events";
export const DEFAULT_MAX_BODY_BYTES = 65536;

/** A setting TraceLab cannot work with; the message says which one and how to fix it. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** What `init()` accepts. Every field is optional; see the README's table of env vars. */
export interface InitOptions {
  /** The logical group of runs (`TRACELAB_WORKFLOW_NAME`). Required one way or the other. */
  workflowName?: string;
  /** The emitting service, the lane in the timeline (`TRACELAB_SERVICE_NAME`, default hostname). */
  serviceName?: string;
  /** One execution (`TRACELAB_RUN_ID`, else a new UUID per `init`). */
  runId?: string;
  /** Tags for every event, merged over `TRACELAB_TAGS` (a JSON object). */
  tags?: Record<string, unknown>;
  /** Service mode: publish to this Redis (`TRACELAB_REDIS_URL`). Unset means embedded mode. */
  redisUrl?: string;
  /** Record request and response bodies (`TRACELAB_CAPTURE_PAYLOADS`, default true). */
  capturePayloads?: boolean;
  /** Extra regular expressions (strings or RegExp) for secret names, over `TRACELAB_REDACT`. */
  redact?: Array<string | RegExp> | string | RegExp;
  /** Body cap in bytes (`TRACELAB_MAX_BODY_BYTES`, default 65536). */
  maxBodyBytes?: number;
  /** Which integrations to install: any of "fetch", "node-fetch", "sendgrid" (default: all). */
  integrations?: string[];
}

/** What `init()` resolved; frozen so the hot path reads it without copying. */
export interface SDKConfig {
  readonly workflow: string;
  readonly service: string;
  readonly runId: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly redisUrl: string | null;
  readonly capturePayloads: boolean;
  readonly redactPatterns: readonly RegExp[];
  readonly maxBodyBytes: number;
  readonly integrations: readonly string[] | null;
  readonly home: string;
  readonly stream: string;
  readonly streamMaxlen: number | null;
  readonly queueSize: number;
  readonly batchSize: number;
  readonly flushIntervalMs: number;
  readonly retryMs: number;
  readonly shutdownTimeoutMs: number;
  readonly mode: "redis" | "embedded";
}

const warned = new Set<string>();

function warn(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  try {
    process.emitWarning(message, { type: "TraceLabConfigWarning" });
  } catch {
    // a warning must never be the thing that breaks the app
  }
}

export function envStr(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? undefined : value;
}

function envNumber(name: string, fallback: number, minimum: number, integer: boolean): number {
  const raw = envStr(name);
  if (raw === undefined) return fallback;
  const value = Number(raw.trim());
  if (raw.trim() === "" || Number.isNaN(value) || (integer && !Number.isInteger(value))) {
    warn(`${name}=${JSON.stringify(raw)} is not ${integer ? "an integer" : "a number"}; using ${fallback}`);
    return fallback;
  }
  if (!(value >= minimum)) {
    warn(`${name}=${JSON.stringify(raw)} is below ${minimum}; using ${fallback}`);
    return fallback;
  }
  return value;
}

export function envFlag(name: string, fallback: boolean): boolean {
  const raw = envStr(name);
  if (raw === undefined) return fallback;
  const lowered = raw.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(lowered)) return true;
  if (["0", "false", "no", "off"].includes(lowered)) return false;
  warn(`${name}=${JSON.stringify(raw)} is not a boolean (use 1/0, true/false); using ${fallback}`);
  return fallback;
}

/** `$TRACELAB_HOME`, default `~/.tracelab`: the spool and the store live here. */
export function tracelabHome(): string {
  const raw = envStr("TRACELAB_HOME");
  if (raw === undefined) return join(homedir(), ".tracelab");
  return raw.startsWith("~") ? join(homedir(), raw.slice(1)) : raw;
}

/** Tags are string -> string in the contract; other values are turned into JSON text. */
export function normalizeTags(tags: unknown, origin: string): Record<string, string> {
  if (tags === null || tags === undefined) return {};
  if (typeof tags !== "object" || Array.isArray(tags)) {
    warn(`${origin} must be a JSON object of tags, got ${Array.isArray(tags) ? "array" : typeof tags}; ignoring it`);
    return {};
  }
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(tags as Record<string, unknown>)) {
    out[key] = typeof value === "string" ? value : JSON.stringify(value) ?? String(value);
  }
  return out;
}

function parseTagsEnv(): Record<string, string> {
  const raw = envStr("TRACELAB_TAGS");
  if (raw === undefined) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    warn(`TRACELAB_TAGS is not valid JSON (${(err as Error).message}); expected an object such as ` +
      '{"team": "payments"}; ignoring it');
    return {};
  }
  return normalizeTags(parsed, "TRACELAB_TAGS");
}

function compilePatterns(patterns: Array<string | RegExp>, origin: string): RegExp[] {
  const out: RegExp[] = [];
  for (const pattern of patterns) {
    if (pattern instanceof RegExp) {
      // Stateless (no g/y, so .test() never depends on lastIndex) and case-insensitive.
      const flags = pattern.flags.replace(/[gy]/g, "");
      out.push(new RegExp(pattern.source, flags.includes("i") ? flags : `${flags}i`));
      continue;
    }
    const text = String(pattern).trim();
    if (!text) continue;
    try {
      out.push(new RegExp(text, "i"));
    } catch (err) {
      warn(`${origin}: ${JSON.stringify(text)} is not a valid regular expression (${(err as Error).message}); skipping it`);
    }
  }
  return out;
}

export function isDisabled(): boolean {
  return envFlag("TRACELAB_DISABLED", false);
}

/** Combine `init()` options with the environment into one SDKConfig. */
export function resolveConfig(options: InitOptions = {}): SDKConfig {
  const workflow = options.workflowName || envStr("TRACELAB_WORKFLOW_NAME");
  if (!workflow) {
    throw new ConfigError(
      "TraceLab needs a workflow name: pass init({ workflowName: ... }) or set the " +
        "TRACELAB_WORKFLOW_NAME environment variable");
  }
  if (typeof workflow !== "string") {
    throw new ConfigError(`workflowName must be a string, got ${typeof workflow}`);
  }
  const tags = { ...parseTagsEnv(), ...normalizeTags(options.tags, "init({ tags })") };
  let redact = options.redact ?? [];
  if (!Array.isArray(redact)) redact = [redact];
  const envRedact = (envStr("TRACELAB_REDACT") ?? "").split(",");
  let maxBodyBytes = options.maxBodyBytes;
  if (maxBodyBytes === undefined || maxBodyBytes === null) {
    maxBodyBytes = envNumber("TRACELAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 0, true);
  } else if (!Number.isInteger(maxBodyBytes) || maxBodyBytes < 0) {
    throw new ConfigError(`maxBodyBytes must be a non-negative integer, got ${String(maxBodyBytes)}`);
  }
  const redisUrl = options.redisUrl || envStr("TRACELAB_REDIS_URL") || null;
  const maxlen = envNumber("TRACELAB_STREAM_MAXLEN", 0, 0, true);
  return Object.freeze({
    workflow,
    service: options.serviceName || envStr("TRACELAB_SERVICE_NAME") || hostname(),
    runId: options.runId || envStr("TRACELAB_RUN_ID") || newRunId(),
    tags: Object.freeze(tags),
    redisUrl,
    capturePayloads: options.capturePayloads === undefined || options.capturePayloads === null
      ? envFlag("TRACELAB_CAPTURE_PAYLOADS", true)
      : Boolean(options.capturePayloads),
    redactPatterns: Object.freeze(compilePatterns([...redact, ...envRedact], "redact")),
    maxBodyBytes,
    integrations: options.integrations ? Object.freeze([...options.integrations]) : null,
    home: tracelabHome(),
    stream: envStr("TRACELAB_STREAM") || DEFAULT_STREAM,
    streamMaxlen: maxlen || null,
    queueSize: envNumber("TRACELAB_QUEUE_SIZE", 10000, 1, true),
    batchSize: envNumber("TRACELAB_BATCH_SIZE", 256, 1, true),
    flushIntervalMs: envNumber("TRACELAB_FLUSH_INTERVAL", 0.1, 0.001, false) * 1000,
    retryMs: envNumber("TRACELAB_RETRY_SECONDS", 10, 0, false) * 1000,
    shutdownTimeoutMs: envNumber("TRACELAB_SHUTDOWN_TIMEOUT", 2, 0, false) * 1000,
    mode: redisUrl ? "redis" : "embedded",
  });
}
