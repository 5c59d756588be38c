/**
 * What a replay miss looks like to the app: the error its HTTP library raises when the
 * connection is refused, carrying the miss explanation, so the app's own error handling runs.
 */

/** The `replay` tag of a call sent live under replay (`passthrough` and `record` modes). */
export const PASSTHROUGH: Readonly<Record<string, string>> = Object.freeze({ replay: "passthrough" });

/** A system-style error (`code: ECONNREFUSED`) whose message is the miss explanation. */
export function missError(message: string): Error & { code: string; errno: number; syscall: string } {
  return Object.assign(new Error(message), { code: "ECONNREFUSED", errno: -111, syscall: "connect", tracelabReplay: "miss" });
}
